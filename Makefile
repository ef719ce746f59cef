# resnext_lit: `make test` and `make demo` set everything up themselves (scripts/setup.sh).
.PHONY: setup test demo demo-sweep bench models clean

setup:
	@scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q --durations=10 $(PYTEST_ARGS)

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

clean:
	rm -rf .venv .pytest_cache lightning_logs runs
