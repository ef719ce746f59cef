#!/usr/bin/env bash
# `make demo`: the digits -> JPEG ImageFolders -> FFCV .beton files -> a small ResNeXt trained
# from them on CPU with FFCVDataModule -> a summary of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}  # the venv `make` builds, unless PYTHON names another
data=runs/demo/data
rm -rf "$data"
$py -m resnext_lit.data.digits "$data"
$py -m resnext_lit write-beton --train "$data/train" --val "$data/val" --out "$data" --dataset digits \
  --workers 2 --no-progress
$py -m resnext_lit fit --config configs/demo.yaml --config configs/data/demo_ffcv.yaml "$@"
$py -m resnext_lit summary runs/demo
$py - <<'PY'
import json, pathlib
record = max(pathlib.Path("runs/demo").rglob("results.json"), key=lambda p: p.stat().st_mtime)
err = json.loads(record.read_text())["final"]["val/top1_err"]
print(f"final val top-1 accuracy {100 - err:.1f}% (goal >= 90%): {'met' if err <= 10 else 'MISSED'}")
PY
