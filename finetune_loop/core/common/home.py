"""Where the embedded default keeps its state: one directory, `.finetune_loop/` in the repo root.

`FINETUNE_LOOP_HOME` moves everything (Dagster storage, the MLflow database, artifacts) at once, so
a test or a second checkout never touches another one's state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV_VAR = "FINETUNE_LOOP_HOME"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _default_home() -> Path:
    repo_root = _PACKAGE_DIR.parent
    # In a checkout (editable install) state lives beside the code; an installed wheel has no repo
    # root, so the working directory takes its place.
    base = repo_root if (repo_root / "pyproject.toml").is_file() else Path.cwd()
    return base / ".finetune_loop"


@dataclass(frozen=True)
class LoopHome:
    root: Path

    @classmethod
    def from_env(cls) -> "LoopHome":
        value = os.environ.get(HOME_ENV_VAR)
        return cls(Path(value).resolve() if value else _default_home())

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def task_dir(self, task_name: str, stage: str) -> Path:
        path = self.artifacts / stage / task_name
        path.mkdir(parents=True, exist_ok=True)
        return path
