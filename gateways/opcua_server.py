"""The twin's OPC UA server (asyncua): what SCADA sees of each reactor.

The address space is generated from twin_core.signals.runtime.PUBLISHED, never hand-written::

    Objects/<plant>/<reactor>/
        Measurements/ Estimates/ Forecasts/ Recipe/ Alarms/ Status/ Twin/   one variable per signal
        StartBatch(Recipe) Hold() Resume() Abort() AcknowledgeAlarms() ResetTwin()
        EnterLabResult(SampleTime [h], c_B [mol/L], c_C [mol/L])

Node ids are strings in the server's own namespace (:data:`NAMESPACE_URI`):
``<plant>.<reactor>.<Folder>.<signal>``, stable across restarts, so SCADA tag lists survive them.
Real signals are ``AnalogItemType`` with ``EURange`` and ``EngineeringUnits`` (UNECE codes,
:data:`UNECE_UNITS`), Integer and Boolean signals plain variables of their data type; every value is
in the signal's operator unit, with the PLC's time as source timestamp and its quality as status code
(:data:`STATUS_OF_QUALITY`: a value whose quality is not GOOD is never published Good).

:meth:`TwinOpcUaServer.publish` writes DataValues straight into the address space (no client session,
no per-write checks) and queues the trended ones for the history, which a background task writes to
SQLite in one transaction per batch (:class:`TwinHistory`; a HistoryRead first flushes what is queued,
so it always sees every value published before it). Client writes to the writable nodes are
validated against the signal table before they reach :meth:`ReactorControl.write`
(:class:`_ValidatingAttributeService`). Events (:data:`EVENT_TYPE_NAMES`) are emitted by the
reactor object and by the Server object, and historized per reactor.

Security (gateways.security, docs/security.md): SignAndEncrypt endpoints (Basic256Sha256,
Aes256_Sha256_RsaPss, Aes128_Sha256_RsaOaep) with the server certificate generated on first start,
client certificates checked against the trust list, user-name logins; SecurityPolicy None and anonymous
(read-only) sessions only when the configuration turns them on. Roles are enforced per node (writes)
and per method (calls): a refusal answers BadUserAccessDenied. Every client write, method call, login
and refusal is appended to the audit trail (gateways.audit) with the user, role, certificate thumbprint,
node, old and new value, outcome and reason. The critical methods -- StartBatch, Abort, EnterLabResult
and SetTwinParameter (the only way to change a Twin-folder value) -- take a last argument ``Reason``
(String): the meaning of the electronic signature, stored with the record; without a non-blank one the
call is refused (BadUserAccessDenied) and that is audited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sqlite3
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import aiosqlite
from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeService
from asyncua.server.event_generator import EventGenerator
from asyncua.server.history_sql import HistorySQLite
from asyncua.ua.ua_binary import variant_to_binary

from gateways.audit import CRITICAL_METHODS, CRITICAL_WRITE_FOLDERS, value_text
from gateways.model import EventKind, ReactorControl, RequestRefused, Snapshot, TwinEvent
from gateways.security import ServerSecurity, SessionGuard, TwinServer, TwinUser, current_user
from gateways.users import MINIMUM_ROLE, action_for_method, action_for_write, permits
from twin_core.recipe import Recipe, recipe_from_mapping
from twin_core.signals.runtime import FOLDERS, PUBLISHED, PUBLISHED_BY_NAME, Published, Quality
from twin_core.signals.table import DISPLAY_UNITS

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840/batch-twin/"
NAMESPACE_URI = "urn:batch-reactor-twin:opcua"
"""The server's own namespace: every node it adds (plant, reactors, folders, signals, methods, event types)."""
PRODUCT_URI = "urn:batch-reactor-twin"

# -- engineering units ---------------------------------------------------------------------------------
UNECE_NAMESPACE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True)
class UneceUnit:
    """A unit of UN/CEFACT Recommendation 20 as OPC UA carries it (OPC 10000-8, EUInformation)."""

    common_code: str
    display_name: str
    description: str

    @property
    def unit_id(self) -> int:
        """EUInformation.UnitId: the common code's characters (at most 4), one byte each, big-endian."""
        return unece_unit_id(self.common_code)


def unece_unit_id(common_code: str) -> int:
    """The UnitId of a UNECE common code (OPC 10000-8 §5.6.3): ``CEL`` -> 0x43454C = 4408652."""
    if not 1 <= len(common_code) <= 4 or not common_code.isascii():
        raise ValueError(f"not a UNECE common code: {common_code!r}")
    unit_id = 0
    for ch in common_code:
        unit_id = (unit_id << 8) | ord(ch)
    return unit_id


UNECE_UNITS: dict[str, UneceUnit] = {
    # operator unit (signal table) -> UNECE code, with the display name and description of the OPC
    # Foundation's UNECE_to_OPCUA table (docs/opcua.md says where each was checked).
    "degC": UneceUnit("CEL", "°C", "degree Celsius"),
    "K": UneceUnit("KEL", "K", "kelvin"),
    "h": UneceUnit("HUR", "h", "hour"),
    "s": UneceUnit("SEC", "s", "second [unit of time]"),
    "%": UneceUnit("P1", "%", "percent"),
    "mol/L": UneceUnit("C38", "mol/l", "mole per litre"),
    "mol/m3": UneceUnit("C36", "mol/m³", "mole per cubic metre"),
    "1": UneceUnit("C62", "1", "one"),
}
"""EngineeringUnits of every operator unit a Real signal of PUBLISHED is served in."""


def eu_information(operator_unit: str) -> ua.EUInformation:
    """The EngineeringUnits property value for ``operator_unit`` (KeyError names a unit with no code)."""
    try:
        unit = UNECE_UNITS[operator_unit]
    except KeyError:
        raise KeyError(f"operator unit {operator_unit!r} has no UNECE code in UNECE_UNITS") from None
    return ua.EUInformation(NamespaceUri=UNECE_NAMESPACE_URI, UnitId=unit.unit_id,
                            DisplayName=ua.LocalizedText(unit.display_name),
                            Description=ua.LocalizedText(unit.description))


# -- quality and values --------------------------------------------------------------------------------
STATUS_OF_QUALITY: dict[Quality, int] = {
    Quality.GOOD: ua.StatusCodes.Good,
    Quality.UNCERTAIN_LAST_USABLE: ua.StatusCodes.UncertainLastUsableValue,
    Quality.BAD_COMMUNICATION: ua.StatusCodes.BadCommunicationError,
    Quality.BAD_WAITING: ua.StatusCodes.BadWaitingForInitialData,
}
"""OPC UA status code of each data quality."""

_UINT32_MAX = 2**32 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INTEGER_LIMITS = {ua.VariantType.UInt32: (0, _UINT32_MAX), ua.VariantType.Int32: (_INT32_MIN, _INT32_MAX),
                   ua.VariantType.Int64: (-(2**63), 2**63 - 1)}


def variant_type_of(pub: Published) -> ua.VariantType:
    """The OPC UA data type of a published signal: Double, Boolean, or the smallest of UInt32/Int32/Int64
    that holds the signal's range."""
    sig = pub.signal
    if sig.type == "Real":
        return ua.VariantType.Double
    if sig.type == "Boolean":
        return ua.VariantType.Boolean
    if sig.min >= 0 and sig.max <= _UINT32_MAX:
        return ua.VariantType.UInt32
    if sig.min >= _INT32_MIN and sig.max <= _INT32_MAX:
        return ua.VariantType.Int32
    return ua.VariantType.Int64


