"""The FMU's runtime path stays free of scipy and scikit-learn.

scipy's interpreter shutdown crashes C hosts and scikit-learn pulls scipy in: the code the FMU runs
(its slave, twin_core's model, integrator and estimator, ml_onnx's onnxruntime wrapper) must work
without importing either. Checked in a fresh interpreter that does real work through that path, with
the session's own test correction (fixture ``fmus``), never whatever a prior build left in dist/.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT
from test_fmu_helpers import FmuBuilds

PROBE = textwrap.dedent("""
    import sys
    import fmu.slave  # noqa: F401  (the FMU's Python side, as bundled)
    from ml_onnx.runtime import OnnxCorrection
    from twin_core.estimation import SoftSensor, SoftSensorConfig
    from twin_core.hybrid import HybridTwin
    from twin_core.params import ModelParams
    from twin_core.recipe import DEFAULT_RECIPE

    corr = OnnxCorrection(sys.argv[1])
    twin = HybridTwin(ModelParams(), corr)
    s = twin.initial_state()
    for n in range(120):
        s = twin.step(s, 60.0 * n, 60.0, 343.15)
    ss = SoftSensor(ModelParams(), corr, SoftSensorConfig())
    ss.start(0.0, T_measured_K=298.15)
    for n in range(1, 60):
        ss.update(60.0 * n, 298.15 + 0.5 * n, 343.15)
    ss.add_lab(1800.0, 5.0, 0.1)
    ss.forecast(DEFAULT_RECIPE, DEFAULT_RECIPE.end_time_s)
    print(sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "sklearn", "skl2onnx")))
""")


def test_fmu_runtime_path_imports_no_scipy_or_sklearn(fmus: FmuBuilds):
    out = subprocess.run([sys.executable, "-c", PROBE, str(fmus.correction())], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
