#!/usr/bin/env bash
# `make demo`: train a small ResNeXt on the embedded digits on CPU, then summarise the run.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m resnext_lit fit --config configs/demo.yaml "$@"
.venv/bin/python -m resnext_lit summary runs/demo
