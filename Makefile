# Two commands a newcomer needs (see README.md):
#   make train   set up .venv and train the seed model on Fashion-MNIST
#   make test    set up .venv and run ruff, mypy and the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Which torch to install. Where no NVIDIA GPU is visible, set-up installs a CPU build (from a
# local wheelhouse when pip has one, else from PyTorch's CPU index); with a GPU, PyPI's default
# (CUDA) build. Override either, e.g.  make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0
TORCH_INDEX_URL ?=
CONFIG ?= configs/fashion-mnist-mlp.yaml

.PHONY: setup train test lint typecheck unit bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install_torch.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PIP="$(BIN)/python -m pip" PY="$(BIN)/python" TORCH="$(TORCH)" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" \
		sh scripts/install_torch.sh
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

train: setup
	$(BIN)/dlcli train $(CONFIG) --overwrite

lint: setup
	$(BIN)/ruff check dlcli tests benchmarks
	$(BIN)/ruff format --check dlcli tests benchmarks

typecheck: setup
	$(BIN)/mypy dlcli

unit: setup
	$(BIN)/pytest -q

test: lint typecheck unit

bench: setup
	$(BIN)/python benchmarks/load_data.py
	$(BIN)/python benchmarks/train_vs_peers.py $(BENCH_ARGS)   # e.g. BENCH_ARGS="--rounds 1 --epochs 1"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
