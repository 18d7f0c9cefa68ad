# The README's commands. `make serve` and `make test` each work on a fresh machine: they create .venv,
# install what they need, and run.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of PyTorch, installed before the project's extras so that pip never pulls a CUDA build here.
# GPU users: see README ("Training on a GPU").
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test install-serve install-dev lint bench build-defaults clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.dev-installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[serve,train,dev]'
	touch $@ $(VENV)/.serve-installed

install-serve: $(VENV)/.serve-installed
install-dev: $(VENV)/.dev-installed

serve: install-serve
	$(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT)

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check .

bench: install-dev
	$(BIN)/python benchmarks/synth_speed.py

build-defaults: install-dev
	$(BIN)/python -m training build-defaults

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
