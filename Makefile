# The short names people type. `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench fmt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/meksd run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check meksd tests benchmarks
	$(BIN)/ruff check meksd tests benchmarks
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format meksd tests benchmarks
	$(BIN)/ruff check --fix meksd tests

# `make bench` (< 15 min) or `make bench ARGS=--quick` (< 2 min); see BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then \
		cd benchmarks/peers && (npm ci --silent --no-audit --no-fund || npm install --silent --no-audit --no-fund); \
	else \
		echo "bench: node/npm not found: the Node ws peers will be skipped"; \
	fi
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
