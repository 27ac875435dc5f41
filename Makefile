# Thin wrappers around the project's commands; every target sets up .venv first when needed.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# make bench: quick runs; BENCH_FULL=1 for the full ones, BENCH_CHECK=1 to exit 1 on a missed target,
# BENCH_ARGS for anything else bench/run_all.py takes (e.g. BENCH_ARGS="--only sft_throughput").
BENCH_FULL ?=
BENCH_CHECK ?=
BENCH_ARGS ?=

.PHONY: install test test-fast demo bench lint
install:
	@bash scripts/bootstrap.sh

test: install
	@bash scripts/ensure_chromium.sh
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	./run_pipeline.sh

bench: install
	$(PY) bench/run_all.py $(if $(BENCH_FULL),--full) $(if $(BENCH_CHECK),--check) $(BENCH_ARGS)

lint: install
	$(PY) -m ruff check .
