"""`twin report`: the quick report generates from fresh runs, every figure it references exists and is
non-empty, every PASS/FAIL row is computed (a deliberately broken limit turns its row FAIL), figures
without titles, units or legends are refused, and a missing feature is reported, not a crash."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from twin_core.offline import report as R

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _summary_rows(md: str) -> list[list[str]]:
    """The rows of the report's summary table (verdict, section, check, measured, limit, ...)."""
    part = md.split("## Summary of checks", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip()[1:-1])] for ln in part.splitlines() if ln.startswith("| ")]
    return [r for r in rows if r[0] in ("PASS", "FAIL")]


@pytest.mark.slow
def test_quick_report_generates_with_its_figures_and_computed_rows(dist_artifacts: Path, tmp_path: Path) -> None:
    ctx = R.Context(tmp_path, quick=True, correction=dist_artifacts / "correction.onnx",
                    fmu=dist_artifacts / "BatchReactorTwin.fmu")
    rep = R.build_report(ctx)
    md_path, html_path = R.write_report(rep, tmp_path)
    md = md_path.read_text(encoding="utf-8")
    assert [s.key for s in rep.sections] == [k for k, _, _ in R.SECTIONS()]
    failed = [(s.key, s.markdown) for s in rep.sections if s.status == "failed"]
    assert failed == []
    # Sections that must run in every build (their features are in the product today).
    ok = {s.key for s in rep.sections if s.status == "ok"}
    assert {"identity", "model", "numerics", "study", "stop", "optimise", "fit", "hybrid", "correction", "softsensor", "fmu",
            "traceability"} <= ok
    # Every referenced figure exists, is a non-empty PNG, and is one the sections declared.
    refs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    declared = {f"figures/{f}" for s in rep.sections for f in s.figures}
    assert len(refs) >= 8 and set(refs) == declared
    for ref in refs:
        data = (tmp_path / ref).read_bytes()
        assert len(data) > 5000 and data.startswith(PNG), ref
    # The HTML has every figure inline and no link to a file.
    html = html_path.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(refs)
    assert ".png\"" not in html
    # Every in-page link of the HTML has its heading (the same anchors as the markdown's).
    ids = set(re.findall(r'<h\d id="([^"]+)"', html))
    assert set(re.findall(r'href="#([^"]+)"', html)) <= ids and len(ids) >= len(rep.sections)
    # Every PASS/FAIL row in the text is the row the run computed, with its verdict recomputed here.
    rows = _summary_rows(md)
    assert len(rows) == len(rep.checks) >= 30
    for c in rep.checks:
        m, lim = c.measured, c.limit
        want = not math.isnan(m) and {"<=": m <= lim, ">=": m >= lim, "<": m < lim, ">": m > lim}[c.op]
        assert c.passed is want
    assert sum(r[0] == "FAIL" for r in rows) == len(rep.failed)
    # The identity of what was validated is stated.
    for text in ("git revision", "SHA-256", "model version", "GUID"):
        assert text in md
    # Numerics and the correction's parity pass on the product as built.
    by_key = {f"{c.section}.{c.name}": c for c in rep.checks}
    assert all(c.passed for k, c in by_key.items() if k.startswith(("numerics.", "correction.", "stop.")))


def test_a_broken_limit_turns_its_row_fail(tmp_path: Path) -> None:
    key = "numerics.isothermal_60"
    ok = R.build_report(R.Context(tmp_path / "ok", quick=True), only=["numerics"])
    broken = R.build_report(R.Context(tmp_path / "bad", quick=True, limits={key: 1e-30}), only=["numerics"])
    (good,) = [c for c in ok.checks if c.name.startswith("isothermal 60")]
    (bad,) = [c for c in broken.checks if c.name.startswith("isothermal 60")]
    assert good.passed and good.limit == 1e-8
    assert not bad.passed and bad.limit == 1e-30 and bad.measured == good.measured
    # Only that row changed.
    assert [c.passed for c in broken.checks if c is not bad] == [c.passed for c in ok.checks if c.name != good.name]
    md = R.render_markdown(broken)
    (row,) = [r for r in _summary_rows(md) if r[2].startswith("isothermal 60")]
    assert row[0] == "FAIL" and row[4] == "<= 1e-30"


