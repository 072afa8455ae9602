"""An independent FMI master from the package registry runs the FMU: libcosimpy (libcosim, the Open
Simulation Platform's co-simulation engine, with its own FMI Library loader). It runs in a child
process so that whatever it does at exit cannot take the test session down.

(ecospy, a third master, needs the system's libtbb.so.12, which .ci/run installs; it runs both FMUs
in tests/test_native_fmu.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_fmu_helpers import T_STEP_S, U0_K, U1_K, FmuBuilds, simulate_fmpy

SCRIPT = r"""
import json, sys
from libcosimpy.CosimExecution import CosimExecution
from libcosimpy.CosimLogging import CosimLogLevel, log_output_level
from libcosimpy.CosimManipulator import CosimManipulator
from libcosimpy.CosimObserver import CosimObserver
from libcosimpy.CosimSlave import CosimLocalSlave

fmu, vr_in, outs, dt, n, t_step, u0, u1, instances = sys.argv[1:10]
vr_in, dt, n, t_step, u0, u1 = int(vr_in), float(dt), int(n), float(t_step), float(u0), float(u1)
out = [int(v) for v in outs.split(",")]
log_output_level(CosimLogLevel.ERROR)
ex = CosimExecution.from_step_size(int(round(dt * 1e9)))
slaves = [CosimLocalSlave(fmu_path=fmu, instance_name=f"twin{k}") for k in range(int(instances))]
idx = [ex.add_local_slave(s) for s in slaves]
obs = CosimObserver.create_last_value()
ex.add_observer(obs)
man = CosimManipulator.create_override()
ex.add_manipulator(man)
for i in idx:
    ex.real_initial_value(i, vr_in, u0)
rows = {i: [] for i in idx}
for step in range(n):
    if step * dt >= t_step:
        for i in idx:
            man.slave_real_values(i, [vr_in], [u1])
    if not ex.step():
        sys.exit("libcosim step failed")
    for i in idx:
        rows[i].append([(step + 1) * dt, *obs.last_real_values(i, out)])
print("RESULT " + json.dumps([rows[i] for i in idx]))
"""


@pytest.mark.parametrize(("kind", "instances"), [("physics", 1), ("hybrid", 2)])
def test_libcosim_master_gives_the_same_results_as_fmpy(fmus: FmuBuilds, kind: str, instances: int,
                                                         tmp_path: Path) -> None:
    stop, dt = 3600.0, 60.0
    _, _, vr = fmus.model(kind)
    outs = ",".join(str(vr[n]) for n in ("c_A", "c_B", "c_C", "T"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(fmus.fmu(kind)), str(vr["T_jacket"]), outs, repr(dt),
                           str(int(stop / dt)), repr(T_STEP_S), repr(U0_K), repr(U1_K), str(instances)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    runs = [np.array(r) for r in json.loads(line[len("RESULT "):])]
    assert len(runs) == instances
    want = simulate_fmpy(fmus.fmu(kind), stop, dt)[1:]
    for got in runs:
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0.0)
