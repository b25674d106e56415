# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# Each (re)creates .venv when pyproject.toml changed since the last install, and skips pip otherwise.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test test-all lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job. Until the training loop lands this is a short tour of jaxformer.ops.
run: $(STAMP)
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
