"""plant_sim's physics: configuration, truth model, jacket, PID, sensors, lab.

Oracles: conservation laws of the truth (mass; energy with the jacket closed off), twin_core's own
right-hand side when every mismatch is switched off, the exact discrete response of a first-order
lag, and the statistics of the noise and lab error against their configured values.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from plant_sim.config import (
    DEFAULT_CONFIG_PATH,
    Alarms,
    Fouling,
    Jacket,
    Lab,
    Mismatch,
    PlantConfig,
    PlantKinetics,
    PlcTiming,
    SensorSpec,
    config_from_mapping,
    load_plant_config,
)
from plant_sim.jacket import split_range, utility_duty_W
from plant_sim.lab import LabAssay
from plant_sim.pid import PidController
from plant_sim.plc import Plc
from plant_sim.sensors import RandomStream, SensorFault, TemperatureSensor, quantise
from plant_sim.truth import Truth, TruthParams, derivatives, reduced_rhs_factory, rhs, truth_coefficients
from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.model import rhs as twin_rhs
from twin_core.params import Kinetics, ModelParams
from twin_core.recipe import Recipe
from twin_core.simulation import Twin


def _random_states(n: int, seed: int = 1) -> list[tuple[float, float, float, float, float]]:
    rng = random.Random(seed)
    return [(rng.uniform(0, 1100), rng.uniform(0, 800), rng.uniform(0, 800), rng.uniform(280, 380),
             rng.uniform(280, 400)) for _ in range(n)]


# -- configuration ---------------------------------------------------------------------------------
def test_shipped_toml_is_the_default_config() -> None:
    assert load_plant_config(DEFAULT_CONFIG_PATH) == PlantConfig()
    assert load_plant_config() == PlantConfig()


def test_default_kinetics_differ_from_the_twin_by_10_to_30_percent() -> None:
    plant, twin = PlantKinetics(), Kinetics()
    for p_name, t_name in (("k1_ref_per_s", "k1_ref_per_s"), ("k2_ref_per_s", "k2_ref_per_s"),
                           ("E1_J_per_mol", "E1_J_per_mol"), ("E2_J_per_mol", "E2_J_per_mol")):
        rel = abs(getattr(plant, p_name) / getattr(twin, t_name) - 1.0)
        assert 0.10 <= rel <= 0.30, (p_name, rel)


@pytest.mark.parametrize(("mapping", "field", "exc"), [
    ({"nonsense": {}}, "nonsense", ParameterError),
    ({"mismatch": {"kinetic": True}}, "mismatch.kinetic", ParameterError),
    ({"mismatch": {"kinetics": 1}}, "mismatch.kinetics", ParameterTypeError),
    ({"kinetics": {"k1_ref_per_s": -1.0}}, "kinetics.k1_ref_per_s", ParameterError),
    ({"kinetics": {"k1_ref_per_s": "fast"}}, "kinetics.k1_ref_per_s", ParameterTypeError),
    ({"fouling": {"loss_per_batch": 0.7}}, "fouling.loss_per_batch", ParameterError),
    ({"fouling": {"UA_min_fraction": 0.0}}, "fouling.UA_min_fraction", ParameterError),
    ({"jacket": {"T_hot_supply_K": 80.0}}, "jacket.T_hot_supply_K", ParameterError),
    ({"jacket": {"T_cold_supply_K": 460.0}}, "jacket.T_cold_supply_K", ParameterError),
    ({"pid": {"Ti_s": 0.0}}, "pid.Ti_s", ParameterError),
    ({"pid": {"Kp_per_K": math.nan}}, "pid.Kp_per_K", ParameterError),
    ({"sensors": {"T_reactor": {"tau": 3.0}}}, "sensors.T_reactor.tau", ParameterError),
    ({"sensors": {"T_reactor": {"noise_sd_K": -0.1}}}, "sensors.T_reactor.noise_sd_K", ParameterError),
    ({"lab": {"delay_min_s": 3000.0}}, "lab.delay_max_s", ParameterError),
    ({"lab": {"rsd": 0.6}}, "lab.rsd", ParameterError),
    ({"phases": {"T_safe_K": 280.0}}, "phases.cooling_T_jacket_K", ParameterError),
    ({"alarms": {"T_high_alarm_K": 390.0}}, "alarms.T_high_alarm_K", ParameterError),
    ({"plc": {"scan_s": 0.0}}, "plc.scan_s", ParameterError),
    ({"plc": {"scan_s": 100.0}}, "plc.scan_s", ParameterError),
    ({"vessel": {"reactor": {"UA": 1.0}}}, "vessel.reactor.UA", ParameterError),
    ({"vessel": {"reactor": {"UA_W_per_K": -1.0}}}, "vessel.reactor.UA_W_per_K", ParameterError),
])
def test_bad_configuration_is_refused_naming_the_field(mapping: dict, field: str, exc: type) -> None:
    with pytest.raises(exc) as info:
        config_from_mapping(mapping)
    assert info.value.field == field


def test_config_file_errors(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[plc\nscan_s = 1", encoding="utf-8")
    with pytest.raises(ParameterError):
        load_plant_config(bad)
    with pytest.raises(ParameterError):
        load_plant_config(tmp_path / "missing.toml")
    good = tmp_path / "good.toml"
    good.write_text("[plc]\nscan_s = 2.0\n[mismatch]\nfouling = false\n[vessel.reactor]\nUA_W_per_K = 1200.0\n",
                    encoding="utf-8")
    cfg = load_plant_config(good)
    assert cfg.plc.scan_s == 2.0 and cfg.mismatch.fouling is False and cfg.vessel.reactor.UA_W_per_K == 1200.0
    assert cfg.kinetics == PlantKinetics()


# -- truth: oracles ----------------------------------------------------------------------------------
def test_truth_conserves_mass_pointwise_and_over_a_batch() -> None:
    c = truth_coefficients(PlantConfig())
    for x in _random_states(50):
        d = derivatives(x, 0.3, 1200.0, 1.05, 0.0, c)
        assert abs(d[0] + d[1] + d[2]) <= 1e-12 * (abs(d[0]) + abs(d[1]) + abs(d[2]) + 1e-30)
    plc = Plc(PlantConfig(plc=PlcTiming(scan_s=5.0)), seed=3)
    plc.command("start")
    total0 = sum(plc.truth.x[:3])
    for _ in range(3000):
        plc.scan()
        assert abs(sum(plc.truth.x[:3]) - total0) < 1e-9 * total0
    assert plc.truth.x[2] > 50.0  # the batch really reacted


def test_adiabatic_temperature_rise_matches_the_heat_of_reaction() -> None:
    """UA = 0, no extra heat: T - T0 = q1 (c_A0 - c_A) + q2 (c_C - c_C0) at every time (enthalpy is a
    state function, so r3 releases dH2 per mol like r2)."""
    cfg = PlantConfig()
    truth = Truth(cfg, (1000.0, 0.0, 0.0, 330.0, 300.0), UA_W_per_K=0.0)
    c = truth.c
    t = 0.0
    for _ in range(100):
        truth.advance(t, 60.0, 0.0)
        t += 60.0
        cA, _, cC, T, _ = truth.x
        assert T - 330.0 == pytest.approx(c.q1 * (1000.0 - cA) + c.q2 * cC, abs=1e-4)
    assert truth.x[3] > 340.0


def test_energy_is_conserved_between_reactor_and_closed_jacket() -> None:
    """Utilities off (u = 0) and no losses: heat released = rise of C_r T + C_j T_j."""
    cfg = PlantConfig(jacket=dataclasses.replace(Jacket(), UA_ambient_W_per_K=0.0))
    truth = Truth(cfg, (1000.0, 0.0, 0.0, 340.0, 300.0), UA_W_per_K=1500.0)
    v = cfg.vessel
    C_r = v.reactor.heat_capacity_J_per_K
    C_j = cfg.jacket.heat_capacity_J_per_K
    V = v.reactor.volume_m3
    t = 0.0
    for _ in range(60):
        truth.advance(t, 120.0, 0.0)
        t += 120.0
        cA, _, cC, T, Tj = truth.x
        released = V * (-v.kinetics.dH1_J_per_mol * (1000.0 - cA) - v.kinetics.dH2_J_per_mol * cC)
        assert C_r * (T - 340.0) + C_j * (Tj - 300.0) == pytest.approx(released, rel=1e-6, abs=10.0)
    assert truth.x[4] > 310.0  # the jacket really took heat


def test_all_mismatches_off_gives_twin_core_rhs_exactly() -> None:
    ideal = PlantConfig.ideal()
    c = truth_coefficients(ideal)
    p = ModelParams()
    UA = p.reactor.UA_W_per_K
    for x in _random_states(50, seed=7):
        mine = rhs(0.0, x, 0.5, TruthParams(c, UA))
        twin = twin_rhs(0.0, x[:4], x[4], p)
        assert mine[:4] == pytest.approx(twin, rel=1e-13, abs=1e-18)
        assert mine[4] == 0.0  # ideal jacket: T_j is imposed, not integrated
    # ... and with the mismatches on it is not the twin
    c_on = truth_coefficients(PlantConfig())
    x = (500.0, 300.0, 200.0, 350.0, 345.0)
    assert derivatives(x, 0.0, UA, 1.0, 0.0, c_on)[1] != pytest.approx(twin_rhs(0.0, x[:4], x[4], p)[1], rel=0.05)


def test_each_mismatch_switch_changes_the_rates_it_names() -> None:
    x = (500.0, 300.0, 200.0, 360.0, 350.0)
    UA = 1500.0
    base = derivatives(x, 0.0, UA, 1.0, 0.0, truth_coefficients(PlantConfig.ideal()))
    only_kin = dataclasses.replace(Mismatch(**{f.name: False for f in dataclasses.fields(Mismatch)}), kinetics=True)
    only_side = dataclasses.replace(only_kin, kinetics=False, side_reaction=True)
    d_kin = derivatives(x, 0.0, UA, 1.0, 0.0, truth_coefficients(PlantConfig(mismatch=only_kin)))
    d_side = derivatives(x, 0.0, UA, 1.0, 0.0, truth_coefficients(PlantConfig(mismatch=only_side)))
    assert d_kin[0] != pytest.approx(base[0], rel=0.05)          # r1 changed
    assert d_side[0] == base[0]                                   # side reaction leaves r1 alone
    r3 = PlantConfig().side_reaction.k3_ref_m3_per_mol_s * math.exp(
        -90e3 / 8.314462618 * (1 / 360.0 - 1 / 353.15)) * 300.0 * 200.0
    assert d_side[2] - base[2] == pytest.approx(r3, rel=1e-12)   # extra B -> C is exactly r3


def test_reduced_integration_form_matches_the_full_rhs() -> None:
    c = truth_coefficients(PlantConfig())
    u_cell = [0.0]
    for x in _random_states(30, seed=11):
        for u in (-1.5, -0.4, 0.0, 0.7, 2.0):
            u_cell[0] = u
            f = reduced_rhs_factory(c, 1300.0, 0.97, 1e4, x[0] + x[1] + x[2], u_cell)
            full = derivatives(x, u, 1300.0, 0.97, 1e4, c)
            red = f(0.0, (x[0], x[1], x[3], x[4]))
            assert red == pytest.approx((full[0], full[1], full[3], full[4]), rel=1e-12, abs=1e-15)


def test_ideal_plant_follows_the_twin_trajectory() -> None:
    """Every mismatch off, ideal jacket following the recipe (held per 1 s scan): the truth is the
    twin's simulation of the same recipe and charge, to within the zero-order hold of the ramp."""
    recipe = Recipe((0.0, 600.0, 4200.0), (298.15, 298.15, 343.15), 4 * 3600.0, name="oracle")
    cfg = PlantConfig.ideal(plc=PlcTiming(scan_s=1.0))
    plc = Plc(cfg, seed=0)
    plc.load_recipe(recipe, sample_interval_s=0.0)
    plc.command("start")
    tr = Twin(ModelParams()).simulate(recipe, dt_out_s=600.0)
    for k in range(1, len(tr.t_s)):
        plc.run_scans(600)
        assert plc.batch_time == tr.t_s[k]
        x = plc.truth.x
        assert x[1] == pytest.approx(tr.c_B[k], abs=0.3)
        assert x[3] == pytest.approx(tr.T_K[k], abs=0.02)
    assert tr.c_B[-1] > 300.0