def _scale(pub: Published) -> tuple[float, float]:
    """(factor, offset) with operator value = factor * SI value + offset."""
    unit = pub.operator_unit
    if unit == pub.signal.unit:
        return 1.0, 0.0
    base, factor, offset = DISPLAY_UNITS[unit]
    if base != pub.signal.unit:
        raise ValueError(f"{pub.name}: operator unit {unit} does not apply to {pub.signal.unit}")
    return factor, offset


def to_operator_unit(pub: Published, si_value: float) -> float:
    """``si_value`` of ``pub`` in its operator unit."""
    factor, offset = _scale(pub)
    return factor * si_value + offset


def to_si(pub: Published, operator_value: float) -> float:
    """An operator-unit value of ``pub`` in SI units."""
    factor, offset = _scale(pub)
    return (operator_value - offset) / factor


def _tidy(x: float) -> float:
    """x rounded to 12 significant digits: an EURange reads 30 degC, not 29.999999999999977."""
    return float(f"{x:.12g}") if math.isfinite(x) else x


def eu_range(pub: Published) -> ua.Range:
    """The signal's min/max in its operator unit (ordered: a negative factor would swap them)."""
    lo, hi = sorted((to_operator_unit(pub, pub.signal.min), to_operator_unit(pub, pub.signal.max)))
    return ua.Range(Low=_tidy(lo), High=_tidy(hi))


# -- build information ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildInfo:
    """What the server reports in ServerStatus/BuildInfo."""

    product_version: str
    build_date: datetime
    build_number: str = "0"
    product_name: str = "Batch reactor hybrid twin"
    manufacturer: str = "batch-reactor-twin"

    def __post_init__(self) -> None:
        for name in ("product_version", "build_number", "product_name", "manufacturer"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"BuildInfo.{name}: expected str, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.build_date, datetime):
            raise TypeError(f"BuildInfo.build_date: expected datetime, got {type(self.build_date).__name__}")


@dataclass(frozen=True)
class TwinIdentity:
    """Which twin a reactor runs: the FMU's GUID and the learned correction's model version ("" if
    none: physics only). Shown as properties ``FmuGuid`` and ``CorrectionModelVersion`` of the
    reactor's Twin folder."""

    fmu_guid: str = ""
    correction_version: str = ""

    def __post_init__(self) -> None:
        for name in ("fmu_guid", "correction_version"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"TwinIdentity.{name}: expected str, got {type(getattr(self, name)).__name__}")


# -- events --------------------------------------------------------------------------------------------
BASE_EVENT_TYPE_NAME = "BatchTwinEventType"


def _camel(kind: EventKind) -> str:
    return "".join(part.capitalize() for part in kind.name.split("_"))


EVENT_TYPE_NAMES: dict[EventKind, str] = {k: f"{_camel(k)}EventType" for k in EventKind}
"""The OPC UA event type of each event kind (subtypes of BatchTwinEventType, itself a BaseEventType)."""

_EVENT_DESCRIPTIONS: dict[EventKind, str] = {
    EventKind.HEALTH_WARNING: "Model health warning: correction outside its domain, or the innovation test failing",
    EventKind.HEALTH_ALARM: "Model health alarm: persistent model mismatch or sensor fault",
    EventKind.IMPURITY_FORECAST_HIGH: "Forecast impurity at the optimal stop above specification",
    EventKind.OPTIMAL_STOP: "Optimal stop reached: the twin recommends stopping the batch",
    EventKind.LINK_LOST: "PLC link lost: PLC values Bad, the twin predicts open loop",
    EventKind.LINK_RESTORED: "PLC link restored",
    EventKind.PLC_RESTARTED: "The PLC restarted (batch id or plant time went back): the twin was reset",
    EventKind.PLC_ALARM: "A PLC alarm was raised",
    EventKind.BATCH_STARTED: "A batch started in the PLC",
    EventKind.BATCH_ENDED: "A batch ended",
}


# -- methods -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _MethodArg:
    name: str
    vtype: ua.VariantType
    description: str


_COMMANDS = {"Hold": ("hold", "Hold the batch (PLC command)"),
             "Resume": ("resume", "Resume a held batch (PLC command)"),
             "Abort": ("abort", "Abort the batch: full cooling (PLC command)"),
             "AcknowledgeAlarms": ("ack_alarms", "Acknowledge the latched PLC alarms (PLC command)")}
_RESULT_ARG = _MethodArg("Result", ua.VariantType.String,
                         "'done', or why the request was refused (also when the status code is Bad)")
_LAB_SIGNALS = ("lab_sample_time", "lab_c_B", "lab_c_C")
"""The Measurements signals whose range and operator unit the EnterLabResult arguments share."""
_LAB_ARGS = tuple(
    _MethodArg(arg, ua.VariantType.Double, f"{what} [{PUBLISHED_BY_NAME[signal].operator_unit}]")
    for arg, signal, what in (("SampleTime", "lab_sample_time", "Batch time at which the sample was drawn"),
                              ("c_B", "lab_c_B", "Lab result for product B"),
                              ("c_C", "lab_c_C", "Lab result for impurity C")))


def _method_result(code: int, message: str, argument_results: Sequence[int] = ()) -> ua.CallMethodResult:
    return ua.CallMethodResult(StatusCode=ua.StatusCode(code),
                               InputArgumentResults=[ua.StatusCode(c) for c in argument_results],
                               OutputArguments=[ua.Variant(message, ua.VariantType.String)])


# -- the nodes of one reactor ---------------------------------------------------------------------------
@dataclass
class _SignalNode:
    reactor: str
    pub: Published
    nodeid: ua.NodeId
    vtype: ua.VariantType
    control: ReactorControl

    def variant(self, si_value: float) -> ua.Variant | None:
        """The value as served (operator unit, data type); None if the data type cannot hold it."""
        if self.vtype is ua.VariantType.Double:
            return ua.Variant(to_operator_unit(self.pub, si_value), self.vtype)
        if self.vtype is ua.VariantType.Boolean:
            return ua.Variant(bool(si_value), self.vtype)
        n = int(round(si_value))
        lo, hi = _INTEGER_LIMITS[self.vtype]
        return ua.Variant(n, self.vtype) if lo <= n <= hi else None


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} {name!r}: must start with a letter and hold only letters, digits, _ and -")
    return name


# -- history -------------------------------------------------------------------------------------------
def _naive_utc(t: datetime | None) -> datetime | None:
    """t as naive UTC (naive input is taken as UTC already, as asyncua encodes it)."""
    if t is None or t.tzinfo is None:
        return t
    return t.astimezone(UTC).replace(tzinfo=None)


