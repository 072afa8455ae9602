"""Configuration of the runtime (`twin run --config FILE`): validated dataclasses from TOML.

With no file, one reactor against `twin plant`'s defaults on loopback: PLC 127.0.0.1:5020, OPC UA
opc.tcp://127.0.0.1:4840/batch-twin/, Modbus mirror 127.0.0.1:5021. A file gives the runtime's
settings at the top level and one ``[[reactor]]`` table per reactor (deployment/runtime.example.toml
is a commented example). Unknown keys are refused naming them; every value is checked by the one
declarative checker (twin_core.validate), FMU start values against the signal table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateways.fmu_runner import DEFAULT_FMU
from twin_core.errors import ParameterError, ParameterTypeError
from twin_core.signals.twin import PRIOR_SIGMAS, by_name
from twin_core.validate import from_mapping, load_toml, spec, validated

DEFAULT_OPCUA_ENDPOINT = "opc.tcp://127.0.0.1:4840/batch-twin/"


@validated("reactor")
class ReactorConfig:
    """One reactor: its name (OPC UA browse name), its PLC, the FMU it runs and how.

    start: FMU parameters set at the start of each batch (signal name -> value in SI units, e.g.
    ``c_A0``, ``sigma_lab``); ``sample_interval_s``: the lab sampling a StartBatch asks of the PLC;
    ``prior_file``: a TOML file of the soft sensor's plant prior (``twin prior --out``: PRIOR_PARAMETERS),
    read again at every batch start and applied over ``start`` ("": none; see :func:`read_prior_file`).
    """

    name: str = spec("R1", kind="str")
    plc_host: str = spec("127.0.0.1", kind="str")
    plc_port: int = spec(5020, kind="int", ge=1, le=65535)
    plc_unit_id: int = spec(1, kind="int", ge=0, le=255)
    fmu: str = spec(str(DEFAULT_FMU), kind="str")
    start: dict = spec(kind=dict, default_factory=dict)
    sample_interval_s: float = spec(1800.0, unit="s", ge=0.0)
    prior_file: str = spec("", kind="str")

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ParameterError("reactor.name", self.name, "must be letters, digits, '-' or '_'")
        check_start(self.start, "reactor.start")


PRIOR_PARAMETERS = ("lambda_1", "lambda_2", "UA_factor0", *PRIOR_SIGMAS)
"""What a plant-prior file may set: the soft sensor's prior means and SDs (ml_onnx.trust.PlantPrior.fmu_start)."""


def check_start(values: Mapping[str, Any], where: str) -> None:
    """FMU start values: known parameters or inputs of the signal table, of the right type, in range."""
    signals = by_name()
    for key, value in values.items():
        s = signals.get(key)
        if s is None or s.role not in ("parameter", "input"):
            raise ParameterError(f"{where}.{key}", value, "not a parameter or input of the FMU")
        if isinstance(value, bool) != (s.type == "Boolean") or not isinstance(value, (int, float)):
            raise ParameterTypeError(f"{where}.{key}", value, "a boolean" if s.type == "Boolean" else "a number")
        if not (math.isfinite(float(value)) and s.min <= float(value) <= s.max):
            raise ParameterError(f"{where}.{key}", value, f"must be within [{s.min}, {s.max}] {s.unit}")


def read_prior_file(path: str | Path) -> dict[str, float]:
    """The plant prior of a ``prior_file`` (top-level keys of PRIOR_PARAMETERS, each checked like a
    start value; others refused). ParameterError (ParameterTypeError for a value of the wrong type)
    naming the file and the key on anything wrong, including a missing or malformed file."""
    data = load_toml(path)
    unknown = sorted(set(data) - set(PRIOR_PARAMETERS))
    if unknown:
        raise ParameterError(f"{path}", unknown, f"not plant-prior parameters; expected some of {list(PRIOR_PARAMETERS)}")
    check_start(data, str(path))
    return {k: float(v) for k, v in data.items()}


