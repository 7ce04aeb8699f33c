# The README's two commands: `make repro` (set up + run the pipeline) and `make test`.
# Both create .venv on first use, from requirements.lock: every package pinned with its sha256
# (all platforms), so pip installs the same files on every machine, through whatever indexes
# pip is configured with (mirrors serve the same files), and refuses anything else.
# `make lock` refreshes the lock after a dependency change in pyproject.toml (needs PyPI, or
# UV_DEFAULT_INDEX pointing at a mirror); `pip check` fails the set-up if the lock is stale.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements.lock
UV_VERSION := 0.13.9

.PHONY: setup lock repro fer2013 multisource unseen test lint bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# uv in a throwaway venv resolves pyproject.toml (+ dev extra) for Python 3.11 on every platform.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp" && "$$tmp/bin/python" -m pip install --quiet uv==$(UV_VERSION) && \
	"$$tmp/bin/uv" pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --custom-compile-command "make lock" --quiet -o $(LOCK)

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

# FER2013 (README "Real data: FER2013": the images go to data/raw/fer2013 first): the whole
# pipeline as the named DVC experiment fer2013-cpu (a fine-tune of models/multisource's weights),
# then reports/fer2013.json, the benchmark model in models/fer2013/, the service-path audit
# (reports/fer2013_service_path.json) and the README.
fer2013: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/run_preset.py fer2013-cpu
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/fer2013_report.py
	$(BIN)/python scripts/ship_model.py fer2013 --no-weights --fer2013 reports/fer2013.json \
		--report reports/fer2013_model.json
	$(BIN)/python scripts/fer2013_service_path.py --model models/model.int8.onnx
	$(BIN)/python scripts/readme_metrics.py

# The product model (docs/real-data.md and docs/unseen.md say where each dataset goes): the
# multi-source experiment, models/multisource/ + reports, its prior-free decision chosen on the
# always-unseen sets (pooled with the leave-one-out decisions of its protocol recipe, yunet),
# both shipped models scored under the protocol (reports/unseen.json, the card's table), and
# the README.
multisource: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/run_preset.py multisource-cpu
	$(BIN)/python scripts/ship_model.py multisource --pictures reports/real_faces
	$(BIN)/python scripts/unseen.py decide models/multisource/model.int8.onnx --recipe yunet
	$(BIN)/python scripts/unseen.py score models/multisource \
		--about "the default, prior-adjusted decision"
	$(BIN)/python scripts/unseen.py score models/fer2013 --about "the FER2013 benchmark model"
	$(BIN)/python scripts/unseen.py report
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro mobile_assets   # the app bundles the new file
	$(BIN)/python scripts/readme_metrics.py

# The protocol's leave-one-source-out runs of every recipe in presets/unseen.yaml (hours on
# 2 cores; resumable: a finished run is skipped), then reports/unseen.json.
unseen: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/unseen.py run --keep-models build/unseen
	$(BIN)/python scripts/unseen.py report
	$(BIN)/python scripts/readme_metrics.py

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
