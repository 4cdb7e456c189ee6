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
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.ship.registry import promote, rollback
from finetune_loop.defs.monitor import six_week_retrain_schedule
from finetune_loop_tests.conftest import register_versions

PUBLIC_ASSETS = {
    "labeled_examples", "production_log", "base_model", "holdout_suite", "regression_suite", "recent_suite", "curated_dataset", "lora_adapter",
    "eval_report", "champion_model", "gguf_export", "drift_report", "serving_quality",
}


def test_definitions_expose_the_public_contract():
    assert {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()} == PUBLIC_ASSETS
    assert defs.resolve_job_def("retrain_job").tags["finetune_loop/job"] == "retrain"
    assert defs.resolve_job_def("monitor_job") is not None
    assert defs.resolve_schedule_def("six_week_retrain_schedule").job_name == "retrain_job"
    assert defs.resolve_sensor_def("drift_retrain_sensor").job_name == "retrain_job"
    assert defs.resolve_sensor_def("feedback_retrain_sensor").job_name == "retrain_job"
    assert defs.resolve_sensor_def("erasure_retrain_sensor").job_name == "retrain_job"
    assert defs.resolve_schedule_def("daily_drift_schedule").job_name == "monitor_job"
    check_keys = defs.resolve_asset_graph().asset_check_keys
    gate = next(key for key in check_keys if key.name == "release_gate")
    assert gate.asset_key == dg.AssetKey("eval_report")
    assert defs.resolve_asset_graph().get_check_spec(gate).blocking
    export_checks = {key.name for key in check_keys if key.asset_key == dg.AssetKey("gguf_export")}
    assert export_checks == {"matches_merged_model", "quant_within_budget", "chat_template_roundtrip"}
    assert all(defs.resolve_asset_graph().get_check_spec(key).blocking for key in check_keys if key.name in export_checks)


def _tick(instance, when: datetime, task_path, home: LoopHome):
    local_defs = build_definitions(str(task_path), str(home.root))
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when, resources=local_defs.resources)
    return six_week_retrain_schedule.evaluate_tick(context)


@pytest.fixture
def example_task():
    from finetune_loop.defs.resources import EXAMPLE_TASK

    return EXAMPLE_TASK


@pytest.fixture
def home(tmp_path) -> LoopHome:
    return LoopHome(tmp_path / "home")


MODEL = "support_triage-adapter"


def _promote(tracker, home, version, when, evaluated_against=None):
    promote(tracker, home.task_dir("support_triage", "locks"), MODEL, version, evaluated_against=evaluated_against,
            holdout_primary=0.8, holdout_hash="h", now=when)


def test_schedule_requests_a_retrain_when_there_is_no_champion(example_task, home):
    with dg.instance_for_test() as instance:
        result = _tick(instance, datetime(2026, 11, 23, 3, tzinfo=timezone.utc), example_task, home)
    assert len(result.run_requests) == 1
    assert result.run_requests[0].tags["finetune_loop/trigger"] == "cadence"
    assert result.run_requests[0].tags["finetune_loop/evidence"] == "no champion yet"


def test_schedule_waits_for_the_cadence_of_the_registry_champion(example_task, home):
    promoted = datetime(2026, 10, 1, 3, tzinfo=timezone.utc)
    tracker = register_versions(home, 1, "support_triage")
    _promote(tracker, home, "1", promoted)
    with dg.instance_for_test() as instance:
        too_early = _tick(instance, promoted + timedelta(days=41), example_task, home)
        due = _tick(instance, promoted + timedelta(days=42), example_task, home)
    assert too_early.run_requests == [] and "champion v1 serving since 2026-10-01, 41 days (cadence 42 days)" in too_early.skip_message
    assert len(due.run_requests) == 1
    assert due.run_requests[0].run_key == "cadence-2026-11-12"
    assert "42 days" in due.run_requests[0].tags["finetune_loop/evidence"]


def test_after_a_rollback_the_cadence_counts_from_the_rollback(example_task, home):
    first = datetime(2026, 8, 3, tzinfo=timezone.utc)
    tracker = register_versions(home, 2, "support_triage")
    _promote(tracker, home, "1", first)
    _promote(tracker, home, "2", first + timedelta(days=20), evaluated_against="1")
    rolled_back = first + timedelta(days=50)
    rollback(tracker, home.task_dir("support_triage", "locks"), MODEL, reason="test", now=rolled_back)
    with dg.instance_for_test() as instance:
        tick = _tick(instance, rolled_back + timedelta(days=10), example_task, home)
    # v1 was first promoted 60 days earlier; it serves again since the rollback, 10 days ago.
    assert tick.run_requests == [] and "champion v1 serving since 2026-09-22, 10 days" in tick.skip_message


def test_dagster_cli_validates_the_workspace_with_the_shipped_instance_config(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "dagster.yaml", tmp_path / "dagster.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=repo, env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_a_run_keeps_the_spec_it_started_with(tmp_path):
    from finetune_loop.core.common.spec import TaskSpecError
    from finetune_loop.defs.resources import LoopResource
    from finetune_loop_tests.conftest import write_tiny_task

    task = write_tiny_task(tmp_path / "task", tmp_path / "no-model")
    first_step = LoopResource(task_path=str(task), home=str(tmp_path / "home"))
    started = first_step._run_spec("run-1", launched_hash=None)
    # Edited while the run is going: the run's later steps (fresh resources, as in another step
    # process) still see the spec the run started with; a new run sees the edit.
    task.write_text(task.read_text().replace("lora_r: 4", "lora_r: 8"))
    later_step = LoopResource(task_path=str(task), home=str(tmp_path / "home"))._run_spec("run-1", launched_hash=None)
    assert later_step.training.lora_r == started.training.lora_r == 4
    assert later_step.spec_sha256 == started.spec_sha256
    assert LoopResource(task_path=str(task), home=str(tmp_path / "home"))._run_spec("run-2", None).training.lora_r == 8
    # A run launched for one version of the file refuses to start on another.
    with pytest.raises(TaskSpecError, match=r"changed after run run-3 was launched"):
        LoopResource(task_path=str(task), home=str(tmp_path / "home"))._run_spec("run-3", launched_hash=started.spec_sha256)
    assert (tmp_path / "home" / "run_specs" / "run-1.yaml").read_text().count("lora_r: 4") == 1


def test_the_base_model_is_hashed_once_until_its_file_changes(tmp_path, monkeypatch):
    from finetune_loop.core.train import base_model

    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    (weights.parent / "config.json").write_text("{}")
    weights.write_bytes(b"weights v1")
    calls = []
    real = base_model.sha256_file
    monkeypatch.setattr(base_model, "sha256_file", lambda path: calls.append(path) or real(path))
    first = base_model.prepare_base_model(str(weights.parent), tmp_path / "cache")
    again = base_model.prepare_base_model(str(weights.parent), tmp_path / "cache")
    assert first.source_sha256 == again.source_sha256 and len(calls) == 1
    weights.write_bytes(b"weights v2, a different size")
    changed = base_model.prepare_base_model(str(weights.parent), tmp_path / "cache")
    assert changed.source_sha256 != first.source_sha256 and len(calls) == 2
