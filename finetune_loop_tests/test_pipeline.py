"""The whole graph, through the CLI and Dagster, on a tiny random llama: every stage runs for real
(TRL training, constrained evaluation, MLflow registry, GGUF under llama.cpp, Evidently)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from finetune_loop.cli import EXIT_GATE_REFUSED, EXIT_OK, run_loop
from finetune_loop.core.common.home import LoopHome
from finetune_loop.definitions import build_definitions
from finetune_loop.defs.automation import drift_retrain_sensor
from finetune_loop_tests.conftest import TINY_PROBES, write_tiny_task

MATERIALIZED = ["holdout_suite", "curated_dataset", "lora_adapter", "eval_report", "champion_model", "gguf_export", "drift_report"]


def _latest(instance: dg.DagsterInstance, key: str):
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return event, (event.asset_materialization.metadata if event else None)


@pytest.fixture(scope="module")
def loop_state(tmp_path_factory, tiny_base_model):
    """Two runs on one instance: a passing gate, then a candidate that cannot beat the base."""
    root = tmp_path_factory.mktemp("loop")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
        patch.setenv("FINETUNE_LOOP_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        passing_task = write_tiny_task(root / "passing", tiny_base_model, probes=TINY_PROBES)
        first_exit = run_loop(passing_task)
        # A learning rate this small leaves the zero-initialised LoRA update at zero: the candidate
        # predicts exactly what the base predicts, so "beats base" must fail.
        refused_task = write_tiny_task(root / "refused", tiny_base_model, must_beat_base=True)
        text = refused_task.read_text().replace("learning_rate: 0.005", "learning_rate: 1.0e-12")
        refused_task.write_text(text)
        second_exit = run_loop(refused_task)
        with dg.instance_for_test(temp_dir=str(home / "dagster_home")) as instance:
            yield {"home": LoopHome(home), "instance": instance, "exits": (first_exit, second_exit), "task": passing_task}


def test_first_run_materializes_every_asset_with_its_metadata(loop_state):
    instance = loop_state["instance"]
    assert loop_state["exits"][0] == EXIT_OK
    runs = instance.get_runs(ascending=True)
    first_run_id = runs[0].run_id
    for key in MATERIALIZED:
        event = instance.fetch_materializations(dg.AssetKey(key), limit=10, ascending=True).records
        assert event, f"{key} was never materialized"
        assert event[0].run_id == first_run_id
    for source in ("labeled_examples", "production_log"):
        assert instance.fetch_observations(dg.AssetKey(source), limit=1).records, f"{source} was never observed"

    first_eval = instance.fetch_materializations(dg.AssetKey("eval_report"), limit=1, ascending=True).records[0]
    meta = first_eval.event_log_entry.asset_materialization.metadata
    assert 0.0 <= meta["base_accuracy"].value <= 1.0
    assert 0.0 <= meta["candidate_accuracy"].value <= 1.0
    assert meta["gate_passed"].value is True
    table = meta["table"].value
    for row in ("| **accuracy** | 12 |", "| macro_f1 |", "| regression pass rate |", "| probe pass rate | 4 |", "| ms / example |", "| recall `billing` |"):
        assert row in table
    assert "| | n | base | candidate (v1) |" in table  # no champion column before the first promotion
    assert meta["champion_version"].value == "none"
    assert 0.0 <= meta["candidate_probe_pass_rate"].value <= 1.0
    assert meta["frontier"].value.startswith("skipped: set FINETUNE_LOOP_FRONTIER_BASE_URL")
    assert meta["chart"].value.startswith("![holdout per label and slice](data:image/png;base64,")
    assert Path(meta["chart_path"].value).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(Path(meta["report_path"].value).read_text())
    assert set(report["models"]) == {"base", "candidate"}
    assert report["models"]["candidate"]["holdout"]["accuracy"] == pytest.approx(meta["candidate_accuracy"].value)
    assert [g["name"] for g in report["gate"]["sub_gates"]] == [
        "min_accuracy", "non_inferior_to_champion", "slices_hold", "regression_suite", "behaviour_probes",
    ]
    for name in ("min_accuracy", "non_inferior_to_champion", "regression_suite", "behaviour_probes"):
        assert f"**{name}**" in meta["gate_lines"].value
    check_key = dg.AssetCheckKey(dg.AssetKey("eval_report"), "release_gate")
    check = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=2)[-1].evaluation
    assert check.passed and check.description.startswith("PASSED all sub-gates")
    assert check.metadata["non_inferior_to_champion"].value == "SKIP no champion yet: nothing to be non-inferior to"
    assert check.metadata["behaviour_probes"].value.startswith("PASS pass rate on 4 probe cases")

    home = loop_state["home"]
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    eval_run = client.get_run(meta["mlflow_run_id"].value)
    assert eval_run.data.metrics["candidate_accuracy"] == pytest.approx(meta["candidate_accuracy"].value)
    assert eval_run.data.metrics["candidate_ms_per_example"] > 0
    assert {"eval_chart.png", "eval_report.json", "eval_table.md", "predictions.jsonl"} <= {a.path for a in client.list_artifacts(eval_run.info.run_id)}
    champion = client.get_model_version_by_alias("tiny_triage-adapter", "champion")
    assert str(champion.version) == "1"
    _, promoted = _latest(instance, "champion_model")
    assert (promoted["version"].value, promoted["previous_version"].value) == ("1", "none")


def test_champion_bundle_is_complete_enough_to_serve(loop_state):
    from finetune_loop.core.common.tracker import Tracker
    from finetune_loop.core.ship.registry import missing_bundle_files

    home = loop_state["home"]
    tracker = Tracker.for_task(home, "tiny_triage")
    bundle = tracker.download_version(tracker.version_by_alias("tiny_triage-adapter", "champion"))
    shipped = ("tiny_triage-Q8_0.gguf", "tiny_triage-Q8_0.Modelfile", "README.md")
    assert missing_bundle_files(bundle, extra=shipped) == []
    assert (bundle / "tiny_triage-Q8_0.gguf").read_bytes()[:4] == b"GGUF"
    assert "FROM ./tiny_triage-Q8_0.gguf" in (bundle / "tiny_triage-Q8_0.Modelfile").read_text()
    assert json.loads((bundle / "eval_report.json").read_text())["gate"]["passed"] is True


def test_training_is_tracked_and_the_adapter_bundle_is_complete(loop_state):
    _, meta = _latest(loop_state["instance"], "lora_adapter")
    home = loop_state["home"]
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    run = client.get_run(meta["mlflow_run_id"].value)
    assert run.info.status == "FINISHED"
    assert run.data.params["data_version"] == _latest(loop_state["instance"], "curated_dataset")[1]["data_version"].value
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) == meta["steps"].value >= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    for name in ("adapter_model.safetensors", "adapter_config.json", "rebuild_manifest.json", "task_spec.yaml", "tokenizer.json"):
        assert f"adapter/{name}" in artifacts
    manifest = json.loads((Path(meta["adapter_path"].value) / "rebuild_manifest.json").read_text())
    assert manifest["data_version"] == run.data.params["data_version"]
    assert len(manifest["training_rows"]) == meta["train_rows_used"].value
    assert meta["resumed_from_step"].value == 0 and Path(meta["loss_curve"].value).is_file()


def test_gguf_export_runs_under_llama_cpp(loop_state):
    instance = loop_state["instance"]
    _, meta = _latest(instance, "gguf_export")
    gguf_path = Path(meta["gguf_path"].value)
    assert gguf_path.is_file() and gguf_path.read_bytes()[:4] == b"GGUF"
    assert meta["quant_type"].value == "Q8_0"
    assert gguf_path.stat().st_size < Path(meta["unquantized_path"].value).stat().st_size
    first_eval = instance.fetch_materializations(dg.AssetKey("eval_report"), limit=1, ascending=True).records[0]
    candidate = first_eval.event_log_entry.asset_materialization.metadata["candidate_accuracy"].value
    # The merged model is the reference; it answers as base + adapter did in evaluation.
    assert meta["merged_accuracy"].value == pytest.approx(candidate)
    assert meta["accuracy_delta"].value == pytest.approx(meta["accuracy_gguf"].value - meta["merged_accuracy"].value)
    assert meta["outtype"].value == "f32"
    assert "| tiny_triage-Q8_0.gguf |" in meta["variants"].value
    assert meta["size_mb_Q8_0"].value < meta["size_mb_f32"].value
    assert meta["generation_tokens_per_second_Q8_0"].value > 0
    assert Path(meta["modelfile"].value).read_text().startswith("FROM ./tiny_triage-Q8_0.gguf")
    assert Path(meta["model_card"].value).read_text().startswith("---\nbase_model:")
    first_run_id = instance.get_runs(ascending=True)[0].run_id
    for check in ("matches_merged_model", "quant_within_budget", "chat_template_roundtrip"):
        key = dg.AssetCheckKey(dg.AssetKey("gguf_export"), check)
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
        [record] = [r for r in history if r.run_id == first_run_id]
        assert record.evaluation.passed, record.evaluation.description


def test_drift_report_flags_shifted_traffic(loop_state):
    _, meta = _latest(loop_state["instance"], "drift_report")
    assert meta["drift_detected"].value is True
    assert meta["drift_share"].value >= 0.5
    assert Path(meta["report_path"].value).read_text().lstrip().lower().startswith("<!doctype html")


def test_failed_gate_leaves_champion_and_export_unmaterialized(loop_state):
    instance = loop_state["instance"]
    assert loop_state["exits"][1] == EXIT_GATE_REFUSED
    second_run_id = instance.get_runs(ascending=True)[-1].run_id
    eval_event, eval_meta = _latest(instance, "eval_report")
    assert eval_event.run_id == second_run_id
    assert eval_meta["gate_passed"].value is False
    assert "beats_base" in eval_meta["gate"].value
    # The second run compared the candidate with champion v1 on the same suites.
    assert eval_meta["champion_version"].value == "1"
    assert 0.0 <= eval_meta["champion_accuracy"].value <= 1.0
    assert "| | n | base | candidate (v2) | champion (v1) |" in eval_meta["table"].value
    check_key = dg.AssetCheckKey(dg.AssetKey("eval_report"), "release_gate")
    check = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1)[0].evaluation
    assert not check.passed and check.description.startswith("FAILED beats_base")
    assert check.metadata["beats_base"].value.startswith("FAIL candidate accuracy")
    assert check.metadata["non_inferior_to_champion"].value.startswith("PASS candidate − champion v1")
    for key in ("champion_model", "gguf_export"):
        event, _ = _latest(instance, key)
        assert event.run_id != second_run_id, f"{key} was materialized although the gate failed"
    # The frozen holdout was verified, not regenerated, by the second run.
    holdout = instance.fetch_materializations(dg.AssetKey("holdout_suite"), limit=2, ascending=True).records
    first, second = (r.event_log_entry.asset_materialization.metadata for r in holdout)
    assert first["created_this_run"].value is True and second["created_this_run"].value is False
    assert first["content_hash"].value == second["content_hash"].value
    home = loop_state["home"]
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias("tiny_triage-adapter", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tiny_triage-adapter", "challenger").version) == "2"


def test_drift_sensor_requests_one_run_for_two_drifting_reports_in_a_row(loop_state):
    instance = loop_state["instance"]
    defs = build_definitions(str(loop_state["task"]), str(loop_state["home"].root))
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        first = drift_retrain_sensor.evaluate_tick(context)
    # Both runs reported drift; the first report requests the retrain, hysteresis holds the second.
    reports = instance.fetch_materializations(dg.AssetKey("drift_report"), limit=2, ascending=True).records
    assert len(reports) == 2
    assert [r.run_key for r in first.run_requests] == [f"drift-{reports[0].run_id}"]
    assert first.run_requests[0].tags["finetune_loop/trigger"] == "drift"
    # The same reports on the next tick (cursor advanced) request nothing more.
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources, cursor=first.cursor) as context:
        again = drift_retrain_sensor.evaluate_tick(context)
    assert again.run_requests == []


def test_training_run_records_its_dataset_inputs_and_curation_evidence(loop_state):
    _, meta = _latest(loop_state["instance"], "lora_adapter")
    home = loop_state["home"]
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    run = client.get_run(meta["mlflow_run_id"].value)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"tiny_triage-train", "tiny_triage-validation"}
    assert inputs["tiny_triage-train"].dataset.digest == run.data.params["data_version"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "dataset")} == {
        "dataset/report.json", "dataset/dedup_audit.md", "dataset/quarantine.jsonl",
    }


def test_curation_metadata_and_contamination_check(loop_state):
    instance = loop_state["instance"]
    _, meta = _latest(instance, "curated_dataset")
    assert meta["suite_rows_reserved"].value["holdout"] >= 1
    assert "| label |" in meta["dedup_audit"].value
    _, regression = _latest(instance, "regression_suite")
    assert regression["size"].value >= 1 and len(regression["content_hash"].value) == 64
    check_key = dg.AssetCheckKey(dg.AssetKey("curated_dataset"), "no_contamination")
    history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=2)
    assert history and all(record.evaluation.passed for record in history)


def test_curate_command_runs_curation_alone(tmp_path, tiny_base_model, capsys, monkeypatch):
    from finetune_loop.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster_home"))
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    assert main(["curate", "--task", str(task), "--home", str(tmp_path / "home")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "no_contamination PASSED" in out
    assert "holdout_suite:" in out and "regression_suite:" in out
    assert "dedup audit" in out and "| label |" in out
    assert not (tmp_path / "home" / "artifacts" / "adapters").exists()
