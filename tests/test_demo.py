"""`make demo`'s pipeline end to end: digits -> JPEG folders -> .beton -> FFCV training."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_reaches_90_percent_on_ffcv():
    out = subprocess.run(["bash", "scripts/demo.sh", "--trainer.enable_progress_bar=false"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(goal >= 90%): met" in out.stdout
    record = max((ROOT / "runs/demo").rglob("results.json"), key=lambda p: p.stat().st_mtime)
    result = json.loads(record.read_text())
    assert result["status"] == "finished"
    assert result["config"]["data"]["class_path"] == "resnext_lit.data.ffcv.FFCVDataModule"
    assert result["final"]["val/top1_err"] <= 10.0
    assert len(result["epochs"]) == 10
