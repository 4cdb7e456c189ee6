"""The code location loads with the public names, and the six-week schedule obeys its cadence."""

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from finetune_loop.definitions import build_definitions, defs
from finetune_loop.defs.automation import six_week_retrain_schedule

PUBLIC_ASSETS = {
    "labeled_examples", "production_log", "holdout_suite", "regression_suite", "curated_dataset", "lora_adapter",
    "eval_report", "champion_model", "gguf_export", "drift_report",
}


def test_definitions_expose_the_public_contract():
    assert {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()} == PUBLIC_ASSETS
    assert defs.resolve_job_def("retrain_job").tags["finetune_loop/job"] == "retrain"
    assert defs.resolve_job_def("monitor_job") is not None
    assert defs.resolve_schedule_def("six_week_retrain_schedule").job_name == "retrain_job"
    assert defs.resolve_sensor_def("drift_retrain_sensor").job_name == "retrain_job"
    assert defs.resolve_sensor_def("feedback_retrain_sensor").job_name == "retrain_job"
    assert defs.resolve_schedule_def("daily_drift_schedule").job_name == "monitor_job"
    check_keys = defs.resolve_asset_graph().asset_check_keys
    gate = next(key for key in check_keys if key.name == "release_gate")
    assert gate.asset_key == dg.AssetKey("eval_report")
    assert defs.resolve_asset_graph().get_check_spec(gate).blocking
    export_checks = {key.name for key in check_keys if key.asset_key == dg.AssetKey("gguf_export")}
    assert export_checks == {"matches_merged_model", "quant_within_budget", "chat_template_roundtrip"}
    assert all(defs.resolve_asset_graph().get_check_spec(key).blocking for key in check_keys if key.name in export_checks)


def _tick(instance, when: datetime, task_path):
    local_defs = build_definitions(str(task_path))
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when, resources=local_defs.resources)
    return six_week_retrain_schedule.evaluate_tick(context)


def _record_champion_at(instance, when: datetime):
    """A champion_model materialization stamped at `when` (the schedule reads its timestamp)."""
    from dagster._core.events import (
        DagsterEvent,
        DagsterEventType,
        StepMaterializationData,
    )
    from dagster._core.events.log import EventLogEntry

    event = DagsterEvent(
        DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="retrain_job",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization(asset_key="champion_model")),
    )
    instance.store_event(
        EventLogEntry(error_info=None, level="INFO", user_message="", run_id="frozen-clock", timestamp=when.timestamp(), dagster_event=event)
    )


@pytest.fixture
def example_task():
    from finetune_loop.defs.resources import EXAMPLE_TASK

    return EXAMPLE_TASK


def test_schedule_requests_a_retrain_when_there_is_no_champion(example_task):
    with dg.instance_for_test() as instance:
        result = _tick(instance, datetime(2026, 11, 23, 3, tzinfo=timezone.utc), example_task)
    assert len(result.run_requests) == 1
    assert result.run_requests[0].tags["finetune_loop/trigger"] == "cadence"
    assert result.run_requests[0].tags["finetune_loop/evidence"] == "no champion yet"


def test_schedule_waits_for_the_cadence(example_task):
    promoted = datetime(2026, 10, 1, 3, tzinfo=timezone.utc)
    with dg.instance_for_test() as instance:
        _record_champion_at(instance, promoted)
        too_early = _tick(instance, promoted + timedelta(days=41), example_task)
        due = _tick(instance, promoted + timedelta(days=42), example_task)
    assert too_early.run_requests == [] and "41 days ago, cadence is 42 days" in too_early.skip_message
    assert len(due.run_requests) == 1
    assert due.run_requests[0].run_key == "cadence-2026-11-12"
    assert "42 days ago" in due.run_requests[0].tags["finetune_loop/evidence"]


def test_dagster_cli_validates_the_workspace_with_the_shipped_instance_config(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "dagster.yaml", tmp_path / "dagster.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=repo, env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout
