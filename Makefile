# Set-up and entry points. Override the torch spec for a GPU build, e.g. `make test TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl

.PHONY: install demo test lint mutation clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,bench,export,sweep,warp]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/ruff check mixrl tests scripts
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check mixrl tests scripts
	$(BIN)/ruff format --check mixrl tests scripts

# Mutation testing (not part of `make test`): which changes to the shared parts do the fast tests miss?
mutation: install
	$(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) runs
