"""The whole graph, through the CLI and Dagster, on a tiny random llama: every stage runs for real
(TRL training, constrained evaluation, MLflow registry, GGUF under llama.cpp, Evidently)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from finetune_loop.cli import EXIT_FAILED, EXIT_GATE_REFUSED, EXIT_OK, main
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.ship import gguf_writer
from finetune_loop.core.ship.registry import champion_record, missing_bundle_files, promote, rollback
from finetune_loop.definitions import build_definitions
from finetune_loop.defs import metadata as contract
from finetune_loop.defs.monitor import drift_retrain_sensor
from finetune_loop_tests.conftest import TINY_PROBES, use_loop_home, write_tiny_task

MATERIALIZED = ["holdout_suite", "curated_dataset", "lora_adapter", "eval_report", "gguf_export", "champion_model", "drift_report"]
CONTRACT = {
    "holdout_suite": contract.SuiteMetadata, "regression_suite": contract.SuiteMetadata,
    "curated_dataset": contract.CuratedDatasetMetadata, "lora_adapter": contract.LoraAdapterMetadata,
    "eval_report": contract.EvalReportMetadata, "gguf_export": contract.GgufExportMetadata,
    "champion_model": contract.ChampionModelMetadata, "drift_report": contract.DriftReportMetadata,
}


def _latest(instance: dg.DagsterInstance, key: str):
    """The latest materialization of `key` and its metadata, read back through the contract."""
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return event, (CONTRACT[key].from_dagster(event.asset_materialization.metadata) if event else None)


def _records(instance, key: str) -> list:
    return [
        (r.run_id, CONTRACT[key].from_dagster(r.event_log_entry.asset_materialization.metadata))
        for r in instance.fetch_materializations(dg.AssetKey(key), limit=20, ascending=True).records
    ]


def _hand_picked(task: Path, home: Path, asset: str):
    """Materialize one asset alone, as a user picking it in the UI would (no upstream step, no checks)."""
    defs = build_definitions(str(task), str(home))
    with dg.DagsterInstance.get() as instance:
        job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(asset)})
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    return result.success, failure.step_failure_data.error.message


@pytest.fixture(scope="module")
def loop_state(tmp_path_factory, tiny_base_model):
    """Three runs on one instance: a passing gate (v1 champion); a candidate that cannot beat the
    base (v2), after which gguf_export and champion_model are hand-picked alone; a candidate that
    passes its gate but whose GGUF is written wrong (v3: Q/K rows not permuted for llama.cpp)."""
    root = tmp_path_factory.mktemp("loop")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        use_loop_home(patch, home)
        passing_task = write_tiny_task(root / "passing", tiny_base_model, probes=TINY_PROBES)
        first_exit = main(["run", "--task", str(passing_task)])
        # A learning rate this small leaves the zero-initialised LoRA update at zero: the candidate
        # predicts exactly what the base predicts, so "beats base" must fail.
        refused_task = write_tiny_task(root / "refused", tiny_base_model, must_beat_base=True)
        text = refused_task.read_text().replace("learning_rate: 0.005", "learning_rate: 1.0e-12")
        refused_task.write_text(text)
        second_exit = main(["run", "--task", str(refused_task)])
        hand_picked = {asset: _hand_picked(refused_task, home, asset) for asset in ("gguf_export", "champion_model")}
        with patch.context() as broken:
            broken.setattr(gguf_writer, "_permute_for_rope", lambda weights, n_heads: weights)
            third_exit = main(["run", "--task", str(passing_task)])
        hand_picked["champion_model after broken gguf"] = _hand_picked(passing_task, home, "champion_model")
        with dg.instance_for_test(temp_dir=str(home / "dagster_home")) as instance:
            yield {"home": LoopHome(home), "instance": instance, "exits": (first_exit, second_exit, third_exit), "task": passing_task,
                   "hand_picked": hand_picked}


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

    _, meta = _records(instance, "eval_report")[0]
    assert 0.0 <= meta.base_accuracy <= 1.0
    assert 0.0 <= meta.candidate_accuracy <= 1.0
    assert meta.gate_passed is True
    table = meta.table
    for row in ("| **holdout accuracy** | 12 |", "| holdout macro_f1 |", "| regression pass rate |", "| probe pass rate | 4 |", "| ms / example |", "| holdout recall `billing` |"):
        assert row in table
    assert "| | n | base | candidate (v1) |" in table  # no champion column before the first promotion
    assert meta.champion_version is None and meta.champion_accuracy is None
    assert 0.0 <= meta.candidate_probe_pass_rate <= 1.0
    assert meta.frontier.startswith("skipped: set FINETUNE_LOOP_FRONTIER_BASE_URL")
    assert meta.chart.startswith("![holdout per label and slice](data:image/png;base64,")
    assert Path(meta.chart_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(Path(meta.report_path).read_text())
    assert set(report["models"]) == {"base", "candidate"}
    assert report["models"]["candidate"]["holdout"]["accuracy"] == pytest.approx(meta.candidate_accuracy)
    assert [g["name"] for g in report["gate"]["sub_gates"]] == [
        "min_accuracy", "non_inferior_to_champion", "follows_recent_traffic", "slices_hold", "regression_suite", "behaviour_probes",
    ]
    for name in ("min_accuracy", "non_inferior_to_champion", "regression_suite", "behaviour_probes"):
        assert f"**{name}**" in meta.gate_lines
    check_key = dg.AssetCheckKey(dg.AssetKey("eval_report"), "release_gate")
    [check] = [r.evaluation for r in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10) if r.run_id == first_run_id]
    assert check.passed and check.description.startswith("PASSED all sub-gates")
    assert check.metadata["non_inferior_to_champion"].value == "SKIP no champion yet: nothing to be non-inferior to"
    assert check.metadata["behaviour_probes"].value.startswith("PASS pass rate on 4 probe cases")

    home = loop_state["home"]
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    eval_run = client.get_run(meta.mlflow_run_id)
    assert eval_run.data.metrics["candidate_accuracy"] == pytest.approx(meta.candidate_accuracy)
    assert eval_run.data.metrics["candidate_ms_per_example"] > 0
    assert {"eval_chart.png", "eval_report.json", "eval_table.md", "predictions.jsonl"} <= {a.path for a in client.list_artifacts(eval_run.info.run_id)}
    champion = client.get_model_version_by_alias("tiny_triage-adapter", "champion")
    assert str(champion.version) == "1"
    [(_, promoted)] = _records(instance, "champion_model")
    assert (promoted.version, promoted.previous_version) == ("1", None)
    assert promoted.champion_since == champion_record(Tracker.for_task(home, "tiny_triage"), "tiny_triage-adapter").since.isoformat()


def test_champion_bundle_is_complete_enough_to_serve(loop_state):
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
    run = client.get_run(meta.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data_version"] == _latest(loop_state["instance"], "curated_dataset")[1].data_version
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) == meta.steps >= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    for name in ("adapter_model.safetensors", "adapter_config.json", "rebuild_manifest.json", "task_spec.yaml", "tokenizer.json"):
        assert f"adapter/{name}" in artifacts
    manifest = json.loads((Path(meta.adapter_path) / "rebuild_manifest.json").read_text())
    assert manifest["data_version"] == run.data.params["data_version"]
    assert len(manifest["training_rows"]) == meta.train_rows_used
    assert meta.resumed_from_step == 0 and Path(meta.loss_curve).is_file()


def test_gguf_export_runs_under_llama_cpp(loop_state):
    instance = loop_state["instance"]
    run_id, meta = _records(instance, "gguf_export")[0]
    assert run_id == instance.get_runs(ascending=True)[0].run_id and meta.model_version == "1" and meta.shipped
    gguf_path = Path(meta.gguf_path)
    assert gguf_path.is_file() and gguf_path.read_bytes()[:4] == b"GGUF"
    assert meta.quant_type == "Q8_0"
    assert gguf_path.stat().st_size < Path(meta.unquantized_path).stat().st_size
    candidate = _records(instance, "eval_report")[0][1].candidate_accuracy
    # The merged model is the reference; it answers as base + adapter did in evaluation.
    assert meta.merged_accuracy == pytest.approx(candidate)
    assert meta.accuracy_delta == pytest.approx(meta.accuracy_gguf - meta.merged_accuracy)
    assert meta.outtype == "f32"
    assert "| tiny_triage-Q8_0.gguf |" in meta.variants
    assert meta.variant_stats["Q8_0"]["size_mb"] < meta.variant_stats["f32"]["size_mb"]
    assert meta.variant_stats["Q8_0"]["generation_tokens_per_second"] > 0
    assert Path(meta.modelfile).read_text().startswith("FROM ./tiny_triage-Q8_0.gguf")
    assert Path(meta.model_card).read_text().startswith("---\nbase_model:")
    first_run_id = instance.get_runs(ascending=True)[0].run_id
    for check in ("matches_merged_model", "quant_within_budget", "chat_template_roundtrip"):
        key = dg.AssetCheckKey(dg.AssetKey("gguf_export"), check)
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=5)
        [record] = [r for r in history if r.run_id == first_run_id]
        assert record.evaluation.passed, record.evaluation.description


def test_drift_report_flags_shifted_traffic(loop_state):
    _, meta = _latest(loop_state["instance"], "drift_report")
    assert meta.drift_detected is True
    assert meta.drift_share >= 0.5
    assert Path(meta.report_path).read_text().lstrip().lower().startswith("<!doctype html")


def test_failed_gate_leaves_champion_and_export_unmaterialized(loop_state):
    instance = loop_state["instance"]
    assert loop_state["exits"][1] == EXIT_GATE_REFUSED
    second_run_id = instance.get_runs(ascending=True)[1].run_id
    run_id, eval_meta = _records(instance, "eval_report")[1]
    assert run_id == second_run_id
    assert eval_meta.gate_passed is False
    assert "beats_base" in eval_meta.gate
    # The second run compared the candidate with champion v1 on the same suites.
    assert eval_meta.champion_version == "1"
    assert 0.0 <= eval_meta.champion_accuracy <= 1.0
    assert "| | n | base | candidate (v2) | champion (v1) |" in eval_meta.table
    check_key = dg.AssetCheckKey(dg.AssetKey("eval_report"), "release_gate")
    [check] = [r.evaluation for r in instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10) if r.run_id == second_run_id]
    assert not check.passed and check.description.startswith("FAILED beats_base")
    assert check.metadata["beats_base"].value.startswith("FAIL candidate accuracy")
    assert check.metadata["non_inferior_to_champion"].value.startswith("PASS candidate − champion v1")
    for key in ("gguf_export", "champion_model"):
        assert second_run_id not in {run_id for run_id, _ in _records(instance, key)}, f"{key} was materialized although the gate failed"
    # The frozen holdout was verified, not regenerated, by the second run.
    (_, first), (_, second) = _records(instance, "holdout_suite")[:2]
    assert first.created_this_run is True and second.created_this_run is False
    assert first.content_hash == second.content_hash
    home = loop_state["home"]
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias("tiny_triage-adapter", "champion").version) == "1"
    assert eval_meta.candidate_model_version == "2"


def test_drift_sensor_requests_one_run_for_two_drifting_reports_in_a_row(loop_state):
    instance = loop_state["instance"]
    defs = build_definitions(str(loop_state["task"]), str(loop_state["home"].root))
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources) as context:
        first = drift_retrain_sensor.evaluate_tick(context)
    # Every run reported drift; the first report requests the retrain, hysteresis holds the others.
    reports = instance.fetch_materializations(dg.AssetKey("drift_report"), limit=5, ascending=True).records
    assert len(reports) == 3
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
    run = client.get_run(meta.mlflow_run_id)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"tiny_triage-train", "tiny_triage-validation"}
    assert inputs["tiny_triage-train"].dataset.digest == run.data.params["data_version"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "dataset")} == {
        "dataset/report.json", "dataset/dedup_audit.md", "dataset/quarantine.jsonl",
    }


def test_curation_metadata_and_contamination_check(loop_state):
    instance = loop_state["instance"]
    _, meta = _latest(instance, "curated_dataset")
    assert meta.suite_rows_reserved["holdout"] >= 1
    assert "| label |" in meta.dedup_audit
    _, regression = _latest(instance, "regression_suite")
    assert regression.size >= 1 and len(regression.content_hash) == 64
    check_key = dg.AssetCheckKey(dg.AssetKey("curated_dataset"), "no_contamination")
    history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
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


def test_a_gguf_that_fails_its_checks_is_never_promoted_and_the_old_champion_keeps_serving(loop_state):
    instance, home = loop_state["instance"], loop_state["home"]
    assert loop_state["exits"][2] == EXIT_FAILED
    # The third full run (the hand-picked runs between the second and the third evaluate nothing).
    third_run_id, evaluation = _records(instance, "eval_report")[2]
    assert evaluation.gate_passed and evaluation.candidate_model_version == "3"
    [export] = [meta for run_id, meta in _records(instance, "gguf_export") if run_id == third_run_id]
    assert export.model_version == "3"
    assert not export.shipped and "matches_merged_model" in export.failed_checks
    key = dg.AssetCheckKey(dg.AssetKey("gguf_export"), "matches_merged_model")
    [record] = [r for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=5) if r.run_id == third_run_id]
    assert not record.evaluation.passed
    # Exported and verified before promotion: the alias never moved to v3.
    assert third_run_id not in {run_id for run_id, _ in _records(instance, "champion_model")}
    tracker = Tracker.for_task(home, "tiny_triage")
    assert champion_record(tracker, "tiny_triage-adapter").version == "1"
    tags = tracker.version_tags("tiny_triage-adapter", "3")
    assert tags["gguf_checks_passed"] == "False" and "matches_merged_model" in tags["gguf_failed_checks"]
    # The failed file never joined v3's bundle: a later rollback to v3 could not serve it.
    bundle = tracker.download_version(tracker.version_by_alias("tiny_triage-adapter", "challenger"))
    assert not (bundle / "tiny_triage-Q8_0.gguf").exists()


def test_every_run_carries_the_hash_of_the_spec_it_ran(loop_state):
    from finetune_loop.core.common.spec import load_task_spec

    runs = loop_state["instance"].get_runs(ascending=True)
    # Launched by the CLI with the tag, or (the hand-picked runs) tagged at their first step.
    assert len(runs) >= 6 and all(run.tags.get("finetune_loop/spec_sha256") for run in runs)
    assert runs[0].tags["finetune_loop/spec_sha256"] == load_task_spec(loop_state["task"]).spec_sha256
    home = loop_state["home"].root
    assert {path.stem for path in (home / "run_specs").glob("*.yaml")} >= {run.run_id for run in runs[:3]}


def test_hand_picked_export_or_promotion_refuses_what_the_gates_refused(loop_state):
    hand_picked = loop_state["hand_picked"]
    succeeded, message = hand_picked["gguf_export"]
    assert not succeeded and "release gate refused candidate v2, not exporting it" in message
    succeeded, message = hand_picked["champion_model"]
    assert not succeeded and "release gate refused candidate v2, not promoting it" in message
    succeeded, message = hand_picked["champion_model after broken gguf"]
    assert not succeeded and "v3: its GGUF did not pass every check (failed: matches_merged_model" in message
    assert champion_record(Tracker.for_task(loop_state["home"], "tiny_triage"), "tiny_triage-adapter").version == "1"


def test_after_a_rollback_drift_and_the_cadence_follow_the_registry(loop_state):
    """The registry is the one champion truth: once the champion moves (here by promotion and a
    rollback made outside any run), drift compares live feedback with the serving version's score
    and the cadence counts from when it became champion again."""
    from datetime import datetime, timedelta, timezone

    from finetune_loop.defs.monitor import six_week_retrain_schedule

    home, task = loop_state["home"], loop_state["task"]
    tracker = Tracker.for_task(home, "tiny_triage")
    v1 = champion_record(tracker, "tiny_triage-adapter")
    locks = home.task_dir("tiny_triage", "locks")
    promoted = datetime(2026, 1, 5, tzinfo=timezone.utc)
    promote(tracker, locks, "tiny_triage-adapter", "2", evaluated_against="1", holdout_primary=0.123, holdout_hash=v1.holdout_hash, now=promoted)
    drift_on_v2 = _materialize_drift(task, home)
    assert (drift_on_v2.champion_version, drift_on_v2.champion_eval_accuracy) == ("2", 0.123)
    rolled_back = promoted + timedelta(days=30)
    rollback(tracker, locks, "tiny_triage-adapter", reason="test", now=rolled_back)
    drift_on_v1 = _materialize_drift(task, home)
    assert (drift_on_v1.champion_version, drift_on_v1.champion_eval_accuracy) == ("1", pytest.approx(v1.holdout_primary, abs=1e-4))
    resources = build_definitions(str(task), str(home.root)).resources
    # 41 days after v2's promotion but 11 after the rollback: v1 has served 11 days, not due.
    with dg.build_schedule_context(instance=loop_state["instance"], scheduled_execution_time=rolled_back + timedelta(days=11), resources=resources) as context:
        tick = six_week_retrain_schedule.evaluate_tick(context)
    assert tick.run_requests == [] and "champion v1 serving since 2026-02-04, 11 days" in tick.skip_message


def _materialize_drift(task: Path, home: LoopHome) -> contract.DriftReportMetadata:
    defs = build_definitions(str(task), str(home.root))
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def("monitor_job").execute_in_process(instance=instance, raise_on_error=False)
    assert result.success
    return contract.DriftReportMetadata.from_dagster(result.asset_materializations_for_node("drift_report")[0].metadata)
