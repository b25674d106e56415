# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Each (re)creates .venv when pyproject.toml changed since the last install, and skips pip otherwise.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run demo test test-all lint format bench claims clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
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

# Default (fast) suite, in parallel. Heavier tests are marked `slow`.
test: $(STAMP)
	$(PY) -m pytest -n auto -q

test-all: $(STAMP)
	$(PY) -m pytest -n auto -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) experiments/bench_attention.py

# The claims lab: every experiments/claims/NN_*.py at its default (CPU) size, then experiments/REPORT.md.
claims: $(STAMP)
	$(PY) experiments/claims/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