def test_fouling_lowers_UA_per_batch_and_cleaning_restores_it() -> None:
    f = Fouling()
    plc = Plc(PlantConfig(phases=dataclasses.replace(PlantConfig().phases, charge_time_s=0.0)), seed=0)
    seen = []
    for _ in range(30):
        plc.command("start")
        seen.append(plc.truth.UA_W_per_K)
        plc.command("abort")
        plc.command("reset")
    expected = [f.UA_clean_W_per_K * max(f.UA_min_fraction, (1 - f.loss_per_batch) ** n) for n in range(30)]
    assert seen == pytest.approx(expected, rel=1e-15)
    assert seen[-1] == f.UA_clean_W_per_K * f.UA_min_fraction
    plc.clean()
    plc.command("start")
    assert plc.truth.UA_W_per_K == f.UA_clean_W_per_K
    assert plc.batch is not None and plc.batch.batches_since_cleaning == 0


def test_charge_variation_statistics() -> None:
    cfg = PlantConfig(phases=dataclasses.replace(PlantConfig().phases, charge_time_s=0.0))
    plc = Plc(cfg, seed=5)
    recs = []
    for _ in range(400):
        plc.command("start")
        recs.append(plc.batch)
        plc.command("abort")
        plc.command("reset")
    cA0 = np.array([r.true_c_A0_mol_per_m3 for r in recs])
    T0 = np.array([r.true_T0_K for r in recs])
    act = np.array([r.true_activity for r in recs])
    rec = np.array([r.recorded_c_A0_mol_per_m3 for r in recs])
    cv = cfg.charge
    n = len(recs)
    assert abs(cA0.mean() - 1000.0) < 4 * 1000.0 * cv.c_A0_rsd / math.sqrt(n)
    assert cA0.std() / 1000.0 == pytest.approx(cv.c_A0_rsd, rel=0.15)
    assert np.all(np.abs(cA0 / 1000.0 - 1.0) <= 3 * cv.c_A0_rsd + 1e-12)
    assert T0.std() == pytest.approx(cv.T0_sd_K, rel=0.15)
    assert np.log(act).std() == pytest.approx(cv.activity_sd, rel=0.15)
    assert (rec / cA0 - 1.0).std() == pytest.approx(cv.record_rsd, rel=0.15)
    # no variation when the mismatch is off
    off = Plc(PlantConfig.ideal(phases=cfg.phases), seed=5)
    off.command("start")
    assert off.batch is not None
    assert (off.batch.true_c_A0_mol_per_m3, off.batch.true_T0_K, off.batch.true_activity) == (1000.0, 298.15, 1.0)


