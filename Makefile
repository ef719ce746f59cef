# resnext_lit: `make test` and `make demo` set everything up themselves (scripts/setup.sh).
.PHONY: setup test demo models clean

setup:
	@scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q --durations=10 $(PYTEST_ARGS)

demo: setup
	scripts/demo.sh

models: setup
	.venv/bin/python -m resnext_lit models

clean:
	rm -rf .venv .pytest_cache lightning_logs runs
