# Set-up and entry points. Override the torch spec for a GPU build, e.g. `make test TORCH_SPEC=torch`, and name
# the index that has the build you want with TORCH_INDEX (PyTorch's wheel index for CPU only, or for one CUDA
# version, e.g. its .../whl/cu128); without it pip asks its configured indexes (PyPI's Linux x86 wheels are CUDA
# builds). A new TORCH_SPEC or TORCH_INDEX reinstalls torch in an existing venv.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl
# What pip installs torch from; recursive, so that a target's own TORCH_SPEC (gpu-check) applies.
TORCH_INSTALL = "$(TORCH_SPEC)"$(if $(TORCH_INDEX), --index-url $(TORCH_INDEX))

.PHONY: install demo test lint mutation clean gpu-check FORCE

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The torch spec and index of the venv, rewritten only when they change: then .installed is older than it.
$(VENV)/.torch-spec: FORCE | $(BIN)/activate
	@echo '$(TORCH_INSTALL)' | cmp -s - $@ || echo '$(TORCH_INSTALL)' > $@

# pip keeps an installed torch that satisfies the spec (a CPU build satisfies "torch"): reinstall on a new spec.
$(VENV)/.installed: $(BIN)/activate pyproject.toml $(VENV)/.torch-spec
	$(if $(filter $(VENV)/.torch-spec,$?),$(BIN)/pip uninstall --quiet --yes torch)
	$(BIN)/pip install --quiet $(TORCH_INSTALL)
	$(BIN)/pip install --quiet -e ".[dev,bench,export,sweep,warp]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/ruff check mixrl tests scripts
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check mixrl tests scripts
	$(BIN)/ruff format --check mixrl tests scripts
	$(BIN)/lint-imports

# Mutation testing (not part of `make test`): which changes to the shared parts do the fast tests miss?
mutation: install
	$(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

# On a machine with an NVIDIA GPU: CUDA torch (PyPI's default build unless TORCH_SPEC / TORCH_INDEX say otherwise),
# the agents' smoke runs on cpu and cuda, the warp backend's CUDA graph, and scripts/bench_gpu.py with short budgets
# (results/gpu.md). Warp's and Inductor's compiled kernels stay in .cache/ between runs.
gpu-check: TORCH_SPEC = torch
gpu-check: export WARP_CACHE_PATH ?= $(CURDIR)/.cache/warp
gpu-check: export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor
gpu-check: install
	$(BIN)/python -c "import sys, torch; torch.cuda.is_available() or sys.exit(f'gpu-check: torch \
	{torch.__version__} sees no CUDA GPU: name a CUDA build with TORCH_SPEC=... and/or TORCH_INDEX=...')"
	$(BIN)/python -m pytest -m smoke tests
	$(BIN)/python -m pytest tests/test_warp.py -k cuda
	$(BIN)/python scripts/bench_gpu.py --short

FORCE:

clean:
	rm -rf $(VENV) runs
