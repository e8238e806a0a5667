# Two commands on a fresh machine:  make demo   |   make test
# Each creates .venv if missing, installs the pinned project, fetches the offline assets it needs, then runs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
SRI    := $(VENV)/bin/sri
STAMP  := $(VENV)/.sri-installed

.PHONY: setup assets assets-test demo test lint bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,ray]'
	touch $(STAMP)

setup: $(STAMP)

# default model + SmolLM2 (integration tests) + every prompt set; idempotent and sha256-checked
assets: setup
	$(SRI) assets fetch --model qwen2.5-coder-0.5b-instruct --data

assets-test: setup
	$(SRI) assets fetch --model smollm2-135m-instruct --model qwen2.5-coder-0.5b-instruct --data

demo: assets
	$(SRI) demo --out results/demo

test: assets-test
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: assets-test
	$(PY) benchmarks/ar_tracing.py

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache
