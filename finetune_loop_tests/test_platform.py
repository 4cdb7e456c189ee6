"""The platform code location: every task file of a directory in one definitions load (issue #17).
Each task has its own prefixed assets, groups, jobs, schedules and sensors, its own registry model
and MLflow experiment; a broken task file is reported and the others load; a task's run serves
that task only; portfolio_report shows them all."""

from __future__ import annotations

import json

import dagster as dg
import pytest
import yaml

from finetune_loop.core.common.catalog import TaskCatalog
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.definitions import build_platform_definitions
from finetune_loop_tests.conftest import write_tiny_task
from finetune_loop_tests.test_generation_pipeline import _write_task as write_generation_task


@pytest.fixture
def tasks_dir(tmp_path, tiny_base_model):
    """Two tasks (a classifier and a generation task) and one broken file, in one directory."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    triage = write_tiny_task(tmp_path / "triage", tiny_base_model)
    config = yaml.safe_load(triage.read_text())
    config["data"] = {k: str(triage.parent / v) for k, v in config["data"].items()}
    (tasks / "triage.yaml").write_text(yaml.safe_dump(config))
    extract = write_generation_task(tmp_path / "extract", tiny_base_model, "text")
    config = yaml.safe_load(extract.read_text())
    config["data"] = {k: str(extract.parent / v) for k, v in config["data"].items()}
    (tasks / "extract.yaml").write_text(yaml.safe_dump(config))
    (tasks / "broken.yaml").write_text("name: broken\nlabels: [a]\n")
    return tasks


def test_one_load_serves_every_task_and_reports_the_broken_file(tasks_dir, tmp_path):
    with pytest.warns(UserWarning, match=r"broken\.yaml is not served: .*broken\.yaml"):
        defs = build_platform_definitions(tasks_dir, str(tmp_path / "home"))
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    for task in ("tiny_triage", "tiny_extract_text"):
        assert {f"{task}/eval_report", f"{task}/gguf_export", f"{task}/drift_report", f"{task}/labeled_examples"} <= keys
        assert graph.get(dg.AssetKey([task, "eval_report"])).group_name == f"{task}_evaluate"
        assert graph.get(dg.AssetKey([task, "labeled_examples"])).group_name == f"{task}_data"
        # Lineage stays inside the task.
        assert {k.path[0] for k in graph.get(dg.AssetKey([task, "eval_report"])).parent_keys} == {task}
        for name in ("retrain_job", "monitor_job"):
            assert defs.resolve_job_def(f"{task}__{name}") is not None
        assert defs.resolve_schedule_def(f"{task}__six_week_retrain_schedule").cron_schedule == "0 3 * * 1"
        for sensor in ("drift_retrain_sensor", "feedback_retrain_sensor", "erasure_retrain_sensor"):
            assert defs.resolve_sensor_def(f"{task}__{sensor}") is not None
    assert "portfolio_report" in keys and not any(k.startswith("broken/") for k in keys)
    check_keys = {f"{c.asset_key.to_user_string()}:{c.name}" for c in graph.asset_check_keys}
    assert {"tiny_triage/eval_report:release_gate", "tiny_extract_text/gguf_export:matches_merged_model",
            "tiny_triage/eval_report:shadow_agreement"} <= check_keys
    assert defs.resolve_job_def("tiny_triage__retrain_job").tags["finetune_loop/task"] == "tiny_triage"


def test_two_files_naming_one_task_are_both_refused(tasks_dir):
    (tasks_dir / "triage_copy.yaml").write_text((tasks_dir / "triage.yaml").read_text())
    catalog = TaskCatalog.load(tasks_dir)
    assert "tiny_triage" not in catalog.specs and "tiny_extract_text" in catalog.specs
    assert "also the name in triage_copy.yaml" in catalog.broken[tasks_dir / "triage.yaml"]


def test_a_task_run_serves_that_task_and_the_portfolio_shows_all(tasks_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FINETUNE_LOOP_HOME", str(home))
    with pytest.warns(UserWarning):
        defs = build_platform_definitions(tasks_dir, str(home))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("tiny_extract_text__retrain_job").execute_in_process(instance=instance, raise_on_error=False)
        assert result.success
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert "tiny_extract_text/champion_model" in materialized and not any(k.startswith("tiny_triage/") for k in materialized)
        assert instance.get_run_by_id(result.run_id).tags["finetune_loop/task"] == "tiny_extract_text"
        # Its own registry model and experiment; the other task's registry is untouched.
        assert Tracker.for_task(LoopHome(home), "tiny_extract_text").version_by_alias("tiny_extract_text-adapter", "champion") is not None
        assert Tracker.for_task(LoopHome(home), "tiny_triage").version_by_alias("tiny_triage-adapter", "champion") is None
        # A sensor of one task reads that task's spec (no production labels yet: it skips, naming why).
        sensor = defs.resolve_sensor_def("tiny_triage__feedback_retrain_sensor")
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
            tick = sensor.evaluate_tick(context)
        assert tick.run_requests == [] and "labelled" in (tick.skip_message or "")
        report = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("portfolio_report")})
        overview = report.execute_in_process(instance=instance, raise_on_error=False)
        assert overview.success
        [event] = overview.get_asset_materialization_events()
        metadata = event.materialization.metadata
        assert metadata["tasks"].value == 2
        assert list(json.loads(json.dumps(metadata["broken_task_files"].value))) == [str(tasks_dir / "broken.yaml")]
        table = metadata["table"].value
        assert "| tiny_extract_text | generation | exact_match |" in table and "| tiny_triage | classification |" in table
        assert "![portfolio](data:image/png;base64," in metadata["chart"].value
