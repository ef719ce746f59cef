"""scripts/setup.sh's console: one line per step, tools' output in .venv/setup.log, a failure
that names the log, and silence when nothing changed. No real install: the script runs in a
temporary copy of the repo with a fake `python` (its venv's pip only prints pip-like noise) and
a fake `dpkg-query` that reports FFCV's system packages installed.

    .venv/bin/python -m pytest -q tests/test_setup.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_DPKG_QUERY = "#!/bin/sh\nprintf 'install ok installed'\n"
# `python --version` and `python -m venv DIR`, whose bin/pip says what a real one would and
# fails when FAKE_PIP_FAILS names its first argument.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = --version ]; then echo "Python 3.99.0"; exit 0; fi
[ "$1 $2" = "-m venv" ] || { echo "fake python: unexpected $*" >&2; exit 9; }
mkdir -p "$3/bin"
cat > "$3/bin/pip" <<'PIP'
#!/usr/bin/env bash
echo "WARNING: pip noise for $*" >&2
if [ "${FAKE_PIP_FAILS:-}" = "$1 $2" ]; then echo "ERROR: No matching distribution" >&2; exit 4; fi
echo "Successfully installed $*"
PIP
chmod +x "$3/bin/pip"
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the script, requirements.txt and pyproject.toml, fakes first on PATH."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "requirements.txt", tmp_path / "requirements.txt")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name, text in (("dpkg-query", FAKE_DPKG_QUERY), ("python", FAKE_PYTHON)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    return tmp_path


def run_setup(repo: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{repo / 'fakes'}:{os.environ['PATH']}",
           "PYTHON": str(repo / "fakes" / "python"), **env}
    return subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, text=True,
                          capture_output=True, timeout=60)


def test_one_line_per_step_then_silence_when_nothing_changed(repo):
    first = run_setup(repo)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["venv", "pinned", "editable", "done"]
    assert all(line.startswith("setup: ") for line in lines) and first.stderr == ""
    log = (repo / ".venv" / "setup.log").read_text()
    assert "WARNING: pip noise for install -r requirements.txt" in log  # not on the console
    assert len(list((repo / ".venv").glob(".requirements-*"))) == 1

    again = run_setup(repo)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


def test_a_failed_step_prints_the_logs_tail_and_path_and_leaves_no_stamp(repo):
    failed = run_setup(repo, FAKE_PIP_FAILS="install -r")
    assert failed.returncode == 4
    assert failed.stdout.splitlines()[-1].endswith("FAILED")
    assert "ERROR: No matching distribution" in failed.stderr  # the log's tail
    assert f"full log: {repo / '.venv' / 'setup.log'}" in failed.stderr
    assert not list((repo / ".venv").glob(".requirements-*"))
    assert run_setup(repo).stdout.splitlines()[-1].startswith("setup: done in")  # tried again


def test_a_python_that_cannot_make_a_venv_fails_with_the_log_path(repo):
    (repo / "fakes" / "python").write_text("#!/bin/sh\necho 'no venv module' >&2\nexit 3\n")
    failed = run_setup(repo)
    assert failed.returncode == 3
    assert "no venv module" in failed.stderr
    assert (repo / ".venv" / "setup.log").is_file()  # made before the venv
