"""The OPC UA server against real clients on a loopback socket: the address space generated from
PUBLISHED (units, ranges, types, descriptions), values and status codes after publish(), methods and
writes reaching a recording ReactorControl (refusals as Bad statuses), events, HistoryRead, and a
client that is not asyncua (the `opcua` package) reading the same values.

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
    RecordingControl,
    ServerThread,
    call_full,
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
    db = tmp_path_factory.mktemp("opcua") / "history.sqlite"
    with ServerThread(f"opc.tcp://127.0.0.1:{free_port()}/batch-twin/", PLANT, controls, history_db=db,
                      build_info=BUILD, twins=TWINS) as st:
        yield st


@pytest.fixture
def control(controls: dict[str, RecordingControl]) -> RecordingControl:
    c = controls["R1"]
    c.calls.clear()
    c.refuse.clear()
    return c


def client_run(served: ServerThread, scenario) -> object:
    """Run ``scenario(client, ns)`` with a connected asyncua client."""

    async def main() -> object:
        async with Client(served.url, timeout=10) as client:
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


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:4840/x", "opc.tcp://127.0.0.1/x", "opc.tcp://:4840/"])
def test_bad_endpoint_refused_without_io(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        TwinOpcUaServer(endpoint, PLANT, {"R1": RecordingControl()})


@pytest.mark.parametrize("plant, reactor", [("Plant A", "R1"), ("P", "R.1"), ("P", "")])
def test_bad_names_refused(plant: str, reactor: str) -> None:
    with pytest.raises(ValueError):
        TwinOpcUaServer("opc.tcp://127.0.0.1:4840/", plant, {reactor: RecordingControl()})


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
        for name in ("T_reactor", "lab_c_B", "recipe_end_time", "yield_B", "pid_output", "c_B"):
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
    assert got["c_B"] == (0.0, 20000.0, "mol/m³")


def test_build_info_namespace_and_twin_identity(served: ServerThread) -> None:
    async def scenario(client: Client, ns: int) -> None:
        assert (await client.get_namespace_array())[ns] == NAMESPACE_URI
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


def test_unknown_signal_in_a_snapshot_is_ignored(served: ServerThread) -> None:
    served.run(served.server.publish("R1", {"no_such_signal": Value(1.0)}))
