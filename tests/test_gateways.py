"""gateways: the PLC Modbus client against the real PLC server, and the end-to-end demo batch."""

from __future__ import annotations

import math

import pytest

from gateways.demo import run_demo
from gateways.fmu_runner import DEFAULT_FMU
from gateways.plc_client import MEASUREMENT_BLOCKS, PlcClient, PlcRequestError
from twin_core.signals import Phase
from plant_sim.modbus_server import PlcServerThread
from plant_sim.plc import Plc
from twin_core.signals import PLC_MEASUREMENTS
from twin_core.recipe import DEFAULT_RECIPE, Recipe


@pytest.fixture(scope="module")
def server():
    plc = Plc(seed=3)
    with PlcServerThread(plc, port=0, speed=0.0) as srv:  # paused: the tests drive the state
        yield plc, srv


def test_blocks_cover_every_measurement_once():
    names = [n for b in MEASUREMENT_BLOCKS for n in b.names]
    assert sorted(names) == sorted(s.name for s in PLC_MEASUREMENTS)


def test_read_measurements_equal_plc_snapshot(server):
    plc, srv = server
    snap = srv.call(plc.snapshot)
    with PlcClient(port=srv.port) as c:
        m = c.read_measurements()
    for name, value in m.items():
        if math.isnan(snap[name]):
            assert math.isnan(value), name
        else:  # float32 on the wire
            assert value == pytest.approx(snap[name], rel=1e-6, abs=1e-6), name


def test_recipe_download_reaches_plc_settings(server):
    plc, srv = server
    recipe = Recipe((0.0, 1800.0, 7200.0), (300.0, 330.0, 335.0), 9000.0, name="t")
    with PlcClient(port=srv.port) as c:
        c.download_recipe(recipe, 900.0)
    snap = srv.call(plc.snapshot)
    assert snap["recipe_n_points"] == 3
    assert snap["recipe_end_time"] == 9000.0
    assert snap["recipe_sample_interval"] == 900.0
    assert [snap[f"recipe_time_{i}"] for i in range(3)] == [0.0, 1800.0, 7200.0]
    assert [snap[f"recipe_T_{i}"] for i in range(3)] == [300.0, 330.0, 335.0]


@pytest.mark.parametrize(("call", "code"), [
    (lambda c: c.command("resume"), 3),                 # Resume while Idle: wrong phase
    (lambda c: c.write("T_trip", float("nan")), 3),     # NaN refused by the PLC
    (lambda c: c.write("T_trip", 1000.0), 3),           # out of range
])
def test_refused_requests_raise_with_the_exception_code(server, call, code):
    plc, srv = server
    before = srv.call(plc.snapshot)
    with PlcClient(port=srv.port) as c, pytest.raises(PlcRequestError) as exc:
        call(c)
    assert exc.value.code == code
    after = srv.call(plc.snapshot)
    assert {k: v for k, v in after.items() if not (isinstance(v, float) and math.isnan(v))} == \
        {k: v for k, v in before.items() if not (isinstance(v, float) and math.isnan(v))}


def test_connect_refused_is_a_clear_error():
    from conftest import free_port

    with pytest.raises(PlcRequestError, match="connect"):
        PlcClient(port=free_port(), timeout_s=0.5).connect()


def test_demo_batch_end_to_end():
    """Plant over Modbus + the built FMU as soft sensor: the estimate tracks the hidden truth."""
    res = run_demo(speed=1500.0, seed=11, fmu_path=DEFAULT_FMU, recipe=DEFAULT_RECIPE, echo=False)
    assert res.final_phase in (Phase.COOLING.name, Phase.COMPLETE.name), res.final_phase
    assert res.labs >= 8, res.labs  # 6 h batch, a sample every 30 min, results 30-45 min later
    assert res.t_s[-1] >= 0.9 * DEFAULT_RECIPE.end_time_s, res.t_s[-1]
    assert all(c >= 0.0 for c in res.c_B_est)
    assert max(res.health) < 2, "model-health alarm on a fault-free batch"
    # Generous bound: the demo's fidelity figure is printed by `twin demo`; this guards against a
    # broken chain (wrong units or registers would give errors of tens of percent).
    assert res.rmse_pct_of_max < 10.0, res.rmse_pct_of_max
