# lakegate — `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast lint ruff bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install lakegate with its test tools

demo: $(STAMP) ## set up, then generate an orders stream and ingest it into Iceberg
	$(VENV)/bin/lakegate demo --dir lakegate-demo

test: $(STAMP) ## set up, then run the tests and the quick benchmarks
	$(PY) -m pytest -q -p no:cacheprovider
	$(PY) bench/ingest.py --quick
	$(PY) bench/contracts_accuracy.py --quick
	$(PY) bench/schema_matching.py --quick

test-fast: $(STAMP) ## the tests without the slow crash and concurrency ones
	$(PY) -m pytest -q -m "not slow"

ruff: $(STAMP) ## ruff only (what CI runs before the tests)
	$(VENV)/bin/ruff check src tests bench

lint: $(STAMP) ## ruff + mypy
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP) ## the benchmarks at full size (installs the peers they compare with in their own venvs)
	$(PY) bench/ingest.py --repeat 3
	$(PY) bench/contracts_accuracy.py
	$(PY) bench/contracts.py
	$(PY) bench/schema_matching.py
	$(PY) bench/cdc.py
	$(PY) bench/cdc_mirror.py

clean: ## remove the venv and generated data
	rm -rf $(VENV) .venv-bench-dlt .venv-bench-checks .venv-bench-valentine bench/out lakegate-data lakegate-demo .mypy_cache .ruff_cache .pytest_cache
