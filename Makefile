# `make demo` and `make test` work from a fresh clone: each creates .venv/ when it is missing and
# installs the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint benchmark clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[pipeline,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/uib demo

# Two workers, one module to a worker (module-scoped servers and trained models stay shared),
# the longest modules first, in the order tests/conftest.py gives (LONG_MODULES).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check uib tasks flows tests

benchmark: $(STAMP)
	$(BIN)/uib benchmark --dataset digits --scenario patch-bias --seeds 3 --out runs/benchmark

clean:
	rm -rf .uib runs