# -- jacket and PID ------------------------------------------------------------------------------------
def test_split_range_and_utility_limits() -> None:
    j = Jacket()
    assert split_range(0.4) == (0.4, 0.0) and split_range(-0.25) == (0.0, 0.25) and split_range(3.0) == (1.0, 0.0)
    assert utility_duty_W(1.0, j.T_hot_supply_K, j) == 0.0      # can't heat above the oil supply
    assert utility_duty_W(-1.0, j.T_cold_supply_K, j) == 0.0    # can't cool below the chilled water
    assert utility_duty_W(0.5, 353.15, j) == pytest.approx(0.5 * 2000.0 * 100.0)
    assert utility_duty_W(-0.5, 353.15, j) == pytest.approx(-0.5 * 3000.0 * 75.0)
    # the truth's inlined duty is the same function: dT_j/dt with no wall and no losses
    cfg = PlantConfig(jacket=dataclasses.replace(j, UA_ambient_W_per_K=0.0))
    c = truth_coefficients(cfg)
    for u in (-1.0, -0.3, 0.0, 0.6, 1.0):
        x = (0.0, 0.0, 0.0, 330.0, 330.0)
        assert derivatives(x, u, 0.0, 1.0, 0.0, c)[4] == pytest.approx(utility_duty_W(u, 330.0, j) / j.heat_capacity_J_per_K)


