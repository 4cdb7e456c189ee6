# Two commands for a new user: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TASK ?= finetune_loop/tasks/support_triage.yaml
export FINETUNE_LOOP_HOME ?= $(CURDIR)/.finetune_loop
export DAGSTER_HOME := $(FINETUNE_LOOP_HOME)/dagster_home
MLFLOW_PORT ?= 5000
DAGSTER_PORT ?= 3000

.PHONY: install install-test demo test ui mlflow-ui validate clean-state

# torch is pinned and installed first: an unpinned torch (pulled in by transformers/peft) would take
# the CUDA build, several GB, even on a CPU-only machine.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install -e '.[test]'
	touch $@

install: $(BIN)/.installed

install-test: $(BIN)/.installed-test

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/finetune-loop run --task $(TASK)

test: install-test
	$(BIN)/python -m pytest

validate: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster definitions validate -w workspace.yaml

ui: install $(DAGSTER_HOME)/dagster.yaml
	FINETUNE_LOOP_TASK=$(abspath $(TASK)) $(BIN)/dagster dev -w workspace.yaml -p $(DAGSTER_PORT)

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(FINETUNE_LOOP_HOME)/mlflow.db --port $(MLFLOW_PORT)

clean-state:
	rm -rf $(FINETUNE_LOOP_HOME)
