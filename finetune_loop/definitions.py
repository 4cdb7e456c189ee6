"""The Dagster code location: `dagster dev -m finetune_loop.definitions` (or `make ui`).

The task comes from FINETUNE_LOOP_TASK (default: the bundled support-triage example); state goes
under FINETUNE_LOOP_HOME (default: .finetune_loop/ in the repo root). The asset groups are the
stages of the loop and the folders of the code: `data`, `train`, `evaluate`, `ship`, `monitor`
(`finetune_loop/defs/<group>.py`, whose core lives in `finetune_loop/core/<group>/`); each asset
links to its source line in the UI.
"""

from __future__ import annotations

import dagster as dg

from finetune_loop.defs import data, evaluate, monitor, ship, train
from finetune_loop.defs.resources import LoopResource, default_task_path

ALL_ASSETS = [
    data.labeled_examples,
    data.production_log,
    train.base_model,
    data.holdout_suite,
    data.regression_suite,
    data.recent_suite,
    data.curated_dataset,
    train.lora_adapter,
    evaluate.eval_report,
    ship.gguf_export,
    ship.champion_model,
    monitor.drift_report,
    monitor.serving_quality,
]


def build_definitions(task_path: str | None = None, home: str = "") -> dg.Definitions:
    return dg.Definitions(
        assets=dg.with_source_code_references(ALL_ASSETS),
        asset_checks=[evaluate.shadow_agreement],
        jobs=[monitor.retrain_job, monitor.monitor_job],
        schedules=[monitor.six_week_retrain_schedule, monitor.daily_drift_schedule],
        sensors=[monitor.drift_retrain_sensor, monitor.feedback_retrain_sensor],
        resources={"loop": LoopResource(task_path=task_path or default_task_path(), home=home)},
    )


defs = build_definitions()
