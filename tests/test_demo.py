"""`make demo`'s pipeline end to end: digits -> JPEG folders -> .beton -> FFCV training.

Run in a copy of the checkout, so the demo's `runs/demo` (which demo.sh clears of its data
first) is never the developer's own.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

# What a clone holds that the demo does not need, or that belongs to this checkout alone.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", ".pytest_cache",
                                    "*.egg-info", "lightning_logs", "wandb", ".gpu")


# About a minute and a half here; much longer on a slower machine beside another job: the
# bounds only catch a hang.
DEMO_TIMEOUT_S = 1800


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TIMEOUT_S + 300)
def test_demo_reaches_90_percent_on_ffcv(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=NOT_COPIED)
    checkout_runs = sorted((ROOT / "runs").rglob("*"))
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(copy))
    out = subprocess.run(["bash", "scripts/demo.sh"], cwd=copy, capture_output=True, text=True,
                         timeout=DEMO_TIMEOUT_S, env=dict(env, COLUMNS="80"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(goal >= 90%): met" in out.stdout
    # The console shows the run: no adverts, no summary with 0 FLOPs, no v_num, no upstream
    # warnings about our own design; one line per epoch with its loss; the run's files last.
    console = out.stdout + out.stderr
    for noise in ("Tip:", "FLOPs", "v_num", "TPU available", "LeafSpec", "on_after_batch_transfer",
                  "Warning", "warn"):
        assert noise not in console, (noise, console[-3000:])
    assert re.search(r"^network: resnext11_8x4d \(11 layers, C=8, d=4, form c\): 0\.97 M params, "
                     r"[\d.]+ G MACs at 16 px$", out.stderr, re.M), out.stderr
    epochs = re.findall(r"^Epoch (\d+)/9 .* loss: [\d.]+ val_err: [\d.]+ *$", out.stdout, re.M)
    assert sorted(set(map(int, epochs))) == list(range(10)), out.stdout[-3000:]
    assert all(len(line) <= 80 for line in out.stdout.splitlines()), out.stdout[-3000:]
    done = re.search(r"^run demo/(\w+) fit done: runs/demo/\1 \(checkpoints: checkpoints/\{.*"
                     r"last\.ckpt\}; record: results\.json\)$", out.stderr, re.M)
    assert done, out.stderr[-3000:]
    assert sorted((ROOT / "runs").rglob("*")) == checkout_runs  # the checkout's runs untouched
    (record,) = (copy / "runs/demo").rglob("results.json")  # the copy's one run
    result = json.loads(record.read_text())
    assert result["status"] == "finished"
    assert result["config"]["data"]["class_path"] == "resnext_lit.data.ffcv.FFCVDataModule"
    assert result["final"]["val/top1_err"] <= 10.0
    assert result["dataset"] == "digits"  # write-beton --dataset digits, not the loader's name
    assert record.parent.name == done[1]
    assert len(result["epochs"]) == 10
