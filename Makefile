# Every target bootstraps its own virtualenv from the hash-pinned requirements, so a fresh clone needs only python3.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit crds bench clean

$(VENV)/.stamp: requirements/runtime.txt requirements/dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements/runtime.txt -r requirements/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: $(VENV)/.stamp
	$(PY) examples/demo.py

lint: $(VENV)/.stamp
	$(BIN)/ruff check operator tests bench examples
	$(BIN)/ruff format --check operator tests bench examples

typecheck: $(VENV)/.stamp
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

crds: $(VENV)/.stamp
	$(PY) -m dsexport.crdgen crds
	$(PY) -m dsexport.refdoc docs/resources.md

bench: $(VENV)/.stamp
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
