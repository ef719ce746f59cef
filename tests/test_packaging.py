"""The package as the ecosystem installs it: `pip install -e ".[dev]"` into a fresh venv gives a
`resnext-lit` console script equal to `python -m resnext_lit`, one version, and the metadata's
dependencies and extras. The fresh venv sees this checkout's installed stack through a .pth
file (nothing is downloaded: every requirement is already met, so pip installs only us)."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import tomllib

import resnext_lit

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_source_and_the_license_and_citation_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", resnext_lit.__version__)
    assert set(project["optional-dependencies"]) == {"ffcv", "wandb", "dev"}
    assert project["scripts"] == {"resnext-lit": "resnext_lit.cli:run"}
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
    citation = (ROOT / "CITATION.cff").read_text()
    assert "Aggregated Residual Transformations for Deep Neural Networks" in citation
    assert "arXiv:1611.05431" in citation


@pytest.mark.slow
def test_pip_install_editable_with_dev_extra_into_a_fresh_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    (Path(purelib) / "stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([python, "-m", "pip", "install", "--no-build-isolation",
                              "--no-index", "-e", f"{ROOT}[dev]"], capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    version = subprocess.run([python, "-c", "from importlib.metadata import version; "
                              "print(version('resnext-lit'))"], capture_output=True, text=True)
    assert version.stdout.strip() == resnext_lit.__version__, version.stderr
    script = subprocess.run([env_dir / "bin" / "resnext-lit", "help"], capture_output=True,
                            text=True, timeout=120)
    module = subprocess.run([sys.executable, "-m", "resnext_lit", "help"], capture_output=True,
                            text=True, timeout=120)
    assert script.returncode == module.returncode == 0, script.stderr
    assert script.stdout == module.stdout
    bad = subprocess.run([env_dir / "bin" / "resnext-lit", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
