"""`make demo`'s pipeline end to end: digits -> JPEG folders -> .beton -> FFCV training.

Run in a copy of the checkout, so the demo's `runs/demo` (which demo.sh clears of its data
first) is never the developer's own.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

# What a clone holds that the demo does not need, or that belongs to this checkout alone.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", ".pytest_cache",
                                    "*.egg-info", "lightning_logs", "wandb", ".gpu")


@pytest.mark.slow
def test_demo_reaches_90_percent_on_ffcv(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=NOT_COPIED)
    checkout_runs = sorted((ROOT / "runs").rglob("*"))
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(copy))
    out = subprocess.run(["bash", "scripts/demo.sh", "--trainer.enable_progress_bar=false"],
                         cwd=copy, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(goal >= 90%): met" in out.stdout
    assert sorted((ROOT / "runs").rglob("*")) == checkout_runs  # the checkout's runs untouched
    (record,) = (copy / "runs/demo").rglob("results.json")  # the copy's one run
    result = json.loads(record.read_text())
    assert result["status"] == "finished"
    assert result["config"]["data"]["class_path"] == "resnext_lit.data.ffcv.FFCVDataModule"
    assert result["final"]["val/top1_err"] <= 10.0
    assert len(result["epochs"]) == 10
