"""Modbus encodings of the signal table: where a signal sits in a register map and how it is encoded.

:class:`ModbusBinding` is one signal's place (table, address) and encoding; :class:`RegisterEntry` is
one row of a register map; :func:`build_register_map` orders a map and refuses overlaps. The PLC map
(twin_core.signals.plc) is built from these, and so will be any other map (e.g. a read-only mirror).
docs/modbus.md explains the encodings for integrators.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from twin_core.errors import ParameterError, ParameterTypeError

if TYPE_CHECKING:
    from twin_core.signals.table import Signal

ModbusTable = Literal["input", "holding", "coil", "discrete"]
ModbusEncoding = Literal["float32", "int16", "uint16", "uint32", "bool"]
MODBUS_TABLES: tuple[str, ...] = ("input", "holding", "coil", "discrete")
MODBUS_ENCODINGS: tuple[str, ...] = ("float32", "int16", "uint16", "uint32", "bool")
_ENCODING_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-0x8000, 0x7FFF),
    "uint16": (0, 0xFFFF),
    "uint32": (0, 0xFFFF_FFFF),
    "bool": (0, 1),
}
INT16_NO_VALUE = -0x8000
"""Raw int16 published when a scaled value has no number (NaN): 0x8000, the usual SCADA 'bad' marker."""


@dataclass(frozen=True)
class ModbusBinding:
    """Where a signal sits in a Modbus map and how it is encoded.

    table: ``input`` (input registers, FC4), ``holding`` (FC3/6/16), ``coil`` (FC1/5/15),
    ``discrete`` (FC2). address: 0-based protocol address of the first register (or bit).
    encoding: ``float32`` (IEEE 754 single, two registers, high word first, each word big-endian:
    the bytes on the wire are the big-endian float, "ABCD"), ``int16`` (signed, two's complement),
    ``uint16``, ``uint32`` (two registers, high word first), ``bool`` (one coil or discrete input).
    Integer encodings are scaled: ``raw = round((value - offset) * scale)`` and
    ``value = raw / scale + offset``; e.g. a temperature in K published as degC x 10 has
    ``scale=10, offset=273.15``. float32 and bool ignore scale and offset.

    A bad field raises :class:`~twin_core.errors.ParameterError` (a ValueError) or
    :class:`~twin_core.errors.ParameterTypeError` (a TypeError) naming it (``modbus.address`` ...).
    """

    table: ModbusTable
    address: int
    encoding: ModbusEncoding = "float32"
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.table not in MODBUS_TABLES:
            raise ParameterError("modbus.table", self.table, f"unknown; expected one of {MODBUS_TABLES}")
        if self.encoding not in MODBUS_ENCODINGS:
            raise ParameterError("modbus.encoding", self.encoding, f"unknown; expected one of {MODBUS_ENCODINGS}")
        if isinstance(self.address, bool) or not isinstance(self.address, int):
            raise ParameterTypeError("modbus.address", self.address, "an int")
        if not 0 <= self.address <= 0xFFFF - (self.width - 1):
            raise ParameterError("modbus.address", self.address, f"outside 0..{0xFFFF - (self.width - 1)}")
        if (self.encoding == "bool") != (self.table in ("coil", "discrete")):
            raise ParameterError("modbus.encoding", self.encoding, f"does not fit table {self.table}")
        for name in ("scale", "offset"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ParameterTypeError(f"modbus.{name}", v, "a number")
            if not math.isfinite(v):
                raise ParameterError(f"modbus.{name}", v, "must be finite")
        if self.scale == 0.0:
            raise ParameterError("modbus.scale", self.scale, "must be non-zero")

    @property
    def width(self) -> int:
        """Registers (or bits) occupied."""
        return 2 if self.encoding in ("float32", "uint32") else 1

    def encode(self, value: float, *, saturate: bool = False) -> tuple[int, ...]:
        """Raw 16-bit register words (or 0/1 bits) for ``value`` in the signal's SI unit.

        Strict (default): raises ValueError when the value cannot be represented (NaN or out of range
        for an integer encoding, beyond the float32 range). ``saturate=True`` is for publishing
        measurements: integers are clamped to their range and NaN becomes :data:`INT16_NO_VALUE`
        (int16) or 0; float32 overflows to +-inf.
        """
        v = float(value)
        if self.encoding == "float32":
            try:
                packed = struct.pack(">f", v)
            except OverflowError:
                if not saturate:
                    raise ValueError(f"{value!r} is beyond the float32 range") from None
                packed = struct.pack(">f", math.copysign(math.inf, v))
            return struct.unpack(">HH", packed)
        lo, hi = _ENCODING_RANGES[self.encoding]
        raw_f = v if self.encoding == "bool" else (v - self.offset) * self.scale
        if not math.isfinite(raw_f):
            if not saturate:
                raise ValueError(f"{value!r} cannot be encoded as {self.encoding}")
            if math.isnan(raw_f):
                raw = INT16_NO_VALUE if self.encoding == "int16" else 0
            else:
                raw = hi if raw_f > 0 else lo
        else:
            raw = round(raw_f)
            if not lo <= raw <= hi or (self.encoding == "int16" and raw == INT16_NO_VALUE):
                if not saturate:
                    raise ValueError(f"{value!r} is out of range for {self.encoding} (raw {raw})")
                # -32768 is reserved for "no value", so saturation stops one short of it
                raw = min(max(raw, lo + (self.encoding == "int16")), hi)
        if self.encoding == "uint32":
            return (raw >> 16) & 0xFFFF, raw & 0xFFFF
        return (raw & 0xFFFF,)

    def decode(self, words: Sequence[int]) -> float:
        """Value in the signal's SI unit from the raw words (the inverse of :meth:`encode`).

        Raises ValueError on a wrong number of words or a word outside 0..65535.
        """
        if len(words) != self.width:
            raise ValueError(f"{self.encoding} needs {self.width} word(s), got {len(words)}")
        if any(not 0 <= w <= 0xFFFF for w in words):
            raise ValueError(f"register words must be 0..65535, got {list(words)}")
        if self.encoding == "float32":
            return struct.unpack(">f", struct.pack(">HH", *words))[0]
        if self.encoding == "bool":
            return float(bool(words[0]))
        if self.encoding == "uint32":
            raw = (words[0] << 16) | words[1]
        elif self.encoding == "int16":
            raw = words[0] - 0x10000 if words[0] & 0x8000 else words[0]
            if raw == INT16_NO_VALUE:
                return math.nan
        else:
            raw = words[0]
        return raw / self.scale + self.offset


Kind = Literal["measurement", "setting", "command", "sim_hook", "sim_truth"]
"""What a register carries: a measurement or status (read-only), a setting (written to the device),
a command (coil, reads back 0), a simulation hook (writable, simulation only) or the simulated plant's
hidden truth (read-only, simulation only)."""
Access = Literal["R", "RW", "W"]


@dataclass(frozen=True)
class RegisterEntry:
    """One row of a register map: a signal (or a scaled view of one) at a Modbus address.

    name: the register's name (the signal name, or ``<signal>_degC_x10`` style for a scaled view);
    signal: the signal whose value it carries (in the signal's SI unit once decoded);
    kind: what it carries and what a write does (see :data:`Kind`).
    """

    name: str
    signal: Signal
    binding: ModbusBinding
    kind: Kind
    description: str

    @property
    def access(self) -> Access:
        """R (input registers), RW (holding registers, simulation coils) or W (command coils, read back 0)."""
        if self.binding.table in ("input", "discrete"):
            return "R"
        return "W" if self.kind == "command" else "RW"

    @property
    def addresses(self) -> range:
        """Protocol addresses the entry occupies."""
        return range(self.binding.address, self.binding.address + self.binding.width)


def register_entry_of(sig: Signal, kind: Kind) -> RegisterEntry:
    """The register-map entry of a signal with a Modbus binding."""
    if sig.modbus is None:
        raise ParameterError(f"{sig.name}.modbus", None, "the signal has no Modbus binding")
    return RegisterEntry(sig.name, sig, sig.modbus, kind, sig.description)


_TABLE_ORDER = {"coil": 0, "discrete": 1, "input": 2, "holding": 3}


def build_register_map(entries: Iterable[RegisterEntry]) -> tuple[RegisterEntry, ...]:
    """The entries ordered by table (coils, discrete inputs, input, holding registers) and address;
    ParameterError if a name is used twice or two entries overlap."""
    ordered = sorted(entries, key=lambda e: (_TABLE_ORDER[e.binding.table], e.binding.address))
    taken: dict[tuple[str, int], str] = {}
    names: set[str] = set()
    for e in ordered:
        if e.name in names:
            raise ParameterError("register.name", e.name, "used twice")
        names.add(e.name)
        for a in e.addresses:
            other = taken.setdefault((e.binding.table, a), e.name)
            if other != e.name:
                raise ParameterError(f"{e.name}.modbus.address", a, f"overlaps {other} in table {e.binding.table}")
    return tuple(ordered)