@pytest.mark.parametrize(("measured", "op", "limit", "passed"), [
    (1.0, "<=", 1.0, True), (1.0000001, "<=", 1.0, False), (1.0, "<", 1.0, False), (0.5, "<", 1.0, True),
    (2.0, ">=", 2.0, True), (1.9, ">=", 2.0, False), (2.0, ">", 2.0, False), (math.nan, "<=", 1.0, False),
    (math.nan, ">=", -math.inf, False), (0.0, "<=", math.nan, False), (-math.inf, "<=", 0.0, True),
])
def test_check_rows_compare_measured_with_limit(measured: float, op: str, limit: float, passed: bool) -> None:
    c = R.Check("s", "n", measured, op, limit)  # type: ignore[arg-type]
    assert c.passed is passed
    assert c.verdict == ("PASS" if passed else "FAIL")


def test_figures_without_title_units_or_legend_are_refused(tmp_path: Path) -> None:
    from twin_core.offline.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a")
    ax.plot([0, 1], [1, 0], label="b")
    ax.set_xlabel("time")
    problems = R.figure_problems(fig)
    assert any("no title" in p for p in problems)
    assert any("x label 'time' has no unit" in p for p in problems)
    assert any("y label '' has no unit" in p for p in problems)
    assert any("no legend" in p for p in problems)
    ctx = R.Context(tmp_path)
    with pytest.raises(R.ReportError, match="figure bad"):
        ctx.figure("bad", fig, "a bad figure")
    assert not (tmp_path / "figures" / "bad.png").exists()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a")
    ax.set(xlabel="time [h]", ylabel="c_B [mol/L]", title="t")
    ax.legend()
    assert R.figure_problems(fig) == []
    assert "figures/good.png" in ctx.figure("good", fig, "a good figure")
    assert (tmp_path / "figures" / "good.png").read_bytes().startswith(PNG)


def test_a_missing_feature_says_not_available_and_a_failing_section_fails_its_row(tmp_path: Path) -> None:
    ctx = R.Context(tmp_path)

    def needs_missing(c: R.Context) -> str:
        c.need("no_such_module_for_the_report", "the frobnicator")
        return "unreachable"

    def breaks(c: R.Context) -> str:
        c.check("x", "a row before the failure", 1.0, "<=", 2.0)
        raise ZeroDivisionError("boom")

    s = R.run_section(ctx, "missing", "Missing", needs_missing)
    assert s.status == "unavailable" and "Not available in this build" in s.markdown and "frobnicator" in s.markdown
    assert s.checks == []
    s = R.run_section(ctx, "broken", "Broken", breaks)
    assert s.status == "failed" and "ZeroDivisionError: boom" in s.markdown
    assert [c.passed for c in s.checks] == [True, False]


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(R.ReportError, match="unknown section"):
        R.build_report(R.Context(tmp_path), only=["nonsense"])


def test_model_section_reads_units_signals_and_rationale_for_every_parameter() -> None:
    from dataclasses import fields

    from twin_core.offline.report_model import parameter_rows
    from twin_core.params import ModelParams

    rows = parameter_rows()
    p = ModelParams()
    assert len(rows) == sum(len(fields(getattr(p, s))) for s in ("kinetics", "reactor", "charge"))
    by_field = {r[0].strip("`"): r for r in rows}
    assert by_field["reactor.UA_W_per_K"][1:4] == ["`UA`", "1500", "W/K"]
    assert by_field["kinetics.T_ref_K"][2] == "353.15"
    assert "glass lining" in by_field["reactor.UA_W_per_K"][5]
    assert all(r[5] for r in rows), [r[0] for r in rows if not r[5]]


def test_twin_report_command_writes_the_files(tmp_path: Path) -> None:
    from twin_core.offline.cli import main

    assert main(["report", "--only", "model", "stop", "--out", str(tmp_path), "--no-progress"]) == 0
    md = (tmp_path / R.REPORT_MD).read_text(encoding="utf-8")
    assert "## The model" in md and "## Optimal stop" in md and "## Numerics verification" not in md
    assert (tmp_path / "figures" / "optimal_stop.png").stat().st_size > 0
    assert (tmp_path / R.REPORT_HTML).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_importing_the_report_loads_no_other_package() -> None:
    """The report reaches ml_onnx, fmu, plant_sim and gateways lazily, inside its sections only."""
    probe = ("import sys, twin_core.offline.report, twin_core.offline.commands; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'ml_onnx', 'fmu', 'plant_sim', 'gateways', "
             "'matplotlib', 'scipy', 'fmpy', 'markdown'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
