"""The signal tables and register maps as text: CSV for files, aligned tables for the console.

``twin signals`` prints :func:`to_text` / :func:`to_csv`; ``twin plant --print-map`` prints
:func:`format_register_map`; docs/modbus_register_map_plc.csv is :func:`register_map_csv` of the PLC
map and docs/modbus_register_map_twin.csv is :func:`mirror_map_csv` (the twin's read-only mirror).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

from twin_core.signals.modbus import RegisterEntry
from twin_core.signals.plc import PLC_REGISTER_MAP
from twin_core.signals.runtime import MIRROR_MAP
from twin_core.signals.table import Signal
from twin_core.signals.twin import TWIN_SIGNALS


def csv_text(columns: Sequence[str], table_rows: Iterable[dict[str, object]]) -> str:
    """Rows (dicts keyed by column) as CSV text with a header line."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(table_rows)
    return buf.getvalue()


def aligned_text(columns: Sequence[str], table_rows: Iterable[dict[str, object]]) -> str:
    """Rows (dicts keyed by column) as an aligned text table with a header and a rule."""
    data = [[str(r[c]) for c in columns] for r in table_rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(d, widths, strict=True)) for d in data]
    return "\n".join(lines)


# -- signal tables ------------------------------------------------------------------------------------
COLUMNS = ("name", "unit", "display_unit", "role", "type", "min", "max", "nominal", "start", "description",
           "modbus_table", "modbus_address", "modbus_encoding", "modbus_scale", "modbus_offset")
"""Columns of a signal table as CSV."""


def rows(table: Iterable[Signal] = TWIN_SIGNALS) -> list[dict[str, object]]:
    """The table as a list of flat rows (the columns of :data:`COLUMNS`)."""
    out = []
    for s in table:
        m = s.modbus
        out.append({"name": s.name, "unit": s.unit, "display_unit": s.display_unit or "", "role": s.role,
                    "type": s.type, "min": s.min, "max": s.max, "nominal": s.nominal,
                    "start": "" if s.start is None else s.start, "description": s.description,
                    "modbus_table": m.table if m else "", "modbus_address": m.address if m else "",
                    "modbus_encoding": m.encoding if m else "", "modbus_scale": m.scale if m else "",
                    "modbus_offset": m.offset if m else ""})
    return out


def to_csv(table: Iterable[Signal] = TWIN_SIGNALS) -> str:
    """The table as CSV text."""
    return csv_text(COLUMNS, rows(table))


def to_text(table: Iterable[Signal] = TWIN_SIGNALS) -> str:
    """The table as an aligned text table for the console."""
    return aligned_text(("name", "unit", "role", "min", "max", "nominal", "start", "description"), rows(table))


# -- register maps ------------------------------------------------------------------------------------
_REFERENCE_BASE = {"coil": 0, "discrete": 100000, "input": 300000, "holding": 400000}
_FUNCTION_CODES = {"coil": "1,5,15", "discrete": "2", "input": "4", "holding": "3,6,16"}
"""The function codes that reach each table of a read/write device (the PLC)."""
MIRROR_FUNCTION_CODES = {"input": "3,4"}
"""The read-only mirror serves its input registers to FC4 and FC3 alike (legacy SCADA drivers that poll
only the 4xxxx table); it has no other table and refuses every write (gateways.modbus_mirror)."""

MAP_COLUMNS = ("table", "function_codes", "address", "reference", "count", "name", "signal", "kind", "access",
               "encoding", "scale", "offset", "unit", "min", "max", "description")
"""Columns of the register-map CSV. ``address`` is the 0-based protocol address, ``reference`` the
conventional 1-based 6-digit register number (0xxxxx coils, 3xxxxx input, 4xxxxx holding). The value
decoded with ``encoding``/``scale``/``offset`` is in ``unit`` (SI); ``min``/``max`` bound writes."""


def register_map_rows(entries: Iterable[RegisterEntry] = PLC_REGISTER_MAP,
                      function_codes: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    """The map as flat rows (the columns of :data:`MAP_COLUMNS`); ``function_codes`` says which
    function codes reach each table (default: a read/write device's, as the PLC)."""
    codes = _FUNCTION_CODES if function_codes is None else function_codes
    out = []
    for e in entries:
        b, s = e.binding, e.signal
        scaled = b.encoding in ("int16", "uint16", "uint32")
        out.append({
            "table": b.table, "function_codes": codes[b.table], "address": b.address,
            "reference": f"{_REFERENCE_BASE[b.table] + b.address + 1:06d}", "count": b.width, "name": e.name,
            "signal": s.name, "kind": e.kind, "access": e.access, "encoding": b.encoding,
            "scale": f"{b.scale:.12g}" if scaled else "", "offset": f"{b.offset:.12g}" if scaled else "",
            "unit": s.unit, "min": f"{s.min:.10g}", "max": f"{s.max:.10g}", "description": e.description,
        })
    return out


def register_map_csv(entries: Iterable[RegisterEntry] = PLC_REGISTER_MAP,
                     function_codes: Mapping[str, str] | None = None) -> str:
    """A register map as CSV text (the PLC's by default: docs/modbus_register_map_plc.csv)."""
    return csv_text(MAP_COLUMNS, register_map_rows(entries, function_codes))


def mirror_map_csv() -> str:
    """The read-only mirror's register map as CSV text (docs/modbus_register_map_twin.csv): the
    registers of one reactor, the same at each unit id (1, 2, ... in configuration order)."""
    return register_map_csv(MIRROR_MAP, MIRROR_FUNCTION_CODES)


def format_register_map(entries: Iterable[RegisterEntry] = PLC_REGISTER_MAP) -> str:
    """The register map as an aligned text table for the console (``twin plant --print-map``)."""
    cols = ("table", "address", "reference", "count", "name", "access", "encoding", "scale", "offset", "unit",
            "min", "max")
    head = [
        "Modbus TCP register map of the simulated PLC (0-based protocol addresses; reference = 1-based number).",
        "float32: two registers, high word first, big-endian bytes (ABCD). uint32: high word first.",
        "int16/uint16/uint32: value = raw / scale + offset, in the SI unit shown.",
        "Address block 900 of every table is SIMULATION ONLY: hooks (coil, holding) and the plant's hidden",
        "truth (input registers 900-913, for scoring); a real PLC has none of it.",
        "",
    ]
    return "\n".join(head) + "\n" + aligned_text(cols, register_map_rows(entries))
