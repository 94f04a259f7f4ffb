# Two commands do everything: `make pipeline` and `make test`. Both build .venv on first use and
# reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick

.PHONY: setup pipeline test lint clean-outputs

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

pipeline: $(STAMP)
	$(VENV)/bin/digits pipeline --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check digit_utils tests benchmarks
	$(VENV)/bin/ruff format --check digit_utils tests benchmarks

clean-outputs:
	rm -rf outputs/notebooks outputs/reports outputs/runs outputs/0* outputs/pipeline.json
