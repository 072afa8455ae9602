"""The FMU in a plain C FMI 2.0 master (tests/test_fmu_host.c), compiled here with the system C
compiler against FMPy's FMI headers and run with an EMPTY environment: no LD_PRELOAD, no
PYTHONPATH, no PYTHONHOME. The loader finds Python from the FMU's own resources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_fmu_helpers import (
    T_STEP_S,
    U0_K,
    U1_K,
    VARIANT_START,
    FmuBuilds,
    read_host_csv,
    reference,
    simulate_fmpy,
)

OUT = ("c_A", "c_B", "c_C", "T")


def _opts(fmus: FmuBuilds, kind: str, stop: float = 3600.0, dt: float = 60.0, u1: float = U1_K) -> list[str]:
    _, _, vr = fmus.model(kind)
    return ["--stop", repr(stop), "--dt", repr(dt), "--in", str(vr["T_jacket"]),
            "--out", ",".join(str(vr[n]) for n in OUT), "--step", f"{T_STEP_S!r}:{U0_K!r}:{u1!r}"]


def _ok(proc) -> None:  # noqa: ANN001
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"


@pytest.mark.parametrize("kind", ["physics", "hybrid"])
def test_c_host_csv_equals_fmpy(fmus: FmuBuilds, kind: str, tmp_path: Path) -> None:
    stop, dt = 3600.0, 60.0
    csv = tmp_path / "out.csv"
    proc = fmus.run_host(kind, csv, *_opts(fmus, kind, stop, dt))
    _ok(proc)
    got = read_host_csv(csv)[0]
    want = simulate_fmpy(fmus.fmu(kind), stop, dt)
    # Same FMU code, same inputs, same doubles: the C master reproduces FMPy's run exactly.
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_twenty_consecutive_runs_exit_cleanly(fmus: FmuBuilds, tmp_path: Path) -> None:
    """No crash at exit: the interpreter is never finalised, numpy/onnxruntime stay loaded."""
    for i in range(20):
        csv = tmp_path / f"run{i}.csv"
        proc = fmus.run_host("hybrid", csv, *_opts(fmus, "hybrid", stop=600.0))
        _ok(proc)
        assert "done errors_logged=0" in proc.stdout
    first = read_host_csv(tmp_path / "run0.csv")[0]
    assert np.array_equal(first, read_host_csv(tmp_path / "run19.csv")[0])


@pytest.mark.parametrize("threads", [False, True])
def test_several_instances_in_one_c_process(fmus: FmuBuilds, threads: bool, tmp_path: Path) -> None:
    """Instance k gets U1 + 5 k; in lockstep from one thread, or each from its own host thread
    (one Python thread state per host thread)."""
    stop, dt, n = 2400.0, 60.0, 4
    csv = tmp_path / "multi.csv"
    proc = fmus.run_host("physics", csv, *_opts(fmus, "physics", stop, dt), "--instances", str(n),
                         *(["--threads"] if threads else []))
    _ok(proc)
    rows = read_host_csv(csv)
    assert sorted(rows) == list(range(n))
    for k in range(n):
        np.testing.assert_allclose(rows[k], reference(stop, dt, u1=U1_K + 5.0 * k), rtol=1e-9, atol=0.0)


def test_unload_and_reload_the_library_then_run_again(fmus: FmuBuilds, tmp_path: Path) -> None:
    """Simulink's second run (pythonfmu #222): free, dlclose, dlopen, instantiate, run."""
    csv = tmp_path / "reload.csv"
    proc = fmus.run_host("hybrid", csv, *_opts(fmus, "hybrid", stop=1200.0), "--reload")
    _ok(proc)
    data = np.loadtxt(csv, delimiter=",", ndmin=2)
    first, second = data[: len(data) // 2], data[len(data) // 2:]
    assert len(first) == 21
    np.testing.assert_array_equal(first, second)


def test_restore_and_continue_bit_identical_in_c_host(fmus: FmuBuilds, tmp_path: Path) -> None:
    proc = fmus.run_host("hybrid", tmp_path / "state.csv", *_opts(fmus, "hybrid", stop=3600.0),
                         "--state-check", "1200")
    _ok(proc)
    assert "identical=1" in proc.stdout


@pytest.mark.parametrize("bad", ["nan", "inf", "600", "-1"])
def test_bad_input_in_c_host_is_refused_and_the_host_carries_on(fmus: FmuBuilds, bad: str, tmp_path: Path) -> None:
    _, _, vr = fmus.model("physics")
    csv = tmp_path / "bad.csv"
    proc = fmus.run_host("physics", csv, *_opts(fmus, "physics", stop=600.0), "--bad", f"{vr['T_jacket']}={bad}")
    _ok(proc)
    assert "bad status=3" in proc.stdout
    assert "T_jacket=" in proc.stderr and "refused" in proc.stderr
    np.testing.assert_allclose(read_host_csv(csv)[0], reference(600.0, 60.0), rtol=1e-9, atol=0.0)


def test_two_builds_in_one_c_process_each_run_their_own_code(fmus: FmuBuilds, tmp_path: Path) -> None:
    """pythonfmu #228: same module names in two FMUs collide. Here every build has its own package;
    the variant build bakes in other start values, so a collision would show in its results."""
    from twin_core.params import ModelParams

    stop, dt = 2400.0, 60.0
    csv = tmp_path / "two.csv"
    mi_a, guid_a, vr_a = fmus.model("physics")
    mi_b, guid_b, vr_b = fmus.model("variant")
    assert vr_a == vr_b
    args = [str(fmus.host()), str(fmus.extracted("physics")), mi_a, guid_a, str(csv), *_opts(fmus, "physics", stop, dt),
            "--second", f"{fmus.extracted('variant')}|{mi_b}|{guid_b}"]
    proc = subprocess.run(args, env={}, capture_output=True, text=True, timeout=120)
    _ok(proc)
    rows = read_host_csv(csv)
    np.testing.assert_allclose(rows[0], reference(stop, dt), rtol=1e-9, atol=0.0)
    variant = ModelParams().replace(k1_ref_per_s=VARIANT_START["k1_ref"], T0_K=VARIANT_START["T0"])
    np.testing.assert_allclose(rows[1], reference(stop, dt, params=variant), rtol=1e-9, atol=0.0)
    assert not np.allclose(rows[0], rows[1])


def test_python_home_override_with_a_virtual_environment(fmus: FmuBuilds, tmp_path: Path) -> None:
    """BATCHTWIN_PYTHON_HOME pointing at a venv: the loader derives libpython and site-packages."""
    venv = Path(sys.prefix)
    assert (venv / "pyvenv.cfg").is_file(), "the tests run in the project's virtual environment"
    csv = tmp_path / "venv.csv"
    proc = fmus.run_host("hybrid", csv, *_opts(fmus, "hybrid", stop=600.0), env={"BATCHTWIN_PYTHON_HOME": str(venv)})
    _ok(proc)
    np.testing.assert_array_equal(read_host_csv(csv)[0], simulate_fmpy(fmus.fmu("hybrid"), 600.0, 60.0))


@pytest.mark.parametrize(("env", "words"), [
    ({"BATCHTWIN_PYTHON_HOME": "/nonexistent/python"}, ["BATCHTWIN_PYTHON_HOME", "not a folder"]),
    ({"BATCHTWIN_LIBPYTHON": "/nonexistent/libpython3.11.so"}, ["cannot load the Python library",
                                                                  "BATCHTWIN_PYTHON_HOME"]),
])
def test_a_wrong_python_is_reported_not_crashed(fmus: FmuBuilds, env: dict, words: list[str], tmp_path: Path) -> None:
    proc = fmus.run_host("physics", tmp_path / "x.csv", *_opts(fmus, "physics", stop=60.0), env=env)
    assert proc.returncode == 2, proc.stderr  # the host's own "fmi2Instantiate failed" exit, no signal
    assert "fmi2Instantiate failed" in proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def _prefix_without_libpython(tmp: Path) -> Path:
    (tmp / "lib" / "python3.11" / "encodings").mkdir(parents=True)
    return tmp


def _prefix_without_stdlib(tmp: Path) -> Path:
    import sysconfig

    (tmp / "lib").mkdir(parents=True)
    lib = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
    (tmp / "lib" / lib.name).symlink_to(lib)
    return tmp


@pytest.mark.parametrize(("make", "words"), [
    (_prefix_without_libpython, ["BATCHTWIN_PYTHON_HOME=", "no libpython3.11.so under", "BATCHTWIN_LIBPYTHON"]),
    (_prefix_without_stdlib, ["BATCHTWIN_PYTHON_HOME=", "no Python 3.11 standard library"]),
])
def test_a_python_prefix_that_cannot_work_is_named_and_no_other_libpython_is_loaded(fmus: FmuBuilds, make, words,  # noqa: ANN001
                                                                                   tmp_path: Path) -> None:
    """The issue's case: a wrong prefix used to load another libpython quietly and fail with "failed
    to get the Python codec". Now the loader says what is missing under BATCHTWIN_PYTHON_HOME."""
    prefix = make(tmp_path / "prefix")
    proc = fmus.run_host("physics", tmp_path / "x.csv", *_opts(fmus, "physics", stop=60.0),
                         env={"BATCHTWIN_PYTHON_HOME": str(prefix)})
    assert proc.returncode == 2, proc.stderr
    assert "codec" not in proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr
