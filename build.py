#!/usr/bin/env python3
"""Bootstrap, build and run the batch-reactor twin. Standard library only.

    python3 build.py            set up .venv, build the artifacts, run the demo batch
    python3 build.py test [ARGS] set up .venv, run the whole test suite (ARGS go to pytest)
    python3 build.py bench      set up .venv, run every benchmark in benchmarks/
    python3 build.py setup      set up .venv only

Idempotent: the virtual environment is reinstalled only when requirements.lock or pyproject.toml
change, and each artifact is rebuilt only when the files it is made from change (content hashes
kept in .build-stamps/).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMPS = ROOT / ".build-stamps"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")

# Artifacts: (name, files and folders it is made from, outputs, twin sub-command that makes it).
ARTIFACTS: list[tuple[str, list[str], list[str], list[str]]] = []
# The learned rate correction: fitted on the plant data, exported to ONNX, with its JSON report.
ARTIFACTS.append(("onnx", ["ml_onnx", "twin_core", "data/simulated_batch_data.csv"],
                  ["dist/correction.onnx", "dist/correction_report.json"], ["train"]))
# The FMU bundles twin_core, ml_onnx and the ONNX correction: keep it after the artifacts that make them.
ARTIFACTS.append(("fmu", ["fmu", "twin_core", "ml_onnx", "dist/correction.onnx", "docs/fmu.md", "requirements.lock"],
                  ["dist/BatchReactorTwin.fmu"], ["build-fmu"]))
# The native FMU: C physics and the ONNX correction compiled to C (emx-onnx-cgen), no Python at run time.
# Its C estimator takes its defaults and health-test bounds from twin_core.estimation (generated header).
ARTIFACTS.append(("fmu-native", ["fmu", "twin_core/signals", "twin_core/estimation", "twin_core/simulation.py",
                                 "ml_onnx/features.py", "dist/correction.onnx", "docs/fmu.md", "requirements.lock"],
                  ["dist/BatchReactorTwinNative.fmu"], ["build-fmu", "--native"]))


def log(msg: str) -> None:
    print(f"[build] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def digest(paths: list[str]) -> str:
    """Content hash of files (folders: every .py/.toml/.csv/.c/.h file below them)."""
    h = hashlib.sha256()
    for rel in paths:
        p = ROOT / rel
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in {".py", ".toml", ".csv", ".c", ".h", ".lock", ".onnx"}
                       and "__pycache__" not in f.parts) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes() if f.exists() else b"<missing>")
    return h.hexdigest()


def stamp_ok(name: str, value: str) -> bool:
    f = STAMPS / name
    return f.exists() and f.read_text() == value


def write_stamp(name: str, value: str) -> None:
    STAMPS.mkdir(exist_ok=True)
    (STAMPS / name).write_text(value)


def setup() -> None:
    """Create .venv and install the pinned dependencies and the project (once per change)."""
    if sys.version_info < (3, 11):  # noqa: UP036 -- build.py runs on whatever python3 is there: say why it stops
        sys.exit(f"Python >= 3.11 is required (this is {sys.version.split()[0]})")
    if not PY.exists():
        log(f"creating virtual environment {VENV.relative_to(ROOT)}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    want = digest(["requirements.lock", "pyproject.toml"]) + sys.version
    if stamp_ok("venv", want):
        log("virtual environment up to date")
        return
    run([PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", "requirements.lock"])
    run([PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "-e", "."])
    write_stamp("venv", want)


def twin(*args: str) -> None:
    run([BIN / "twin", *args])


def build_artifacts() -> None:
    for name, inputs, outputs, command in ARTIFACTS:
        want = digest(inputs)
        if stamp_ok(name, want) and all((ROOT / o).exists() for o in outputs):
            log(f"{name}: up to date")
            continue
        log(f"{name}: building")
        twin(*command)
        write_stamp(name, want)


def main_job() -> None:
    twin("simulate")
    twin("optimize")
    twin("demo")


def test(args: list[str]) -> int:
    cmd = [str(PY), "-m", "pytest", *args]
    log("$ " + " ".join(cmd))
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc == 5:
        log("pytest collected no tests: failing on purpose")
        return 1
    return rc


def bench() -> int:
    rc = 0
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        log(f"benchmark {script.name}")
        rc |= subprocess.run([str(PY), str(script)], cwd=ROOT).returncode
    return rc


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "run"
    setup()
    if cmd == "setup":
        return 0
    if cmd == "test":
        build_artifacts()  # the FMU and ONNX tests run the real artifacts
        return test(argv[1:])
    if cmd == "bench":
        build_artifacts()
        return bench()
    if cmd == "run":
        build_artifacts()
        main_job()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as exc:
        log(f"failed: {exc}")
        sys.exit(exc.returncode or 1)
