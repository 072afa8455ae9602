#!/usr/bin/env python3
"""Benchmark of the two FMUs: the native one (BatchReactorTwinNative, C, no Python) against the
Python one (BatchReactorTwin) and an empty FMU, all measured in the same run (issue #13).

    .venv/bin/python benchmarks/bench_fmu.py [--steps N] [--repeat N] [--instances N]

Goals (issue #13): native hybrid 1-s step in a C host <= 1 us; in FMPy within 1.5x of an empty
FMU's step; a 10 h batch at 1-s steps in a C host <= 50 ms; >= 20x faster than the Python FMU's
hybrid step.

1. Per 1-s step through FMPy (fmi2SetReal of the two inputs, fmi2DoStep 1 s, fmi2GetReal of five
   outputs, arrays allocated once): the empty FMU (the native FMU compiled with -DBT_EMPTY_STEP: the
   step only checks its arguments and advances time), physics, hybrid, and soft-sensor mode (both
   FMUs; the measured temperature is the physics twin's plus a ripple, a filter step every 10 s).
2. The same per-step cost inside the C test host (tests/test_fmu_host.c --bench; in soft-sensor mode
   the readings come from --inputs, one fmi2SetReal per step): no Python at all.
3. A 10 h batch at 1-s steps in the C host (36,000 doSteps; the CSV is written after the clock stops),
   also in soft-sensor mode.
4. Resident memory per extra instance in one C process.

Times are the minimum of --repeat runs. The machine is shared (2 cores, several jobs): wall-clock
figures are noisy, so the C host also reports its thread's CPU time (--cpu-time), which a loaded
machine inflates far less. The forecast is off (forecast_interval = 0) unless a line says otherwise.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fmu.build import BuildOptions, build_fmu, default_correction  # noqa: E402
from fmu.native_build import NATIVE_MODEL_NAME, SOURCE_FILES, build_native_fmu  # noqa: E402

OUT = ("c_A", "c_B", "c_C", "T", "yield_B")


def fmpy_per_step(fmu_dir: Path, md, n: int, booleans: dict[str, bool], reals: dict[str, float]) -> float:  # noqa: ANN001
    """Mean wall time [s] of one (fmi2SetReal inputs, fmi2DoStep 1 s, fmi2GetReal outputs) in FMPy."""
    from ctypes import c_double, c_uint

    from fmpy.fmi2 import FMU2Slave

    vr = {v.name: v.valueReference for v in md.modelVariables}
    s = FMU2Slave(guid=md.guid, unzipDirectory=str(fmu_dir), modelIdentifier=md.coSimulation.modelIdentifier,
                  instanceName="bench")
    s.instantiate()
    s.setupExperiment(startTime=0.0)
    s.enterInitializationMode()
    for k, v in booleans.items():
        s.setBoolean([vr[k]], [v])
    for k, v in reals.items():
        s.setReal([vr[k]], [v])
    s.exitInitializationMode()
    vr_in, val_in = (c_uint * 2)(vr["T_jacket"], vr["T_measured"]), (c_double * 2)()
    outs = [vr[k] for k in OUT]
    vr_out, val_out = (c_uint * len(outs))(*outs), (c_double * len(outs))()
    t_meas = measured_temperatures(n) if booleans.get("estimator_on") else [298.15] * n
    t0 = time.perf_counter()
    time_s = 0.0
    for i in range(n):
        nxt = float(i + 1)
        val_in[0], val_in[1] = (343.15 if i >= 600 else 298.15), t_meas[i]
        s.fmi2SetReal(s.component, vr_in, 2, val_in)
        s.fmi2DoStep(s.component, time_s, nxt - time_s, 1)
        s.fmi2GetReal(s.component, vr_out, len(outs), val_out)
        time_s = nxt
    dt = (time.perf_counter() - t0) / n
    s.terminate()
    s.freeInstance()
    return dt


_MEASURED: dict[int, list[float]] = {}


def measured_temperatures(n: int) -> list[float]:
    """What a transmitter would read: the physics twin's T at every 1-s step plus a small ripple."""
    if n not in _MEASURED:
        from twin_core.hybrid import HybridTwin

        twin = HybridTwin()
        st = twin.initial_state()
        out = []
        for i in range(n):
            st = twin.step(st, float(i), 1.0, 343.15 if i >= 600 else 298.15)
            out.append(st.x[3] + 0.02 * math.sin(i / 7.0))
        _MEASURED[n] = out
    return _MEASURED[n]


