# Two commands do everything on a fresh machine: `make run` and `make test`.
# Every target that needs Python creates .venv itself when it is missing.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
LF := $(VENV)/bin/leukoflow
STAMP := $(VENV)/.installed-stamp
SHARED ?= ../shared
PROFILE ?= quick

export LEUKOFLOW_HOME ?= $(CURDIR)/.leukoflow
export KERAS_HOME ?= $(LEUKOFLOW_HOME)/keras
# Another lab's smears (none an ALL-stage image): the gate's out-of-distribution floor is measured on half of them.
EXTERNAL_OOD_DIR ?= $(abspath $(SHARED)/external/chula-rbc-12/images)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: help setup system-deps weights data run test test-fast lint format compile serve bench report clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned dependencies

system-deps:  ## Debian packages the tests need (kubectl, chromium) and the browser driver
	@command -v kubectl >/dev/null || { apt-get update -qq && apt-get install -y -qq kubectl; }
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@if [ -f tests/browser/package-lock.json ] && [ ! -d tests/browser/node_modules/playwright-core ]; then (cd tests/browser && npm ci --silent --no-audit --no-fund); fi

weights:  ## put the offline ImageNet weights where Keras's standard loading path looks
	@mkdir -p $(KERAS_HOME)/models
	@if [ -d $(SHARED)/weights/keras ]; then cp -u $(SHARED)/weights/keras/*.h5 $(KERAS_HOME)/models/; fi

data: $(STAMP)  ## dvc pull the dataset into data/
	$(VENV)/bin/dvc pull -q

RESNET50_WEIGHTS := $(KERAS_HOME)/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5

run: $(STAMP) weights data  ## the main job: the pipeline on the real data (PROFILE=quick|full)
	@if [ -f $(RESNET50_WEIGHTS) ]; then extra=""; else \
	  echo "note: no ResNet50 ImageNet weights in \$$KERAS_HOME/models (none can be downloaded here): ResNet50 trains from random init" >&2; \
	  extra="--weights resnet50=none"; fi; \
	LEUKOFLOW_EXTERNAL_OOD_DIR=$(EXTERNAL_OOD_DIR) $(LF) pipeline run --local --profile $(PROFILE) --data-dir data $$extra

test: $(STAMP) system-deps  ## the whole test suite
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff lint and format check (CI runs it)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## format the code and apply ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

compile: $(STAMP)  ## compile the pipeline to KFP IR YAML
	$(LF) pipeline compile --output $(LEUKOFLOW_HOME)/pipeline.yaml

serve: $(STAMP)  ## serve the promoted model (gRPC 8500, REST and page 8501)
	$(LF) serve --model_config_file=$(LEUKOFLOW_HOME)/serving/models.config --model_config_file_poll_wait_seconds=5 --batching_parameters_file=serving/batching.config --monitoring_config_file=serving/monitoring.config --enable_batching

bench: $(STAMP) weights data  ## the performance benchmarks (benchmarks/README.md); writes benchmarks/results/
	$(PY) -m benchmarks.run_all

report: $(STAMP)  ## docs/results.md from the latest pipeline run
	$(LF) report --output docs/results.md

clean:  ## remove local state (not the venv, not data/)
	rm -rf $(LEUKOFLOW_HOME)
