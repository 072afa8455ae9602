"""``twin report``: the validation report, generated from fresh runs so that it cannot drift.

    twin report [--quick] [--out validation] [--correction dist/correction.onnx] [--fmu dist/BatchReactorTwin.fmu]

writes ``<out>/validation_report.md``, ``<out>/validation_report.html`` (the same text with every
figure inline) and ``<out>/figures/*.png``. Nothing in it is copied from an earlier run: every table,
figure and PASS/FAIL row is computed when the command runs (``--quick``: small configurations, for the
test suite; the full report within a few minutes).

**Design.** The report is a list of independent sections (:data:`SECTIONS`). A section is a function
``section(ctx) -> Section``: its markdown, its figures and its :class:`Check` rows (a measured value
against a stated limit; PASS or FAIL is computed by the row, never written by hand). A section whose
feature is not in this build (a module that does not import yet) raises :class:`Unavailable` and the
report says "not available in this build"; a section that fails is reported as failed, with its
error, and a FAIL row, and the report goes on. Limits are read through :meth:`Context.limit`, so a
test can break one on purpose and see the row turn FAIL.

**Imports.** The report is the one offline module that reaches every package of the product (the
correction, the FMU, the plant, the gateways, the validation scripts): it imports them lazily, inside
the sections, through :meth:`Context.need`, so importing this module (and ``twin``'s start) loads
none of them, and the kernel's one-way dependencies stay as they are.

Figures go through :meth:`Context.figure`, which refuses a figure without a title, axis labels with
units (``[unit]``) or a legend.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import importlib
import io
import logging
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from twin_core.errors import TwinError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
"""The repository (the report reads its README, docs and data)."""
DEFAULT_OUT = ROOT / "validation"
REPORT_MD = "validation_report.md"
REPORT_HTML = "validation_report.html"
FIGURES = "figures"

Op = Literal["<=", ">=", "<", ">"]


class ReportError(TwinError, RuntimeError):
    """The report cannot be written (a figure without labels, a bad option)."""


class Unavailable(Exception):  # noqa: N818  (a condition, not a failure)
    """The feature a section reports on is not in this build."""


@dataclass(frozen=True)
class Check:
    """One PASS/FAIL row: ``measured op limit``. A NaN measurement fails."""

    section: str
    name: str
    measured: float
    op: Op
    limit: float
    unit: str = ""
    note: str = ""

    @property
    def passed(self) -> bool:
        m, lim = float(self.measured), float(self.limit)
        if math.isnan(m) or math.isnan(lim):
            return False
        return {"<=": m <= lim, ">=": m >= lim, "<": m < lim, ">": m > lim}[self.op]

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class Section:
    """What one section contributes: markdown (without its heading), figure file names, checks."""

    key: str
    title: str
    markdown: str = ""
    figures: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    status: Literal["ok", "unavailable", "failed"] = "ok"
    seconds: float = 0.0


class Context:
    """What every section shares: options, the output folder, limits, lazily loaded inputs."""

    def __init__(self, out: Path, quick: bool = False, correction: Path | None = None, fmu: Path | None = None,
                 data: Path | None = None, limits: dict[str, float] | None = None) -> None:
        self.out = Path(out)
        self.figures_dir = self.out / FIGURES
        self.quick = quick
        self.correction_path = Path(correction) if correction is not None else ROOT / "dist" / "correction.onnx"
        self.fmu_path = Path(fmu) if fmu is not None else ROOT / "dist" / "BatchReactorTwin.fmu"
        self.data_path = Path(data) if data is not None else ROOT / "data" / "simulated_batch_data.csv"
        self.overrides = dict(limits or {})
        self.used_limits: dict[str, float] = {}
        self.cache: dict[str, Any] = {}
        self.section = ""
        self._checks: list[Check] = []
        self._figures: list[str] = []

    # -- limits and checks ---------------------------------------------------------------------------
    def limit(self, key: str, default: float) -> float:
        """The limit ``key`` (``section.name``): ``default`` unless overridden (tests break one on purpose)."""
        value = float(self.overrides.get(key, default))
        self.used_limits[key] = value
        return value

    def check(self, key: str, name: str, measured: float, op: Op, default_limit: float, unit: str = "",
              note: str = "") -> Check:
        """Record a PASS/FAIL row of the current section; its limit comes from :meth:`limit`."""
        c = Check(self.section, name, float(measured), op, self.limit(f"{self.section}.{key}", default_limit), unit,
                  note)
        self._checks.append(c)
        return c

    # -- features ----------------------------------------------------------------------------------
    def need(self, module: str, what: str | None = None) -> Any:
        """Import ``module`` or raise :class:`Unavailable` (the feature is not in this build)."""
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise Unavailable(f"{what or module} is not available in this build ({exc})") from exc

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per report (the data set, the correction, ...)."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    # -- shared inputs -----------------------------------------------------------------------------
    def batches(self) -> dict[int, Any]:
        from twin_core.offline.batches import read_batches

        return self.cached("batches", lambda: read_batches(self.data_path))

    def holdout(self) -> list[Any]:
        hold = [b for b in self.batches().values() if b.split == "holdout"]
        return hold[:4] if self.quick else hold

    def correction(self) -> Any:
        """The shipped correction (``--correction``), loaded by the ONNX runtime; Unavailable if absent."""
        def load() -> Any:
            if not self.correction_path.is_file():
                raise Unavailable(f"no correction at {self.correction_path} (run `twin train`)")
            rt = self.need("ml_onnx.runtime", "the ONNX correction runtime (ml_onnx)")
            return rt.OnnxCorrection(self.correction_path)
        return self.cached("correction", load)

    # -- figures -----------------------------------------------------------------------------------
    def figure(self, name: str, fig: Any, caption: str) -> str:
        """Check that ``fig`` is readable (title, axis labels with units, legend), save it as
        ``figures/<name>.png`` and return the markdown that shows it."""
        problems = figure_problems(fig)
        if problems:
            import matplotlib.pyplot as plt

            plt.close(fig)
            raise ReportError(f"figure {name}: " + "; ".join(problems))
        from twin_core.offline.plots import save

        self.figures_dir.mkdir(parents=True, exist_ok=True)
        fname = f"{name}.png"
        save(fig, self.figures_dir / fname)
        self._figures.append(fname)
        return f"![{caption}]({FIGURES}/{fname})\n\n*Figure: {caption}*\n"


UNIT_IN_LABEL = re.compile(r"\[[^\]]+\]")


def figure_problems(fig: Any) -> list[str]:
    """What makes ``fig`` unreadable: an axes without a title (and no figure title), an axis label
    without a unit in brackets, an axes with several labelled artists and no legend, no legend at all."""
    problems = []
    suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    axes = [ax for ax in fig.get_axes() if ax.get_visible() and ax.axison]
    legends = len(fig.legends)
    for i, ax in enumerate(axes):
        if getattr(ax, "_colorbar", None) is not None:  # a colour bar: its label carries the unit
            if not (UNIT_IN_LABEL.search(ax.get_ylabel()) or UNIT_IN_LABEL.search(ax.get_xlabel())):
                problems.append(f"axes {i}: colour bar without a label with a unit")
            continue
        if not (ax.get_title() or suptitle):
            problems.append(f"axes {i} has no title")
        for which, label in (("x", ax.get_xlabel()), ("y", ax.get_ylabel())):
            shared = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
            if not label and any(UNIT_IN_LABEL.search(o.get_xlabel() if which == "x" else o.get_ylabel())
                                 for o in shared.get_siblings(ax) if o is not ax):
                continue  # a shared axis labelled once, on its neighbour
            if not UNIT_IN_LABEL.search(label):
                problems.append(f"axes {i}: {which} label {label!r} has no unit in brackets")
        labelled = ax.get_legend_handles_labels()[1]
        if ax.get_legend() is not None:
            legends += 1
        elif len(labelled) > 1 and not fig.legends:
            problems.append(f"axes {i} has {len(labelled)} labelled artists and no legend")
    if not axes:
        problems.append("no axes")
    if legends == 0:
        problems.append("no legend")
    return problems


# -- the report --------------------------------------------------------------------------------------
SectionFn = Callable[[Context], str]
"""A section body: returns its markdown; records checks and figures through the context."""


def _sections() -> list[tuple[str, str, SectionFn]]:
    from twin_core.offline import report_deploy, report_model, report_plant, report_process

    return [
        ("identity", "What was validated", report_deploy.identity),
        ("model", "The model", report_model.model),
        ("numerics", "Numerics verification", report_model.numerics),
        ("study", "Temperature-profile study", report_process.study),
        ("stop", "Optimal stop", report_process.optimal_stop),
        ("optimise", "Optimised recipe against the best constant jacket", report_process.optimise),
        ("fit", "Parameter estimation", report_process.parameter_fit),
        ("designspace", "Design space", report_process.design_space),
        ("hybrid", "Physics-only vs hybrid vs plant truth (held-out batches)", report_plant.hybrid),
        ("robustness", "Plant variants, trust weight and batch-to-batch learning", report_plant.robustness),
        ("correction", "The correction: ONNX vs scikit-learn, training domain and outside it", report_plant.correction),
        ("softsensor", "Soft sensor", report_plant.softsensor),
        ("fmu", "The FMUs", report_deploy.fmus),
        ("opcua", "OPC UA address space and security conformance", report_deploy.opcua),
        ("runtime", "Plant-floor runtime: link faults, crash recovery, fuzzing, load", report_deploy.runtime),
        ("performance", "Performance", report_deploy.performance),
        ("traceability", "Traceability: README claims and their evidence", report_deploy.traceability),
    ]


SECTIONS = _sections
"""The sections in report order: (key, title, body). A function so that importing this module
imports no section module."""


def run_section(ctx: Context, key: str, title: str, body: SectionFn) -> Section:
    """Run one section; an unavailable feature or a failure becomes the section's text, not a crash."""
    ctx.section, ctx._checks, ctx._figures = key, [], []
    t0 = time.perf_counter()
    sec = Section(key, title)
    try:
        sec.markdown = body(ctx)
    except Unavailable as exc:
        sec.status, sec.markdown = "unavailable", f"*Not available in this build:* {exc}\n"
    except Exception as exc:  # noqa: BLE001  (one failed section must not hide the others)
        log.exception("report section %s failed", key)
        sec.status = "failed"
        sec.markdown = f"**This section failed** with `{type(exc).__name__}: {exc}`.\n"
        ctx._checks.append(Check(key, "section ran to completion", 0.0, ">=", 1.0, note=type(exc).__name__))
    sec.checks, sec.figures = list(ctx._checks), list(ctx._figures)
    sec.seconds = time.perf_counter() - t0
    log.info("section %s: %s in %.1f s", key, sec.status, sec.seconds)
    return sec