def test_pid_limits_rate_and_anti_windup() -> None:
    cfg = PlantConfig().pid
    pid = PidController(cfg, 0.1)
    outs = [pid.update(400.0, 300.0) for _ in range(3000)]  # +100 K error for 300 s
    steps = np.diff([0.0, *outs])
    assert np.all(np.abs(steps) <= cfg.rate_limit_per_s * 0.1 + 1e-15)
    assert max(outs) == 1.0
    # Back-calculation: the integral settles where e/Ti = (v - u)/(Kp Tt), i.e. v - u = Kp Tt e / Ti.
    v = cfg.Kp_per_K * (100.0 + pid.integral_K)
    assert v - 1.0 == pytest.approx(cfg.Kp_per_K * cfg.Tt_s * 100.0 / cfg.Ti_s, rel=0.02)
    # without anti-windup the integral would be e/Ti * t = 125 K; here it stays far smaller
    assert pid.integral_K < 30.0
    # ... so the output leaves saturation soon after the error reverses
    n = 0
    while pid.update(300.0, 305.0) >= 1.0:
        n += 1
    assert n < 50


def test_pid_force_is_bumpless_and_dropout_holds() -> None:
    pid = PidController(PlantConfig().pid, 0.1)
    pid.force(-1.0, 300.0, 320.0)
    assert pid.output == -1.0
    assert pid.update(300.0, 320.0) == pytest.approx(-1.0, abs=1e-3)
    held = pid.output
    assert pid.update(300.0, math.nan) == held


