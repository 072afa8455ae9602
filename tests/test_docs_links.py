"""Every relative link of the README, docs/, deployment/ and the validation report resolves to a file
(and, with #fragment, to a heading of that file); every `twin ...` command quoted in the lifecycle notes
parses with the real `twin` parser."""

from __future__ import annotations

import argparse
import functools
import re
import shlex
from pathlib import Path

import pytest

from twin_core.offline.report import anchor

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deployment").glob("*.md"),
               *(ROOT / "validation").glob("*.md")])
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def headings(path: Path) -> set[str]:
    """GitHub anchors of the headings of a markdown file (a repeated heading gets -1, -2, ...)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        a = anchor(m.group(1))
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")
    out |= set(re.findall(r'<a (?:name|id)="([^"]+)"', text))
    return out


def links(path: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, opc.tcp: ...
            continue
        file_part, _, fragment = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in headings(dest):
            broken.append(f"{target}: no heading #{fragment} in {dest.relative_to(ROOT)}")
    assert broken == []


def test_the_readme_and_docs_have_links_to_check() -> None:
    assert len(links(ROOT / "README.md")) >= 10
    assert sum(len(links(d)) for d in DOCS) >= 20


def test_anchor_follows_github() -> None:
    assert anchor("3. Numerics") == "3-numerics"
    assert anchor("OPC UA address space and security conformance") == "opc-ua-address-space-and-security-conformance"
    assert anchor("Physics-only vs hybrid: held-out (20)") == "physics-only-vs-hybrid-held-out-20"
    assert anchor("A → B") == "a--b"
    assert anchor("`twin report`") == "twin-report"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Sub part\n\n[ok](#sub-part) [bad](#nope) [file](b.md) "
                                   "[gone](missing.md) `[code](not-a-link.md)`\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("# B\n", encoding="utf-8")
    assert links(tmp_path / "a.md") == ["#sub-part", "#nope", "b.md", "missing.md"]
    assert headings(tmp_path / "a.md") == {"title", "sub-part"}


# -- the commands quoted in the lifecycle notes exist ----------------------------------------------------
PLACEHOLDERS = {"<hash>": "0" * 64, "<thumbprint>": "ab" * 20}


def lifecycle_commands() -> list[str]:
    text = (ROOT / "deployment" / "lifecycle_notes.md").read_text(encoding="utf-8")
    cmds = {c.strip("`") for c in CODE.findall(text) if c.strip("`").startswith("twin ")}
    return sorted(cmds)


def test_lifecycle_notes_quote_commands() -> None:
    cmds = lifecycle_commands()
    assert len(cmds) >= 12
    for sub in ("train", "report", "build-fmu", "audit", "users"):
        assert any(c.split()[1] == sub for c in cmds), sub


@functools.cache
def twin_parser() -> argparse.ArgumentParser:
    from twin_core.offline.cli import build_parser

    return build_parser()


@pytest.mark.parametrize("cmd", lifecycle_commands())
def test_every_command_of_the_lifecycle_notes_parses(cmd: str) -> None:
    for k, v in PLACEHOLDERS.items():
        cmd = cmd.replace(k, v)
    argv = shlex.split(cmd)[1:]
    try:
        args = twin_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"`{cmd}` does not parse (exit {exc.code})")
    assert callable(args.func)