class TwinHistory(HistorySQLite):
    """asyncua's SQLite history (same tables, same HistoryRead) with three changes: WAL and one
    transaction per batch of values (``queue`` + a background writer) instead of a commit per value;
    a HistoryRead flushes what is queued first; table names that accept string node ids."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(str(path))
        self._pending: list[tuple[ua.NodeId, ua.DataValue]] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None

    async def init(self) -> None:
        await super().init()
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        self._writer = asyncio.create_task(self._write_loop(), name="opcua-history-writer")

    def _get_table_name(self, node_id: ua.NodeId) -> str:
        # asyncua names the table after repr(identifier): quotes for a string id, which its own
        # SQL-injection check then refuses. Our string ids hold only letters, digits, '_', '-', '.'.
        return f"{node_id.NamespaceIndex}_{node_id.Identifier}"

    def queue(self, node_id: ua.NodeId, datavalue: ua.DataValue) -> None:
        """Store ``datavalue`` of ``node_id`` soon (the writer task), and before any HistoryRead."""
        self._pending.append((node_id, datavalue))
        self._wake.set()

    async def flush(self) -> None:
        """Write every queued value in one transaction."""
        async with self._lock:
            rows, self._pending = self._pending, []
            if not rows:
                return
            try:
                for node_id, dv in rows:
                    assert dv.Value is not None and dv.StatusCode is not None  # built by publish()
                    await self._db.execute(
                        f'INSERT INTO "{self._get_table_name(node_id)}" VALUES (NULL, ?, ?, ?, ?, ?, ?)',
                        (_naive_utc(dv.ServerTimestamp), _naive_utc(dv.SourceTimestamp), dv.StatusCode.value,
                         str(dv.Value.Value), dv.Value.VariantType.name,
                         sqlite3.Binary(variant_to_binary(dv.Value))))
                await self._db.commit()
            except aiosqlite.Error as exc:  # the history must not stop the server publishing
                log.error("history: %d values not stored: %s", len(rows), exc)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def save_event(self, event: Any) -> None:
        # asyncua's own writes the time as a string with its UTC offset, which sqlite3's TIMESTAMP
        # converter cannot read back; here it is naive UTC, like the data values' timestamps.
        table = self._get_table_name(event.SourceNode)
        columns, placeholders, blobs = self._format_event(event)
        async with self._lock:
            try:
                await self._db.execute(
                    f'INSERT INTO "{table}" ("_Id", "_Timestamp", "_EventTypeName", {columns}) '
                    f"VALUES (NULL, ?, ?, {placeholders})",
                    (_naive_utc(event.Time), str(event.EventType), *blobs))
                await self._db.commit()
            except aiosqlite.Error as exc:
                log.error("history: event %s not stored: %s", event.Message, exc)

    def _format_event(self, event: Any) -> tuple[str, str, tuple[Any, ...]]:
        # asyncua's version makes a Variant of every property, and a None LocalizedText (BaseEventType's
        # optional ConditionClassName, unset on our events) cannot be one: leave unset properties NULL.
        names = sorted(k for k, v in vars(event).items() if k in event.data_types and v is not None)
        blobs = tuple(sqlite3.Binary(variant_to_binary(ua.Variant(getattr(event, k), event.data_types[k])))
                      for k in names)
        return self._list_to_sql_str(names), self._list_to_sql_str(["?"] * len(names), False), blobs

    @staticmethod
    def _get_bounds(start: datetime | None, end: datetime | None, nb_values: int) -> tuple[str, str, str, int]:
        # as asyncua's, in naive UTC: the form the timestamps are stored in (ISO strings compare as times)
        order = "ASC"
        epoch = ua.get_win_epoch()
        if start is None or start == epoch:
            order, start = "DESC", epoch
        if end is None or end == epoch:
            end = datetime.now(UTC) + timedelta(days=1)
        lo, hi = _naive_utc(start), _naive_utc(end)
        assert lo is not None and hi is not None
        if not lo < hi:
            order, lo, hi = "DESC", hi, lo
        return lo.isoformat(" "), hi.isoformat(" "), order, nb_values or -1

    async def read_node_history(self, node_id: ua.NodeId, start: datetime | None, end: datetime | None,
                                nb_values: int) -> tuple[list[ua.DataValue], datetime | None]:
        await self.flush()
        return await super().read_node_history(node_id, start, end, nb_values)

    async def read_event_history(self, source_id: ua.NodeId, start: datetime | None, end: datetime | None,
                                 nb_values: int, evfilter: Any) -> tuple[list[Any], Any]:
        await self.flush()
        return await super().read_event_history(source_id, start, end, nb_values, evfilter)

    async def stop(self) -> None:
        """Write what is queued and close the database (again: nothing to do)."""
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        if self._db is not None:
            await self.flush()
            await super().stop()
            self._db = None  # type: ignore[assignment]


# -- client writes -------------------------------------------------------------------------------------
_ADMIN = User(role=UserRole.Admin)  # asyncua's default for its own internal session


class _ValidatingAttributeService(AttributeService):
    """The Write service with the twin's checks in front: a write of the Value of one of our signal
    nodes goes to ``handler`` (which checks the session's role, validates the value, forwards it, audits
    it and answers its status code); every other write takes asyncua's own path, and a client's is
    audited by ``audit_other``."""

    def __init__(self, aspace: Any, targets: Mapping[ua.NodeId, _SignalNode],
                 handler: Callable[[_SignalNode, ua.WriteValue, User], Awaitable[ua.StatusCode]],
                 audit_other: Callable[[TwinUser, ua.WriteValue, ua.StatusCode], Awaitable[None]]) -> None:
        super().__init__(aspace)
        self._targets = targets
        self._handler = handler
        self._audit_other = audit_other

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results: list[ua.StatusCode | None] = []
        others: list[int] = []
        for i, wv in enumerate(params.NodesToWrite):
            target = self._targets.get(wv.NodeId)
            if target is not None and wv.AttributeId == ua.AttributeIds.Value:
                results.append(await self._handler(target, wv, user))
            else:
                results.append(None)
                others.append(i)
        if others:
            rest = await super().write(ua.WriteParameters(NodesToWrite=[params.NodesToWrite[i] for i in others]),
                                       user=user)
            for i, status in zip(others, rest):
                results[i] = status
                if isinstance(user, TwinUser):
                    await self._audit_other(user, params.NodesToWrite[i], status)
        return [r if r is not None else ua.StatusCode(ua.StatusCodes.BadInternalError) for r in results]


# -- the server ----------------------------------------------------------------------------------------
class TwinOpcUaServer:
    """The OPC UA server of the twin (implements gateways.model.Publisher).

    ``endpoint``: ``opc.tcp://host:port/path`` to bind (port 0: any free port, see :attr:`endpoint_url`);
    ``plant``: the name of the plant object under Objects; ``reactors``: each reactor's name and the
    runtime's control of it; ``history_db``: the SQLite file of the history (None: in memory, lost at
    stop); ``build_info``: ServerStatus/BuildInfo; ``twins``: each reactor's FMU GUID and correction
    version; ``security``: endpoints, certificates, users and the audit trail (gateways.security; required:
    there is no insecure default). The constructor does no I/O: ``await start()`` / ``await stop()``, or
    ``async with``.
    """

    def __init__(self, endpoint: str, plant: str, reactors: Mapping[str, ReactorControl], *,
                 security: ServerSecurity, history_db: Path | None = None, build_info: BuildInfo | None = None,
                 twins: Mapping[str, TwinIdentity] | None = None) -> None:
        if not isinstance(security, ServerSecurity):
            raise TypeError(f"security: expected ServerSecurity, got {type(security).__name__}")
        url = urlparse(endpoint)
        if url.scheme != "opc.tcp" or not url.hostname or url.port is None:
            raise ValueError(f"endpoint {endpoint!r}: expected opc.tcp://host:port/path")
        if not reactors:
            raise ValueError("no reactors to serve")
        self._endpoint = endpoint
        self._plant = _check_name("plant", plant)
        self._controls = {_check_name("reactor", name): control for name, control in reactors.items()}
        unknown = set(twins or {}) - set(self._controls)
        if unknown:
            raise ValueError(f"twins given for unknown reactors: {sorted(unknown)}")
        self._twins = {name: (twins or {}).get(name, TwinIdentity()) for name in self._controls}
        self._history_db = history_db
        self._security = security
        self._guard: SessionGuard | None = None
        self._build_info = build_info  # None: the installed package's version, read at start
        for pub in PUBLISHED:  # fail here, not mid-start, on a unit without a code or a bad scale
            _scale(pub)
            if pub.signal.type == "Real":
                eu_information(pub.operator_unit)
        self._server: Server | None = None
        self._history: TwinHistory | None = None
        self._ns = 0
        self._nodes: dict[str, dict[str, _SignalNode]] = {}
        self._by_nodeid: dict[ua.NodeId, _SignalNode] = {}
        self._reactor_nodes: dict[str, ua.NodeId] = {}
        self._event_types: dict[EventKind, ua.NodeId] = {}
        self._generators: dict[tuple[str, EventKind], tuple[EventGenerator, EventGenerator]] = {}
        self._last_source_time: dict[str, datetime] = {}
        self._written: dict[str, dict[str, tuple[float, Quality]]] = {}
        self._unknown_logged: set[str] = set()
        self._bound_url: str | None = None
        self._event_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def namespace_index(self) -> int:
        """Index of :data:`NAMESPACE_URI` in the namespace array (after start)."""
        return self._ns

    @property
    def application_uri(self) -> str:
        """The server's application URI (also in its certificate): ``urn:batch-reactor-twin:<plant>``."""
        return f"{PRODUCT_URI}:{self._plant}"

    @property
    def certificate_path(self) -> Path:
        """The server's certificate (DER), generated on first start (a client may pin it)."""
        return self._security.pki.cert_path

    @property
    def endpoint_url(self) -> str:
        """The endpoint clients connect to: the given one, with the port actually bound after start."""
        return self._bound_url or self._endpoint

    def node_id(self, reactor: str, name: str) -> ua.NodeId:
        """The NodeId of signal ``name`` of ``reactor`` (after start)."""
        return self._nodes[reactor][name].nodeid

    def reactor_node_id(self, reactor: str) -> ua.NodeId:
        """The NodeId of ``reactor``'s object (after start)."""
        return self._reactor_nodes[reactor]

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the OPC UA server is already started")
        self._written.clear()  # a new address space: every value is written once again
        guard = SessionGuard(self._security, self.application_uri)
        server = TwinServer(guard)
        server.set_endpoint(self._endpoint)
        server.set_server_name(f"Batch reactor twin, plant {self._plant}")
        server.product_uri = PRODUCT_URI
        if self._build_info is None:
            self._build_info = BuildInfo(product_version=await asyncio.to_thread(_package_version),
                                         build_date=datetime.now(UTC))
        server.manufacturer_name = self._build_info.manufacturer
        server.allow_remote_admin(False)
        if self._history_db is not None:
            await asyncio.to_thread(self._history_db.parent.mkdir, parents=True, exist_ok=True)
        self._history = TwinHistory(self._history_db if self._history_db is not None else ":memory:")
        server.iserver.history_manager.set_storage(self._history)
        self._server = server
        self._guard = guard
        try:
            await guard.start()
            await server.init()
            await server.set_application_uri(self.application_uri)
            await server.configure()
            self._ns = await server.register_namespace(NAMESPACE_URI)
            bi = self._build_info
            await server.set_build_info(PRODUCT_URI, bi.manufacturer, bi.product_name, bi.product_version,
                                        bi.build_number, bi.build_date)
            await self._add_event_types()
            plant = await server.nodes.objects.add_object(ua.NodeId(self._plant, self._ns),
                                                          ua.QualifiedName(self._plant, self._ns))
            for reactor in self._controls:
                await self._add_reactor(plant, reactor)
            server.iserver.attribute_service = _ValidatingAttributeService(
                server.iserver.aspace, self._by_nodeid, self._client_write, self._audit_other_write)
            await server.start()
        except BaseException:
            await self._close_after_failed_start()
            raise
        self._bound_url = self._actual_url()
        await guard.record(user="server", role="local", action="config_change", target=f"{self._plant}.opcua",
                           outcome="success", new_value=self._security.summary(),
                           detail=f"OPC UA server started on {self._bound_url}")
        log.info("OPC UA server of plant %s (%s) listening on %s", self._plant, ", ".join(self._controls),
                 self._bound_url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        guard, self._guard = self._guard, None
        try:
            if server is not None:
                await server.stop()  # stops the history (flushes what is queued)
        finally:
            if guard is not None:
                await guard.stop()

    async def __aenter__(self) -> TwinOpcUaServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _close_after_failed_start(self) -> None:
        # asyncua stops its internal server (and so the history) itself only when binding failed
        self._server = None
        if self._history is not None:
            await self._history.stop()
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.stop()

    def _actual_url(self) -> str:
        assert self._server is not None and self._server.bserver is not None
        url = urlparse(self._endpoint)
        port = self._server.bserver.port
        if url.port == port:
            return self._endpoint
        actual = url._replace(netloc=f"{url.hostname}:{port}").geturl()
        for edp in self._server.iserver.endpoints:  # advertise the bound port, not 0
            edp.EndpointUrl = actual
            edp.Server.DiscoveryUrls = [actual]
        return actual

    def _require_started(self) -> Server:
        if self._server is None:
            raise RuntimeError("the OPC UA server is not started")
        return self._server

    # -- the address space -------------------------------------------------------------------------
    async def _add_event_types(self) -> None:
        server = self._require_started()
        base = server.get_node(ua.ObjectIds.BaseEventType)
        twin_base = await base.add_object_type(ua.NodeId(BASE_EVENT_TYPE_NAME, self._ns),
                                               ua.QualifiedName(BASE_EVENT_TYPE_NAME, self._ns))
        await self._describe(twin_base.nodeid, "Events of the batch reactor twin (one subtype per kind)")
        for kind, name in EVENT_TYPE_NAMES.items():
            node = await twin_base.add_object_type(ua.NodeId(name, self._ns), ua.QualifiedName(name, self._ns))
            await self._describe(node.nodeid, _EVENT_DESCRIPTIONS.get(kind, name))
            self._event_types[kind] = node.nodeid

    async def _describe(self, nodeid: ua.NodeId, text: str) -> None:
        server = self._require_started()
        await server.write_attribute_value(nodeid, ua.DataValue(ua.Variant(ua.LocalizedText(text))),
                                           ua.AttributeIds.Description)

    async def _add_reactor(self, plant: Node, reactor: str) -> None:
        server = self._require_started()
        ns, control = self._ns, self._controls[reactor]
        prefix = f"{self._plant}.{reactor}"
        obj = await plant.add_object(ua.NodeId(prefix, ns), ua.QualifiedName(reactor, ns))
        self._reactor_nodes[reactor] = obj.nodeid
        folders = {f: ua.NodeId(f"{prefix}.{f}", ns) for f in FOLDERS}
        items = [_folder_item(obj.nodeid, nid, ns, f) for f, nid in folders.items()]
        nodes: dict[str, _SignalNode] = {}
        for pub in PUBLISHED:
            nid = ua.NodeId(f"{prefix}.{pub.folder}.{pub.name}", ns)
            node = _SignalNode(reactor, pub, nid, variant_type_of(pub), control)
            nodes[pub.name] = node
            items.extend(_signal_items(folders[pub.folder], node, ns))
        twin = self._twins[reactor]
        items.append(_property_item(folders["Twin"], ua.NodeId(f"{prefix}.Twin.FmuGuid", ns), ns, "FmuGuid",
                                    ua.Variant(twin.fmu_guid, ua.VariantType.String), "GUID of the twin's FMU"))
        items.append(_property_item(folders["Twin"], ua.NodeId(f"{prefix}.Twin.CorrectionModelVersion", ns), ns,
                                    "CorrectionModelVersion",
                                    ua.Variant(twin.correction_version, ua.VariantType.String),
                                    "Model version of the learned rate correction ('' : physics only)"))
        for result in await server.iserver.isession.add_nodes(items):
            result.StatusCode.check()
        waiting = ua.DataValue(ua.Variant(None, ua.VariantType.Null),
                               StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData))
        for node in nodes.values():
            await server.write_attribute_value(node.nodeid, waiting)
        self._nodes[reactor] = nodes
        self._by_nodeid.update({n.nodeid: n for n in nodes.values()})
        await self._add_methods(obj, reactor)
        await self._add_event_sources(obj, reactor)
        if self._history is not None:
            for node in nodes.values():
                if node.pub.history:
                    await self._history.new_historized_node(node.nodeid, period=None)

    async def _add_methods(self, obj: Node, reactor: str) -> None:
        ns = self._ns
        prefix = f"{self._plant}.{reactor}"
        control = self._controls[reactor]

        async def add(name: str, description: str, args: Sequence[_MethodArg],
                      call: Callable[..., Awaitable[ua.CallMethodResult]]) -> None:
            if name in CRITICAL_METHODS:
                args = (*args, _REASON_ARG)
                description += ". Critical: the last argument Reason (the meaning of the signature) must not be blank"
            method = await obj.add_method(ua.NodeId(f"{prefix}.{name}", ns), ua.QualifiedName(name, ns), call,
                                          [_argument(a) for a in args], [_argument(_RESULT_ARG)])
            await self._describe(method.nodeid, description)

        async def start_batch(parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
            return await self._call(reactor, "StartBatch", args, (_RECIPE_ARG,), self._start_batch(control))

        await add("StartBatch", "Download a recipe (TOML text, the layout of twin_core/recipes) to the PLC and "
                  "start a batch", (_RECIPE_ARG,), start_batch)
        for name, (command, description) in _COMMANDS.items():
            await add(name, description, (), self._command_method(reactor, name, command))

        async def reset_twin(parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
            return await self._call(reactor, "ResetTwin", args, (), control.reset_twin)

        await add("ResetTwin", "Restart the twin from the PLC's current batch (its charge and recipe)", (),
                  reset_twin)

        async def enter_lab_result(parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
            return await self._enter_lab_result(reactor, args)

        units = [a.description.rsplit("[", 1)[1].rstrip("]") for a in _LAB_ARGS]
        await add("EnterLabResult", "A lab result from outside the PLC (LIMS); late results allowed. "
                  f"SampleTime in {units[0]} of batch time, c_B and c_C in {units[1]}", _LAB_ARGS, enter_lab_result)

        async def set_twin_parameter(parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
            return await self._set_twin_parameter(reactor, args)

        await add("SetTwinParameter", "Change a value of the Twin folder (" + ", ".join(_TWIN_PARAMETERS)
                  + "): Name, Value in the node's unit (a Boolean as 0 or 1); direct writes of these nodes are "
                  "refused", _SET_TWIN_ARGS, set_twin_parameter)

    def _command_method(self, reactor: str, name: str, command: str) -> Callable[..., Awaitable[ua.CallMethodResult]]:
        control = self._controls[reactor]

        async def call(parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
            return await self._call(reactor, name, args, (), lambda: control.command(command))

        return call

    def _start_batch(self, control: ReactorControl) -> Callable[[str], Awaitable[None]]:
        async def run(text: str) -> None:
            await control.start_batch(self._parse_recipe(text))
        return run

    @staticmethod
    def _parse_recipe(text: str) -> Recipe:
        try:
            return recipe_from_mapping(tomllib.loads(text), source="StartBatch")
        except tomllib.TOMLDecodeError as exc:
            raise _BadArgument(f"recipe: not TOML: {exc}") from None
        except (ValueError, TypeError) as exc:  # ParameterError, ParameterTypeError: name the field
            raise _BadArgument(f"recipe: {exc}") from None

    # -- the audit trail -----------------------------------------------------------------------------
    async def _audit(self, user: TwinUser | None, action: str, target: str, outcome: str, *, old: object = None,
                     new: object = None, reason: str = "", detail: str = "") -> None:
        guard = self._guard
        if guard is None:
            return
        await guard.record(user=(user.name or "anonymous") if user is not None else "<internal>",
                           role=str(user.twin_role) if user is not None else "local",
                           cert_thumbprint=user.cert_thumbprint if user is not None else "", action=action,
                           target=target, outcome=outcome, old_value=_audit_text(old), new_value=_audit_text(new),
                           reason=reason, detail=detail)

    @staticmethod
    def _refusal_of_role(user: TwinUser, action: str, what: str) -> str:
        needed = MINIMUM_ROLE[action]  # type: ignore[index]
        who = "an anonymous session" if user.anonymous else f"role {user.twin_role}"
        return f"{who} may not {what} ({action} needs {needed} or above)"

    async def _call(self, reactor: str, name: str, args: Sequence[ua.Variant], spec: Sequence[_MethodArg],
                    action: Callable[..., Awaitable[Any]], refused: int = ua.StatusCodes.BadInvalidState,
                    target_of: Callable[[Sequence[Any]], str] | None = None, audit_action: str = "method"
                    ) -> ua.CallMethodResult:
        """Check the caller's role, ``args`` against ``spec`` (count and types; the critical methods'
        last argument Reason must not be blank), run ``action(*values)`` and translate; every call, refused
        or not, is audited. ``action`` may return (old value, new value) for the audit record."""
        user = current_user()
        critical = name in CRITICAL_METHODS
        full_spec = (*spec, _REASON_ARG) if critical else tuple(spec)
        target = f"{self._plant}.{reactor}.{name}"
        if target_of is not None:
            target = target_of([getattr(a, "Value", None) for a in args])
        asked = ", ".join(f"{s.name}={_arg_text(a)}" for s, a in zip(spec, args))  # the Reason has its own field

        async def done(code: int, message: str, outcome: str, argument_results: Sequence[int] = (), reason: str = "",
                       old: object = None, new: object = None) -> ua.CallMethodResult:
            await self._audit(user, audit_action, target, outcome, old=old, new=asked if new is None else new,
                              reason=reason, detail=f"{name}: {ua.StatusCode(code).name}: {message}")
            return _method_result(code, message, argument_results)

        if user is None:
            return await done(ua.StatusCodes.BadUserAccessDenied, f"{name}: not a client session", "refused")
        needed = action_for_method(name)
        if not permits(user.twin_role, needed):
            log.info("%s.%s refused for %s: %s", reactor, name, user.name, user.twin_role)
            return await done(ua.StatusCodes.BadUserAccessDenied,
                              self._refusal_of_role(user, needed, f"call {name}"), "refused")
        if len(args) < len(full_spec):
            return await done(ua.StatusCodes.BadArgumentsMissing,
                              f"{name}: {len(full_spec)} argument(s) expected ({', '.join(a.name for a in full_spec)}), "
                              f"{len(args)} given", "refused")
        if len(args) > len(full_spec):
            return await done(ua.StatusCodes.BadTooManyArguments,
                              f"{name}: {len(full_spec)} argument(s) expected, {len(args)} given", "refused")
        mismatched = [i for i, (a, s) in enumerate(zip(args, full_spec)) if not _is_scalar_of(a, s.vtype)]
        if mismatched:
            return await done(
                ua.StatusCodes.BadInvalidArgument,
                f"{name}: " + "; ".join(f"{full_spec[i].name} must be a {full_spec[i].vtype.name}" for i in mismatched),
                "refused", [ua.StatusCodes.BadTypeMismatch if i in mismatched else ua.StatusCodes.Good
                            for i in range(len(full_spec))])
        values = [a.Value for a in args]
        reason = ""
        if critical:
            reason = values.pop().strip()
            if not reason:
                return await done(ua.StatusCodes.BadUserAccessDenied,
                                  f"{name} is a critical action: a non-blank Reason (the meaning of the signature) "
                                  "is required", "refused")
        try:
            changed = await action(*values)
        except _BadArgument as exc:
            log.info("%s.%s refused: %s", reactor, name, exc.reason)
            return await done(ua.StatusCodes.BadInvalidArgument, exc.reason, "refused", exc.argument_results,
                              reason=reason)
        except _WriteRefused as exc:
            return await done(exc.code, exc.reason, "refused", reason=reason, old=exc.old)
        except RequestRefused as exc:
            log.info("%s.%s refused: %s", reactor, name, exc.reason)
            return await done(refused, exc.reason, "failure", reason=reason)
        except OSError as exc:  # the runtime could not reach the PLC
            log.warning("%s.%s failed: %s", reactor, name, exc)
            return await done(ua.StatusCodes.BadCommunicationError, str(exc), "failure", reason=reason)
        log.info("%s.%s done by %s", reactor, name, user.name)
        old, new = changed if isinstance(changed, tuple) else (None, None)
        return await done(ua.StatusCodes.Good, "done", "success", reason=reason, old=old, new=new)

    async def _enter_lab_result(self, reactor: str, args: Sequence[ua.Variant]) -> ua.CallMethodResult:
        control = self._controls[reactor]
        pubs = [PUBLISHED_BY_NAME[n] for n in _LAB_SIGNALS]

        async def run(*values: float) -> None:
            si = [to_si(p, v) for p, v in zip(pubs, values)]
            bad = [i for i, (p, x) in enumerate(zip(pubs, si)) if not _within(p, x)]
            if bad:
                raise _BadArgument(
                    "; ".join(f"{_LAB_ARGS[i].name}={values[i]!r} outside "
                              f"[{eu_range(pubs[i]).Low}, {eu_range(pubs[i]).High}] {pubs[i].operator_unit}"
                              for i in bad),
                    [ua.StatusCodes.BadOutOfRange if i in bad else ua.StatusCodes.Good for i in range(3)] + [
                        ua.StatusCodes.Good])
            t, c_B, c_C = (_clamp(p, x) for p, x in zip(pubs, si))
            await control.enter_lab_result(t, c_B, c_C)

        return await self._call(reactor, "EnterLabResult", args, _LAB_ARGS, run,
                                refused=ua.StatusCodes.BadInvalidArgument)

    async def _set_twin_parameter(self, reactor: str, args: Sequence[ua.Variant]) -> ua.CallMethodResult:
        nodes = self._nodes[reactor]

        def target_of(values: Sequence[Any]) -> str:
            name = values[0] if values else None
            return (f"{self._plant}.{reactor}.Twin.{name}" if isinstance(name, str) and name in _TWIN_PARAMETERS
                    else f"{self._plant}.{reactor}.SetTwinParameter")

        async def run(name: str, value: float) -> tuple[object, object]:
            if name not in _TWIN_PARAMETERS:
                raise _BadArgument(f"Name {name!r}: not a Twin parameter (one of {', '.join(_TWIN_PARAMETERS)})",
                                   [ua.StatusCodes.BadInvalidArgument, ua.StatusCodes.Good, ua.StatusCodes.Good])
            node = nodes[name]
            if node.vtype is ua.VariantType.Boolean:
                if value not in (0.0, 1.0):
                    raise _BadArgument(f"{name} is a Boolean: Value must be 0 or 1, not {value!r}",
                                       [ua.StatusCodes.Good, ua.StatusCodes.BadOutOfRange, ua.StatusCodes.Good])
                variant = ua.Variant(bool(value), ua.VariantType.Boolean)
            else:
                variant = ua.Variant(float(value), node.vtype)
            old = self._current_value(node)
            code, why = await self._apply_write(node, variant)
            if code in _RUNTIME_FAILURES:
                raise RequestRefused(name, why)
            if code != ua.StatusCodes.Good:
                raise _WriteRefused(code, f"{name} = {value!r}: {ua.StatusCode(code).name}: {why}", old)
            return old, variant.Value

        return await self._call(reactor, "SetTwinParameter", args, _SET_TWIN_ARGS, run,
                                refused=ua.StatusCodes.BadInvalidState, target_of=target_of, audit_action="write")

    async def _add_event_sources(self, obj: Node, reactor: str) -> None:
        server = self._require_started()
        for kind, etype in self._event_types.items():
            from_reactor = await server.get_event_generator(etype, obj)
            from_server = await server.get_event_generator(etype, ua.ObjectIds.Server)
            from_server.event.SourceNode = obj.nodeid  # both say which reactor: SCADA subscribes to either
            from_server.event.SourceName = reactor
            self._generators[(reactor, kind)] = (from_reactor, from_server)
        await obj.set_event_notifier([ua.EventNotifier.SubscribeToEvents, ua.EventNotifier.HistoryRead])
        if self._history is not None:
            types = [server.get_node(t) for t in self._event_types.values()]
            await self._history.new_historized_event(obj.nodeid, types, period=None)

    # -- Publisher ---------------------------------------------------------------------------------
    async def publish(self, reactor: str, snapshot: Snapshot) -> None:
        """Write ``snapshot`` (SI values with quality and source time) into ``reactor``'s nodes."""
        server = self._require_started()
        try:
            nodes = self._nodes[reactor]
        except KeyError:
            raise KeyError(f"publish: unknown reactor {reactor!r}") from None
        now = datetime.now(UTC)
        aspace = server.iserver.aspace
        history = self._history
        latest = self._last_source_time.get(reactor)
        written = self._written.setdefault(reactor, {})
        for name, value in snapshot.items():
            node = nodes.get(name)
            if node is None:
                if name not in self._unknown_logged:
                    self._unknown_logged.add(name)
                    log.warning("publish: %s is not a published signal (ignored)", name)
                continue
            # An unchanged value with an unchanged quality is not written again (a deadband of zero):
            # most of the ~100 values of a scan do not change, and writing them was half the runtime's
            # time. Its source timestamp stays the time it last changed; a change of status is a change.
            prev = written.get(name)
            if prev is not None and prev[1] is value.quality and (
                    prev[0] == value.value or (prev[0] != prev[0] and value.value != value.value)):
                continue
            written[name] = (value.value, value.quality)
            dv = _datavalue(node, value.value, value.quality, value.source_time, now)
            await aspace.write_attribute_value(node.nodeid, ua.AttributeIds.Value, dv)
            if node.pub.history and history is not None:
                history.queue(node.nodeid, dv)
            if latest is None or value.source_time > latest:
                latest = value.source_time
        if latest is not None:
            self._last_source_time[reactor] = latest

    async def event(self, reactor: str, event: TwinEvent) -> None:
        """Emit ``event`` from ``reactor``'s object and from the Server object; historize it."""
        self._require_started()
        from_reactor, from_server = self._generators[(reactor, event.kind)]
        async with self._event_lock:  # a generator's event object is filled, then sent: one at a time
            for gen in (from_reactor, from_server):
                gen.event.Severity = event.level
                await gen.trigger(time_attr=event.time, message=event.message)
                if gen is from_reactor and self._history is not None:
                    await self._history.save_event(gen.event)

    async def set_twin_identity(self, reactor: str, twin: TwinIdentity) -> None:
        """Show a new FMU GUID / correction version for ``reactor`` (e.g. after the twin was rebuilt)."""
        server = self._require_started()
        prefix = f"{self._plant}.{reactor}.Twin"
        self._twins[reactor] = twin
        for name, text in (("FmuGuid", twin.fmu_guid), ("CorrectionModelVersion", twin.correction_version)):
            await server.write_attribute_value(ua.NodeId(f"{prefix}.{name}", self._ns),
                                               ua.DataValue(ua.Variant(text, ua.VariantType.String)))

    # -- client writes -----------------------------------------------------------------------------
    def _current_value(self, node: _SignalNode) -> object:
        """The node's value as served now (None when it has none)."""
        server = self._require_started()
        dv = server.iserver.aspace.read_attribute_value(node.nodeid, ua.AttributeIds.Value)
        return dv.Value.Value if dv is not None and dv.Value is not None else None

    async def _client_write(self, node: _SignalNode, wv: ua.WriteValue, user: User) -> ua.StatusCode:
        """A client's write of a signal's value: the session's role checked, the value checked against the
        signal table, converted to SI and forwarded to the runtime; the node changes only when the runtime
        accepted it. Twin-folder values are changed only by SetTwinParameter (it carries a reason). Every
        client write is audited."""
        if not isinstance(user, TwinUser):  # the server's own internal session
            return ua.StatusCode((await self._apply_write(node, wv.Value.Value if wv.Value else None, wv))[0])
        pub = node.pub
        target = f"{self._plant}.{node.reactor}.{pub.folder}.{pub.name}"
        asked = wv.Value.Value.Value if wv.Value is not None and wv.Value.Value is not None else None
        old = self._current_value(node)

        async def refuse(code: int, detail: str) -> ua.StatusCode:
            log.info("write %s = %r by %s refused: %s", target, asked, user.name, detail)
            await self._audit(user, "write", target, "refused", old=old, new=asked,
                              detail=f"{ua.StatusCode(code).name}: {detail}")
            return ua.StatusCode(code)

        if not pub.writable:
            return await refuse(ua.StatusCodes.BadNotWritable, f"{pub.folder} values are not writable")
        action = action_for_write(pub.folder)
        if not permits(user.twin_role, action):
            return await refuse(ua.StatusCodes.BadUserAccessDenied,
                                self._refusal_of_role(user, action, f"write {pub.folder} values"))
        if pub.folder in CRITICAL_WRITE_FOLDERS:
            return await refuse(ua.StatusCodes.BadUserAccessDenied,
                                f"{pub.folder} values are changed with {self._plant}.{node.reactor}.SetTwinParameter"
                                "(Name, Value, Reason): a direct write carries no reason")
        code, why = await self._apply_write(node, wv.Value.Value if wv.Value else None, wv)
        if code != ua.StatusCodes.Good:
            outcome = "failure" if code in _RUNTIME_FAILURES else "refused"
            await self._audit(user, "write", target, outcome, old=old, new=asked,
                              detail=f"{ua.StatusCode(code).name}: {why}")
            return ua.StatusCode(code)
        await self._audit(user, "write", target, "success", old=old, new=asked)
        return ua.StatusCode(code)

    async def _audit_other_write(self, user: TwinUser, wv: ua.WriteValue, status: ua.StatusCode) -> None:
        await self._audit(user, "write", f"{wv.NodeId.to_string()} attribute {wv.AttributeId}",
                          "success" if status.is_good() else "refused",
                          new=_arg_text(wv.Value.Value) if wv.Value is not None else None, detail=status.name)

    async def _apply_write(self, node: _SignalNode, variant: ua.Variant | None,
                           wv: ua.WriteValue | None = None) -> tuple[int, str]:
        """Validate ``variant`` for ``node``, forward it to the runtime in SI units and show it; the status
        code (Good, or why not) and the refusal's text."""
        if wv is None:
            wv = ua.WriteValue(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(variant))
        code = _check_write(node, wv)
        if code != ua.StatusCodes.Good:
            log.info("write %s.%s refused: %s", node.reactor, node.pub.name, ua.StatusCode(code).name)
            return code, "the value does not fit the signal (type, range)"
        assert variant is not None
        si = _clamp(node.pub, to_si(node.pub, float(variant.Value)))
        try:
            await node.control.write(node.pub.name, si)
        except RequestRefused as exc:
            log.warning("write %s.%s = %r refused by the runtime: %s", node.reactor, node.pub.name,
                        variant.Value, exc.reason)
            return ua.StatusCodes.BadInvalidState, exc.reason
        except OSError as exc:
            log.warning("write %s.%s = %r failed: %s", node.reactor, node.pub.name, variant.Value, exc)
            return ua.StatusCodes.BadCommunicationError, str(exc)
        now = datetime.now(UTC)
        source_time = self._last_source_time.get(node.reactor, now)
        server = self._require_started()
        await server.iserver.aspace.write_attribute_value(
            node.nodeid, ua.AttributeIds.Value,
            ua.DataValue(ua.Variant(variant.Value, node.vtype), StatusCode=ua.StatusCode(ua.StatusCodes.Good),
                         SourceTimestamp=source_time, ServerTimestamp=now))
        log.info("write %s.%s = %r (%r SI) accepted", node.reactor, node.pub.name, variant.Value, si)
        return ua.StatusCodes.Good, ""


_RUNTIME_FAILURES = (ua.StatusCodes.BadInvalidState, ua.StatusCodes.BadCommunicationError)
"""Write results that mean the request was valid and allowed but the runtime or the PLC refused it."""


class _WriteRefused(Exception):
    """SetTwinParameter's write was refused (code: the write's status code)."""

    def __init__(self, code: int, reason: str, old: object) -> None:
        self.code, self.reason, self.old = code, reason, old
        super().__init__(reason)


def _audit_text(value: object) -> str:
    """A value as the audit trail stores it (scalars as gateways.audit.value_text; anything else repr)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value_text(value)
    return repr(value)


def _arg_text(v: object) -> str:
    value = v.Value if isinstance(v, ua.Variant) else v
    return _audit_text(value)


_REASON_ARG = _MethodArg("Reason", ua.VariantType.String,
                         "Why (the meaning of the electronic signature, stored in the audit trail); must not be blank")
_TWIN_PARAMETERS = tuple(p.name for p in PUBLISHED if p.folder == "Twin" and p.writable)
_SET_TWIN_ARGS = (_MethodArg("Name", ua.VariantType.String, "The Twin value: " + ", ".join(_TWIN_PARAMETERS)),
                  _MethodArg("Value", ua.VariantType.Double, "The new value in the node's unit (a Boolean: 0 or 1)"))


class _BadArgument(ValueError):
    """A method argument was refused by the server's own checks (becomes BadInvalidArgument)."""

    def __init__(self, reason: str, argument_results: Sequence[int] = ()) -> None:
        self.reason = reason
        self.argument_results = list(argument_results)
        super().__init__(reason)


_RECIPE_ARG = _MethodArg("Recipe", ua.VariantType.String,
                         "The recipe as TOML text: name, mode, end_time_s, and points [[t_s, T_K], ...] or "
                         "T_start_K with [[steps]] (holds and ramps), as in twin_core/recipes/*.toml")


def _argument(arg: _MethodArg) -> ua.Argument:
    return ua.Argument(Name=arg.name, DataType=ua.NodeId(arg.vtype.value), ValueRank=ua.ValueRank.Scalar,
                       ArrayDimensions=[], Description=ua.LocalizedText(arg.description))


def _is_scalar_of(variant: ua.Variant, vtype: ua.VariantType) -> bool:
    return (isinstance(variant, ua.Variant) and variant.VariantType == vtype and not variant.is_array
            and variant.Value is not None)


def _within(pub: Published, si_value: float) -> bool:
    """si_value is a finite number within the signal's range (allowing for the unit conversion's rounding)."""
    if not math.isfinite(si_value):
        return False
    lo, hi = pub.signal.min, pub.signal.max
    return lo - _tolerance(lo) <= si_value <= hi + _tolerance(hi)


def _clamp(pub: Published, si_value: float) -> float:
    """si_value moved onto the range's edge when only the unit conversion's rounding put it outside."""
    return min(max(si_value, pub.signal.min), pub.signal.max)


def _tolerance(bound: float) -> float:
    return 1e-9 * max(1.0, abs(bound)) if math.isfinite(bound) else 0.0


def _check_write(node: _SignalNode, wv: ua.WriteValue) -> int:
    """The status code of a client's write of ``node``'s value before it is forwarded (Good: go on)."""
    pub = node.pub
    if not pub.writable:
        return ua.StatusCodes.BadNotWritable
    if wv.IndexRange:
        return ua.StatusCodes.BadIndexRangeInvalid
    dv = wv.Value
    if dv is None or dv.Value is None:
        return ua.StatusCodes.BadTypeMismatch
    if dv.StatusCode is not None and not dv.StatusCode.is_good():
        return ua.StatusCodes.BadWriteNotSupported  # a client sets values, not their quality
    variant = dv.Value
    if not _is_scalar_of(variant, node.vtype):
        return ua.StatusCodes.BadTypeMismatch
    if node.vtype is ua.VariantType.Boolean:
        return ua.StatusCodes.Good if isinstance(variant.Value, bool) else ua.StatusCodes.BadTypeMismatch
    value = variant.Value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ua.StatusCodes.BadTypeMismatch
    if not _within(pub, to_si(pub, float(value))):
        return ua.StatusCodes.BadOutOfRange  # NaN and infinities included
    return ua.StatusCodes.Good


_NULL = ua.Variant(None, ua.VariantType.Null)
_STATUS = {code: ua.StatusCode(code) for code in (*STATUS_OF_QUALITY.values(), ua.StatusCodes.BadOutOfRange)}


def _datavalue(node: _SignalNode, si_value: float, quality: Quality, source_time: datetime,
               server_time: datetime) -> ua.DataValue:
    """The DataValue of one published value. A value that is not a finite number cannot be Good (nor
    Uncertain: there is no last usable value): it is published Bad_WaitingForInitialData; an integer its
    data type cannot hold, Bad_OutOfRange. A Bad value is null (OPC UA ignores the value of a Bad status)."""
    code = STATUS_OF_QUALITY[quality]
    variant: ua.Variant | None = _NULL
    if code == ua.StatusCodes.Good or code == ua.StatusCodes.UncertainLastUsableValue:
        if not (isinstance(si_value, int | float) and math.isfinite(si_value)):
            code = ua.StatusCodes.BadWaitingForInitialData
        else:
            variant = node.variant(si_value)
            if variant is None:
                code, variant = ua.StatusCodes.BadOutOfRange, _NULL
    return ua.DataValue(variant, StatusCode=_STATUS[code], SourceTimestamp=source_time, ServerTimestamp=server_time)


def _folder_item(parent: ua.NodeId, nodeid: ua.NodeId, ns: int, name: str) -> ua.AddNodesItem:
    attrs = ua.ObjectAttributes(DisplayName=ua.LocalizedText(name), Description=ua.LocalizedText(name),
                                EventNotifier=0)
    return ua.AddNodesItem(ParentNodeId=parent, ReferenceTypeId=ua.NodeId(ua.ObjectIds.Organizes),
                           RequestedNewNodeId=nodeid, BrowseName=ua.QualifiedName(name, ns),
                           NodeClass=ua.NodeClass.Object, NodeAttributes=attrs,
                           TypeDefinition=ua.NodeId(ua.ObjectIds.FolderType))


def _signal_items(folder: ua.NodeId, node: _SignalNode, ns: int) -> list[ua.AddNodesItem]:
    """The variable of one signal and, for an analog one, its EURange and EngineeringUnits."""
    pub = node.pub
    access = ua.AccessLevel.CurrentRead.mask
    if pub.writable:
        access |= ua.AccessLevel.CurrentWrite.mask
    if pub.history:
        access |= ua.AccessLevel.HistoryRead.mask
    analog = pub.signal.type == "Real"
    unit = f" [{pub.operator_unit}]" if analog and pub.operator_unit != "1" else ""
    attrs = ua.VariableAttributes(
        DisplayName=ua.LocalizedText(pub.name), Description=ua.LocalizedText(pub.signal.description + unit),
        Value=ua.Variant(None, ua.VariantType.Null), DataType=ua.NodeId(node.vtype.value),
        ValueRank=ua.ValueRank.Scalar, ArrayDimensions=[], AccessLevel=access, UserAccessLevel=access,
        MinimumSamplingInterval=0.0, Historizing=pub.history, WriteMask=0, UserWriteMask=0)
    typedef = ua.ObjectIds.AnalogItemType if analog else ua.ObjectIds.BaseDataVariableType
    items = [ua.AddNodesItem(ParentNodeId=folder, ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasComponent),
                             RequestedNewNodeId=node.nodeid, BrowseName=ua.QualifiedName(pub.name, ns),
                             NodeClass=ua.NodeClass.Variable, NodeAttributes=attrs,
                             TypeDefinition=ua.NodeId(typedef))]
    if analog:
        base = node.nodeid.Identifier
        items.append(_property_item(node.nodeid, ua.NodeId(f"{base}.EURange", ns), 0, "EURange",
                                    ua.Variant(eu_range(pub), ua.VariantType.ExtensionObject),
                                    "Range of the value in normal operation", ua.ObjectIds.Range))
        items.append(_property_item(node.nodeid, ua.NodeId(f"{base}.EngineeringUnits", ns), 0, "EngineeringUnits",
                                    ua.Variant(eu_information(pub.operator_unit), ua.VariantType.ExtensionObject),
                                    "Unit of the value (UNECE code)", ua.ObjectIds.EUInformation))
    return items


def _property_item(parent: ua.NodeId, nodeid: ua.NodeId, browse_ns: int, name: str, value: ua.Variant,
                   description: str, datatype: int | None = None) -> ua.AddNodesItem:
    dtype = ua.NodeId(datatype) if datatype is not None else ua.NodeId(value.VariantType.value)
    attrs = ua.VariableAttributes(
        DisplayName=ua.LocalizedText(name), Description=ua.LocalizedText(description), Value=value,
        DataType=dtype, ValueRank=ua.ValueRank.Scalar, ArrayDimensions=[],
        AccessLevel=ua.AccessLevel.CurrentRead.mask, UserAccessLevel=ua.AccessLevel.CurrentRead.mask,
        WriteMask=0, UserWriteMask=0)
    return ua.AddNodesItem(ParentNodeId=parent, ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasProperty),
                           RequestedNewNodeId=nodeid, BrowseName=ua.QualifiedName(name, browse_ns),
                           NodeClass=ua.NodeClass.Variable, NodeAttributes=attrs,
                           TypeDefinition=ua.NodeId(ua.ObjectIds.PropertyType))


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batch-reactor-twin")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = ["BuildInfo", "DEFAULT_ENDPOINT", "EVENT_TYPE_NAMES", "NAMESPACE_URI", "STATUS_OF_QUALITY",
           "TwinHistory", "TwinIdentity", "TwinOpcUaServer", "UNECE_UNITS", "UneceUnit", "eu_information",
           "eu_range", "to_operator_unit", "to_si", "unece_unit_id", "variant_type_of"]
