"""The monitoring loop end to end on a tiny random llama: first champion -> simulated drifting
traffic answered by that champion -> drift_report -> drift_retrain_sensor -> a retrain_job run,
tagged with why, that curates the feedback in, shadows the champion and gates a new candidate."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from mlflow import MlflowClient

from finetune_loop.cli import EXIT_OK, main
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.data.production_log import append_log_file, read_production_log
from finetune_loop_tests.conftest import tiny_rows, use_loop_home, write_tiny_task
from finetune_loop_tests.test_traffic_pool import add_traffic_pool, traffic_pool_rows

NEW_KIND = [
    {"id": f"gdpr-{i}", "text": f"please erase every record of my account under gdpr article 17, case {i}", "label": "login"}
    for i in range(20)
]


@pytest.fixture(scope="module")
def loop(tmp_path_factory, tiny_base_model):
    root = tmp_path_factory.mktemp("monitoring")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        use_loop_home(patch, home)
        task = write_tiny_task(root / "task", tiny_base_model)
        task.write_text(task.read_text().replace("production.jsonl", "production_log"))
        add_traffic_pool(task)
        # Week 0: traffic like the training data, logged before any model served it.
        week0 = [{"request_id": f"w0-{i}", "timestamp": f"2026-10-0{1 + i % 7}T09:00:00+00:00", "text": r["text"]}
                 for i, r in enumerate(tiny_rows(count_per_label=10, seed=5))]
        append_log_file(root / "task" / "production_log", "week-00.jsonl", week0)
        (root / "new_kind.jsonl").write_text("".join(json.dumps(r) + "\n" for r in NEW_KIND))
        first = main(["run", "--task", str(task)])
        simulated = main(["simulate-traffic", "--task", str(task), "--rows", "60", "--shift", "new_kind", "--strength", "0.9",
                          "--new-kind-file", str(root / "new_kind.jsonl"), "--feedback-share", "0.5", "--seed", "3"])
        monitored = main(["monitor", "--task", str(task)])
        monitored_again = main(["monitor", "--task", str(task)])
        with dg.instance_for_test(temp_dir=str(home / "dagster_home")) as instance:
            yield {"instance": instance, "home": LoopHome(home), "task": task,
                   "exits": (first, simulated, monitored, monitored_again)}


def test_simulated_week_is_answered_by_the_champion(loop):
    assert loop["exits"][:2] == (EXIT_OK, EXIT_OK)
    log = read_production_log(loop["task"].parent / "production_log", labels=("billing", "shipping", "login"))
    week = [r for r in log.records if r.model_version is not None]
    assert len(week) == 60 and log.quarantine == []
    assert {r.model_version for r in week} == {"1"} and all(r.prediction in {"billing", "shipping", "login"} for r in week)
    assert all(r.latency_ms > 0 for r in week)
    assert 0 < sum(r.feedback_label is not None for r in week) < 60
    assert week[0].timestamp > max(r.timestamp for r in log.records if r.model_version is None)
    # Every request is a traffic-pool row or a new-kind one, never a labelled example the model trained on.
    drawn_from = {r["text"] for r in traffic_pool_rows()} | {r["text"] for r in NEW_KIND}
    assert {r.text for r in week} <= drawn_from and not {r.text for r in week} & {r["text"] for r in tiny_rows()}


def test_drift_triggers_one_tagged_retrain_that_gates_a_new_candidate(loop):
    instance = loop["instance"]
    assert loop["exits"][2:] == (EXIT_OK, EXIT_OK)
    retrains = instance.get_runs(filters=dg.RunsFilter(job_name="retrain_job"))
    # Two monitor passes over the same drifting traffic: hysteresis holds the second one back.
    assert len(retrains) == 1
    run = retrains[0]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["finetune_loop/trigger"] == "drift"
    assert "input_drift" in run.tags["finetune_loop/evidence"]
    report = instance.fetch_materializations(dg.AssetKey("drift_report"), limit=10, ascending=True).records
    drifting_report = next(r for r in report if r.run_id == run.tags["finetune_loop/report"])
    assert drifting_report.asset_materialization.metadata["drift_detected"].value is True

    eval_event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    assert eval_event.run_id == run.run_id and eval_event.asset_materialization.metadata["gate_passed"].value is True
    curated = instance.get_latest_materialization_event(dg.AssetKey("curated_dataset")).asset_materialization.metadata
    # The week's labelled feedback is the newest there is: the recent suite judges it, so none of it
    # trains this retrain; with fewer rows than gate.min_recent_rows the holdout rule alone decides.
    recent = instance.get_latest_materialization_event(dg.AssetKey("recent_suite")).asset_materialization.metadata
    # Every labelled request of the window is in the suite or counted out of it (repeats drawn twice).
    assert recent["size"].value > 0 and recent["size"].value + sum(recent["excluded"].value.values()) == recent["window_rows"].value
    assert curated["feedback_rows_in"].value == 0
    gate_lines = eval_event.asset_materialization.metadata["gate_lines"].value
    assert f"**follows_recent_traffic** SKIP not evaluated: n={recent['size'].value} < min 100" in gate_lines
    checks = {
        key.name: instance.event_log_storage.get_asset_check_execution_history(key, limit=1)[0]
        for key in (dg.AssetCheckKey(dg.AssetKey("eval_report"), "shadow_agreement"), dg.AssetCheckKey(dg.AssetKey("eval_report"), "release_gate"))
    }
    assert checks["shadow_agreement"].run_id == run.run_id
    shadow = checks["shadow_agreement"].event.dagster_event.event_specific_data.metadata
    assert shadow["shadow_rows"].value == 60 and shadow["champion_version"].value == "1"
    home = loop["home"]
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias("tiny_triage-adapter", "champion").version) == "2"
    eval_run = client.get_run(eval_event.asset_materialization.metadata["mlflow_run_id"].value)
    assert 0.0 <= eval_run.data.metrics["shadow_disagreement"] <= 1.0


def test_a_retrain_the_gate_refuses_exits_2_and_leaves_the_champion_serving(tmp_path, tiny_base_model, monkeypatch, capsys):
    from finetune_loop.cli import EXIT_GATE_REFUSED

    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    task.write_text(task.read_text().replace("production.jsonl", "production_log"))
    add_traffic_pool(task)
    week0 = [{"request_id": f"w0-{i}", "timestamp": "2026-10-01T09:00:00+00:00", "text": r["text"]} for i, r in enumerate(tiny_rows(10, seed=5))]
    append_log_file(tmp_path / "task" / "production_log", "week-00.jsonl", week0)
    (tmp_path / "new_kind.jsonl").write_text("".join(json.dumps(r) + "\n" for r in NEW_KIND))
    assert main(["run", "--task", str(task)]) == EXIT_OK
    assert main(["simulate-traffic", "--task", str(task), "--rows", "60", "--shift", "new_kind", "--strength", "0.9",
                 "--new-kind-file", str(tmp_path / "new_kind.jsonl"), "--seed", "3"]) == EXIT_OK
    # A bar no tiny random model reaches: the drift-triggered retrain must be refused.
    task.write_text(task.read_text().replace("min_accuracy: 0.0", "min_accuracy: 1.0"))
    capsys.readouterr()

    assert main(["monitor", "--task", str(task)]) == EXIT_GATE_REFUSED
    out = capsys.readouterr().out
    assert "release_gate refused the candidate: FAILED" in out and "min_accuracy" in out
    home_state = LoopHome(home)
    client = MlflowClient(home_state.mlflow_tracking_uri, registry_uri=home_state.mlflow_tracking_uri)
    assert str(client.get_model_version_by_alias("tiny_triage-adapter", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tiny_triage-adapter", "challenger").version) == "2"