@dataclass
class Report:
    sections: list[Section]
    quick: bool
    seconds: float
    generated_utc: str

    @property
    def checks(self) -> list[Check]:
        return [c for s in self.sections for c in s.checks]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def build_report(ctx: Context, only: list[str] | None = None, progress: bool = False) -> Report:
    """Run the sections (all, or the keys in ``only``) and return them."""
    t0 = time.perf_counter()
    todo = [s for s in SECTIONS() if only is None or s[0] in only]
    if only is not None:
        unknown = set(only) - {s[0] for s in SECTIONS()}
        if unknown:
            raise ReportError(f"unknown section(s) {sorted(unknown)}; expected some of {[s[0] for s in SECTIONS()]}")
    it: Any = todo
    if progress:
        from tqdm import tqdm

        it = tqdm(todo, desc="twin report", unit="section")
    sections = []
    for key, title, body in it:
        if progress:
            it.set_postfix_str(key)
        sections.append(run_section(ctx, key, title, body))
    return Report(sections, ctx.quick, time.perf_counter() - t0, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))


def fmt(v: float, digits: int = 3) -> str:
    """A number for a table: general format, NaN as 'n/a'."""
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    return f"{v:.{digits}g}"


def md_table(head: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (cells formatted with str, floats with :func:`fmt`)."""
    def cell(v: Any) -> str:
        return (fmt(v) if isinstance(v, float) else str(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def anchor(title: str) -> str:
    """The anchor GitHub gives a heading (the HTML rendering uses the same): lower case, inline code
    marks and punctuation dropped, each space a hyphen."""
    a = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", ""))
    return a.replace(" ", "-")


def render_markdown(rep: Report) -> str:
    """The whole report as markdown: summary of every check, then the sections."""
    checks = rep.checks
    n_fail = len(rep.failed)
    lines = ["# Validation report: batch-reactor hybrid digital twin", "",
             f"Generated by `twin report{' --quick' if rep.quick else ''}` on {rep.generated_utc} in "
             f"{rep.seconds:.0f} s. Every table, figure and PASS/FAIL row below was computed by that run "
             "(nothing is copied from an earlier one); a PASS/FAIL row compares the measured value with the "
             "stated limit. Regenerate with `twin report` (full) or `twin report --quick` (small configurations).",
             "", f"**{len(checks) - n_fail} of {len(checks)} checks pass**"
             + (f"; {n_fail} fail (listed first in the summary)." if n_fail else "."), ""]
    avail = [s for s in rep.sections if s.status != "ok"]
    if avail:
        lines += ["Sections not available in this build or failed: "
                  + ", ".join(f"[{s.title}](#{anchor(s.title)}) ({s.status})" for s in avail) + ".", ""]
    lines += ["## Contents", ""]
    lines += [f"{i}. [{s.title}](#{anchor(s.title)})" for i, s in enumerate(rep.sections, 1)]
    lines += ["", "## Summary of checks", "",
              md_table(["", "section", "check", "measured", "limit", "unit", "note"],
                       [[c.verdict, c.section, c.name, fmt(c.measured, 4), f"{c.op} {fmt(c.limit, 4)}", c.unit, c.note]
                        for c in sorted(checks, key=lambda c: c.passed)])]
    for s in rep.sections:
        lines += [f"## {s.title}", "", s.markdown.rstrip(), ""]
        if s.checks:
            lines += [md_table(["", "check", "measured", "limit", "unit", "note"],
                               [[c.verdict, c.name, fmt(c.measured, 4), f"{c.op} {fmt(c.limit, 4)}", c.unit, c.note]
                                for c in s.checks])]
        lines += [f"<sub>section `{s.key}`: {s.status}, {s.seconds:.1f} s</sub>", ""]
    return "\n".join(lines).rstrip() + "\n"


IMG = re.compile(r'<img alt="([^"]*)" src="([^"]+\.png)"')


def render_html(md_text: str, base: Path) -> str:
    """The report as one HTML file, figures inline (data URIs)."""
    import markdown

    body = markdown.markdown(md_text, extensions=["tables", "toc", "fenced_code"],
                             extension_configs={"toc": {"slugify": lambda value, sep: anchor(value)}})

    def inline(m: re.Match[str]) -> str:
        data = base64.b64encode((base / m.group(2)).read_bytes()).decode("ascii")
        return f'<img alt="{m.group(1)}" src="data:image/png;base64,{data}"'

    body = IMG.sub(inline, body)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}code,pre{background:#f4f4f4}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape('Validation report')}</title>"
            f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")


def write_report(rep: Report, out: Path) -> tuple[Path, Path]:
    """Write the markdown and the HTML rendering into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md_text = render_markdown(rep)
    md_path, html_path = out / REPORT_MD, out / REPORT_HTML
    md_path.write_text(md_text, encoding="utf-8")
    html_path.write_text(render_html(md_text, out), encoding="utf-8")
    return md_path, html_path


# -- helpers the sections share ------------------------------------------------------------------------
def run(cmd: list[str], timeout: float = 600.0, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """A subprocess with captured text output (never raises on a non-zero exit)."""
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence stdout of chatty libraries (FMPy prints a warning per unconnected input)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def machine() -> str:
    """One line describing the machine the report ran on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = ", load average {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    return (f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs"
            f"{load}; Python {platform.python_version()}")


# -- the command ---------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    # The soft-sensor section injects sensor faults on purpose: its health warnings are results, not news.
    # Generating plant data on purpose: the generator's notes are not news either.
    if not args.verbose:
        for name in ("twin_core.estimation", "plant_sim"):
            logging.getLogger(name).setLevel(logging.ERROR)
    out = Path(args.out)
    ctx = Context(out, quick=args.quick, correction=args.correction, fmu=args.fmu, data=args.data)
    rep = build_report(ctx, only=args.only, progress=not args.no_progress)
    md_path, html_path = write_report(rep, out)
    n, bad = len(rep.checks), rep.failed
    print(f"wrote {md_path}, {html_path} and {sum(len(s.figures) for s in rep.sections)} figures in "
          f"{out / FIGURES} ({rep.seconds:.0f} s)")
    for s in rep.sections:
        print(f"  {s.key:<13} {s.status:<12} {sum(c.passed for c in s.checks)}/{len(s.checks)} checks pass "
              f"({s.seconds:.1f} s)")
    print(f"{n - len(bad)} of {n} checks pass" + (": FAIL " + "; ".join(f"{c.section}: {c.name}" for c in bad)
                                                  if bad else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``twin report``."""
    p = sub.add_parser("report", help="write the validation report (markdown, HTML, figures) from fresh runs")
    p.add_argument("--quick", action="store_true", help="small configurations (the test suite's run)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default validation/)")
    p.add_argument("--correction", type=Path, default=None, help="ONNX correction (default dist/correction.onnx)")
    p.add_argument("--fmu", type=Path, default=None, help="Python FMU (default dist/BatchReactorTwin.fmu)")
    p.add_argument("--data", type=Path, default=None, help="plant data set (default data/simulated_batch_data.csv)")
    p.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections (keys as printed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)

