"""The OPC UA server against real clients on a loopback socket: the address space generated from
PUBLISHED (units, ranges, types, descriptions), values and status codes after publish(), methods and
writes reaching a recording ReactorControl (refusals as Bad statuses), events, HistoryRead, and a
client that is not asyncua (the `opcua` package) reading the same values. The clients log in as the
admin over SecurityPolicy None (turned on for this module); roles, certificates, reasons and the audit
trail are tested in tests/test_security.py.

One server per module (two reactors, SQLite history in a temporary folder); the runtime that really
feeds it is tested end to end elsewhere."""

from __future__ import annotations

import asyncio
import math
import tomllib
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import Client, ua
from conftest import free_port
from opcua_helpers import (
    ADMIN,
    USERS,
    DataChanges,
    RecordingControl,
    ServerThread,
    call_full,
    make_client,
    make_security,
    namespace_index,
    read_many,
    signal_node_id,
    write_status,
)

from gateways.model import EventKind, TwinEvent, Value
from gateways.opcua_server import (
    EVENT_TYPE_NAMES,
    NAMESPACE_URI,
    UNECE_UNITS,
    BuildInfo,
    TwinIdentity,
    TwinOpcUaServer,
    unece_unit_id,
)
from gateways.security import ServerSecurity
from twin_core.recipe import recipe_from_mapping
from twin_core.signals.runtime import PUBLISHED, PUBLISHED_BY_NAME, Quality
from twin_core.signals.table import DISPLAY_UNITS

PLANT = "PlantA"
REACTORS = ("R1", "R2")
BUILD = BuildInfo(product_version="9.8.7", build_date=datetime(2026, 11, 30, 12, 0, tzinfo=UTC), build_number="42")
TWINS = {"R1": TwinIdentity("{0f1e2d3c-aaaa-bbbb-cccc-000000000001}", "correction-2026.11.1")}

# UNECE Rec. 20 common codes and the OPC Foundation's UnitIds for them, written out here as the oracle
# (not computed by the code under test): CEL 4408652 is in the OPC Foundation's published table.
EXPECTED_UNITS = {
    "degC": (4408652, "°C"),  # CEL
    "K": (4932940, "K"),  # KEL
    "h": (4740434, "h"),  # HUR
    "s": (5457219, "s"),  # SEC
    "%": (20529, "%"),  # P1
    "mol/L": (4404024, "mol/l"),  # C38
    "mol/m3": (4404022, "mol/m³"),  # C36
    "1": (4404786, "1"),  # C62
}
EXPECTED_VTYPE = {"Real": ua.VariantType.Double, "Boolean": ua.VariantType.Boolean}


UNUSED_SECURITY = ServerSecurity("never-created")  # for constructors that must fail before any I/O


def test_security_is_required_and_checked() -> None:
    with pytest.raises(TypeError, match="security"):
        TwinOpcUaServer("opc.tcp://127.0.0.1:4840/", PLANT, {"R1": RecordingControl()})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="ServerSecurity"):
        TwinOpcUaServer("opc.tcp://127.0.0.1:4840/", PLANT, {"R1": RecordingControl()}, security="var")  # type: ignore[arg-type]


def operator(name: str, si: float) -> float:
    """The operator-unit value, computed from DISPLAY_UNITS directly (not through the server's code)."""
    pub = PUBLISHED_BY_NAME[name]
    unit = pub.operator_unit
    if unit == pub.signal.unit:
        return si
    _, factor, offset = DISPLAY_UNITS[unit]
    return factor * si + offset


@pytest.fixture(scope="module")
def controls() -> dict[str, RecordingControl]:
    return {r: RecordingControl() for r in REACTORS}


