# The README's two commands: `make repro` (set up + run the pipeline) and `make test`.
# Both create .venv on first use; pip takes the pinned torch/torchvision from local disk.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup repro test lint bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

lint: setup
	$(BIN)/ruff check .

test: setup
	bash scripts/setup_browser.sh
	$(BIN)/ruff check .
	$(BIN)/python scripts/readme_metrics.py --check
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/train_throughput.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/serve_load.py

clean-venv:
	rm -rf $(VENV)
