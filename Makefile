# Single entry point. `make figures` (the main job) and `make test` each create or reuse
# .venv, install torch==2.13.0 (CPU) before the package so no CUDA build is pulled, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup figures test clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

figures: setup
	$(PY) analyses/run_all.py

# pytest exits 5 when it collects no tests: that must fail, not pass silently.
test: setup
	$(PY) -m pytest -q --jaxtyping-packages=interp,beartype.beartype $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean-results:
	rm -rf results