@pytest.fixture(scope="module")
def served(controls: dict[str, RecordingControl], tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("opcua")
    with ServerThread(f"opc.tcp://127.0.0.1:{free_port()}/batch-twin/", PLANT, controls, history_db=data / "history.sqlite",
                      build_info=BUILD, twins=TWINS, security=make_security(data)) as st:
        yield st


@pytest.fixture
def control(controls: dict[str, RecordingControl]) -> RecordingControl:
    c = controls["R1"]
    c.calls.clear()
    c.refuse.clear()
    return c


def client_run(served: ServerThread, scenario) -> object:
    """Run ``scenario(client, ns)`` with a connected asyncua client (logged in as the admin)."""

    async def main() -> object:
        async with await make_client(served.url) as client:
            return await scenario(client, await namespace_index(client))

    return asyncio.run(main())


def nid(ns: int, name: str, reactor: str = "R1") -> ua.NodeId:
    pub = PUBLISHED_BY_NAME[name]
    return signal_node_id(ns, PLANT, reactor, pub.folder, name)


# -- pure parts ----------------------------------------------------------------------------------------
def test_unece_codes_are_the_published_unit_ids() -> None:
    assert unece_unit_id("CEL") == 4408652
    assert {u: (UNECE_UNITS[u].unit_id, UNECE_UNITS[u].display_name) for u in EXPECTED_UNITS} == EXPECTED_UNITS
    served_units = {p.operator_unit for p in PUBLISHED if p.signal.type == "Real"}
    assert served_units <= set(EXPECTED_UNITS), served_units - set(EXPECTED_UNITS)


def test_uncertainties_and_tuning_sigmas_are_never_offset_converted() -> None:
    """A standard deviation is a difference: 0.5 K is 0.5 degC, never 0.5 - 273.15."""
    for pub in PUBLISHED:
        if pub.name.endswith("_std") or pub.name.startswith("sigma_"):
            unit = pub.operator_unit
            offset = DISPLAY_UNITS[unit][2] if unit in DISPLAY_UNITS and unit != pub.signal.unit else 0.0
            assert offset == 0.0, f"{pub.name} is served in {unit}, an offset unit"


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:4840/x", "opc.tcp://127.0.0.1/x", "opc.tcp://:4840/"])
def test_bad_endpoint_refused_without_io(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        TwinOpcUaServer(endpoint, PLANT, {"R1": RecordingControl()}, security=UNUSED_SECURITY)


def test_build_info_and_twin_identity_check_their_types() -> None:
    with pytest.raises(TypeError, match="BuildInfo.product_version"):
        BuildInfo(product_version=1, build_date=datetime.now(UTC))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BuildInfo.build_date"):
        BuildInfo(product_version="1", build_date="2026-12-01")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TwinIdentity.fmu_guid"):
        TwinIdentity(fmu_guid=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown reactors"):
        TwinOpcUaServer("opc.tcp://127.0.0.1:4840/", PLANT, {"R1": RecordingControl()}, twins={"R9": TwinIdentity()},
                        security=UNUSED_SECURITY)


@pytest.mark.parametrize("plant, reactor", [("Plant A", "R1"), ("P", "R.1"), ("P", "")])
def test_bad_names_refused(plant: str, reactor: str) -> None:
    with pytest.raises(ValueError):
        TwinOpcUaServer("opc.tcp://127.0.0.1:4840/", plant, {reactor: RecordingControl()}, security=UNUSED_SECURITY)


# -- the address space ---------------------------------------------------------------------------------
def test_every_published_signal_is_browsable_with_unit_range_type_and_description(served: ServerThread) -> None:
    async def scenario(client: Client, ns: int) -> None:
        for reactor in REACTORS:
            root = await client.nodes.objects.get_child([f"{ns}:{PLANT}", f"{ns}:{reactor}"])
            folders = {(await f.read_browse_name()).Name: f for f in await root.get_children(
                refs=ua.ObjectIds.Organizes)}
            assert set(folders) == {p.folder for p in PUBLISHED}
            browsed: dict[str, set[str]] = {}
            for name, folder in folders.items():
                browsed[name] = {(await c.read_browse_name()).Name for c in await folder.get_children(
                    refs=ua.ObjectIds.HasComponent)}
            for pub in PUBLISHED:
                assert pub.name in browsed[pub.folder], (reactor, pub.folder, pub.name)

            pubs = list(PUBLISHED)
            nodes = [signal_node_id(ns, PLANT, reactor, p.folder, p.name) for p in pubs]
            attrs = (ua.AttributeIds.DataType, ua.AttributeIds.Description, ua.AttributeIds.AccessLevel)
            got = await read_many(client, [(n, a) for n in nodes for a in attrs])
            for i, pub in enumerate(pubs):
                dtype, desc, access = (got[3 * i + k].Value.Value for k in range(3))
                expected = EXPECTED_VTYPE.get(pub.signal.type)
                if expected is None:  # Integer: an unsigned or signed integer type holding the range
                    assert dtype.Identifier in (ua.ObjectIds.UInt32, ua.ObjectIds.Int32, ua.ObjectIds.Int64), pub.name
                    if pub.signal.max > 2**31:
                        assert dtype.Identifier in (ua.ObjectIds.UInt32, ua.ObjectIds.Int64), pub.name
                else:
                    assert dtype == ua.NodeId(expected.value), pub.name
                assert desc.Text.startswith(pub.signal.description), pub.name
                assert bool(access & ua.AccessLevel.CurrentWrite.mask) == pub.writable, pub.name
                assert bool(access & ua.AccessLevel.HistoryRead.mask) == pub.history, pub.name

            for pub, node_id in zip(pubs, nodes):
                node = client.get_node(node_id)
                typedef = await node.read_type_definition()
                if pub.signal.type != "Real":
                    assert typedef == ua.NodeId(ua.ObjectIds.BaseDataVariableType), pub.name
                    continue
                assert typedef == ua.NodeId(ua.ObjectIds.AnalogItemType), pub.name
                eu = await (await node.get_child("0:EngineeringUnits")).read_value()
                rng = await (await node.get_child("0:EURange")).read_value()
                unit_id, display = EXPECTED_UNITS[pub.operator_unit]
                assert (eu.NamespaceUri, eu.UnitId, eu.DisplayName.Text) == (
                    "http://www.opcfoundation.org/UA/units/un/cefact", unit_id, display), pub.name
                lo, hi = sorted((operator(pub.name, pub.signal.min), operator(pub.name, pub.signal.max)))
                assert rng.Low == pytest.approx(lo, rel=1e-12, abs=1e-12), pub.name
                assert rng.High == pytest.approx(hi, rel=1e-12, abs=1e-12), pub.name

    client_run(served, scenario)


def test_some_ranges_and_units_as_an_operator_reads_them(served: ServerThread) -> None:
    async def scenario(client: Client, ns: int) -> dict[str, tuple[float, float, str]]:
        out = {}
        for name in ("T_reactor", "lab_c_B", "recipe_end_time", "yield_B", "pid_output"):
            node = client.get_node(nid(ns, name))
            rng = await (await node.get_child("0:EURange")).read_value()
            eu = await (await node.get_child("0:EngineeringUnits")).read_value()
            out[name] = (rng.Low, rng.High, eu.DisplayName.Text)
        return out

    got = client_run(served, scenario)
    assert got["T_reactor"] == (-23.15, 226.85, "°C")  # 250..500 K
    assert got["lab_c_B"] == (0.0, 20.0, "mol/l")  # 0..20000 mol/m3
    assert got["recipe_end_time"] == (pytest.approx(1 / 3600), 48.0, "h")  # 1..172800 s
    assert got["yield_B"] == (0.0, 100.0, "%")
    assert got["pid_output"] == (-100.0, 100.0, "%")


def test_build_info_namespace_and_twin_identity(served: ServerThread) -> None:
    async def scenario(client: Client, ns: int) -> None:
        namespaces = await client.get_namespace_array()
        assert namespaces[ns] == NAMESPACE_URI
        assert namespaces[1] == f"urn:batch-reactor-twin:{PLANT}"  # the application URI (OPC 10000-5 §6.3.1)
        assert {e.Server.ApplicationUri for e in await client.get_endpoints()} == {namespaces[1]}
        build = await client.get_node(ua.ObjectIds.Server_ServerStatus_BuildInfo).read_value()
        assert (build.ProductName, build.SoftwareVersion, build.BuildNumber) == (
            BUILD.product_name, "9.8.7", "42")
        assert build.BuildDate == BUILD.build_date
        state = await client.get_node(ua.ObjectIds.Server_ServerStatus_State).read_value()
        assert state == ua.ServerState.Running
        twin = client.get_node(ua.NodeId(f"{PLANT}.R1.Twin", ns))
        assert await (await twin.get_child(f"{ns}:FmuGuid")).read_value() == TWINS["R1"].fmu_guid
        assert await (await twin.get_child(f"{ns}:CorrectionModelVersion")).read_value() == "correction-2026.11.1"
        twin2 = client.get_node(ua.NodeId(f"{PLANT}.R2.Twin", ns))
        assert await (await twin2.get_child(f"{ns}:FmuGuid")).read_value() == ""

    client_run(served, scenario)


def test_alarm_states_are_variables(served: ServerThread) -> None:
    from twin_core.signals.plc import Alarm

    async def scenario(client: Client, ns: int) -> set[str]:
        alarms = client.get_node(ua.NodeId(f"{PLANT}.R1.Alarms", ns))
        return {(await c.read_browse_name()).Name for c in await alarms.get_children()}

    names = client_run(served, scenario)
    for a in Alarm:
        assert {f"alarm_{a.name.lower()}_active", f"alarm_{a.name.lower()}_unacked"} <= names


# -- values and status codes ---------------------------------------------------------------------------
def _sample_si(name: str) -> float:
    """A value inside the signal's range (mid-range, or the bound of a half-open one)."""
    sig = PUBLISHED_BY_NAME[name].signal
    if sig.type == "Boolean":
        return 1.0
    lo, hi = sig.min, sig.max
    mid = lo + (hi - lo) / 3 if math.isfinite(lo) and math.isfinite(hi) else 1.0
    return float(round(mid)) if sig.type == "Integer" else mid


def test_every_value_published_with_its_status_and_source_time(served: ServerThread) -> None:
    qualities = list(Quality)
    t0 = datetime(2026, 12, 1, 8, 0, 0, 250000, tzinfo=UTC)
    snapshot = {p.name: Value(_sample_si(p.name), qualities[i % 4], t0 + timedelta(seconds=i))
                for i, p in enumerate(PUBLISHED)}
    served.run(served.server.publish("R2", snapshot))
    expected_code = {Quality.GOOD: ua.StatusCodes.Good,
                     Quality.UNCERTAIN_LAST_USABLE: ua.StatusCodes.UncertainLastUsableValue,
                     Quality.BAD_COMMUNICATION: ua.StatusCodes.BadCommunicationError,
                     Quality.BAD_WAITING: ua.StatusCodes.BadWaitingForInitialData}

    async def scenario(client: Client, ns: int) -> list[ua.DataValue]:
        return await read_many(client, [(nid(ns, p.name, "R2"), ua.AttributeIds.Value) for p in PUBLISHED])

    for pub, dv in zip(PUBLISHED, client_run(served, scenario)):
        v = snapshot[pub.name]
        assert dv.StatusCode.value == expected_code[v.quality], pub.name
        assert dv.SourceTimestamp == v.source_time, pub.name
        if v.quality in (Quality.GOOD, Quality.UNCERTAIN_LAST_USABLE):
            if pub.signal.type == "Real":
                assert dv.Value.Value == pytest.approx(operator(pub.name, v.value), rel=1e-12), pub.name
            else:
                assert dv.Value.Value == int(v.value), pub.name
        else:
            assert dv.Value.Value is None, pub.name  # a Bad value carries no number


@pytest.mark.parametrize("si, quality, code, shown", [
    (350.0, Quality.GOOD, ua.StatusCodes.Good, 76.85),
    (351.0, Quality.UNCERTAIN_LAST_USABLE, ua.StatusCodes.UncertainLastUsableValue, 77.85),
    (352.0, Quality.BAD_COMMUNICATION, ua.StatusCodes.BadCommunicationError, None),
    (353.0, Quality.BAD_WAITING, ua.StatusCodes.BadWaitingForInitialData, None),
    (math.nan, Quality.GOOD, ua.StatusCodes.BadWaitingForInitialData, None),  # NaN is never Good
    (math.nan, Quality.UNCERTAIN_LAST_USABLE, ua.StatusCodes.BadWaitingForInitialData, None),
])
def test_quality_to_status_code(served: ServerThread, si: float, quality: Quality, code: int,
                                shown: float | None) -> None:
    when = datetime(2026, 12, 1, 9, 30, 0, 123000, tzinfo=UTC)
    served.run(served.server.publish("R1", {"T_reactor": Value(si, quality, when)}))

    async def scenario(client: Client, ns: int) -> ua.DataValue:
        return await client.get_node(nid(ns, "T_reactor")).read_data_value(raise_on_bad_status=False)

    dv = client_run(served, scenario)
    assert dv.StatusCode.value == code
    assert dv.SourceTimestamp == when
    assert (dv.Value.Value if shown is None else pytest.approx(dv.Value.Value, rel=1e-12)) == shown


@pytest.mark.parametrize("si", [-1.0, 2.0**33])
def test_an_integer_its_data_type_cannot_hold_is_bad_not_wrapped(served: ServerThread, si: float) -> None:
    when = datetime(2026, 12, 1, 9, 45, tzinfo=UTC)
    served.run(served.server.publish("R1", {"batch_id": Value(si, Quality.GOOD, when)}))

    async def scenario(client: Client, ns: int) -> ua.DataValue:
        return await client.get_node(nid(ns, "batch_id")).read_data_value(raise_on_bad_status=False)

    dv = client_run(served, scenario)
    assert (dv.StatusCode.value, dv.Value.Value) == (ua.StatusCodes.BadOutOfRange, None)


def test_a_subscriber_sees_each_value_with_its_status(served: ServerThread) -> None:
    """What SCADA sees: data changes of a monitored item, the quality going Bad and back to Good."""
    t0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    sequence = [(340.0, Quality.GOOD), (341.0, Quality.BAD_COMMUNICATION), (342.0, Quality.UNCERTAIN_LAST_USABLE),
                (343.0, Quality.GOOD)]

    async def scenario(client: Client, ns: int) -> list[ua.DataValue]:
        changes = DataChanges()
        sub = await client.create_subscription(10, changes)
        await sub.subscribe_data_change(client.get_node(nid(ns, "T_jacket")))
        await changes.next()  # the initial value, whatever it is
        got = []
        for i, (T, q) in enumerate(sequence):
            await asyncio.wrap_future(served.submit(served.server.publish(
                "R1", {"T_jacket": Value(T, q, t0 + timedelta(seconds=i))})))
            got.append((await changes.next())[1])
        await sub.delete()
        return got

    got = client_run(served, scenario)
    assert [dv.StatusCode.value for dv in got] == [
        ua.StatusCodes.Good, ua.StatusCodes.BadCommunicationError, ua.StatusCodes.UncertainLastUsableValue,
        ua.StatusCodes.Good]
    assert [dv.Value.Value for dv in got] == [pytest.approx(66.85), None, pytest.approx(68.85), pytest.approx(69.85)]
    assert [dv.SourceTimestamp for dv in got] == [t0 + timedelta(seconds=i) for i in range(4)]


def test_unknown_signal_in_a_snapshot_is_ignored(served: ServerThread) -> None:
    served.run(served.server.publish("R1", {"no_such_signal": Value(1.0)}))


# -- methods -------------------------------------------------------------------------------------------
RECIPE_TOML = """
name = "ramp-to-70C"
mode = "jacket"
T_start_K = 298.15
end_time_s = 21600
[[steps]]
action = "ramp"
target_K = 343.15
duration_s = 3600
[[steps]]
action = "hold"
duration_s = 18000
"""


def call(served: ServerThread, method: str, *args: ua.Variant, reactor: str = "R1") -> ua.CallMethodResult:
    async def scenario(client: Client, ns: int) -> ua.CallMethodResult:
        obj = ua.NodeId(f"{PLANT}.{reactor}", ns)
        return await call_full(client, obj, ua.NodeId(f"{PLANT}.{reactor}.{method}", ns), *args)

    return client_run(served, scenario)


def D(x: float) -> ua.Variant:
    return ua.Variant(x, ua.VariantType.Double)


def S(text: str) -> ua.Variant:
    return ua.Variant(text, ua.VariantType.String)


@pytest.mark.parametrize("method, args, expected", [
    ("Hold", (), ("command", ("hold",))),
    ("Resume", (), ("command", ("resume",))),
    ("Abort", ("agitator fault",), ("command", ("abort",))),
    ("AcknowledgeAlarms", (), ("command", ("ack_alarms",))),
    ("ResetTwin", (), ("reset_twin", ())),
])
def test_commands_reach_the_controller(served: ServerThread, control: RecordingControl, method: str,
                                       args: tuple, expected: tuple) -> None:
    result = call(served, method, *(S(a) for a in args))
    assert result.StatusCode.is_good()
    assert [v.Value for v in result.OutputArguments] == ["done"]
    assert control.calls == [expected]


def test_start_batch_parses_the_recipe(served: ServerThread, control: RecordingControl) -> None:
    result = call(served, "StartBatch", S(RECIPE_TOML), S("campaign 12, batch 3"))
    assert result.StatusCode.is_good(), result
    assert control.calls == [("start_batch", (recipe_from_mapping(tomllib.loads(RECIPE_TOML), "x"),))]


def test_enter_lab_result_in_operator_units_reaches_the_controller_in_si(served: ServerThread,
                                                                          control: RecordingControl) -> None:
    result = call(served, "EnterLabResult", D(2.5), D(0.8), D(0.125), S("LIMS sample 4711"))
    assert result.StatusCode.is_good(), result
    (method, (t_s, c_B, c_C)), = control.calls
    assert method == "enter_lab_result"
    assert (t_s, c_B, c_C) == (pytest.approx(9000.0, rel=1e-15), pytest.approx(800.0, rel=1e-15),
                               pytest.approx(125.0, rel=1e-15))


@pytest.mark.parametrize("method, key, args, code", [
    ("Hold", "hold", (), ua.StatusCodes.BadInvalidState),
    ("AcknowledgeAlarms", "ack_alarms", (), ua.StatusCodes.BadInvalidState),
    ("StartBatch", "start_batch", (RECIPE_TOML, "why"), ua.StatusCodes.BadInvalidState),
    ("ResetTwin", "reset_twin", (), ua.StatusCodes.BadInvalidState),
    ("EnterLabResult", "enter_lab_result", (1.0, 0.5, 0.1, "why"), ua.StatusCodes.BadInvalidArgument),
])
def test_refusals_come_back_as_bad_status_with_the_reason(served: ServerThread, control: RecordingControl,
                                                          method: str, key: str, args: tuple, code: int) -> None:
    control.refuse[key] = f"PLC says no to {key} (phase Idle)"
    variants = [S(a) if isinstance(a, str) else D(a) for a in args]
    result = call(served, method, *variants)
    assert result.StatusCode.value == code
    assert [v.Value for v in result.OutputArguments] == [f"PLC says no to {key} (phase Idle)"]
    assert control.calls == []


R = S("a reason")
G, TM, OR = ua.StatusCodes.Good, ua.StatusCodes.BadTypeMismatch, ua.StatusCodes.BadOutOfRange


@pytest.mark.parametrize("method, args, code, per_argument, says", [
    ("StartBatch", (D(1.0), R), ua.StatusCodes.BadInvalidArgument, [TM, G], "String"),
    ("StartBatch", (S("name = [unclosed"), R), ua.StatusCodes.BadInvalidArgument, [], "not TOML"),
    ("StartBatch", (S('end_time_s = 100\nT_start_K = 300\nbogus = 1'), R), ua.StatusCodes.BadInvalidArgument, [],
     "recipe.bogus"),
    ("StartBatch", (S('end_time_s = -5\npoints = [[0, 300]]'), R), ua.StatusCodes.BadInvalidArgument, [],
     "recipe.end_time_s"),
    ("StartBatch", (), ua.StatusCodes.BadArgumentsMissing, [], "2 argument(s) expected (Recipe, Reason)"),
    ("StartBatch", (S(RECIPE_TOML),), ua.StatusCodes.BadArgumentsMissing, [], "(Recipe, Reason)"),
    ("StartBatch", (S(RECIPE_TOML), D(1.0)), ua.StatusCodes.BadInvalidArgument, [G, TM], "Reason must be a String"),
    ("Hold", (D(1.0),), ua.StatusCodes.BadTooManyArguments, [], "0 argument"),
    ("Abort", (), ua.StatusCodes.BadArgumentsMissing, [], "(Reason)"),
    ("EnterLabResult", (D(1.0), D(0.5), R), ua.StatusCodes.BadArgumentsMissing, [], "4 argument"),
    ("EnterLabResult", (D(1.0), D(0.5), D(0.1), R, R), ua.StatusCodes.BadTooManyArguments, [], "4 argument"),
    ("EnterLabResult", (D(1.0), ua.Variant(0.5, ua.VariantType.Float), D(0.1), R), ua.StatusCodes.BadInvalidArgument,
     [G, TM, G, G], "c_B must be a Double"),
    ("EnterLabResult", (S("1.0"), D(0.5), D(0.1), R), ua.StatusCodes.BadInvalidArgument, [TM, G, G, G], "SampleTime"),
    ("EnterLabResult", (D(1.0), D(-0.5), D(0.1), R), ua.StatusCodes.BadInvalidArgument, [G, OR, G, G],
     "c_B=-0.5 outside"),
    ("EnterLabResult", (D(math.nan), D(0.5), D(25.0), R), ua.StatusCodes.BadInvalidArgument, [OR, G, OR, G],
     "SampleTime=nan"),
    ("EnterLabResult", (D(math.inf), D(0.5), D(0.1), R), ua.StatusCodes.BadInvalidArgument, [OR, G, G, G],
     "SampleTime=inf"),
    ("SetTwinParameter", (S("sigma_lab"), D(-1.0), R), ua.StatusCodes.BadOutOfRange, [], "BadOutOfRange"),
    ("SetTwinParameter", (S("T_trip"), D(100.0), R), ua.StatusCodes.BadInvalidArgument, [ua.StatusCodes.BadInvalidArgument, G, G], "not a Twin parameter"),
    ("SetTwinParameter", (S("correction_on"), D(0.5), R), ua.StatusCodes.BadInvalidArgument, [G, OR, G],
     "must be 0 or 1"),
])
def test_bad_method_arguments_are_refused_before_the_controller(served: ServerThread, control: RecordingControl,
                                                                method: str, args: tuple, code: int,
                                                                per_argument: list, says: str) -> None:
    result = call(served, method, *args)
    assert result.StatusCode.value == code
    if per_argument:
        assert [r.value for r in result.InputArgumentResults] == per_argument
    (message,) = [v.Value for v in result.OutputArguments]
    assert says in message
    assert control.calls == []


def test_methods_declare_their_arguments_with_units(served: ServerThread) -> None:
    async def scenario(client: Client, ns: int) -> list[ua.Argument]:
        method = client.get_node(ua.NodeId(f"{PLANT}.R1.EnterLabResult", ns))
        return await (await method.get_child("0:InputArguments")).read_value()

    args = client_run(served, scenario)
    assert [(a.Name, a.DataType) for a in args] == [(n, ua.NodeId(ua.ObjectIds.Double))
                                                    for n in ("SampleTime", "c_B", "c_C")] + [
        ("Reason", ua.NodeId(ua.ObjectIds.String))]
    assert "[h]" in args[0].Description.Text and "[mol/L]" in args[1].Description.Text


# -- client writes -------------------------------------------------------------------------------------
def _read_dv(served: ServerThread, name: str) -> ua.DataValue:
    async def scenario(client: Client, ns: int) -> ua.DataValue:
        return await client.get_node(nid(ns, name)).read_data_value(raise_on_bad_status=False)

    return client_run(served, scenario)


def _write(served: ServerThread, name: str, variant: ua.Variant) -> int:
    async def scenario(client: Client, ns: int) -> int:
        return await write_status(client, nid(ns, name), variant)

    return client_run(served, scenario)


@pytest.fixture
def published_settings(served: ServerThread) -> datetime:
    """R1's Recipe and Twin values as the runtime publishes them (Good), so 'unchanged' means something."""
    when = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    snapshot = {p.name: Value(_sample_si(p.name), Quality.GOOD, when) for p in PUBLISHED if p.writable}
    snapshot["T_trip"] = Value(400.0, Quality.GOOD, when)
    snapshot["correction_on"] = Value(1.0, Quality.GOOD, when)
    served.run(served.server.publish("R1", snapshot))
    return when


@pytest.mark.parametrize("name, variant, code", [
    ("T_trip", D(250.0), ua.StatusCodes.BadOutOfRange),  # degC: the range is 30..200
    ("T_trip", D(29.0), ua.StatusCodes.BadOutOfRange),
    ("T_trip", D(math.nan), ua.StatusCodes.BadOutOfRange),
    ("T_trip", D(math.inf), ua.StatusCodes.BadOutOfRange),
    ("T_trip", ua.Variant(120.0, ua.VariantType.Float), ua.StatusCodes.BadTypeMismatch),
    ("T_trip", ua.Variant(120, ua.VariantType.Int32), ua.StatusCodes.BadTypeMismatch),
    ("T_trip", S("120"), ua.StatusCodes.BadTypeMismatch),
    ("T_trip", ua.Variant([120.0, 121.0], ua.VariantType.Double), ua.StatusCodes.BadTypeMismatch),
    ("T_trip", ua.Variant(None, ua.VariantType.Null), ua.StatusCodes.BadTypeMismatch),
    ("recipe_n_points", ua.Variant(17, ua.VariantType.UInt32), ua.StatusCodes.BadOutOfRange),
    ("recipe_n_points", ua.Variant(0, ua.VariantType.UInt32), ua.StatusCodes.BadOutOfRange),
    ("recipe_n_points", ua.Variant(5, ua.VariantType.Int32), ua.StatusCodes.BadTypeMismatch),
    ("recipe_n_points", D(5.0), ua.StatusCodes.BadTypeMismatch),
    ("recipe_mode", ua.Variant(1, ua.VariantType.UInt32), ua.StatusCodes.BadOutOfRange),
    ("recipe_end_time", D(48.5), ua.StatusCodes.BadOutOfRange),  # h: 172800 s = 48 h
    ("sigma_rate_rel", D(0.1), ua.StatusCodes.BadUserAccessDenied),  # Twin values: SetTwinParameter only
    ("correction_on", ua.Variant(True, ua.VariantType.Boolean), ua.StatusCodes.BadUserAccessDenied),
    ("c_B", D(100.0), ua.StatusCodes.BadNotWritable),
    ("T_reactor", D(50.0), ua.StatusCodes.BadNotWritable),
    ("phase", ua.Variant(3, ua.VariantType.UInt32), ua.StatusCodes.BadNotWritable),
    ("alarm_high_t_unacked", ua.Variant(False, ua.VariantType.Boolean), ua.StatusCodes.BadNotWritable),
])
def test_bad_writes_are_refused_and_the_value_stays(served: ServerThread, control: RecordingControl,
                                                    published_settings: datetime, name: str, variant: ua.Variant,
                                                    code: int) -> None:
    before = _read_dv(served, name)
    assert _write(served, name, variant) == code
    after = _read_dv(served, name)
    assert (after.Value, after.StatusCode, after.SourceTimestamp) == (
        before.Value, before.StatusCode, before.SourceTimestamp)
    assert control.calls == []


@pytest.mark.parametrize("name, variant, si", [
    ("T_trip", D(120.0), 393.15),
    ("T_trip", D(200.0), 473.15),  # the range's edge in degC is accepted (no rounding refusal)
    ("T_high_alarm", D(30.0), 303.15),
    ("recipe_end_time", D(2.0), 7200.0),
    ("recipe_T_3", D(80.0), 353.15),
    ("recipe_n_points", ua.Variant(4, ua.VariantType.UInt32), 4.0),
])
def test_valid_write_goes_to_the_controller_in_si(served: ServerThread, control: RecordingControl,
                                                  published_settings: datetime, name: str, variant: ua.Variant,
                                                  si: float) -> None:
    assert _write(served, name, variant) == ua.StatusCodes.Good
    (method, (written, value)), = control.calls
    assert (method, written) == ("write", name)
    assert value == pytest.approx(si, rel=1e-12)
    sig = PUBLISHED_BY_NAME[name].signal
    assert sig.min <= value <= sig.max
    after = _read_dv(served, name)
    assert after.StatusCode.is_good() and after.Value.Value == variant.Value


@pytest.mark.parametrize("name, value, si", [
    ("correction_on", 0.0, 0.0),
    ("correction_on", 1.0, 1.0),
    ("sigma_lab", operator("sigma_lab", 2.5), 2.5),  # in whatever unit the table serves it
    ("t_batch_end", operator("t_batch_end", 30000.0), 30000.0),
    ("forecast_interval", operator("forecast_interval", 600.0), 600.0),
])
def test_set_twin_parameter_goes_to_the_controller_in_si(served: ServerThread, control: RecordingControl,
                                                         published_settings: datetime, name: str, value: float,
                                                         si: float) -> None:
    result = call(served, "SetTwinParameter", S(name), D(value), S("retuned after calibration"))
    assert result.StatusCode.is_good(), result
    (method, (written, got)), = control.calls
    assert (method, written) == ("write", name)
    assert got == pytest.approx(si, rel=1e-12)
    after = _read_dv(served, name)
    assert after.StatusCode.is_good() and after.Value.Value == (bool(value) if name == "correction_on" else value)


def test_write_refused_by_the_runtime_leaves_the_value(served: ServerThread, control: RecordingControl,
                                                       published_settings: datetime) -> None:
    control.refuse["T_high_alarm"] = "T_high_alarm must be <= T_trip"
    before = _read_dv(served, "T_high_alarm")
    assert _write(served, "T_high_alarm", D(150.0)) == ua.StatusCodes.BadInvalidState
    assert _read_dv(served, "T_high_alarm").Value == before.Value
    assert control.calls == []


# -- events --------------------------------------------------------------------------------------------
class _EventQueue:
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def event_notification(self, event: object) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> object:
        return await asyncio.wait_for(self.queue.get(), timeout=10.0)


@pytest.mark.parametrize("kind, severity", [(EventKind.HEALTH_ALARM, None), (EventKind.OPTIMAL_STOP, 650),
                                            (EventKind.LINK_LOST, None)])
def test_events_reach_subscribers_of_the_reactor_and_of_the_server(served: ServerThread, kind: EventKind,
                                                                   severity: int | None) -> None:
    when = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    event = TwinEvent(kind, f"{kind.name} in R1", when, severity)

    async def scenario(client: Client, ns: int) -> list:
        base = client.get_node(ua.NodeId("BatchTwinEventType", ns))
        etype = client.get_node(ua.NodeId(EVENT_TYPE_NAMES[kind], ns))
        got = []
        for source in (client.get_node(ua.NodeId(f"{PLANT}.R1", ns)), client.nodes.server):
            handler = _EventQueue()
            sub = await client.create_subscription(20, handler)
            await sub.subscribe_events(source, base)
            # the subscription exists on the server once subscribe_events returned: no wait needed
            await asyncio.wrap_future(served.submit(served.server.event("R1", event)))
            got.append((await handler.next(), etype.nodeid))
            await sub.delete()
        return got

    for ev, etype in client_run(served, scenario):
        assert ev.EventType == etype
        assert ev.Severity == event.level == (severity or kind.severity)
        assert ev.Message.Text == f"{kind.name} in R1"
        assert ev.SourceName == "R1"
        assert ev.Time == when


def test_event_types_are_subtypes_of_base_event_type(served: ServerThread) -> None:
    async def scenario(client: Client, ns: int) -> tuple[set[str], list]:
        base = client.get_node(ua.NodeId("BatchTwinEventType", ns))
        subs = {(await n.read_browse_name()).Name for n in await base.get_children(refs=ua.ObjectIds.HasSubtype)}
        parent = await base.get_references(refs=ua.ObjectIds.HasSubtype, direction=ua.BrowseDirection.Inverse)
        return subs, [r.NodeId for r in parent]

    subs, parents = client_run(served, scenario)
    assert subs == set(EVENT_TYPE_NAMES.values()) and len(subs) == len(EventKind)
    assert parents == [ua.NodeId(ua.ObjectIds.BaseEventType)]


# -- history -------------------------------------------------------------------------------------------
def test_history_read_returns_every_published_value_of_a_trended_signal(served: ServerThread) -> None:
    t0 = datetime(2027, 3, 1, 6, 0, tzinfo=UTC)  # a window of its own: other tests publish too
    values = [(300.0 + 0.5 * i, Quality.GOOD if i != 3 else Quality.BAD_COMMUNICATION) for i in range(8)]
    for i, (T, q) in enumerate(values):  # publishes back to back, as fast as the runtime could
        served.run(served.server.publish("R1", {"T_reactor": Value(T, q, t0 + timedelta(seconds=i)),
                                                "c_B_std": Value(1.0 + i, q, t0 + timedelta(seconds=i))}))

    async def scenario(client: Client, ns: int) -> tuple[list, object]:
        hist = await client.get_node(nid(ns, "T_reactor")).read_raw_history(t0 - timedelta(seconds=1),
                                                                             t0 + timedelta(minutes=1))
        untrended = await client.get_node(nid(ns, "c_A_std")).read_raw_history(
            t0, t0 + timedelta(minutes=1))
        return hist, untrended

    hist, untrended = client_run(served, scenario)
    assert untrended == []  # c_A_std is not trended
    assert [dv.SourceTimestamp for dv in hist] == [t0 + timedelta(seconds=i) for i in range(8)]
    assert [dv.StatusCode.value for dv in hist] == [
        ua.StatusCodes.BadCommunicationError if i == 3 else ua.StatusCodes.Good for i in range(8)]
    assert [dv.Value.Value for dv in hist] == [
        None if i == 3 else pytest.approx(T - 273.15, rel=1e-12) for i, (T, _) in enumerate(values)]


def test_history_read_returns_the_events(served: ServerThread) -> None:
    t0 = datetime(2027, 4, 1, 6, 0, tzinfo=UTC)
    kinds = [EventKind.BATCH_STARTED, EventKind.HEALTH_WARNING, EventKind.OPTIMAL_STOP, EventKind.BATCH_ENDED]
    for i, kind in enumerate(kinds):
        served.run(served.server.event("R2", TwinEvent(kind, f"event {i}", t0 + timedelta(minutes=i))))

    async def scenario(client: Client, ns: int) -> list:
        obj = client.get_node(ua.NodeId(f"{PLANT}.R2", ns))
        base = client.get_node(ua.NodeId("BatchTwinEventType", ns))
        return await obj.read_event_history(t0 - timedelta(seconds=1), t0 + timedelta(hours=1), evtypes=base)

    events = client_run(served, scenario)
    assert [(e.Message.Text, e.Severity, e.Time) for e in events] == [
        (f"event {i}", kind.severity, t0 + timedelta(minutes=i)) for i, kind in enumerate(kinds)]
    assert all(e.SourceName == "R2" for e in events)


# -- a client that is not asyncua ----------------------------------------------------------------------
def test_the_opcua_package_reads_the_same_values_and_browses_the_tree(served: ServerThread,
                                                                       control: RecordingControl) -> None:
    """python-opcua 0.98 (a separate, synchronous code base) against the asyncua server."""
    import opcua  # a dev dependency (requirements.lock): missing it fails, it does not skip
    when = datetime(2026, 12, 1, 12, 0, 0, 500000, tzinfo=UTC)
    snapshot = {"T_reactor": Value(345.0, Quality.GOOD, when), "c_B": Value(612.5, Quality.UNCERTAIN_LAST_USABLE, when),
                "lab_c_B": Value(600.0, Quality.BAD_COMMUNICATION, when), "phase": Value(3.0, Quality.GOOD, when),
                "alarm_high_t_active": Value(1.0, Quality.GOOD, when)}
    served.run(served.server.publish("R1", snapshot))

    async def with_asyncua(client: Client, ns: int) -> list[ua.DataValue]:
        return await read_many(client, [(nid(ns, n), ua.AttributeIds.Value) for n in snapshot])

    reference = client_run(served, with_asyncua)

    old = opcua.Client(served.url, timeout=10)
    old.set_user(ADMIN)
    old.set_password(USERS[ADMIN][1])
    old.connect()
    try:
        ns = old.get_namespace_index(NAMESPACE_URI)
        params = opcua.ua.ReadParameters()  # one Read; Node.get_data_value would raise on a non-Good status
        params.NodesToRead = [opcua.ua.ReadValueId() for _ in snapshot]
        for rv, n in zip(params.NodesToRead, snapshot):
            rv.NodeId = opcua.ua.NodeId(f"{PLANT}.R1.{PUBLISHED_BY_NAME[n].folder}.{n}", ns)
            rv.AttributeId = opcua.ua.AttributeIds.Value
        params.TimestampsToReturn = opcua.ua.TimestampsToReturn.Both
        got = old.uaclient.read(params)
        reactor = old.get_objects_node().get_child([f"{ns}:{PLANT}", f"{ns}:R1"])
        tree = {}
        for folder in reactor.get_children(refs=opcua.ua.ObjectIds.Organizes):
            tree[folder.get_browse_name().Name] = {c.get_browse_name().Name for c in folder.get_children(
                refs=opcua.ua.ObjectIds.HasComponent)}
        t_node = old.get_node(opcua.ua.NodeId(f"{PLANT}.R1.Measurements.T_reactor", ns))
        eu = t_node.get_child("0:EngineeringUnits").get_value()
        rng = t_node.get_child("0:EURange").get_value()
        reactor.call_method(f"{ns}:Hold")
        old.get_node(opcua.ua.NodeId(f"{PLANT}.R1.Recipe.T_trip", ns)).set_value(120.0, opcua.ua.VariantType.Double)
        with pytest.raises(opcua.ua.UaStatusCodeError, match="BadOutOfRange"):
            old.get_node(opcua.ua.NodeId(f"{PLANT}.R1.Recipe.T_trip", ns)).set_value(
                250.0, opcua.ua.VariantType.Double)
    finally:
        old.disconnect()

    for name, dv_old, dv_ref in zip(snapshot, got, reference):
        assert dv_old.StatusCode.value == dv_ref.StatusCode.value, name
        assert dv_old.Value.Value == dv_ref.Value.Value, name
        assert dv_old.SourceTimestamp.replace(tzinfo=UTC) == when, name  # python-opcua returns naive UTC
    assert got[0].Value.Value == pytest.approx(71.85, rel=1e-12)
    assert {f: names >= {p.name for p in PUBLISHED if p.folder == f} for f, names in tree.items()} == {
        f: True for f in {p.folder for p in PUBLISHED}}
    assert (eu.UnitId, eu.DisplayName.Text, rng.Low, rng.High) == (4408652, "°C", -23.15, 226.85)
    assert control.calls[0] == ("command", ("hold",))
    assert control.calls[1:] == [("write", ("T_trip", pytest.approx(393.15, rel=1e-12)))]


@pytest.mark.slow
def test_history_outlives_the_server(tmp_path) -> None:
    """A batch's history read back by a server started afterwards on the same SQLite file (here on
    port 0: the port actually bound is the one advertised)."""
    db = tmp_path / "history.sqlite"
    t0 = datetime(2027, 5, 1, 6, 0, tzinfo=UTC)
    security = make_security(tmp_path)
    with ServerThread(f"opc.tcp://127.0.0.1:{free_port()}/batch-twin/", PLANT, {"R1": RecordingControl()},
                      history_db=db, security=security) as first:
        for i in range(5):
            first.run(first.server.publish("R1", {"c_B": Value(100.0 * i, Quality.GOOD, t0 + timedelta(seconds=i))}))
        first.run(first.server.event("R1", TwinEvent(EventKind.BATCH_ENDED, "batch 7 ended", t0 + timedelta(hours=1))))

    with ServerThread("opc.tcp://127.0.0.1:0/batch-twin/", PLANT, {"R1": RecordingControl()}, history_db=db,
                      security=security) as again:
        assert not again.url.startswith("opc.tcp://127.0.0.1:0/")
        from importlib.metadata import version

        async def scenario(client: Client, ns: int) -> tuple[list, list]:
            values = await client.get_node(nid(ns, "c_B")).read_raw_history(t0 - timedelta(seconds=1),
                                                                             t0 + timedelta(minutes=1))
            events = await client.get_node(ua.NodeId(f"{PLANT}.R1", ns)).read_event_history(
                t0, t0 + timedelta(days=1), evtypes=client.get_node(ua.NodeId("BatchTwinEventType", ns)))
            endpoints = await client.get_endpoints()
            assert {e.EndpointUrl for e in endpoints} == {again.url}
            build = await client.get_node(ua.ObjectIds.Server_ServerStatus_BuildInfo).read_value()
            assert build.SoftwareVersion == version("batch-reactor-twin")  # no BuildInfo given: the package's
            return values, events

        values, events = client_run(again, scenario)
    assert [dv.Value.Value for dv in values] == [pytest.approx(operator("c_B", 100.0 * i), rel=1e-12) for i in range(5)]
    assert [(e.Message.Text, e.Severity) for e in events] == [("batch 7 ended", EventKind.BATCH_ENDED.severity)]


@pytest.mark.slow
def test_a_port_in_use_fails_start_and_leaves_nothing_running(tmp_path) -> None:
    import socket
    import threading

    threads_before = set(threading.enumerate())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TwinOpcUaServer(f"opc.tcp://127.0.0.1:{port}/batch-twin/", PLANT, {"R1": RecordingControl()},
                                 security=make_security(tmp_path))

        async def main() -> None:
            with pytest.raises(OSError):
                await server.start()
            await server.stop()  # nothing to stop: no error
            with pytest.raises(RuntimeError, match="not started"):
                await server.publish("R1", {})

        asyncio.run(main())
    assert set(threading.enumerate()) <= threads_before  # the history's SQLite thread is gone too


def test_an_unchanged_value_is_not_written_again_but_a_status_change_is(tmp_path) -> None:
    """publish() skips a value whose number and quality did not change (its source timestamp stays the
    time it last changed); a new quality, even with the same number, is written."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from gateways.model import Value
    from twin_core.signals.runtime import Quality

    async def main() -> list[tuple[str, datetime]]:
        server = TwinOpcUaServer("opc.tcp://127.0.0.1:0/batch-twin/", "plant", {"R1": RecordingControl()},
                                 security=make_security(tmp_path))
        await server.start()
        try:
            nid = server.node_id("R1", "T_reactor")
            t0 = datetime(2026, 1, 1, tzinfo=UTC)
            seen = []
            for i, q in enumerate((Quality.GOOD, Quality.GOOD, Quality.BAD_COMMUNICATION, Quality.GOOD)):
                await server.publish("R1", {"T_reactor": Value(350.0, q, t0 + timedelta(seconds=i))})
                dv = server._server.iserver.aspace.read_attribute_value(nid, ua.AttributeIds.Value)  # type: ignore[union-attr]
                seen.append((dv.StatusCode.name, dv.SourceTimestamp))
            return seen
        finally:
            await server.stop()

    seen = asyncio.run(main())
    t0 = datetime(2026, 1, 1)
    stamps = [ts.replace(tzinfo=None) for _, ts in seen]
    assert [code for code, _ in seen] == ["Good", "Good", "BadCommunicationError", "Good"]
    assert stamps == [t0, t0, t0 + timedelta(seconds=2), t0 + timedelta(seconds=3)]
