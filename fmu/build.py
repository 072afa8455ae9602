"""Build the FMU: dist/BatchReactorTwin.fmu (``twin build-fmu``, and ``python3 build.py``).

Layout of the archive::

    modelDescription.xml                      pythonfmu's, fixed by fmu.model_description
    binaries/linux64/<modelIdentifier>.so     native loader (fmu/native/loader.c), no libpython link
    binaries/linux64/batchtwin_bridge_<id>.so Python bridge (fmu/native/bridge.c)
    resources/batchtwin.cfg                   build id, GUID, Python environment, slave module
    resources/batchtwin_<id>/                 the Python code, under a package unique to this build:
        the import closure of fmu.slave (fmu/, twin_core/, ml_onnx/ when a correction is bundled),
        and pythonfmu/
    resources/correction.onnx                 the learned correction (when built with one)
    documentation/fmu.md

Module names are unique per build (pythonfmu issue #228: two FMUs with the same module names in one
process silently share the first one's code): every bundled ``import twin_core...`` is rewritten to
``import batchtwin_<id>.twin_core...``, and the build checks with the ast that nothing imports the
top-level names any more. The build id is a hash of everything that goes into the FMU.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.dom.minidom import parseString
from xml.etree.ElementTree import tostring

import pythonfmu

from fmu import model_description
from fmu.slave import CONFIG_FILE, CORRECTION_FILE, MODEL_NAME, BatchReactorTwin
from fmu.variables import check_value, fmi_variables
from twin_core.errors import ParameterError, TwinError
from twin_core.simulation import DEFAULT_TOLERANCE

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
NATIVE = Path(__file__).resolve().parent / "native"
DEFAULT_OUT = ROOT / "dist" / f"{MODEL_NAME}.fmu"
DEFAULT_CORRECTION = ROOT / "dist" / CORRECTION_FILE
PLATFORM = "linux64"

VENDORED = ("twin_core", "ml_onnx", "fmu", "pythonfmu")
"""Top-level packages bundled under the build's own package name."""
ZIP_DATE = (2020, 1, 1, 0, 0, 0)
"""Fixed archive timestamps: the same sources give the same bytes."""


class BuildError(TwinError, RuntimeError):
    """The FMU cannot be built (no C compiler, no shared libpython, a bad option...)."""


@dataclass(frozen=True)
class PythonEnv:
    """The Python environment the FMU records and, by default, runs with."""

    version: str  # "3.11"
    home: str  # sys.base_prefix: the installation (stdlib)
    libpython: str  # path of the shared library
    site_packages: tuple[str, ...]  # the environment's site-packages (a venv's own)
    executable: str
    include: str  # headers the bridge is compiled against

    @classmethod
    def current(cls) -> PythonEnv:
        """The interpreter running the build."""
        if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
            raise BuildError(f"{sys.executable} has no shared libpython (built without --enable-shared): a C host "
                             "cannot load it. Build the FMU with a Python that has libpython3.x.so.")
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        candidates = [sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LDLIBRARY")]
        lib = next((str(Path(libdir) / c) for c in candidates if c and (Path(libdir) / c).is_file()), None)
        if lib is None:
            raise BuildError(f"no shared libpython found in {libdir} ({candidates})")
        return cls(version=f"{sys.version_info.major}.{sys.version_info.minor}", home=sys.base_prefix,
                   libpython=lib, site_packages=tuple(site.getsitepackages()), executable=sys.executable,
                   include=sysconfig.get_paths()["include"])


@dataclass(frozen=True)
class BuildOptions:
    """What to build. ``start``: start values baked into the FMU (name -> value, e.g. a calibrated
    parameter set); ``tag``: an extra string in the build id (two otherwise identical builds differ)."""

    out: Path = DEFAULT_OUT
    correction: Path | None = None
    model_identifier: str = MODEL_NAME
    start: Mapping[str, float] | None = None
    tag: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.model_identifier):
            raise ParameterError("model_identifier", self.model_identifier, "must be a C identifier")
        if self.correction is not None and not Path(self.correction).is_file():
            raise ParameterError("correction", str(self.correction), "no such file")
        by_name = {v.name: v for v in fmi_variables()}
        for name, value in (self.start or {}).items():
            v = by_name.get(name)
            if v is None or not v.settable:
                raise ParameterError(f"start.{name}", value, "not a parameter or input of the FMU")
            why = check_value(v, value)
            if why is not None:
                raise ParameterError(f"start.{name}", value, why)


