"""Report sections on what was validated and how it is deployed: the identity of every artifact
(git revision, data-set hash, correction version, FMU GUIDs), the FMUs in their hosts, OPC UA and
security conformance (the tests, run now), performance, and the traceability of the README's claims."""

from __future__ import annotations

import ast
import json
import re
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from twin_core.offline.report import ROOT, Context, Unavailable, machine, md_table, quiet, run

C0 = 273.15
NATIVE_FMU = ROOT / "dist" / "BatchReactorTwinNative.fmu"


def native_fmu(ctx: Context) -> tuple[Path | None, str]:
    """The native FMU to report on and where it came from: dist/ when built there, else a fresh
    ``twin build-fmu --native`` of the shipped correction into a temporary folder (None: not in this build)."""
    def make() -> tuple[Path | None, str]:
        if NATIVE_FMU.is_file():
            return NATIVE_FMU, "dist/"
        try:
            nb = ctx.need("fmu.native_build", "the native FMU (twin build-fmu --native, issue 13)")
        except Unavailable as exc:
            return None, str(exc)
        from fmu.build import BuildOptions

        tmp = tempfile.TemporaryDirectory(prefix="twin_report_native_")
        ctx.cache["native_tmp"] = tmp  # lives as long as the report
        corr = ctx.correction_path if ctx.correction_path.is_file() else None
        out = nb.build_native_fmu(BuildOptions(out=Path(tmp.name) / NATIVE_FMU.name, correction=corr,
                                               model_identifier=nb.NATIVE_MODEL_NAME))
        return out, f"built now by `twin build-fmu --native` from `{ctx.correction_path.name}`"
    return ctx.cached("native_fmu", make)


# -- identity ------------------------------------------------------------------------------------------
def git_revision() -> tuple[str, str]:
    """(commit, state of the working tree) of the repository, or ('unknown', why)."""
    head = run(["git", "rev-parse", "HEAD"], timeout=30)
    if head.returncode != 0:
        return "unknown", "not a git checkout"
    status = run(["git", "status", "--porcelain", "--untracked-files=no"], timeout=60)
    changed = [ln for ln in status.stdout.splitlines() if ln.strip()]
    return head.stdout.strip(), ("clean" if not changed else f"{len(changed)} tracked file(s) modified")


def fmu_identity(path: Path) -> dict[str, str]:
    """GUID, version, generation tool, model identifier and platforms of an FMU archive."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        md = ET.fromstring(zf.read("modelDescription.xml"))
        platforms = sorted({n.split("/")[1] for n in zf.namelist() if n.startswith("binaries/") and n.count("/") >= 2})
        sources = any(n.startswith("sources/") for n in zf.namelist())
    cs = md.find("CoSimulation")
    return {"guid": md.get("guid", "?"), "version": md.get("version", "?"), "tool": md.get("generationTool", "?"),
            "identifier": cs.get("modelIdentifier", "?") if cs is not None else "?",
            "platforms": ", ".join(platforms) + (" + sources/" if sources else "")}


def identity(ctx: Context) -> str:
    from twin_core.offline.batches import sha256_file

    rev, state = git_revision()
    ctx.cache["git"] = (rev, state)
    data_sha = sha256_file(ctx.data_path)
    stamp = ctx.data_path.with_suffix(".sha256")
    recorded = stamp.read_text(encoding="utf-8").split()[0] if stamp.is_file() else ""
    ctx.check("data_hash", f"data set hash equals the committed {stamp.name} (1 = equal)", float(data_sha == recorded),
              ">=", 1.0)
    rows = [["git revision", f"`{rev}` (working tree: {state})"],
            ["data set", f"`{ctx.data_path.relative_to(ROOT) if ctx.data_path.is_relative_to(ROOT) else ctx.data_path}` "
                         f"SHA-256 `{data_sha}`"]]
    try:
        corr = ctx.correction()
        meta = corr.metadata
        rows.append(["correction", f"`{ctx.correction_path.name}` SHA-256 `{sha256_file(ctx.correction_path)}`, model "
                     f"version {meta.get('twin.model_version')}, {meta.get('twin.estimator')}, created "
                     f"{meta.get('twin.created_utc')}"])
        ctx.check("correction_data", "the correction was trained on this data set (1 = its recorded data hash matches)",
                  float(meta.get("twin.training_data_sha256") == data_sha), ">=", 1.0)
    except Unavailable as exc:
        rows.append(["correction", f"not available: {exc}"])
    nat, origin = native_fmu(ctx)
    for label, path, where in (("Python FMU", ctx.fmu_path, "as given"), ("native FMU", nat, origin)):
        if path is not None and path.is_file():
            i = fmu_identity(path)
            rows.append([label, f"`{path.name}` ({where}) GUID `{i['guid']}`, version {i['version']}, model "
                         f"identifier {i['identifier']}, binaries: {i['platforms']}; {i['tool']}"])
        else:
            rows.append([label, f"not in this build ({where})"])
    rows.append(["machine", machine()])
    rows.append(["report", f"{'quick' if ctx.quick else 'full'} run"])
    return md_table(["what", "identity"], rows)


# -- FMUs --------------------------------------------------------------------------------------------
LIBCOSIM = r"""
import json, sys
from libcosimpy.CosimExecution import CosimExecution
from libcosimpy.CosimLogging import CosimLogLevel, log_output_level
from libcosimpy.CosimObserver import CosimObserver
from libcosimpy.CosimSlave import CosimLocalSlave
fmu, vr_in, outs, dt, n, u = sys.argv[1:7]
dt, n, u = float(dt), int(n), float(u)
out = [int(v) for v in outs.split(",")]
log_output_level(CosimLogLevel.ERROR)
ex = CosimExecution.from_step_size(int(round(dt * 1e9)))
i = ex.add_local_slave(CosimLocalSlave(fmu_path=fmu, instance_name="twin"))
obs = CosimObserver.create_last_value()
ex.add_observer(obs)
ex.real_initial_value(i, int(vr_in), u)
rows = []
for step in range(n):
    if not ex.step():
        sys.exit("libcosim step failed")
    rows.append([(step + 1) * dt, *obs.last_real_values(i, out)])
print("RESULT " + json.dumps(rows))
"""
OUT = ("c_A", "c_B", "c_C", "T")


def fmpy_run(path: Path, stop: float, dt: float, T_j: float, start: dict[str, Any] | None = None) -> np.ndarray:
    """FMPy co-simulation at a constant jacket; rows (t, c_A, c_B, c_C, T)."""
    from fmpy import simulate_fmu

    inp = np.array([(0.0, T_j), (stop, T_j)], dtype=[("time", np.float64), ("T_jacket", np.float64)])
    with quiet():
        r = simulate_fmu(str(path), stop_time=stop, output_interval=dt, step_size=dt, input=inp,
                         start_values=start or {}, output=list(OUT))
    return np.column_stack([r["time"]] + [r[n] for n in OUT])


def libcosim_run(path: Path, stop: float, dt: float, T_j: float) -> np.ndarray:
    from fmpy import read_model_description

    vr = {v.name: v.valueReference for v in read_model_description(str(path)).modelVariables}
    with tempfile.TemporaryDirectory(prefix="twin_report_") as tmp:
        proc = run([sys.executable, "-c", LIBCOSIM, str(path), str(vr["T_jacket"]), ",".join(str(vr[n]) for n in OUT),
                    repr(dt), str(int(round(stop / dt))), repr(T_j)], timeout=600, cwd=Path(tmp))
    if proc.returncode != 0:
        raise RuntimeError(f"libcosim run failed: {proc.stderr[-500:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return np.array(json.loads(line[len("RESULT "):]))


def twin_run(stop: float, dt: float, T_j: float, correction: Any) -> np.ndarray:
    """twin_core's own stepping (HybridTwin), the reference of every host."""
    from twin_core.hybrid import HybridTwin

    tw = HybridTwin(None, correction)
    st = tw.initial_state()
    rows = [(0.0, *st.x)]
    for n in range(int(round(stop / dt))):
        st = tw.step(st, n * dt, dt, T_j)
        rows.append(((n + 1) * dt, *st.x))
    return np.array(rows)


def fmus(ctx: Context) -> str:
    if not ctx.fmu_path.is_file():
        raise Unavailable(f"no FMU at {ctx.fmu_path} (run `twin build-fmu`)")
    ctx.need("fmpy", "FMPy")
    from fmpy.validation import validate_fmu

    out = []
    T_j = C0 + 70.0
    stop = 3600.0 * (2.0 if ctx.quick else 10.0)
    try:
        corr = ctx.correction()
    except Unavailable:
        corr = None
    nat, origin = native_fmu(ctx)
    candidates = [("Python FMU", ctx.fmu_path)] + ([("native FMU", nat)] if nat is not None else [])
    vrows = []
    for label, path in candidates:
        problems = validate_fmu(str(path))
        vrows.append([label, path.name, "clean" if not problems else "; ".join(problems)[:300]])
        ctx.check(f"validate_{label.split()[0].lower()}", f"`fmpy validate` problems, {label}", len(problems), "<=", 0)
    out += ["**`fmpy validate`** (FMPy's model-description and archive checks):", "",
            md_table(["FMU", "file", "result"], vrows)]

    # Hosts and agreement, hybrid mode (the correction bundled in the FMU is the shipped one).
    ref = twin_run(stop, 60.0, T_j, corr)
    hrows = []
    runs: dict[str, np.ndarray] = {}
    for label, path in candidates:
        runs[f"FMPy, {label}"] = fmpy_run(path, stop, 60.0, T_j)
    if not ctx.quick:
        try:
            ctx.need("libcosimpy", "libcosim (libcosimpy)")
            for label, path in candidates:
                runs[f"libcosim, {label}"] = np.vstack([runs[f"FMPy, {label}"][:1], libcosim_run(path, stop, 60.0, T_j)])
        except Unavailable as exc:
            out.append(f"libcosim: {exc}")
    for host, r in runs.items():
        n = min(len(r), len(ref))
        rel = float(np.max(np.abs(r[:n, 1:] - ref[:n, 1:]) / np.maximum(np.abs(ref[:n, 1:]), 1e-9)))
        hrows.append([host, sys.platform, len(r) - 1, rel])
        ctx.check(f"agree_{re.sub(r'[^a-z]+', '_', host.lower())}", f"{host} vs twin_core stepping "
                  f"({stop / 3600:g} h, 60 s steps, 70 °C jacket, hybrid): max relative difference", rel, "<=", 1e-9)
    out += ["", f"**Hosts and agreement** (hybrid mode, correction `{ctx.correction_path.name}` "
            f"{'bundled' if corr is not None else 'absent'}; reference: `twin_core.hybrid.HybridTwin` stepped the "
            "same way in this process; platform of this machine: " + machine() + "):", "",
            md_table(["host", "platform", "steps", "max relative difference vs twin_core"], hrows)]
    if ctx.quick:
        out.append("(libcosim runs in the full report only.)")

    # Step-size independence.
    srows = []
    steps = (1.0, 60.0, 3600.0)
    for label, path in candidates:
        for mode, start in (("physics", {"correction_on": False}), ("hybrid", {})):
            finals = {}
            for dt in steps:
                r = fmpy_run(path, stop, dt, T_j, start)
                finals[dt] = r[-1, 1:]
            base = finals[1.0]
            worst = max(float(np.max(np.abs(v - base) / np.abs(base))) for v in finals.values())
            srows.append([label, mode, *[float(finals[dt][1]) for dt in steps], worst])
            ctx.check(f"steps_{label.split()[0].lower()}_{mode}", f"{label}, {mode}: final state with 1 s, 60 s, "
                      "3600 s communication steps, max relative difference", worst, "<=", 1e-6)
    out += ["", f"**Communication-step independence** ({stop / 3600:g} h at a 70 °C jacket; c_B at the end):", "",
            md_table(["FMU", "mode", *[f"c_B, {dt:g} s steps [mol/m3]" for dt in steps], "max relative difference"],
                     srows)]
    if not ctx.quick:
        counts, last, secs = run_tests(FMU_HOST_TESTS, False)
        out += ["", "**Other hosts and platforms**, from the FMU test files run now (a plain C host in an empty "
                "environment, the win64 binary in a mingw-w64 C host under Wine, the FMU compiled from its own "
                f"`sources/`, libcosim, state round trips; {secs:.0f} s):", "",
                tests_table(ctx, "host_tests", "FMU host", counts), f"pytest: {last}"]
    if nat is None:
        out.append(f"The native FMU is not in this build ({origin}): only the Python FMU was run.")
    else:
        out.append(f"Native FMU: {origin}.")
    return "\n".join(out) + "\n"


# -- OPC UA and security -----------------------------------------------------------------------------------
OPCUA_TESTS_FULL = ("tests/test_opcua_server.py", "tests/test_runtime_opcua.py", "tests/test_security*.py",
                    "tests/test_audit.py", "tests/test_users.py")
OPCUA_TESTS_QUICK = ("tests/test_audit.py", "tests/test_users.py")
FMU_HOST_TESTS = ("tests/test_fmu_c_host.py", "tests/test_fmu_cosim.py", "tests/test_native*.py")


def _junit_counts(path: Path) -> dict[str, dict[str, int]]:
    """Per test file: passed, failed, skipped, from a pytest JUnit XML report."""
    out: dict[str, dict[str, int]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        f = (case.get("file") or case.get("classname", "?").replace(".", "/") + ".py").split("::")[0]
        f = re.sub(r"^(tests/)?", "tests/", f.split("/")[-1] if "/" not in f else f)
        d = out.setdefault(f, {"passed": 0, "failed": 0, "skipped": 0})
        if case.find("failure") is not None or case.find("error") is not None:
            d["failed"] += 1
        elif case.find("skipped") is not None:
            d["skipped"] += 1
        else:
            d["passed"] += 1
    return out


def run_tests(patterns: tuple[str, ...], fast_only: bool) -> tuple[dict[str, dict[str, int]], str, float]:
    """Run the test files matching ``patterns`` with pytest now; per-file counts, pytest's last line, seconds."""
    files = []
    for pattern in patterns:
        files += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))
    if not files:
        raise Unavailable(f"no test files match {patterns}")
    with tempfile.TemporaryDirectory(prefix="twin_report_") as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                "-o", "junit_family=xunit2", *files]
        if fast_only:
            args += ["-m", "not slow"]
        proc = run(args, timeout=1800)
        secs = time.perf_counter() - t0
        if not xml.is_file():
            raise RuntimeError(f"pytest wrote no report: {proc.stdout[-500:]} {proc.stderr[-500:]}")
        counts = _junit_counts(xml)
    summary = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    return counts, (summary[-1].strip() if summary else proc.stdout.strip()[-200:]), secs


def tests_table(ctx: Context, key: str, what: str, counts: dict[str, dict[str, int]]) -> str:
    failed = sum(d["failed"] for d in counts.values())
    total = sum(sum(d.values()) for d in counts.values())
    ctx.check(f"{key}_failed", f"{what} tests failing ({total} run)", failed, "<=", 0, "tests")
    ctx.check(f"{key}_ran", f"{what} tests run", total, ">=", 1, "tests")
    return md_table(["test file", "passed", "failed", "skipped"],
                    [[f"`{f}`", d["passed"], d["failed"], d["skipped"]] for f, d in sorted(counts.items())])


def opcua(ctx: Context) -> str:
    ctx.need("asyncua", "asyncua")
    ctx.need("gateways.opcua_server", "the OPC UA server (gateways)")
    # The fast lane of every file in the full report (the slow ones, real processes and long runs, are in
    # `python3 build.py test`); --quick: the audit and user tests only.
    counts, last, secs = run_tests(OPCUA_TESTS_QUICK if ctx.quick else OPCUA_TESTS_FULL, True)
    return ("The conformance evidence is the test suite of the OPC UA server (address space generated from the signal "
            "table, AnalogItemType with EURange and engineering units, methods, events, history, validated writes), "
            "the security matrix (policies, certificates, users and roles, reasons), the audit trail and the users, "
            f"run now with pytest ({'--quick: the audit and user tests' if ctx.quick else ', '.join(OPCUA_TESTS_FULL)}; "
            "the fast lane, `-m \"not slow\"`: the slow tests with real processes and long runs are in "
            f"`python3 build.py test`; "
            f"{secs:.0f} s):\n\n" + tests_table(ctx, "tests", "OPC UA / security / audit", counts)
            + f"\npytest: {last}\n\n"
            "What the tests cover is documented in [docs/opcua.md](../docs/opcua.md) and "
            "[docs/security.md](../docs/security.md).\n")


RUNTIME_TESTS = ("tests/test_runtime.py", "tests/test_runtime_config.py", "tests/test_recovery*.py",
                 "tests/test_fuzz*.py", "tests/test_load*.py", "tests/test_gateways.py", "tests/test_modbus_mirror.py")


def runtime(ctx: Context) -> str:
    ctx.need("gateways.runtime", "the plant-floor runtime (gateways)")
    intro = ("The plant-floor runtime (`twin run`): PLC link faults (values Bad/Uncertain within the scan, open loop, "
             "catch-up), restarted PLCs, crash recovery (checkpoints restored after a kill; corrupt, truncated or "
             "foreign checkpoints refused), the read-only Modbus mirror, Modbus fuzzing and OPC UA load; evidence: "
             "their test files")
    if ctx.quick:
        return intro + " run in the full report (`twin report`); [docs/runtime.md](../docs/runtime.md).\n"
    counts, last, secs = run_tests(RUNTIME_TESTS, True)
    return (intro + f", run now (fast lane; {secs:.0f} s):\n\n" + tests_table(ctx, "tests", "plant-floor runtime", counts)
            + f"\npytest: {last}\n\nDetails and the load benchmark: [docs/runtime.md](../docs/runtime.md).\n")


# -- performance ---------------------------------------------------------------------------------------
BENCHES_FULL = (("benchmarks/bench_core.py", ["--quick"]), ("benchmarks/bench_softsensor.py", ["--quick"]),
                ("benchmarks/bench_fmu.py", ["--steps", "1000", "--repeat", "2", "--instances", "10"]),
                ("benchmarks/bench_designspace.py", ["--quick"]))


def performance(ctx: Context) -> str:
    from twin_core.simulation import Twin

    tw = Twin()
    st = tw.initial_state()
    times = []
    for _ in range(5):
        t0 = time.process_time()
        for i in range(400):
            st = tw.step(st, i * 1.0, 1.0, C0 + 70.0)
        times.append((time.process_time() - t0) / 400)
    out = [f"Machine: {machine()}. The machine is shared (2 cores, several jobs at once while this report ran): "
           "timings are noisy and are reported, not asserted; the benchmarks print ratios against baselines measured "
           "in the same run.", "",
           f"In-process measurement now: one `Twin.step` over 1 s (physics), CPU-time median of 5 × 400 steps: "
           f"{1e6 * float(np.median(times)):.1f} µs (goal ≤ 15 µs, docs/model.md §8)."]
    if ctx.quick:
        out.append("\nThe benchmark scripts run in the full report only (`twin report`).")
        return "\n".join(out) + "\n"
    for script, args in BENCHES_FULL:
        path = ROOT / script
        if not path.is_file():
            out.append(f"\n`{script}`: not in this build.")
            continue
        t0 = time.perf_counter()
        proc = run([sys.executable, str(path), *args], timeout=900)
        text = (proc.stdout.strip() or proc.stderr.strip())[-4000:]
        out += ["", f"**`{script} {' '.join(args)}`** (exit {proc.returncode}, {time.perf_counter() - t0:.0f} s):", "",
                "```", text, "```"]
    return "\n".join(out) + "\n"


