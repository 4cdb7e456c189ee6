"""The Dagster code location: `dagster dev -m finetune_loop.definitions` (or `make ui`).

The task comes from FINETUNE_LOOP_TASK (default: the bundled support-triage example); state goes
under FINETUNE_LOOP_HOME (default: .finetune_loop/ in the repo root).
"""

from __future__ import annotations

import dagster as dg

from finetune_loop.defs import assets
from finetune_loop.defs.automation import (
    daily_drift_schedule,
    drift_retrain_sensor,
    feedback_retrain_sensor,
    monitor_job,
    retrain_job,
    six_week_retrain_schedule,
)
from finetune_loop.defs.resources import LoopResource, default_task_path
from finetune_loop.defs.shadow import shadow_agreement

ALL_ASSETS = [
    assets.labeled_examples,
    assets.production_log,
    assets.holdout_suite,
    assets.regression_suite,
    assets.curated_dataset,
    assets.lora_adapter,
    assets.eval_report,
    assets.champion_model,
    assets.gguf_export,
    assets.drift_report,
]


def build_definitions(task_path: str | None = None, home: str = "") -> dg.Definitions:
    return dg.Definitions(
        assets=ALL_ASSETS,
        asset_checks=[shadow_agreement],
        jobs=[retrain_job, monitor_job],
        schedules=[six_week_retrain_schedule, daily_drift_schedule],
        sensors=[drift_retrain_sensor, feedback_retrain_sensor],
        resources={"loop": LoopResource(task_path=task_path or default_task_path(), home=home)},
    )


defs = build_definitions()
