# One tooling surface: CI (.ci/run) calls `make check` (lint, typecheck, tests) too.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,nudenet,transformers,openai,postgres,api

.PHONY: install lint typecheck test test-unit test-integration check bench demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# lmdeploy cannot run without CUDA, but its configuration and checks are tested on any machine:
# it is installed without its dependencies (requirements/lmdeploy-cpu.txt says why).
install: $(BIN)/python
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-deps -r requirements/lmdeploy-cpu.txt

lint: install
	$(BIN)/ruff check moderator tests integration bench
	$(BIN)/ruff format --check moderator tests integration bench

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: install
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not memory"
	$(BIN)/pytest -q -m memory

test-unit: install
	$(BIN)/pytest -q tests

test-integration: install
	$(BIN)/pytest -q integration

check: lint typecheck test

# bench/brokers.py starts a one-node Apache Kafka: it needs Java 17+ and Maven (docs/operations.md).
bench: install
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/brokers.py
	$(BIN)/python bench/engines.py

demo: install
	$(BIN)/moderator demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
