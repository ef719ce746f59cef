"""The package's shape: `experiments/` never imports Lightning, and every class path and dotted
name the configs, sweeps, README and docs/ give resolves.

    .venv/bin/python -m pytest -q tests/test_layout.py
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from helpers import ROOT

EXPERIMENTS = ["resnext_lit.experiments", *sorted(
    f"resnext_lit.experiments.{p.stem}" for p in (ROOT / "resnext_lit" / "experiments").glob("*.py")
    if p.stem != "__init__")]
DOTTED = re.compile(r"\bresnext_lit(?:\.[A-Za-z_]\w*)+")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")


@pytest.mark.parametrize("module", EXPERIMENTS)
def test_experiments_never_import_lightning(module):
    """In a fresh interpreter: importing the module leaves `lightning` out of sys.modules."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning', 'lightning_fabric')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


def resolve(dotted: str):
    """The object a dotted name names: the longest importable module, then its attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            found = getattr(found, attr)
        return found
    raise ModuleNotFoundError(dotted)


def named_in_docs() -> dict[str, set[str]]:
    """Every `resnext_lit.` dotted name, by where it stands: configs/ and sweeps/ whole, the
    fenced code blocks and inline code of README.md and docs/*.md."""
    found: dict[str, set[str]] = {}
    for path in [*(ROOT / "configs").rglob("*.yaml"), *(ROOT / "sweeps").glob("*.yaml")]:
        for name in DOTTED.findall(path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    for page in DOCS:
        text = page.read_text()
        for block in [*FENCED.findall(text), *INLINE.findall(text)]:
            for name in DOTTED.findall(block):
                found.setdefault(name, set()).add(str(page.relative_to(ROOT)))
    return found


def test_every_class_path_and_dotted_name_resolves():
    names = named_in_docs()
    class_paths = {n for n in names if re.search(rf"class_path:\s*{re.escape(n)}\b",
                                                 "\n".join(p.read_text() for p in [
                                                     *(ROOT / "configs").rglob("*.yaml"),
                                                     *(ROOT / "sweeps").glob("*.yaml")]))}
    assert "resnext_lit.data.ffcv.FFCVDataModule" in class_paths  # the scan sees class paths
    assert len(class_paths) > 5
    broken = {}
    for name, where in sorted(names.items()):
        try:
            resolve(name)
        except (ImportError, AttributeError) as err:
            broken[name] = f"{sorted(where)}: {err}"
    assert not broken, broken


def test_every_package_path_in_the_docs_exists():
    top = "resnext_lit|tests|scripts|configs|sweeps"
    paths = set(re.findall(rf"(?<![\w/.-])((?:{top})/[\w./*-]*\w)",
                           "\n".join(page.read_text() for page in DOCS)))
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (ROOT / p).exists() and "*" not in p)
    assert not missing, missing
