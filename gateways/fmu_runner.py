"""Run the built FMU (dist/BatchReactorTwin.fmu) through FMPy as a live soft sensor.

The runtime talks to the twin only through its FMI interface, exactly as Simulink or a C master
would: parameters and inputs by the names of the signal table, variable communication steps.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from fmpy import extract, read_model_description
from fmpy.fmi1 import FMICallException
from fmpy.fmi2 import FMU2Slave

from twin_core.errors import ParameterError, TwinError

DEFAULT_FMU = Path(__file__).resolve().parents[1] / "dist" / "BatchReactorTwin.fmu"


class FmuError(TwinError, RuntimeError):
    """The FMU refused a call (its log says why)."""


class FmuRunner:
    """One FMU instance: ``start(params, t0)``, then ``step(t, dt, inputs) -> outputs``, ``close()``.

    Parameters and inputs are given by variable name (SI units); outputs come back as a dict of
    every output variable.
    """

    def __init__(self, fmu_path: str | Path = DEFAULT_FMU, instance_name: str = "softsensor") -> None:
        self.path = Path(fmu_path)
        if not self.path.is_file():
            raise ParameterError("fmu_path", str(self.path), "no such FMU (run `python3 build.py` to build it)")
        self.md = read_model_description(str(self.path))
        self._vars = {v.name: v for v in self.md.modelVariables}
        self.outputs = tuple(v.name for v in self.md.modelVariables if v.causality == "output")
        self._dir = extract(str(self.path), unzipdir=tempfile.mkdtemp(prefix="batchtwin-fmu-"))
        self._fmu = FMU2Slave(guid=self.md.guid, unzipDirectory=self._dir,
                              modelIdentifier=self.md.coSimulation.modelIdentifier, instanceName=instance_name)
        self._instantiated = False
        self._started = False

    def instantiate(self) -> None:
        """Load the model (starts the FMU's Python and its ONNX session): do it before the batch starts."""
        if not self._instantiated:
            self._fmu.instantiate()
            self._instantiated = True

    def _set(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            v = self._vars.get(name)
            if v is None:
                raise ParameterError(name, value, f"not a variable of {self.path.name}")
            if v.type == "Boolean":
                self._fmu.setBoolean([v.valueReference], [bool(value)])
            elif v.type == "Integer":
                self._fmu.setInteger([v.valueReference], [int(value)])
            else:
                self._fmu.setReal([v.valueReference], [float(value)])

    def start(self, params: dict[str, float], t0_s: float = 0.0) -> None:
        """Set parameters (by name) and initialise at t0_s (instantiating first if needed; a run
        already started is reset first)."""
        self.instantiate()
        self.reset()
        try:
            self._fmu.setupExperiment(startTime=t0_s)
            self._fmu.enterInitializationMode()
            self._set(params)
            self._fmu.exitInitializationMode()
        except FMICallException as exc:
            raise FmuError(f"initialisation with {params} refused: {exc}") from exc
        self._started = True

    @property
    def guid(self) -> str:
        return self.md.guid

    @property
    def directory(self) -> str:
        """Where the FMU was extracted (its resources/ are there)."""
        return self._dir

    def reset(self) -> None:
        """Back to the instantiated state (fmi2Reset): the next start() begins a new run."""
        if self._started:
            self._fmu.reset()
            self._started = False

    @property
    def can_serialize(self) -> bool:
        """The FMU declares canGetAndSetFMUstate and canSerializeFMUstate (crash recovery restores it exactly)."""
        cs = self.md.coSimulation
        return bool(cs.canGetAndSetFMUstate and cs.canSerializeFMUstate)

    @property
    def started(self) -> bool:
        return self._started

    def serialize_state(self) -> bytes:
        """The running FMU's whole state as bytes (fmi2GetFMUstate + fmi2SerializeFMUstate)."""
        if not self._started:
            raise FmuError("serialize_state: the FMU has not been started")
        try:
            state = self._fmu.getFMUstate()
            try:
                return bytes(self._fmu.serializeFMUstate(state))
            finally:
                self._fmu.freeFMUstate(state)
        except FMICallException as exc:
            raise FmuError(f"serializeFMUstate refused: {exc}") from exc

    def restore_state(self, blob: bytes) -> None:
        """Continue from a state of :meth:`serialize_state` (this build's: the FMU refuses others)."""
        self.instantiate()
        try:
            state = self._fmu.deSerializeFMUstate(blob)
            try:
                self._fmu.setFMUstate(state)
            finally:
                self._fmu.freeFMUstate(state)
        except FMICallException as exc:
            raise FmuError(f"restoring a serialized state ({len(blob)} bytes) refused: {exc}") from exc
        self._started = True

    def step(self, t_s: float, dt_s: float, inputs: dict[str, float]) -> dict[str, float]:
        """Set inputs (their values at t + dt), advance from t_s by dt_s, return every output."""
        self._set(inputs)
        try:
            self._fmu.doStep(currentCommunicationPoint=t_s, communicationStepSize=dt_s)
        except FMICallException as exc:
            raise FmuError(f"doStep at t={t_s} s, dt={dt_s} s refused: {exc}") from exc
        return self.read(self.outputs)

    def read(self, names: tuple[str, ...]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in names:
            v = self._vars[name]
            if v.type == "Boolean":
                out[name] = float(self._fmu.getBoolean([v.valueReference])[0])
            elif v.type == "Integer":
                out[name] = float(self._fmu.getInteger([v.valueReference])[0])
            else:
                out[name] = self._fmu.getReal([v.valueReference])[0]
        return out

    def close(self) -> None:
        if self._started:
            self._fmu.terminate()
            self._started = False
        if self._instantiated:
            self._fmu.freeInstance()
            self._instantiated = False
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FmuRunner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