def host_binary(folder: Path) -> Path:
    import fmpy

    exe = folder / "fmi2_host"
    subprocess.run([shutil.which("cc") or "gcc", "-O2", f"-I{Path(fmpy.__file__).parent / 'c-code'}",
                    str(ROOT / "tests" / "test_fmu_host.c"), "-o", str(exe), "-ldl", "-lpthread"], check=True)
    return exe


def run_host(exe: Path, fmu_dir: Path, md, *args: str) -> str:  # noqa: ANN001
    proc = subprocess.run([str(exe), str(fmu_dir), md.coSimulation.modelIdentifier, md.guid, "/dev/null", *args],
                          env={}, capture_output=True, text=True, check=True)
    return proc.stdout


def empty_fmu(native_dir: Path, folder: Path) -> Path:
    """A copy of the native FMU whose binary is compiled from its sources with -DBT_EMPTY_STEP."""
    out = folder / "empty"
    shutil.copytree(native_dir, out)
    so = out / "binaries" / "linux64" / f"{NATIVE_MODEL_NAME}.so"
    src = out / "sources"
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-DBT_EMPTY_STEP", f"-I{src}", *[str(src / f) for f in SOURCE_FILES],
                    "-o", str(so), "-lm"], check=True)
    return out


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20000, help="1-s steps per native measurement (Python FMU: 1/10)")
    ap.add_argument("--repeat", type=int, default=3, help="repeats per measurement (the minimum is reported)")
    ap.add_argument("--instances", type=int, default=50, help="instances for the memory measurement")
    args = ap.parse_args()
    from fmpy import extract, read_model_description
    from test_fmu_helpers import synthetic_correction

    rep, n = args.repeat, args.steps
    n_py = max(500, n // 10)
    with tempfile.TemporaryDirectory(prefix="bench_fmu_") as tmp:
        folder = Path(tmp)
        corr = default_correction() or synthetic_correction(folder)
        print(f"correction: {corr if corr == default_correction() else 'synthetic (no dist/correction.onnx)'}")
        print(f"machine load average at start: {Path('/proc/loadavg').read_text().split()[0]} (2 cores, shared)")
        py_path = build_fmu(BuildOptions(out=folder / "BatchReactorTwin.fmu", correction=corr))
        nat_path = build_native_fmu(BuildOptions(out=folder / f"{NATIVE_MODEL_NAME}.fmu", correction=corr,
                                                 model_identifier=NATIVE_MODEL_NAME))
        fmus = {}
        for key, path in (("python", py_path), ("native", nat_path)):
            fmus[key] = (Path(extract(str(path), unzipdir=str(folder / key))), read_model_description(str(path)))
        fmus["empty"] = (empty_fmu(fmus["native"][0], folder), fmus["native"][1])

        off = {"forecast_interval": 0.0}
        cases = [("empty FMU (baseline)", "empty", {}, off),
                 ("native physics", "native", {"correction_on": False}, off),
                 ("native hybrid", "native", {"correction_on": True}, off),
                 ("native hybrid + forecast/300 s", "native", {"correction_on": True}, {}),
                 ("Python physics", "python", {"correction_on": False}, off),
                 ("Python hybrid", "python", {"correction_on": True}, off),
                 ("native physics + soft sensor", "native", {"correction_on": False, "estimator_on": True}, off),
                 ("native hybrid + soft sensor", "native", {"correction_on": True, "estimator_on": True}, off),
                 ("native hybrid + soft sensor + forecast/300 s", "native", {"correction_on": True,
                                                                             "estimator_on": True}, {}),
                 ("Python physics + soft sensor", "python", {"correction_on": False, "estimator_on": True}, off),
                 ("Python hybrid + soft sensor", "python", {"correction_on": True, "estimator_on": True}, off),
                 ("Python hybrid + soft sensor + forecast/300 s", "python", {"correction_on": True,
                                                                             "estimator_on": True}, {})]

        print(f"\n1. per 1-s step through FMPy (fmi2SetReal 2 inputs + fmi2DoStep + fmi2GetReal {len(OUT)} outputs), "
              f"{n} steps ({n_py} for the Python FMU), wall clock, minimum of {rep}")
        fmpy_t = {}
        for label, key, booleans, reals in cases:
            d, md = fmus[key]
            steps = n if key != "python" else n_py
            fmpy_t[label] = min(fmpy_per_step(d, md, steps, booleans, reals) for _ in range(rep))
            print(f"   {label:44s} {fmpy_t[label] * 1e6:9.2f} us")
        empty = fmpy_t["empty FMU (baseline)"]
        r_fmpy = fmpy_t["native hybrid"] / empty
        print(f"   native hybrid / empty FMU: {r_fmpy:.2f}x; Python hybrid / native hybrid: "
              f"{fmpy_t['Python hybrid'] / fmpy_t['native hybrid']:.1f}x")
        for mode in ("physics + soft sensor", "hybrid + soft sensor", "hybrid + soft sensor + forecast/300 s"):
            print(f"   Python {mode} / native {mode}: {fmpy_t['Python ' + mode] / fmpy_t['native ' + mode]:.1f}x")

        exe = host_binary(folder)
        readings = folder / "readings.txt"  # the soft sensor's T_measured per 1-s step (--inputs)
        vr_meas = {v.name: v.valueReference for v in fmus["native"][1].modelVariables}["T_measured"]
        readings.write_text("".join(f"{float(i)!r} R {vr_meas} {float(v)!r}\n"
                                    for i, v in enumerate(measured_temperatures(36000))))
        print(f"\n2. per 1-s step inside the C host (set + doStep + get), {n} calls each, minimum of {rep}")
        host_t = {}
        for label, key, booleans, reals in cases:
            if "forecast" in label:
                continue
            d, md = fmus[key]
            vr = {v.name: v.valueReference for v in md.modelVariables}
            flags = ["--in", str(vr["T_jacket"]), "--out", ",".join(str(vr[k]) for k in OUT),
                     *[a for k, v in reals.items() for a in ("--set", f"{vr[k]}={v}")],
                     *[a for k, v in booleans.items() for a in ("--setb", f"{vr[k]}={int(v)}")]]
            if booleans.get("estimator_on"):  # the readings of every step, T_measured at its start value before
                flags += ["--set", f"{vr['T_measured']}=298.15", "--inputs", str(readings)]
            calls = n if key != "python" else n_py
            per = {}
            for clock in ("wall", "cpu"):
                best = math.inf
                for _ in range(rep):
                    out = run_host(exe, d, md, *flags, "--bench", str(calls), *(["--cpu-time"] if clock == "cpu" else []))
                    m = dict((k, float(v)) for k, v in re.findall(r"(\w+_ns)=([0-9.]+)", out))
                    best = min(best, m["do_step_ns"] + m["set_real_ns"] + m[f"get_real_{len(OUT)}_ns"])
                per[clock] = best
            host_t[label] = per
            print(f"   {label:44s} {per['wall'] / 1e3:9.3f} us wall   {per['cpu'] / 1e3:9.3f} us CPU")
        for mode in ("physics + soft sensor", "hybrid + soft sensor"):
            print(f"   Python {mode} / native {mode} (CPU): "
                  f"{host_t['Python ' + mode]['cpu'] / host_t['native ' + mode]['cpu']:.0f}x")

        print("\n3. a 10 h batch at 1-s steps in the C host (36,000 steps, jacket 25 -> 70 degC at 1 h)")
        batch = {}
        for label, key, booleans, reals in (("native physics", "native", {"correction_on": False}, off),
                                            ("native hybrid", "native", {"correction_on": True}, off),
                                            ("native hybrid + forecast/300 s", "native", {"correction_on": True}, {}),
                                            ("native hybrid + soft sensor", "native",
                                             {"correction_on": True, "estimator_on": True}, off),
                                            ("native hybrid + soft sensor + forecast/300 s", "native",
                                             {"correction_on": True, "estimator_on": True}, {}),
                                            ("Python hybrid", "python", {"correction_on": True}, off)):
            d, md = fmus[key]
            vr = {v.name: v.valueReference for v in md.modelVariables}
            flags = ["--in", str(vr["T_jacket"]), "--out", str(vr["c_B"]), "--stop", "36000", "--dt", "1",
                     "--step", "3600:298.15:343.15",
                     *[a for k, v in reals.items() for a in ("--set", f"{vr[k]}={v}")],
                     *[a for k, v in booleans.items() for a in ("--setb", f"{vr[k]}={int(v)}")]]
            if booleans.get("estimator_on"):
                flags += ["--set", f"{vr['T_measured']}=298.15", "--inputs", str(readings)]
            wall = min(float(re.search(r"run_ns=(\d+)", run_host(exe, d, md, *flags)).group(1)) for _ in range(rep))
            cpu = min(float(re.search(r"run_ns=(\d+)", run_host(exe, d, md, *flags, "--cpu-time")).group(1))
                      for _ in range(rep))
            batch[label] = (wall, cpu)
            print(f"   {label:44s} {wall / 1e6:9.1f} ms wall   {cpu / 1e6:9.1f} ms CPU")

        print(f"\n4. resident memory per extra instance in one C process ({args.instances} instances, 1 h of 1-s steps)")
        for label, key, est in (("native hybrid", "native", False), ("native hybrid + soft sensor", "native", True),
                                ("Python hybrid", "python", False)):
            d, md = fmus[key]
            vr = {v.name: v.valueReference for v in md.modelVariables}
            common = ["--in", str(vr["T_jacket"]), "--out", str(vr["c_B"]), "--stop", "3600", "--dt", "1",
                      "--setb", f"{vr['correction_on']}=1", "--set", f"{vr['forecast_interval']}=0"]
            if est:
                common += ["--setb", f"{vr['estimator_on']}=1", "--set", f"{vr['T_measured']}=298.15",
                           "--inputs", str(readings)]
            one = run_host(exe, d, md, *common, "--instances", "1")
            many = run_host(exe, d, md, *common, "--instances", str(args.instances))
            r1 = int(re.search(r"after_run=(\d+)", one).group(1))
            rn = int(re.search(r"after_run=(\d+)", many).group(1))
            per = (rn - r1) / (args.instances - 1)
            host_rows = 3601 * 2 * 8 / 1024  # the host's own recording buffer per instance (t, c_B per step)
            print(f"   {label:28s} process with one instance {r1 / 1024:6.1f} MB; each further instance "
                  f"{per:7.1f} kB, of which {host_rows:.1f} kB the host's recording -> {per - host_rows:7.1f} kB "
                  f"the FMU's")

        nh, ph = host_t["native hybrid"], host_t["Python hybrid"]
        print("\ngoals (issue #13):")
        print(f"   hybrid step in a C host <= 1 us: {nh['cpu'] / 1e3:.3f} us CPU -> {verdict(nh['cpu'] <= 1000)}; "
              f"{nh['wall'] / 1e3:.3f} us wall -> {verdict(nh['wall'] <= 1000)}")
        print(f"   hybrid step in FMPy within 1.5x of an empty FMU's: {r_fmpy:.2f}x -> {verdict(r_fmpy <= 1.5)}")
        w, c = batch["native hybrid"]
        print(f"   10 h batch in a C host <= 50 ms: {c / 1e6:.1f} ms CPU -> {verdict(c <= 50e6)}; "
              f"{w / 1e6:.1f} ms wall -> {verdict(w <= 50e6)}")
        r_py_host, r_py_fmpy = ph["cpu"] / nh["cpu"], fmpy_t["Python hybrid"] / fmpy_t["native hybrid"]
        print(f"   >= 20x faster than the Python FMU's hybrid step: {r_py_host:.0f}x in the C host (CPU), "
              f"{r_py_fmpy:.1f}x in FMPy -> {verdict(min(r_py_host, r_py_fmpy) >= 20)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
