# Thin wrappers around the project's commands; every target sets up .venv first when needed.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

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
	@set -e; for b in bench/*.py; do echo "== $$b"; $(PY) $$b --quick; done

lint: install
	$(PY) -m ruff check .
