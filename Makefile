# Two commands do everything: `make pipeline` and `make test`. Both build .venv on first use and
# reinstall only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick
# Committed notebooks carry no outputs and no execution metadata; cell tags (`parameters`) stay.
STRIP_KEYS := metadata.papermill cell.metadata.papermill cell.metadata.execution metadata.widgets

.PHONY: setup pipeline test lint strip clean-outputs gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,tracking]'
	@# strip notebooks on `git add` from now on (a git filter in .git/config; skipped outside git)
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
		$(VENV)/bin/nbstripout --install && git config filter.nbstripout.extrakeys "$(STRIP_KEYS)"; fi
	@touch $(STAMP)

pipeline: $(STAMP)
	$(VENV)/bin/digits pipeline --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest

# The GPU path on whatever GPU is here, in at most 8 minutes: CUDA tests, train_speed, the chain
# (docs/kaggle.md). GPU_CHECK="--device cpu" for the tiny CPU form.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK)

lint: $(STAMP)
	$(VENV)/bin/ruff check digit_utils tests benchmarks notebooks
	$(VENV)/bin/ruff format --check digit_utils tests benchmarks

strip: $(STAMP)
	$(VENV)/bin/nbstripout --extra-keys "$(STRIP_KEYS)" notebooks/*.ipynb

clean-outputs:
	rm -rf outputs/notebooks outputs/reports outputs/runs outputs/0* outputs/pipeline.json
