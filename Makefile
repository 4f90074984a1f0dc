# One tooling surface: CI (.ci/run) calls `make check` (lint, typecheck, tests) too.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,nudenet,transformers,train,openai,postgres,api

.PHONY: install lint typecheck test test-unit test-integration check bench demo clean gpu-check gpu-wheels \
	lint-only typecheck-only test-parallel test-memory

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# lmdeploy cannot run without CUDA, but its configuration and checks are tested on any machine:
# it is installed without its dependencies (requirements/lmdeploy-cpu.txt says why).
# torch's CUDA build and its libraries are several GB: pip's cache would hold a second copy of
# every wheel, which a CI machine's disk may not have room for.
install: $(BIN)/python
	$(BIN)/pip install -q --no-cache-dir -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-cache-dir --no-deps -r requirements/lmdeploy-cpu.txt

lint: install
	$(MAKE) --no-print-directory lint-only

typecheck: install
	$(MAKE) --no-print-directory typecheck-only

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: install
	$(MAKE) --no-print-directory test-parallel test-memory

test-unit: install
	$(BIN)/pytest -q tests

test-integration: install
	$(BIN)/pytest -q integration

# The whole check. mypy and the memory pass each keep about one core busy, so they run side by
# side (a memory bound is about its own process, not the machine's load), each one's output
# kept together; then every other test, on two workers (unit) and three (integration).
check: install
	$(MAKE) --no-print-directory lint-only
	$(MAKE) --no-print-directory --output-sync=target -j2 typecheck-only test-memory
	$(MAKE) --no-print-directory test-parallel

# The steps, without the install (the targets above install first).
lint-only:
	$(BIN)/ruff check moderator tests integration bench
	$(BIN)/ruff format --check moderator tests integration bench

typecheck-only:
	$(BIN)/mypy

# --max-worker-restart=0: a worker that dies (a crash in a C extension) ends the run as failed;
# with a replacement worker, loadfile scheduling was seen to wait forever.
# The unit tests keep both cores busy: two workers. The integration tests wait on brokers,
# servers and subprocesses about a third of the time: three workers (docs/testing.md).
test-parallel:
	$(BIN)/pytest -q -n 2 --dist loadfile --max-worker-restart=0 -m "not memory" tests
	$(BIN)/pytest -q -n 3 --dist loadfile --max-worker-restart=0 -m "not memory" integration

test-memory:
	$(BIN)/pytest -q -m memory

# bench/brokers.py starts a one-node Apache Kafka: it needs Java 17+ and Maven (docs/operations.md).
bench: install
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/brokers.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/saturation.py

demo: install
	$(BIN)/moderator demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# GPU readiness (docs/gpu.md): the GPU suite, then bench/gpu.py's table. Needs a CUDA GPU.
# GPU_PY: an interpreter with torch built for CUDA (python3 on a lent machine).
GPU_PY ?= $(BIN)/python
# What a lent GPU machine lacks, at the versions in .venv (docs/gpu.md).
GPU_WHEELS := pydantic pydantic[-_]core pydantic[-_]settings annotated[-_]types typing[-_]inspection \
	typing[-_]extensions python[-_]dotenv structlog opentelemetry[-_]api opentelemetry[-_]sdk \
	opentelemetry[-_]semantic[-_]conventions xgrammar apache[-_]tvm[-_]ffi peft
WHL ?= .whl

gpu-check:
	GPU_REQUIRED=1 $(GPU_PY) -m pytest -q -p no:cacheprovider tests/gpu
	$(GPU_PY) bench/gpu.py

gpu-wheels: install
	rm -rf $(WHL) && mkdir -p $(WHL)
	$(BIN)/python -m pip freeze | grep -iE '^($(shell echo $(GPU_WHEELS) | tr ' ' '|'))==' > $(WHL)/requirements.txt
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(WHL) -r $(WHL)/requirements.txt
	du -sh $(WHL)
