# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Each (re)creates .venv when pyproject.toml changed since the last install, and skips pip otherwise.

# jaxformer needs Python >= 3.12: jax >= 0.12 (jax 0.10.2, the last for 3.11, miscompiles on x86 CPUs; see
# docs/architecture.md, "Known compiler issues"). PYTHON=/path/to/python overrides the search below: python3.12,
# python3.13, python3.14, python3, then the 3.12+ versions pyenv has installed (a pyenv shim of a version that
# is not selected fails, and is skipped).
FIND_PYTHON = for p in python3.12 python3.13 python3.14 python3 \
  $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3; do \
  "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && { command -v "$$p"; exit 0; }; done
PYTHON ?= $(shell $(FIND_PYTHON))
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run demo test test-all lint format bench claims clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "jaxformer needs Python >= 3.12 (for jax >= 0.12): install one (e.g. 'pyenv install 3.12') or pass PYTHON=/path/to/python3.12" >&2; exit 1; }
	@# A .venv of an older Python (jaxformer ran on 3.11 before) is made anew.
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 || { rm -rf $(VENV) && echo "creating $(VENV) with $(PYTHON)" && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,experiments]'
	touch $(STAMP)

# tfds reads prepared datasets from $$TFDS_DATA_DIR; on the project machines they live in ../shared.
TFDS_DATA_DIR ?= $(if $(wildcard ../shared/tensorflow_datasets),$(abspath ../shared/tensorflow_datasets),)
ifneq ($(TFDS_DATA_DIR),)
export TFDS_DATA_DIR
endif

# The main job: a character-level GPT on tiny Shakespeare (the accelerator recipe when jax sees a GPU / TPU).
run: $(STAMP)
	@set -- $$($(PY) -c "import jax; b = jax.default_backend(); print(b, 'shakespeare_char_cpu' if b == 'cpu' else 'shakespeare_char')"); \
	echo "make run: jax backend $$1, training $$2 into workdir/$$2"; \
	$(VENV)/bin/jaxformer train --config $$2 --workdir workdir/$$2

demo: $(STAMP)
	$(PY) experiments/demo_ops.py

# Default (fast) suite, in parallel. Heavier tests are marked `slow`. loadfile: each file runs on one worker, so a
# file's shared reference run (an 8-device subprocess, a training run to resume against) is made once.
# (loadgroup would do it per group, but pytest-xdist 3.8's groups are lost on pytest >= 9.2: it renames the wrong
# attribute of the test items.)
test: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile -q --durations=15

test-all: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile -q --durations=15 -m "slow or not slow"

# ruff, then the import contracts in pyproject.toml (import-linter): imports point one way, no cycles.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) experiments/bench_attention.py

# The claims lab: every experiments/claims/NN_*.py at its default (CPU) size, then experiments/REPORT.md.
claims: $(STAMP)
	$(PY) experiments/claims/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .import_linter_cache
