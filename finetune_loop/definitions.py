"""The Dagster code location: `dagster dev -m finetune_loop.definitions` (or `make ui`).

One task (the default): FINETUNE_LOOP_TASK (default: the bundled support-triage example). The
asset groups are the stages of the loop and the folders of the code: `data`, `train`, `evaluate`,
`ship`, `monitor` (`finetune_loop/defs/<group>.py`, whose core lives in `finetune_loop/core/<group>/`);
each asset links to its source line in the UI.

The platform: FINETUNE_LOOP_TASKS_DIR names a directory of task files, and this one code location
serves every task in it (`build_platform_definitions`): each task's assets under its name as key
prefix and in its own groups (`<task>_data`, `<task>_train`, …), its own jobs, schedules and
sensors (`<task>__retrain_job`, `<task>__drift_retrain_sensor`, …), its own registry model and
MLflow experiment; plus `portfolio_report` (group `platform`). A task file that does not load is
left out with a warning naming it and why, and listed by `portfolio_report`; the others load.

State goes under FINETUNE_LOOP_HOME (default: .finetune_loop/ in the repo root).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dagster as dg

from finetune_loop.core.common.catalog import TaskCatalog
from finetune_loop.defs import data, evaluate, monitor, ship, train
from finetune_loop.defs.monitor import TaskWiring, task_automation
from finetune_loop.defs.resources import LoopResource, default_task_path

TASKS_DIR_ENV_VAR = "FINETUNE_LOOP_TASKS_DIR"

# Each stage module's assets, grouped by its stage (GROUP). Assets are declared without a group:
# Dagster lets a group be set once, and the platform names the groups per task.
STAGES = (data, train, evaluate, ship, monitor)
ALL_ASSETS = [asset for stage in STAGES for asset in stage.ASSETS]


def task_assets(wiring: TaskWiring) -> tuple[list, list]:
    """One task's assets and asset checks: as declared for the single-task location, or with every
    key under the task's name and every group `<task>_<stage>` on the platform."""
    keys = set()
    for asset in ALL_ASSETS:
        keys |= {asset.key} if isinstance(asset, dg.SourceAsset) else set(asset.keys) | set(asset.dependency_keys)
    renamed = {key: wiring.key(key) for key in keys}
    assets = []
    for stage in STAGES:
        group = _group(wiring, stage.GROUP)
        for asset in stage.ASSETS:
            if isinstance(asset, dg.SourceAsset):
                assets.append(asset.with_attributes(key=renamed[asset.key], group_name=group))
            else:
                assets.append(asset.with_attributes(asset_key_replacements=renamed, group_names_by_key=dict.fromkeys(asset.keys, group)))
    checks = [evaluate.shadow_agreement if wiring.task is None else evaluate.shadow_agreement.with_attributes(asset_key_replacements=renamed)]
    return assets, checks


def _group(wiring: TaskWiring, group: str) -> str:
    return group if wiring.task is None else f"{wiring.task}_{group}"


def build_definitions(task_path: str | None = None, home: str = "") -> dg.Definitions:
    """The single-task code location (and what the CLI runs)."""
    assets, checks = task_assets(TaskWiring())
    automation = task_automation(TaskWiring())
    return dg.Definitions(
        assets=dg.with_source_code_references(assets),
        asset_checks=checks,
        jobs=[automation.retrain_job, automation.monitor_job],
        schedules=automation.schedules,
        sensors=automation.sensors,
        resources={"loop": LoopResource(task_path=task_path or default_task_path(), home=home)},
    )


def build_platform_definitions(tasks_dir: str | Path, home: str = "") -> dg.Definitions:
    """Every loadable task of `tasks_dir` in one code location, and `portfolio_report`."""
    catalog = TaskCatalog.load(Path(tasks_dir))
    for path, error in catalog.broken.items():
        warnings.warn(f"task file {path} is not served: {error}", stacklevel=2)
    assets, checks, jobs, schedules, sensors = [monitor.portfolio_report], [], [], [], []
    for name in catalog.specs:
        wiring = TaskWiring(name)
        task_assets_, task_checks = task_assets(wiring)
        automation = task_automation(wiring)
        assets += task_assets_
        checks += task_checks
        jobs += [automation.retrain_job, automation.monitor_job]
        schedules += automation.schedules
        sensors += automation.sensors
    return dg.Definitions(
        assets=dg.with_source_code_references(assets),
        asset_checks=checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources={"loop": LoopResource(tasks_dir=str(Path(tasks_dir).resolve()), home=home)},
    )


defs = build_platform_definitions(os.environ[TASKS_DIR_ENV_VAR]) if os.environ.get(TASKS_DIR_ENV_VAR) else build_definitions()
