"""What every stage's Dagster wiring shares: run tags for MLflow, links into the MLflow UI, file versions."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from finetune_loop.core.common import files
from finetune_loop.core.common.tracker import Tracker

MLFLOW_UI_ENV_VAR = "FINETUNE_LOOP_MLFLOW_UI"


def run_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    """Tags that lead from an MLflow run back to the Dagster run and asset that made it."""
    return {"dagster_run_id": context.run.run_id, "dagster_asset_key": context.asset_key.to_user_string()}


def mlflow_link(tracker: Tracker, run_id: str) -> str:
    ui = os.environ.get(MLFLOW_UI_ENV_VAR, "http://127.0.0.1:5000")
    return f"{ui}/#/experiments/{tracker.experiment_id}/runs/{run_id}"


def file_or_directory_version(path: Path) -> dg.DataVersion:
    # A datasets.save_to_disk directory changes when any of its files does.
    return dg.DataVersion((files.sha256_tree(path) if path.is_dir() else files.sha256_file(path))[:16])