# -- traceability --------------------------------------------------------------------------------------
CLAIMS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (claim, README text that states it, tests that show it, report sections that show it)
    ("Arrhenius kinetics and an energy balance with the jacket temperature as input", "ρ·c_p·V · dT/dt",
     ("tests/test_core_model.py::test_isothermal_matches_analytic_solution",
      "tests/test_core_model.py::test_adiabatic_temperature_rise_equals_heat_released"), ("model", "numerics")),
    ("the one DP5(4) integrator agrees with an independent stiff reference", "The model",
     ("tests/test_core_model.py::test_non_isothermal_matches_radau",), ("numerics",)),
    ("the optimised jacket programme beats the best constant-jacket recipe under the same constraints",
     "best constant-jacket", ("tests/test_core_optimize.py",), ("optimise",)),
    ("temperature-profile study and optimal stop", "twin study", ("tests/test_core_analysis.py",), ("study", "stop")),
    ("the correction cuts the physics-only held-out c_B error", "Held-out c_B RMSE",
     ("tests/test_ml_train.py",), ("hybrid",)),
    ("the correction's training domain: outside it the correction fades and says so", "training domain",
     ("tests/test_ml_runtime.py",), ("correction",)),
    ("ONNX in float64, parity with scikit-learn", "ONNX", ("tests/test_ml_contract.py",), ("correction",)),
    ("soft sensor: EKF with lab assays, health alarms and a forecast", "Soft sensor",
     ("tests/test_softsensor_lab.py", "tests/test_softsensor_faults.py", "tests/test_softsensor_forecast.py"),
     ("softsensor",)),
    ("the FMU passes fmpy validate and runs in FMPy, libcosim and a plain C host", "fmpy validate",
     ("tests/test_fmu_build.py::test_validate_fmu_finds_no_problem", "tests/test_fmu_cosim.py",
      "tests/test_fmu_c_host.py"), ("fmu",)),
    ("OPC UA address space generated from the signal table, methods, events, history", "OPC UA",
     ("tests/test_opcua_server.py", "tests/test_runtime_opcua.py"), ("opcua",)),
    ("a lost PLC link turns values Bad/Uncertain; the twin catches up", "Bad/Uncertain",
     ("tests/test_runtime.py",), ("runtime",)),
    ("hash-chained audit trail, users and roles", "audit", ("tests/test_audit.py", "tests/test_users.py"), ("opcua",)),
    ("OPC UA security: SignAndEncrypt endpoints, trusted client certificates, roles per node and method",
     "SignAndEncrypt", ("tests/test_security.py",), ("opcua",)),
    ("crash recovery: checkpoints restored after a kill, corrupt checkpoints refused", "checkpoint",
     ("tests/test_recovery.py", "tests/test_recovery_process.py"), ("runtime",)),
    ("a native FMU with no Python at run time (linux64, win64, sources/)", "--native",
     ("tests/test_native_fmu.py", "tests/test_native_kernel.py"), ("fmu",)),
    ("a QbD design space by Monte Carlo on a vectorised simulator, in-process, pool or Dask", "design space",
     ("tests/test_designspace.py", "tests/test_batch_sim.py"), ("designspace",)),
    ("kinetic parameters fitted with their covariance (twin fit)", "twin fit", ("tests/test_fit.py",), ("fit",)),
    ("a trust weight on the correction, estimated online", "trust", ("tests/test_hybrid_trust.py",),
     ("softsensor", "robustness")),
    ("the plant data set regenerates bit for bit", "bit for bit", ("tests/test_plant_dataset.py",), ("identity",)),
    ("the artifacts and the report name their versions: git revision, data hash, model version, FMU GUID",
     "validation", ("tests/test_report.py",), ("identity",)),
)


def _test_exists(ref: str) -> bool:
    path, _, name = ref.partition("::")
    f = ROOT / path
    if not f.is_file():
        return False
    if not name:
        return True
    tree = ast.parse(f.read_text(encoding="utf-8"))
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in ast.walk(tree))


def traceability(ctx: Context) -> str:
    from twin_core.offline.report import SECTIONS, anchor

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    titles = {k: t for k, t, _ in SECTIONS()}
    rows, missing = [], 0
    for claim, text, tests, sections in CLAIMS:
        in_readme = text in readme
        tests_ok = [t for t in tests if _test_exists(t)]
        gone = [t for t in tests if t not in tests_ok]
        missing += (not in_readme) + len(gone)
        ev = ", ".join(f"`{t}`" for t in tests_ok) + ("; MISSING " + ", ".join(gone) if gone else "")
        secs = ", ".join(f"[{titles[s]}](#{anchor(titles[s])})" for s in sections if s in titles) or "-"
        rows.append([claim, "yes" if in_readme else f"NO (`{text}` not found)", ev, secs])
    ctx.check("evidence_missing", "README claims whose statement or evidence (test) is missing", missing, "<=", 0)
    return ("Each claim of the README, where it is stated, the tests that show it (existence checked now by "
            "parsing the test files) and the report sections that measure it:\n\n"
            + md_table(["claim", "in README", "tests", "report section"], rows)
            + "\nLifecycle, change control and the ALCOA+ / 21 CFR Part 11 mapping: "
            "[deployment/lifecycle_notes.md](../deployment/lifecycle_notes.md).\n")
