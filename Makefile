# `make demo` and `make test` set everything up on a fresh machine (Python 3.10+) and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A GPU machine brings its own CUDA torch: the venv sees the system's site-packages, so it is used as is.
# Elsewhere this one is installed (on the project's CPU machines it resolves to a local CPU build).
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) run.py task=mha_causal agent=heuristic benchmark=smoke seed=torch_blocked budget.minutes=2

test: $(VENV)/.installed
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) outputs multirun