# -- sensors --------------------------------------------------------------------------------------------
def _sensor(spec: SensorSpec, dt: float = 0.1, seed: int = 0, **kw: float) -> TemperatureSensor:
    return TemperatureSensor(spec, dt, RandomStream(np.random.default_rng(seed)), **kw)


def test_sensor_noise_statistics_and_quantisation() -> None:
    s = _sensor(SensorSpec(tau_s=0.0, noise_sd_K=0.05, quantum_K=0.01))
    r = np.array([s.read(350.0, 0.1 * i) for i in range(20000)])
    assert abs(r.mean() - 350.0) < 4 * 0.05 / math.sqrt(len(r))
    assert r.std() == pytest.approx(math.sqrt(0.05 ** 2 + 0.01 ** 2 / 12), rel=0.03)
    assert np.all(np.abs(r * 100.0 - np.round(r * 100.0)) < 1e-6)   # multiples of 0.01 K
    assert quantise(1.234, 0.05) == pytest.approx(1.25) and quantise(1.234, 0.0) == 1.234
    coarse = _sensor(SensorSpec(tau_s=0.0, noise_sd_K=0.0, quantum_K=0.5))
    assert coarse.read(300.26, 0.0) == 300.5 and coarse.read(300.24, 0.1) == 300.0


def test_sensor_lag_is_the_exact_first_order_response() -> None:
    s = _sensor(SensorSpec(tau_s=10.0, noise_sd_K=0.0, quantum_K=0.0))
    s.reset(300.0)
    for n in range(1, 301):
        y = s.read(310.0, 0.1 * n)
        assert y == pytest.approx(300.0 + 10.0 * (1.0 - math.exp(-0.1 * n / 10.0)), abs=1e-9)
    assert y == pytest.approx(300.0 + 10.0 * (1 - math.exp(-3.0)), abs=1e-9)


