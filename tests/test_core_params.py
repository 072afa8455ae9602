"""Tables of bad parameters, recipes and configurations: each is refused with an error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin_core import ParameterError, ParameterTypeError, Tolerance, load_params, load_recipe
from twin_core.analysis import Economics
from twin_core.offline.optimize import OptimizerConfig
from twin_core.params import ModelParams
from twin_core.recipe import Recipe

BAD_PARAMS = [
    # (TOML text, field named by the error)
    ("[kinetics]\nk1_ref_per_s = nan", "kinetics.k1_ref_per_s"),
    ("[kinetics]\nk2_ref_per_s = -5.5e-5", "kinetics.k2_ref_per_s"),
    ("[kinetics]\nk2_ref_per_s = 0.0", "kinetics.k2_ref_per_s"),
    ("[kinetics]\nE1_J_per_mol = inf", "kinetics.E1_J_per_mol"),
    ("[kinetics]\nE2_J_per_mol = -1.0", "kinetics.E2_J_per_mol"),
    ("[kinetics]\nT_ref_K = 0.0", "kinetics.T_ref_K"),
    ("[kinetics]\nT_ref_K = 80.0", "kinetics.T_ref_K"),  # degC given as K
    ("[kinetics]\ndH1_J_per_mol = nan", "kinetics.dH1_J_per_mol"),
    ("[reactor]\nvolume_m3 = 0.0", "reactor.volume_m3"),
    ("[reactor]\nvolume_m3 = -2.0", "reactor.volume_m3"),
    ("[reactor]\ndensity_kg_per_m3 = nan", "reactor.density_kg_per_m3"),
    ("[reactor]\nheat_capacity_J_per_kg_K = 0", "reactor.heat_capacity_J_per_kg_K"),
    ("[reactor]\nUA_W_per_K = -1.0", "reactor.UA_W_per_K"),
    ("[charge]\nc_A0_mol_per_m3 = 0.0", "charge.c_A0_mol_per_m3"),
    ("[charge]\nc_B0_mol_per_m3 = -1.0", "charge.c_B0_mol_per_m3"),
    ("[charge]\nT0_K = -10.0", "charge.T0_K"),
    ("[charge]\nT0_K = 0.0", "charge.T0_K"),
    ("[reactor]\nvolume_l = 2000.0", "reactor.volume_l"),  # unknown key
    ("[reactor]\nUA_W_per_K = 1500.0\nua = 1.0", "reactor.ua"),  # unknown key next to a good one
    ("[jacket]\nUA_W_per_K = 1500.0", "jacket"),  # unknown section
]

BAD_TYPES = [
    ("[reactor]\nvolume_m3 = \"2\"", "reactor.volume_m3"),
    ("[charge]\nT0_K = true", "charge.T0_K"),
    ("[kinetics]\nk1_ref_per_s = [1.0]", "kinetics.k1_ref_per_s"),
    ("reactor = 2.0", "reactor"),
]


def test_good_parameter_file_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[reactor]\nvolume_m3 = 1.5\n[kinetics]\nE2_J_per_mol = 95000\n", encoding="utf-8")
    p = load_params(f)
    assert p.reactor.volume_m3 == 1.5 and p.kinetics.E2_J_per_mol == 95000.0
    assert p.reactor.UA_W_per_K == ModelParams().reactor.UA_W_per_K  # missing keys keep their defaults


GOOD_STEPS = 'name = "r"\nmode = "jacket"\nT_start_K = 298.15\nend_time_s = 7200\n'
BAD_RECIPES = [
    (GOOD_STEPS + "[[steps]]\naction = \"ramp\"\ntarget_K = 343.15\nduration_s = -10", "recipe.steps[0].duration_s"),
    (GOOD_STEPS + "[[steps]]\naction = \"hold\"\nduration_s = 0", "recipe.steps[0].duration_s"),
    (GOOD_STEPS + "[[steps]]\naction = \"ramp\"\ntarget_K = nan\nduration_s = 60", "recipe.steps[0].target_K"),
    (GOOD_STEPS + "[[steps]]\naction = \"ramp\"\ntarget_K = 0.0\nduration_s = 60", "recipe.temps_K[1]"),
    (GOOD_STEPS + "[[steps]]\naction = \"boil\"\nduration_s = 60", "recipe.steps[0].action"),
    (GOOD_STEPS + "[[steps]]\naction = \"hold\"\nduration_s = 60\nspeed = 1", "recipe.steps[0].speed"),
    (GOOD_STEPS + "[[steps]]\naction = \"ramp\"\ntarget_K = 343.15", "recipe.steps[0].duration_s"),
    (GOOD_STEPS + "[[steps]]\naction = \"ramp\"\ntarget_K = 343.15\nrate_K_per_s = -0.1", "recipe.steps[0].rate_K_per_s"),
    (GOOD_STEPS + "jacket_gain = 2.0", "recipe.jacket_gain"),  # unknown key
    ('end_time_s = 100\npoints = [[0.0, 300.0], [50.0, 310.0], [40.0, 320.0]]', "recipe.times_s[2]"),  # non-monotonic
    ('end_time_s = 100\npoints = [[0.0, 300.0], [50.0, 310.0], [50.0, 320.0]]', "recipe.times_s[2]"),  # repeated time
    ('end_time_s = 100\npoints = [[10.0, 300.0], [50.0, 310.0]]', "recipe.times_s[0]"),  # not from t = 0
    ('end_time_s = 100\npoints = [[0.0, -300.0]]', "recipe.temps_K[0]"),
    ('end_time_s = 0\npoints = [[0.0, 300.0]]', "recipe.end_time_s"),
    ('end_time_s = nan\npoints = [[0.0, 300.0]]', "recipe.end_time_s"),
    ('mode = "reactor"\npoints = [[0.0, 300.0]]', "recipe.end_time_s"),  # missing
    ('mode = "vessel"\nend_time_s = 100\npoints = [[0.0, 300.0]]', "recipe.mode"),
    ('end_time_s = 100\npoints = [[0.0, 300.0, 1.0]]', "recipe.points"),
    ('end_time_s = 100\nT_start_K = 300.0\npoints = [[0.0, 300.0]]', "recipe.points"),
]
BAD_RECIPE_TYPES = [
    ('end_time_s = "1 h"\npoints = [[0.0, 300.0]]', "recipe.end_time_s"),
    ('end_time_s = 100\npoints = [[0.0, "hot"]]', "recipe.temps_K[0]"),
    ('end_time_s = 100\nT_start_K = true', "recipe.T_start_K"),
]


FILE_CASES = ([(load_params, t, f, ParameterError) for t, f in BAD_PARAMS]
              + [(load_params, t, f, ParameterTypeError) for t, f in BAD_TYPES]
              + [(load_recipe, t, f, ParameterError) for t, f in BAD_RECIPES]
              + [(load_recipe, t, f, ParameterTypeError) for t, f in BAD_RECIPE_TYPES])


@pytest.mark.parametrize(("loader", "text", "field", "error"), FILE_CASES)
def test_bad_file_names_the_field(tmp_path: Path, loader, text: str, field: str, error: type) -> None:
    """A bad value is a ParameterError (a ValueError), a wrong type a ParameterTypeError (a TypeError)."""
    f = tmp_path / "in.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(error) as exc:
        loader(f)
    assert exc.value.field == field
    assert isinstance(exc.value, ValueError if error is ParameterError else TypeError)


def test_not_toml_is_a_parameter_error(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text("end_time_s = = 3", encoding="utf-8")
    with pytest.raises(ParameterError):
        load_recipe(f)
    with pytest.raises(ParameterError):
        load_params(f)


def test_recipe_toml_round_trip_is_exact(tmp_path: Path) -> None:
    r = Recipe((0.0, 1234.5678901234567, 7200.0 / 7.0 * 3), (298.15, 1.0 / 3.0 + 340.0, 330.1), 10 * 3600.0 / 3.0,
               mode="jacket", name="thirds")
    f = tmp_path / "r.toml"
    f.write_text(r.to_toml(), encoding="utf-8")
    assert load_recipe(f) == r


BAD_ECONOMICS = [
    ({"value_B_per_mol": 0.0}, "economics.value_B_per_mol"),
    ({"value_B_per_mol": float("nan")}, "economics.value_B_per_mol"),
    ({"cost_per_h": -1.0}, "economics.cost_per_h"),
    ({"cost_per_h": float("inf")}, "economics.cost_per_h"),
    ({"turnaround_s": -60.0}, "economics.turnaround_s"),
    ({"impurity_spec_fraction": 0.0}, "economics.impurity_spec_fraction"),
    ({"impurity_spec_fraction": 1.5}, "economics.impurity_spec_fraction"),
]


@pytest.mark.parametrize(("kwargs", "field"), BAD_ECONOMICS)
def test_bad_economics(kwargs: dict, field: str) -> None:
    with pytest.raises(ParameterError) as exc:
        Economics(**kwargs)
    assert exc.value.field == field


def test_economics_wrong_type() -> None:
    with pytest.raises(ParameterTypeError) as exc:
        Economics(cost_per_h="400")  # type: ignore[arg-type]
    assert exc.value.field == "economics.cost_per_h"


BAD_OPTIMIZER = [
    ({"n_segments": 0}, "optimizer.n_segments", ParameterError),
    ({"n_segments": 2.0}, "optimizer.n_segments", ParameterTypeError),
    ({"T_jacket_min_K": 20.0}, "optimizer.T_jacket_min_K", ParameterError),
    ({"T_jacket_max_K": 280.0}, "optimizer.T_jacket_max_K", ParameterError),
    ({"ramp_max_K_per_s": 0.0}, "optimizer.ramp_max_K_per_s", ParameterError),
    ({"T_max_K": float("nan")}, "optimizer.T_max_K", ParameterError),
    ({"t_end_min_s": 7200.0, "t_end_max_s": 3600.0}, "optimizer.t_end_max_s", ParameterError),
    ({"objective": "speed"}, "optimizer.objective", ParameterError),
    ({"n_samples": 5}, "optimizer.n_samples", ParameterError),
    ({"economics": 3.0}, "optimizer.economics", ParameterTypeError),
]


@pytest.mark.parametrize(("kwargs", "field", "exc_type"), BAD_OPTIMIZER)
def test_bad_optimizer_config(kwargs: dict, field: str, exc_type: type) -> None:
    with pytest.raises(exc_type) as exc:
        OptimizerConfig(**kwargs)
    assert exc.value.field == field


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"rtol": 0.0}, "tolerance.rtol"),
    ({"rtol": float("nan")}, "tolerance.rtol"),
    ({"atol": (1e-6, 0.0, 1e-6, 1e-6)}, "tolerance.atol[1]"),
    ({"atol": (1e-6, 1e-6, 1e-6, float("inf"))}, "tolerance.atol[3]"),
])
def test_bad_tolerance(kwargs: dict, field: str) -> None:
    with pytest.raises(ParameterError) as exc:
        Tolerance(**kwargs)
    assert exc.value.field == field


def test_example_recipes_load_and_simulate() -> None:
    from twin_core import DEFAULT_RECIPE, Twin

    folder = Path(__file__).resolve().parents[1] / "twin_core" / "recipes"
    files = sorted(folder.glob("*.toml"))
    assert len(files) >= 3
    for f in files:
        r = load_recipe(f)
        tr = Twin().simulate(r, dt_out_s=300.0)
        assert tr.t_s[-1] == r.end_time_s
    ramp = load_recipe(folder / "ramp_to_70C.toml")
    assert (ramp.end_time_s, ramp.mode) == (DEFAULT_RECIPE.end_time_s, DEFAULT_RECIPE.mode)
    # The same programme (the steps form adds a breakpoint at the end of the hold).
    assert all(ramp.setpoint(t) == DEFAULT_RECIPE.setpoint(t) for t in range(0, 21601, 60))
