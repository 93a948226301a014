# immunoplex: the two commands a fresh machine needs are `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/synthetic
SIZE ?= default
SEED ?= 0
ARGS ?=

.PHONY: setup train cells test test-fast test-slow lint format bench clean-data

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel

# Reinstall whenever pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

$(DATA)/manifest.csv: | $(STAMP)
	$(VENV)/bin/immunoplex-synth out_dir=$(DATA) size=$(SIZE) seed=$(SEED)

## Generate the synthetic cohort (if missing) and train the default model on it: the feature
## model (MODEL=cell_features, run as experiment=cell_features), the best on the model
## benchmark (docs/models.md) that fits in 10 minutes on 2 CPU cores; MODEL=multimodal (or any
## configs/model name) trains that model instead.
## MODEL=cell_table runs the cell stage first when its table is missing (make cells).
MODEL ?= cell_features
CELLS ?= $(DATA)/cell_stage
TRAIN_MODEL = $(if $(filter cell_features cell_table,$(MODEL)),experiment=$(MODEL),model=$(MODEL))
TRAIN_NEEDS = $(if $(filter cell_table,$(MODEL)),$(CELLS)/cell_features.csv)
train: $(STAMP) $(DATA)/manifest.csv $(TRAIN_NEEDS)
	$(VENV)/bin/immunoplex-train $(TRAIN_MODEL) data.root=$(DATA) seed=$(SEED) $(ARGS)

## The cell stage over the synthetic cohort (segmentation, phenotypes, the patient table
## $(CELLS)/cell_features.csv that experiment=cell_table reads): ~13 min (idle) for the default cohort
## on 2 cores; resumable (finished slides are skipped). Then: make train MODEL=cell_table
cells: $(STAMP) $(DATA)/manifest.csv
	$(VENV)/bin/immunoplex-cells manifest=$(DATA)/manifest.csv out_dir=$(CELLS) workers=2 \
		'outputs=[h5ad,parquet]'

$(CELLS)/cell_features.csv: | $(STAMP) $(DATA)/manifest.csv
	$(MAKE) cells DATA=$(DATA) CELLS=$(CELLS)

## Full test suite in one run: the fast tier and the slow tier (DDP, resume, long runs).
test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: $(STAMP)
	$(VENV)/bin/ruff format src tests scripts
	$(VENV)/bin/ruff check --fix src tests scripts

clean-data:
	rm -rf $(DATA)