def default_correction() -> Path | None:
    """dist/correction.onnx when it and the runtime that runs it exist."""
    if DEFAULT_CORRECTION.is_file() and (ROOT / "ml_onnx" / "runtime.py").is_file():
        return DEFAULT_CORRECTION
    return None


# -- sources ---------------------------------------------------------------------------------------
SLAVE_MODULE = "fmu.slave"
"""Where the FMU's Python side starts: the bundle is the import closure of this module."""


PYTHONFMU = Path(pythonfmu.__file__).resolve().parent
PYTHONFMU_INIT = (f'"""The runtime modules of pythonfmu {pythonfmu.__version__} (its builder stays out of the FMU)."""\n'
                  f'__version__ = "{pythonfmu.__version__}"\n').encode()
"""The bundled pythonfmu package's own ``__init__``: pythonfmu's imports its builder and argparse."""


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` (a package's ``__init__.py``) when it is bundled (the
    project's packages and pythonfmu), None otherwise."""
    top, _, rest = name.partition(".")
    if top == "pythonfmu":
        base = PYTHONFMU.joinpath(*rest.split(".")) if rest else PYTHONFMU
    elif top in ("twin_core", "ml_onnx", "fmu"):
        base = ROOT.joinpath(*name.split("."))
    else:
        return None
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported_names(f: Path, name: str) -> set[str]:
    """Every module name ``f`` (module ``name``) may import, lazy imports inside functions included;
    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule)."""
    tree = ast.parse(f.read_bytes(), filename=str(f))
    package = name if f.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def import_closure(start: str = SLAVE_MODULE, correction: bool = True) -> dict[str, Path]:
    """Project modules (name -> file) that importing ``start`` can load: the modules it imports,
    transitively, and the ``__init__`` of every package on the way. Without a correction the
    learned-correction runtime (ml_onnx) stays out: the slave imports it only when one is bundled."""
    found: dict[str, Path] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a module's packages are imported first
            mod = ".".join(parts[:i])
            if mod in found or (not correction and parts[0] == "ml_onnx"):
                continue
            f = module_file(mod)
            if f is None:
                continue
            found[mod] = f
            if mod != "pythonfmu":  # replaced by PYTHONFMU_INIT, not followed
                todo.extend(_imported_names(f, mod))
    return dict(sorted(found.items()))


def _sources(correction: bool) -> dict[str, bytes]:
    """Relative path under the build package -> file content, for every bundled Python file: the
    import closure of the slave, pythonfmu's runtime modules included (so the build id changes only
    when something the FMU runs changes)."""
    out: dict[str, bytes] = {}
    for name, f in import_closure(SLAVE_MODULE, correction).items():
        rel = f.relative_to(PYTHONFMU.parent if name.startswith("pythonfmu") else ROOT).as_posix()
        out[rel] = PYTHONFMU_INIT if name == "pythonfmu" else f.read_bytes()
    return out


_IMPORT = re.compile(r"^(?P<indent>[ \t]*)(?P<kw>from|import)[ \t]+(?P<name>" + "|".join(VENDORED) + r")\b(?P<rest>.*)$",
                     re.MULTILINE)


def vendor_source(text: str, package: str, path: str = "<source>") -> str:
    """Rewrite absolute imports of the bundled packages to live under ``package``.

    ``from twin_core.x import y`` -> ``from <package>.twin_core.x import y``; ``import twin_core.x as
    y`` likewise. A bare ``import twin_core`` (which would bind the top-level name) is refused.
    """
    def repl(m: re.Match[str]) -> str:
        rest = m["rest"]
        if m["kw"] == "import" and " as " not in rest:
            raise BuildError(f"{path}: 'import {m['name']}{rest}' binds a top-level name; write 'from ... import'")
        return f"{m['indent']}{m['kw']} {package}.{m['name']}{rest}"

    new = _IMPORT.sub(repl, text)
    # The regex works on lines; the ast confirms no import of a bundled top-level name survived
    # (e.g. one inside a parenthesised or semicolon-joined statement).
    for node in ast.walk(ast.parse(new, filename=path)):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            if n.split(".")[0] in VENDORED:
                raise BuildError(f"{path}:{node.lineno}: import of {n} was not rewritten")
    return new


# -- native code -----------------------------------------------------------------------------------
def fmi_headers() -> Path:
    """Folder of the FMI 2.0 C headers (shipped with FMPy)."""
    import fmpy

    d = Path(fmpy.__file__).parent / "c-code"
    if not (d / "fmi2Functions.h").is_file():
        raise BuildError(f"FMI 2.0 headers not found in {d}")
    return d


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BuildError("no C compiler found (set CC or install gcc)")
    return cc


def _compile(args: list[str]) -> None:
    log.info("$ %s", " ".join(args))
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"compilation failed ({proc.returncode}):\n{' '.join(args)}\n{proc.stderr}")
    if proc.stderr.strip():
        log.warning("compiler output:\n%s", proc.stderr)


def compile_native(bin_dir: Path, model_identifier: str, bridge_name: str, env: PythonEnv) -> None:
    """Compile the loader (<modelIdentifier>.so) and the Python bridge into bin_dir."""
    cc = compiler()
    common = ["-shared", "-fPIC", "-O2", "-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra",
              "-Wno-unused-parameter",
              "-Wno-format-truncation",  # messages are truncated on purpose when paths are absurdly long
              f"-I{fmi_headers()}", f"-I{NATIVE}"]
    _compile([cc, *common, f"-I{env.include}", "-Wl,-z,nodelete", str(NATIVE / "bridge.c"),
              "-o", str(bin_dir / bridge_name)])
    _compile([cc, *common, f'-DBT_PYTHON_VERSION="{env.version}"', "-Wl,-Bsymbolic", str(NATIVE / "loader.c"),
              "-o", str(bin_dir / f"{model_identifier}.so"), "-ldl", "-lpthread"])


# -- the build -------------------------------------------------------------------------------------
def build_id(sources: Mapping[str, bytes], correction: bytes | None, opts: BuildOptions, env: PythonEnv) -> str:
    h = hashlib.sha256()
    for path in sorted(sources):
        h.update(path.encode() + b"\0" + sources[path] + b"\0")
    for f in sorted(NATIVE.glob("*")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(b"correction\0" + (correction if correction is not None else b"<none>"))
    h.update(repr(sorted((opts.start or {}).items())).encode())
    h.update(f"{opts.model_identifier}\0{opts.tag}\0{env.version}\0{pythonfmu.__version__}".encode())
    return h.hexdigest()[:12]


def _config_text(cfg: Mapping[str, str]) -> str:
    lines = ["# BatchReactorTwin FMU build configuration (read by the native loader and the slave).",
             "# The python_* lines say where the Python it was built with lives; override them on the",
             "# target machine with BATCHTWIN_PYTHON_HOME (docs/fmu.md)."]
    lines += [f"{k}={v}" for k, v in cfg.items()]
    return "\n".join(lines) + "\n"


def build_fmu(opts: BuildOptions | None = None) -> Path:
    """Build the FMU described by ``opts`` and return its path."""
    opts = opts or BuildOptions(correction=default_correction())
    env = PythonEnv.current()
    with_correction = opts.correction is not None
    correction = Path(opts.correction).read_bytes() if opts.correction is not None else None
    sources = _sources(with_correction)
    bid = build_id(sources, correction, opts, env)
    package = f"batchtwin_{bid}"
    guid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:batch-reactor-twin:fmu:{bid}"))
    bridge_name = f"batchtwin_bridge_{bid}.so"
    log.info("building %s (build %s, correction %s)", opts.out, bid, opts.correction or "none")

    with tempfile.TemporaryDirectory(prefix="batchtwin_fmu_") as tmp:
        stage = Path(tmp)
        res = stage / "resources"
        pkg = res / package
        for rel, data in sources.items():
            dst = pkg / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(vendor_source(data.decode("utf-8"), package, rel), encoding="utf-8")
        (pkg / "__init__.py").write_text(f'"""Python code of BatchReactorTwin FMU build {bid}."""\n'
                                         f'BUILD_ID = "{bid}"\n', encoding="utf-8")
        for d in sorted(p for p in pkg.rglob("*") if p.is_dir()):  # pythonfmu's folder has its own
            if not (d / "__init__.py").exists():
                (d / "__init__.py").write_text("", encoding="utf-8")
        if correction is not None:
            (res / CORRECTION_FILE).write_bytes(correction)
        cfg = {
            "build_id": bid,
            "guid": "{" + guid + "}",
            "model_identifier": opts.model_identifier,
            "package": package,
            "module": f"{package}.fmu.slave",
            "class": BatchReactorTwin.__name__,
            "bridge": bridge_name,
            "python_version": env.version,
            "python_home": env.home,
            "libpython": env.libpython,
            "site_packages": ":".join(env.site_packages),
            "python_executable": env.executable,
        }
        cfg.update({f"start.{k}": repr(float(v)) for k, v in sorted((opts.start or {}).items())})
        (res / CONFIG_FILE).write_text(_config_text(cfg), encoding="utf-8")
        (res / "slavemodule.txt").write_text(f"{package}.fmu.slave\n", encoding="utf-8")  # pythonfmu's convention

        bin_dir = stage / "binaries" / PLATFORM
        bin_dir.mkdir(parents=True)
        compile_native(bin_dir, opts.model_identifier, bridge_name, env)

        md = _model_description(res, guid, opts.model_identifier)
        out = write_archive(stage, md, Path(opts.out))
    log.info("wrote %s", out)
    return out


def write_archive(stage: Path, model_description: bytes, out: Path) -> Path:
    """Finish an FMU folder (modelDescription.xml, docs/fmu.md as its documentation) and zip it to
    ``out`` reproducibly (sorted entries, fixed dates, shared libraries executable), through a
    ``.part`` file so a failed build never leaves half an FMU under the final name. Both FMUs use it."""
    (stage / "modelDescription.xml").write_bytes(model_description)
    doc = ROOT / "docs" / "fmu.md"
    if doc.is_file():
        (stage / "documentation").mkdir()
        shutil.copy2(doc, stage / "documentation" / "fmu.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".part")
    with zipfile.ZipFile(tmp_out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(p for p in stage.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f.relative_to(stage).as_posix(), ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o755 if f.suffix in (".so", ".dll") else 0o644) << 16
            zf.writestr(info, f.read_bytes())
    tmp_out.replace(out)
    return out


def _model_description(resources: Path, guid: str, model_identifier: str, *,
                       generation_tool: str = f"batch-reactor-twin build-fmu (PythonFMU {pythonfmu.__version__})",
                       flags: Mapping[str, str] | None = None, source_files: tuple[str, ...] = ()) -> bytes:
    """pythonfmu's model description of the slave, fixed (fmu.model_description): the one generator
    of both FMUs' model descriptions (the native build passes its flags and source files)."""
    slave = BatchReactorTwin(instance_name="build", resources=str(resources))
    xml = slave.to_xml()
    variables = fmi_variables()
    starts = {v.name: slave._real[v.vr] for v in variables if v.type == "Real" and v.settable}
    model_description.finalize(xml, variables, starts=starts, guid=guid, model_identifier=model_identifier,
                               generation_tool=generation_tool, tolerance=DEFAULT_TOLERANCE.rtol,
                               flags=dict(flags or {}), source_files=source_files)
    return parseString(tostring(xml, "utf-8")).toprettyxml(indent="  ", encoding="UTF-8")
