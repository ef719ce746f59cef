# resnext_lit: `make test` and `make demo` set everything up themselves (scripts/setup.sh).
.PHONY: setup test test-fast lint demo demo-sweep bench models clean clean-runs

setup:
	@scripts/setup.sh

# Two test processes (pytest-xdist), whole files each so a module's fixtures (the SLURM
# cluster) are built once: about 1.3x faster than one. PYTEST_XDIST= runs them in one process.
PYTEST_XDIST ?= -n 2 --dist loadfile

# Everything (CI runs this, after `make lint`).
test: setup
	.venv/bin/python -m pytest -q $(PYTEST_XDIST) --durations=10 $(PYTEST_ARGS)

# The edit loop: every test not marked slow (no real signals, sweeps, DDP or demo runs).
test-fast: setup
	.venv/bin/python -m pytest -q $(PYTEST_XDIST) -m "not slow" --durations=5 $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check resnext_lit tests scripts

demo: setup
	scripts/demo.sh

# The cardinality demo as a sweep on CPU (local runner, W&B offline), then its table: printed
# even if a run failed; the exit status is the sweep's.
demo-sweep: setup
	.venv/bin/python -m resnext_lit sweep sweeps/demo_cardinality.yaml; status=$$?; \
	.venv/bin/python -m resnext_lit table --runs runs/sweeps/demo-cardinality \
	    --out runs/sweeps/demo-cardinality/tables && exit $$status

# Speed claims as ratios against baselines measured in the same run (~4 min on 2 cores).
bench: setup
	.venv/bin/python -m resnext_lit bench all --out runs/bench/all.json

models: setup
	.venv/bin/python -m resnext_lit models

# Build products only: the venv, caches. Runs (checkpoints, records) stay; see clean-runs.
clean:
	rm -rf .venv .pytest_cache .ruff_cache lightning_logs
	find . -name __pycache__ -type d -prune -not -path "./.git/*" -exec rm -rf {} +

# Deletes runs/: every run's checkpoints, records and offline W&B logs, and the demo's betons.
clean-runs:
	rm -rf runs
