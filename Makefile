# Two commands on a fresh machine: `make demo` and `make test` (both install first when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
DEEPSPEED_PIN := deepspeed==0.19.8
NPROC ?= 2
# Test processes: most tests wait on the subprocesses they start, so two workers keep two cores busy.
TEST_WORKERS ?= 2

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# Pinned first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q $(TORCH_PIN)
	# DeepSpeed builds against the torch above; DS_BUILD_OPS=0 compiles its ops lazily, if ever.
	DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation $(DEEPSPEED_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@mkdir -p runs/stores
	$(VENV)/bin/dint-shard builtin:cameraman runs/stores/cameraman.zarr --overwrite
	$(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC) -m dint.train --config configs/demo.toml

# Everything: the in-process unit tests, then the multi-process and CLI tests.
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests/unit tests/integration

# The unit tests alone: in one process, no torchrun, no CLI process; under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

# ruff (its rules and style in pyproject.toml): findings and unformatted files fail.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