def test_sensor_faults() -> None:
    spec = SensorSpec(tau_s=0.0, noise_sd_K=0.05, quantum_K=0.01)
    s = _sensor(spec, drift_K_per_s=0.005, spike_K=8.0, spike_probability_per_s=0.5)
    for i in range(10):
        s.read(350.0, 0.1 * i)
    s.set_fault(SensorFault.STUCK, 1.0)
    frozen = s.reading
    assert {s.read(350.0 + i, 1.0 + 0.1 * i) for i in range(50)} == {frozen}
    s.set_fault(SensorFault.DRIFT, 10.0)
    r = np.array([s.read(350.0, 10.0 + 0.1 * i) for i in range(2001)])
    slope = np.polyfit(0.1 * np.arange(2001), r, 1)[0]
    assert slope == pytest.approx(0.005, rel=0.02)
    s.set_fault(SensorFault.SPIKE, 300.0)
    r = np.array([s.read(350.0, 300.0 + 0.1 * i) for i in range(10000)])
    spikes = np.abs(r - 350.0) > 4.0
    assert spikes.mean() == pytest.approx(0.5 * 0.1, rel=0.15)
    assert np.allclose(np.abs(r[spikes] - 350.0), 8.0, atol=0.3)
    s.set_fault(SensorFault.DROPOUT, 2000.0)
    assert math.isnan(s.read(350.0, 2000.1))
    s.set_fault(SensorFault.NONE, 2000.2)
    assert abs(s.read(350.0, 2000.3) - 350.0) < 0.5


def test_ideal_sensor_reads_the_truth() -> None:
    s = _sensor(SensorSpec(), ideal=True)
    assert s.read(351.2345, 0.0) == 351.2345


# -- lab --------------------------------------------------------------------------------------------------
def test_lab_delay_window_and_assay_error() -> None:
    scan = 0.1
    lab = LabAssay(Lab(), scan, RandomStream(np.random.default_rng(2)))
    arrivals = [lab.draw(1000 * i, 0.0, 500.0, 200.0) - 1000 * i for i in range(3000)]
    delays = np.array(arrivals) * scan
    assert delays.min() >= 1800.0 and delays.max() <= 2700.0
    assert delays.min() < 1830.0 and delays.max() > 2670.0     # the whole window is used
    results = lab.poll(10 ** 9)
    assert len(results) == 3000 and lab.pending == 0
    rb = np.array([r.c_B_mol_per_m3 for r in results]) / 500.0
    rc = np.array([r.c_C_mol_per_m3 for r in results]) / 200.0
    for ratio in (rb, rc):
        assert abs(ratio.mean() - 1.0) < 4 * 0.015 / math.sqrt(len(ratio))
        assert 0.01 <= ratio.std() <= 0.02
        assert ratio.std() == pytest.approx(0.015, rel=0.1)
    arr = [r.arrival_plant_time_s for r in results]
    assert arr == sorted(arr)


def test_lab_results_arrive_in_order_and_only_when_due() -> None:
    lab = LabAssay(Lab(rsd=0.0), 1.0, RandomStream(np.random.default_rng(0)), exact=True)
    a1 = lab.draw(0, 0.0, 10.0, 1.0)
    a2 = lab.draw(600, 600.0, 20.0, 2.0)
    assert lab.poll(min(a1, a2) - 1) == []
    first = lab.poll(min(a1, a2))
    assert len(first) == 1 and first[0].c_B_mol_per_m3 in (10.0, 20.0)
    assert [r.c_B_mol_per_m3 for r in lab.poll(max(a1, a2))] != []
    assert lab.pending == 0


def test_alarm_config_consistency() -> None:
    a = Alarms()
    assert a.T_high_alarm_K < a.T_trip_K
