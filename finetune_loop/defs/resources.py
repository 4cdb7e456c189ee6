"""The one resource every asset, check, sensor and schedule uses: which task, where the loop keeps its
state, and the one way to reach the spec, the prepared base model and the MLflow tracker.

One spec per run: the first step of a run snapshots the task file's text under the state directory
(`run_specs/<run id>.yaml`); every later step of that run, in this process or another, loads the
snapshot, so an edit to the task file during a run cannot mix two specs. A run launched with tag
`finetune_loop/spec_sha256` (the CLI, the sensors and the schedule set it) refuses to start on a
task file whose hash differs from the one it was launched for; a run launched without it (from the
UI) is tagged with the hash of the snapshot it runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import dagster as dg
from pydantic import PrivateAttr

from finetune_loop.core.common.catalog import TaskCatalog
from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import TaskSpec, TaskSpecError, load_task_spec
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.train.base_model import (
    BaseModel,
    BaseModelError,
    prepare_base_model,
)
from finetune_loop.core.train.prompts import rendered_length
from finetune_loop.core.train.trainer import recorded_base

TASK_ENV_VAR = "FINETUNE_LOOP_TASK"
EXAMPLE_TASK = Path(__file__).resolve().parents[1] / "tasks" / "support_triage.yaml"
SPEC_HASH_TAG = "finetune_loop/spec_sha256"
TASK_TAG = "finetune_loop/task"
# What started a retrain run ("drift", "feedback_volume", "feedback_accuracy", "cadence"); none: by hand.
TRIGGER_TAG = "finetune_loop/trigger"


def _run_task(run: dg.DagsterRun) -> str | None:
    """The task a platform run serves: its tag, else the one key prefix of the assets it selects
    (None: it selects only the platform's own, unprefixed assets)."""
    if TASK_TAG in run.tags:
        return run.tags[TASK_TAG]
    keys = set(run.asset_selection or ()) | {check.asset_key for check in run.asset_check_selection or ()}
    prefixes = {key.path[0] for key in keys if len(key.path) > 1}
    if not prefixes:
        return None
    if len(prefixes) > 1:
        raise TaskSpecError(
            f"run {run.run_id} selects assets of {sorted(prefixes)}: a platform run materializes one task's assets"
            " (their key prefix is the task's name) or names it in tag finetune_loop/task"
        )
    return prefixes.pop()


def default_task_path() -> str:
    return os.environ.get(TASK_ENV_VAR) or str(EXAMPLE_TASK)


class LoopResource(dg.ConfigurableResource):
    """Which task and where the loop keeps its state; empty `home` means FINETUNE_LOOP_HOME or the default.

    One task (`task_path`: the single-task code location, the CLI), or every task of a directory
    (`tasks_dir`: the platform code location, `definitions.build_platform_definitions`). There a run
    serves the task its assets belong to: their key prefix is the task's name (or the run's tag
    `finetune_loop/task`, which sensors and schedules set); a sensor or schedule of one task reaches
    it with `for_task`."""

    task_path: str = ""
    tasks_dir: str = ""
    home: str = ""
    _spec: TaskSpec | None = PrivateAttr(default=None)
    _run_task_path: str | None = PrivateAttr(default=None)
    _base: BaseModel | None = PrivateAttr(default=None)
    _token_length: Callable[[Example], int] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is not None:
            if self.tasks_dir:
                task = _run_task(run)
                if task is None:
                    return  # a platform-level run (portfolio_report) serves no one task
                self._run_task_path = str(TaskCatalog.load(Path(self.tasks_dir)).spec(task).spec_path)
            self._spec = self._run_spec(run.run_id, run.tags.get(SPEC_HASH_TAG))
            # A run launched without the tag (from the UI, or one asset picked by hand) gets it here,
            # so every run says which spec it ran.
            if SPEC_HASH_TAG not in run.tags and context.instance is not None:
                context.instance.add_run_tags(run.run_id, {SPEC_HASH_TAG: self._spec.spec_sha256, TASK_TAG: self._spec.name})

    def for_task(self, name: str) -> "LoopResource":
        """The resource of one task of the platform's directory (itself for a single-task resource)."""
        if not self.tasks_dir:
            return self
        return LoopResource(task_path=str(TaskCatalog.load(Path(self.tasks_dir)).spec(name).spec_path), home=self.home)

    def _task_file(self) -> str:
        task_file = self.task_path or self._run_task_path
        if not task_file:
            raise TaskSpecError(
                f"this resource serves every task of {self.tasks_dir} and this run or tick names none: a run materializes one"
                " task's assets (key prefix = the task's name) or carries tag finetune_loop/task; a sensor uses for_task(name)"
            )
        return task_file

    def _run_spec(self, run_id: str, launched_hash: str | None) -> TaskSpec:
        task_file = self._task_file()
        snapshot = self.loop_home().root / "run_specs" / f"{run_id}.yaml"
        if snapshot.is_file():
            return load_task_spec(task_file, text=snapshot.read_text(encoding="utf-8"))
        text = Path(task_file).read_text(encoding="utf-8")
        spec = load_task_spec(task_file, text=text)
        if launched_hash and launched_hash != spec.spec_sha256:
            raise TaskSpecError(
                f"{task_file} changed after run {run_id} was launched (sha256 {launched_hash[:12]}… at launch, "
                f"{spec.spec_sha256[:12]}… now): launch the run again"
            )
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        staging = snapshot.with_suffix(f".{os.getpid()}.partial")
        staging.write_text(text, encoding="utf-8")
        # Two step processes may race to the first snapshot: the first one written wins for both.
        try:
            os.link(staging, snapshot)
        except FileExistsError:
            pass
        staging.unlink()
        return load_task_spec(task_file, text=snapshot.read_text(encoding="utf-8"))

    def spec(self) -> TaskSpec:
        """The run's spec (its snapshot); outside a run (a sensor tick, a schedule), the file as it is now."""
        if self._spec is None:
            self._spec = load_task_spec(self._task_file())
        return self._spec

    def loop_home(self) -> LoopHome:
        return LoopHome(Path(self.home).resolve()) if self.home else LoopHome.from_env()

    def base_model(self) -> BaseModel:
        """The task's base model, prepared once per process (its hash is cached by file size and mtime)."""
        if self._base is None:
            spec = self.spec()
            try:
                self._base = prepare_base_model(spec.base_model, self.loop_home().artifacts / "base_models")
            except BaseModelError as exc:
                raise BaseModelError(f"{spec.spec_path}: base_model: {exc}") from exc
        return self._base

    def champion_base(self, bundle_dir: Path) -> BaseModel | None:
        """The base a registered version's bundle was trained on when it is not the task's base
        (the task moved to a new base since: a migration); None when it is the same one."""
        recorded = recorded_base(bundle_dir)
        if recorded is None or recorded[1] == self.base_model().source_sha256:
            return None
        return prepare_base_model(recorded[0], self.loop_home().artifacts / "base_models")

    def token_length(self) -> Callable[[Example], int]:
        """Tokens of an example as training renders it, with the base's tokenizer loaded once per
        process (the suites and curation all measure lengths)."""
        if self._token_length is None:
            self._token_length = rendered_length(self.spec(), self.base_model().directory)
        return self._token_length

    def tracker(self) -> Tracker:
        return Tracker.for_task(self.loop_home(), self.spec().name)

    def task_dir(self, kind: str) -> Path:
        return self.loop_home().task_dir(self.spec().name, kind)