@validated("runtime")
class RuntimeConfig:
    """The runtime: where it serves, how often it scans, how it retries.

    scan_s: time between two scans of a reactor, in plant time; speed: plant seconds per wall second
    (1 on a real plant; the simulated plant of the demo runs faster) to pace the scans between two
    PLC readings; reconnect_min_s/reconnect_max_s: capped exponential backoff of the PLC link [s of
    wall time]; plc_timeout_s: a PLC request unanswered this long [s of wall time] means the link is
    lost; mirror_port 0: a free port; opcua_endpoint "" or mirror_port -1: that server off;
    checkpoint_scans: every reactor's twin is checkpointed to ``data_dir``/checkpoint.sqlite every this
    many scans (0: no checkpoints; see gateways.recovery).
    Security (docs/security.md): opcua_allow_none also offers SecurityPolicy None, opcua_allow_anonymous
    accepts anonymous read-only sessions (both off: the server warns when one is on); mirror_tls_port
    serves the mirror also as Modbus/TCP Security (TLS, client certificates from the trust list; -1 off,
    0 a free port; 802 is the registered port).
    """

    plant: str = spec("plant", kind="str")
    opcua_endpoint: str = spec(DEFAULT_OPCUA_ENDPOINT, kind="str")
    mirror_host: str = spec("127.0.0.1", kind="str")
    mirror_port: int = spec(5021, kind="int", ge=-1, le=65535)
    scan_s: float = spec(1.0, unit="s", gt=0.0, le=3600.0)
    speed: float = spec(1.0, gt=0.0, le=1e5)
    data_dir: str = spec("var", kind="str")
    reconnect_min_s: float = spec(0.2, unit="s", gt=0.0, le=60.0)
    reconnect_max_s: float = spec(5.0, unit="s", gt=0.0, le=600.0)
    plc_timeout_s: float = spec(2.0, unit="s", gt=0.0, le=60.0)
    checkpoint_scans: int = spec(10, kind="int", ge=0, le=100000)
    opcua_allow_none: bool = spec(False, kind="bool")
    opcua_allow_anonymous: bool = spec(False, kind="bool")
    mirror_tls_port: int = spec(-1, kind="int", ge=-1, le=65535)
    reactors: tuple = spec(kind=tuple, default_factory=lambda: (ReactorConfig(),))

    def __post_init__(self) -> None:
        if not self.reactors:
            raise ParameterError("runtime.reactors", self.reactors, "needs at least one reactor")
        for i, r in enumerate(self.reactors):
            if not isinstance(r, ReactorConfig):
                raise ParameterTypeError(f"runtime.reactors[{i}]", r, "ReactorConfig")
        names = [r.name for r in self.reactors]
        if len(set(names)) != len(names):
            raise ParameterError("runtime.reactors", names, "reactor names must be unique")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ParameterError("runtime.reconnect_max_s", self.reconnect_max_s, "must be >= reconnect_min_s")
        if self.opcua_endpoint and not self.opcua_endpoint.startswith("opc.tcp://"):
            raise ParameterError("runtime.opcua_endpoint", self.opcua_endpoint, "must start with opc.tcp://")


def config_from_mapping(data: Mapping[str, Any], source: str = "<mapping>") -> RuntimeConfig:
    """A RuntimeConfig from a TOML-like mapping: top-level settings and a ``reactor`` array of tables."""
    data = dict(data)
    tables = data.pop("reactor", None)
    kwargs: dict[str, Any] = {}
    if tables is not None:
        if not isinstance(tables, list) or not all(isinstance(t, Mapping) for t in tables):
            raise ParameterTypeError("reactor", tables, "an array of tables ([[reactor]])")
        kwargs["reactors"] = tuple(from_mapping(ReactorConfig, t, source, f"reactor[{i}]") for i, t in enumerate(tables))
    if "reactors" in data:
        raise ParameterError("reactors", data["reactors"], f"unknown key in {source}; reactors are [[reactor]] tables")
    base = from_mapping(RuntimeConfig, data, source)
    return RuntimeConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **kwargs})


def load_runtime_config(path: str | Path | None) -> RuntimeConfig:
    """The runtime's configuration from a TOML file (None: the defaults)."""
    if path is None:
        return RuntimeConfig()
    return config_from_mapping(load_toml(path), source=str(path))
