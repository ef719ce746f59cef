"""The docs hold together: README.md stays a five-minute read that links every page of docs/,
every relative link lands on a file and heading that exist, and every documented
`python -m resnext_lit ...` line still parses with the project's own CLI.

    .venv/bin/python -m pytest -q tests/test_docs.py
"""

from __future__ import annotations

import io
import re
import shlex
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from helpers import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 12_000
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*python -m resnext_lit (.+)$")
TRAINER = {"fit", "validate", "test", "predict"}
PLACEHOLDER = re.compile(r"[<>~]")
OPTION = re.compile(r"(?<![\w-])--[\w-]+")
RUNNABLE = 40  # documented command lines found runnable when this test was written


def prose(text: str) -> str:
    """The text outside fenced code blocks, where links and headings live."""
    return FENCED.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, each
    space a '-' (so "A / B" gives "a--b")."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's -1, -2 ... for repeated headings."""
    found: set[str] = set()
    for heading in HEADING.findall(prose(page.read_text())):
        base = name = slug(heading)
        n = 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links(page: Path) -> list[str]:
    """The relative link targets of a page (web addresses left out), code spans ignored."""
    text = INLINE.sub("", prose(page.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_lands_on_a_file_and_heading():
    """A page moved or a heading renamed must not leave a dead link behind."""
    broken, checked = [], 0
    for page in PAGES:
        for target in links(page):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            checked += 1
            if not file.is_file():
                broken.append(f"{page.name}: {target} (no file)")
            elif anchor and anchor not in anchors(file):
                broken.append(f"{page.name}: {target} (no heading #{anchor})")
    assert checked > 30  # the scan sees the links
    assert not broken, broken


def test_slug_follows_githubs_rules():
    """The anchors the README links to are GitHub's, punctuation and code spans included."""
    assert slug("Running on a cluster / when things go wrong") == \
        "running-on-a-cluster--when-things-go-wrong"
    assert slug("Records (`results.json`)") == "records-resultsjson"
    assert slug("Log a run to W&B") == "log-a-run-to-wb"
    assert slug("Exactness against the paper (tested in `tests/test_paper_figures.py`)") == \
        "exactness-against-the-paper-tested-in-teststest_paper_figurespy"


def test_readme_is_short_and_links_every_docs_page():
    """A newcomer reads the README in minutes; everything else is one link away from it."""
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes"
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(README)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert len(PAGES) > 5
    assert not unlinked, unlinked


def documented_commands() -> list[tuple[str, str]]:
    """(page, text after `python -m resnext_lit `) of every such line in a fenced code block,
    lines ending in a backslash joined with the next; a leading `VAR=value` is dropped."""
    found = []
    for page in PAGES:
        for block in FENCED.findall(page.read_text()):
            for line in re.sub(r"\\\n", " ", block).splitlines():
                match = COMMAND.match(line.strip())
                if match:
                    found.append((page.name, match.group(1)))
    return found


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`resnext_lit.cli.main(argv)` in this process: (exit code, stdout, stderr)."""
    from resnext_lit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as done:  # argparse and jsonargparse exit after printing
            code = done.code
    return code or 0, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_every_documented_command_parses(monkeypatch):
    """Each command the docs show, in a form that trains nothing: `fit`, `validate`, `test`
    with `--print_config` (it parses every key, placeholder paths included, and builds nothing);
    a tool command's `--help`, which must list every option the line uses; `sweep FILE
    --dry-run` as written. Lines needing files that cannot be here are skipped, and counted."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["resnext_lit"])  # not pytest's: LightningCLI warns
    ran, skipped, failed = 0, [], []
    for page, text in documented_commands():
        argv = shlex.split(text, comments=True)
        command = argv[0]
        if command in TRAINER:
            code, _, err = run_cli([*argv, "--print_config"])
        elif command == "sweep" and "--dry-run" in argv:
            if PLACEHOLDER.search(text):
                skipped.append(text)
                continue
            code, _, err = run_cli(argv)
        else:
            code, usage, err = run_cli([command, "--help"])
            unknown = set(OPTION.findall(text)) - set(OPTION.findall(usage))
            if code == 0 and unknown:
                code, err = 1, f"options not in `{command} --help`: {sorted(unknown)}"
        ran += 1
        if code != 0:
            failed.append(f"{page}: {text}\n    exit {code}: {err.strip()[-600:]}")
    assert not failed, "\n".join(failed)
    assert ran >= RUNNABLE, (ran, skipped)
