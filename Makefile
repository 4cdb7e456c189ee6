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

LOCK := requirements.lock
PIP_TOOLS_VENV := .venv-pip-tools

.PHONY: install install-test lock instance-config demo test ui mlflow-ui validate clean-state

# .venv is the lock: every package at its locked version, each file checked against its hash (a
# reinstall into an existing .venv leaves packages the lock no longer lists; remove .venv for exactly
# the locked set). torch is locked as the CPU wheel (requirements.in says why it is pinned). --no-deps: pip
# installs the lock's lines as they are, without resolving again (in hash-checking mode a resolving
# pip also refuses a dependency requested with an extra, such as dagster-graphql's gql[requests],
# since the lock pins gql without it). The project goes in last, editable, also without resolving;
# `pip check` then fails the install when a locked package or pyproject.toml asks for something the
# lock does not satisfy (a dependency added without `make lock`).
$(BIN)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --no-deps -r $(LOCK)
	$(BIN)/pip install --no-deps -e .
	$(BIN)/pip check
	touch $@

install: $(BIN)/.installed

# The lock holds the test extra too: tests run against the very package set that training runs use.
install-test: install

# Rewrites requirements.lock from pyproject.toml (with the test extra) and requirements.in. pip-compile
# resolves through pip, so it sees the indexes and local wheels that `pip install` sees here and locks
# the same CPU torch wheel. It keeps the pins already in the lock where they still fit; to move them
# to the newest allowed releases: `make lock LOCK_ARGS=--upgrade`. --allow-unsafe locks setuptools
# and pip too (torch needs setuptools at run time, llm needs pip); the --no-emit options keep this
# machine's pip configuration (local index and wheel paths) out of the lock. The lock is resolved for
# the Python that runs it ($(PYTHON)).
lock: $(PIP_TOOLS_VENV)/bin/pip-compile
	$(PIP_TOOLS_VENV)/bin/pip-compile --allow-unsafe --extra=test --generate-hashes --no-emit-find-links --no-emit-index-url --strip-extras $(LOCK_ARGS) --output-file=$(LOCK) pyproject.toml requirements.in

# A venv of its own, so the locking tool never enters .venv (and the lock).
$(PIP_TOOLS_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(PIP_TOOLS_VENV)
	$(PIP_TOOLS_VENV)/bin/pip install pip-tools==7.6.2

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
