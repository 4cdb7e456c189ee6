# Two commands for a new user: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TASK ?= finetune_loop/tasks/support_triage.yaml
export FINETUNE_LOOP_HOME ?= $(CURDIR)/.finetune_loop
export DAGSTER_HOME := $(FINETUNE_LOOP_HOME)/dagster_home
MLFLOW_PORT ?= 5000
DAGSTER_PORT ?= 3000

# The one switch between the embedded instance (SQLite under $(DAGSTER_HOME)) and production
# (Postgres, from the DAGSTER_POSTGRES_* variables): FINETUNE_LOOP_INSTANCE=embedded|production.
FINETUNE_LOOP_INSTANCE ?= embedded
INSTANCE_CONFIG_embedded := dagster.yaml
INSTANCE_CONFIG_production := dagster.production.yaml
INSTANCE_CONFIG := $(INSTANCE_CONFIG_$(FINETUNE_LOOP_INSTANCE))

.PHONY: install install-test instance-config demo test ui mlflow-ui validate clean-state

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

# Copied on every use, so switching FINETUNE_LOOP_INSTANCE takes effect on the next command.
instance-config:
	@test -n "$(INSTANCE_CONFIG)" || { echo "FINETUNE_LOOP_INSTANCE must be 'embedded' or 'production', not '$(FINETUNE_LOOP_INSTANCE)'" >&2; exit 1; }
	mkdir -p $(DAGSTER_HOME)
	cp $(INSTANCE_CONFIG) $(DAGSTER_HOME)/dagster.yaml

# On the example task the demo shows the whole loop: the first champion, then two simulated weeks of
# phone-keyboard traffic answered by it (half of each week labelled by a simulated agent), then
# `monitor`, whose drift report and sensors request a retrain tagged with why. The retrain trains on
# the first week's feedback and is judged on the frozen holdout and on the second week (the recent
# suite), which no model trained on; the summary prints both comparisons. The task is copied under the state directory with a production log
# directory there, so simulated weeks never land inside the repository. `monitor` exiting 2 means
# the retrain's release gate refused its candidate and the champion keeps serving: the loop doing
# its job, not a failed demo.
EXAMPLE_TASK := finetune_loop/tasks/support_triage.yaml
EXAMPLE_DATA := $(CURDIR)/finetune_loop/examples/support_triage
DEMO_TASK := $(FINETUNE_LOOP_HOME)/demo_task/support_triage.yaml

demo: install instance-config
ifeq ($(TASK),$(EXAMPLE_TASK))
	mkdir -p $(dir $(DEMO_TASK))production_log
	test -f $(dir $(DEMO_TASK))production_log/bundled.jsonl || cp $(EXAMPLE_DATA)/production_traffic.jsonl $(dir $(DEMO_TASK))production_log/bundled.jsonl
	sed -e 's#labeled_examples: .*#labeled_examples: $(EXAMPLE_DATA)/tickets.jsonl#' \
	    -e 's#traffic_pool: .*#traffic_pool: $(EXAMPLE_DATA)/traffic_pool.jsonl#' \
	    -e 's#^probes: .*#probes: $(EXAMPLE_DATA)/probes.yaml#' \
	    -e 's#production_log: .*#production_log: production_log#' $(EXAMPLE_TASK) > $(DEMO_TASK)
	$(BIN)/finetune-loop run --task $(DEMO_TASK)
	$(BIN)/finetune-loop simulate-traffic --task $(DEMO_TASK) --shift phone_keyboard --strength 0.6 --rows 300 --feedback-share 0.5 --seed 1
	$(BIN)/finetune-loop simulate-traffic --task $(DEMO_TASK) --shift phone_keyboard --strength 0.6 --rows 300 --feedback-share 0.5 --seed 2
	$(BIN)/finetune-loop monitor --task $(DEMO_TASK) || test $$? -eq 2
else
	$(BIN)/finetune-loop run --task $(TASK)
endif

test: install-test
	$(BIN)/python -m pytest

validate: install instance-config
	$(BIN)/dagster definitions validate -w workspace.yaml

ui: install instance-config
	FINETUNE_LOOP_TASK=$(abspath $(TASK)) $(BIN)/dagster dev -w workspace.yaml -p $(DAGSTER_PORT)

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(FINETUNE_LOOP_HOME)/mlflow.db --port $(MLFLOW_PORT)

clean-state:
	rm -rf $(FINETUNE_LOOP_HOME)
