# One tooling surface: CI (.ci/run) calls `make test` too.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,nudenet

.PHONY: install lint typecheck test test-unit test-integration check bench demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'

lint: install
	$(BIN)/ruff check src tests integration bench
	$(BIN)/ruff format --check src tests integration bench

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: install
	$(BIN)/pytest -q

test-unit: install
	$(BIN)/pytest -q tests

test-integration: install
	$(BIN)/pytest -q integration

check: lint typecheck test

bench: install
	$(BIN)/python bench/pipeline.py

demo: install
	$(BIN)/moderator demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
