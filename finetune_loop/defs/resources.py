"""The one resource every asset uses: which task, and where the loop keeps its state."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import TaskSpec, load_task_spec
from finetune_loop.core.common.tracker import Tracker

TASK_ENV_VAR = "FINETUNE_LOOP_TASK"
EXAMPLE_TASK = Path(__file__).resolve().parents[1] / "tasks" / "support_triage.yaml"


def default_task_path() -> str:
    return os.environ.get(TASK_ENV_VAR) or str(EXAMPLE_TASK)


class LoopResource(dg.ConfigurableResource):
    """Task spec path and state directory; empty `home` means FINETUNE_LOOP_HOME or the default."""

    task_path: str
    home: str = ""

    def spec(self) -> TaskSpec:
        return load_task_spec(self.task_path)

    def loop_home(self) -> LoopHome:
        return LoopHome(Path(self.home).resolve()) if self.home else LoopHome.from_env()

    def tracker(self, spec: TaskSpec) -> Tracker:
        home = self.loop_home()
        return Tracker(home.mlflow_tracking_uri, home.artifacts / "mlflow", spec.name)
