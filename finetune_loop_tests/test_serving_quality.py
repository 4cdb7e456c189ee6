"""serving_quality: feedback accuracy per ISO week against the gate line, with the registry's
promotions and rollbacks, in core (hand-written log, real SQLite registry) and as a Dagster asset."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import dagster as dg
import pytest
import yaml

from finetune_loop.core.common.clock import CLOCK_ENV_VAR
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data.production_log import append_log_file, read_task_log
from finetune_loop.core.monitor.serving_quality import (
    AT_OR_ABOVE_GATE,
    BELOW_GATE,
    plot_serving_quality,
    serving_quality,
    week_start,
)
from finetune_loop.core.ship.registry import PROMOTION, ROLLBACK, ChampionEvent, champion_events, promote, rollback
from finetune_loop.defs import metadata as contract
from finetune_loop.definitions import build_definitions
from finetune_loop_tests.conftest import register_versions, write_tiny_task

MODEL = "tiny_triage-adapter"
NOW = datetime(2026, 10, 28, 12, tzinfo=timezone.utc)
T0 = datetime(2026, 10, 1, 9, tzinfo=timezone.utc)


def _row(request_id, timestamp, prediction=None, feedback=None, source="agent", version="1"):
    row = {"request_id": request_id, "timestamp": timestamp, "text": f"ticket {request_id}", "model_version": version}
    if prediction is not None:
        row["prediction"] = prediction
    if feedback is not None:
        row["feedback"] = {"label": feedback, "source": source}
    return row


# Week of Mon 2026-10-05: four trusted labelled rows, three right (0.75); a wrong label from an
# untrusted source and trusted feedback on a request without a prediction are not counted.
# Week of 10-12: two trusted rows, both wrong, under min_signal_rows (3): not evaluated. Its first
# row is Sunday 23:30 at UTC-1, i.e. Monday 00:30 UTC. Week of 10-19: no traffic.
# Week of 10-26: three trusted rows, one right (0.333 < gate 0.5): below the gate.
LOG = [
    _row("a1", "2026-10-05T08:00:00+00:00", "billing", "billing"),
    _row("a2", "2026-10-06T08:00:00+00:00", "billing", "billing"),
    _row("a3", "2026-10-07T08:00:00+00:00", "login", "login"),
    _row("a4", "2026-10-08T08:00:00+00:00", "login", "shipping"),
    _row("a5", "2026-10-09T08:00:00+00:00", "billing", "shipping", source="customer"),
    _row("a6", "2026-10-09T09:00:00+00:00", None, "billing"),
    _row("a7", "2026-10-10T09:00:00+00:00", "billing", version="2"),
    _row("b1", "2026-10-11T23:30:00-01:00", "billing", "login", version="2"),
    _row("b2", "2026-10-13T08:00:00+00:00", "billing", "login", version="2"),
    _row("d1", "2026-10-26T08:00:00+00:00", "billing", "billing", version="2"),
    _row("d2", "2026-10-27T08:00:00+00:00", "billing", "login", version="2"),
    _row("d3", "2026-10-27T09:00:00+00:00", "billing", "shipping", version="2"),
]


def _task(tmp_path, rows):
    task = write_tiny_task(tmp_path / "task", tmp_path / "no-model", min_accuracy=0.5)
    config = yaml.safe_load(task.read_text())
    config["data"]["production_log"] = "production_log"
    config["drift"]["min_signal_rows"] = 3
    task.write_text(yaml.safe_dump(config))
    spec = load_task_spec(task)
    append_log_file(spec.production_log_path, "week-1.jsonl", rows)
    return task, spec


def test_weeks_count_only_trusted_feedback_on_predictions_and_few_rows_are_not_evaluated(tmp_path):
    _, spec = _task(tmp_path, LOG)
    promoted = ChampionEvent(PROMOTION, "2", datetime(2026, 10, 10, tzinfo=timezone.utc), "1")
    result = serving_quality(spec, read_task_log(spec, now=NOW), [promoted], NOW)

    weeks = {w.week_start: w for w in result.weeks}
    assert list(weeks) == [date(2026, 10, 5), date(2026, 10, 12), date(2026, 10, 19), date(2026, 10, 26)]
    first, second, quiet, last = result.weeks
    assert (first.requests, first.labelled, first.feedback_accuracy) == (7, 4, 0.75)
    assert first.served_by == {"1": 6, "2": 1}
    assert first.events == [promoted]
    assert (second.requests, second.labelled, second.feedback_accuracy) == (2, 2, 0.0)
    assert second.status(result.gate_line, result.min_rows) == "not evaluated (n=2 < 3)"
    assert (quiet.requests, quiet.labelled, quiet.feedback_accuracy, quiet.served_by) == (0, 0, None, {})
    assert last.feedback_accuracy == pytest.approx(1 / 3)
    assert [w.status(0.5, 3) for w in (first, last)] == [AT_OR_ABOVE_GATE, BELOW_GATE]
    # Too few rows is never counted as fine, nor as below the gate.
    assert result.weeks_below_gate == [last]
    assert result.latest_measured is last
    assert result.feedback_left_out == {"untrusted feedback source": 1}

    table = result.table_markdown()
    assert "| 2026-10-12 | 2 | 2 | 0.000 | not evaluated (n=2 < 3) | v2: 2 | — |" in table
    assert "promotion v2 (2026-10-10)" in table
    summary = result.summary_markdown()
    assert "below the gate 1 (2026-10-26)" in summary and "untrusted feedback source: 1" in summary


def test_weeks_run_through_the_week_of_now_and_naive_times_are_refused(tmp_path):
    _, spec = _task(tmp_path, LOG[:1])
    later = NOW + timedelta(days=14)
    result = serving_quality(spec, read_task_log(spec, now=later), [], later)
    assert result.weeks[0].week_start == date(2026, 10, 5) and result.weeks[-1].week_start == week_start(later)
    assert result.weeks_below_gate == [] and result.latest_measured.requests == 1
    with pytest.raises(ValueError, match="without a time zone"):
        week_start(datetime(2026, 10, 5))
    with pytest.raises(ValueError, match="registry promotion v2 is stamped 2026-10-05T00:00:00 without a time zone"):
        serving_quality(spec, read_task_log(spec, now=later), [ChampionEvent(PROMOTION, "2", datetime(2026, 10, 5), "1")], later)


@pytest.fixture
def home(tmp_path) -> LoopHome:
    return LoopHome(tmp_path / "home")


def _promote(tracker, home, version, evaluated_against, at):
    promote(tracker, home.task_dir("tiny_triage", "locks"), MODEL, version, evaluated_against=evaluated_against,
            holdout_primary=0.8, holdout_hash="holdout-1", now=at)


def _rollback(tracker, home, at):
    rollback(tracker, home.task_dir("tiny_triage", "locks"), MODEL, reason="test", user="oncall", now=at)


def test_registry_events_list_promotions_and_rollbacks_in_time_order(home):
    tracker = register_versions(home, 3)
    for day, (version, against) in enumerate([("1", None), ("2", "1"), ("3", "2")]):
        _promote(tracker, home, version, against, T0 + timedelta(days=day))
    _rollback(tracker, home, T0 + timedelta(days=5))
    # The second rollback overwrites v2's rolled_back_at: the first is still read from v3 and v2's restored_from.
    _rollback(tracker, home, T0 + timedelta(days=6))
    events = champion_events(tracker, MODEL)
    assert [(e.kind, e.version, e.from_version, (e.at - T0).days) for e in events] == [
        (PROMOTION, "1", None, 0), (PROMOTION, "2", "1", 1), (PROMOTION, "3", "2", 2),
        (ROLLBACK, "2", "3", 5), (ROLLBACK, "1", "2", 6),
    ]
    assert [e.label for e in events] == ["v1", "v2", "v3", "v3→v2", "v2→v1"]


def test_a_version_restored_twice_keeps_both_rollbacks(home):
    tracker = register_versions(home, 3)
    _promote(tracker, home, "1", None, T0)
    _promote(tracker, home, "2", "1", T0 + timedelta(days=1))
    _rollback(tracker, home, T0 + timedelta(days=2))
    _promote(tracker, home, "3", "1", T0 + timedelta(days=3))
    # v1's restored_from and champion_since now name only this rollback; v2's tags keep the first.
    _rollback(tracker, home, T0 + timedelta(days=4))
    rollbacks = [(e.version, e.from_version, (e.at - T0).days) for e in champion_events(tracker, MODEL) if e.kind == ROLLBACK]
    assert rollbacks == [("1", "2", 2), ("1", "3", 4)]


def test_no_versions_means_no_events(home):
    assert champion_events(register_versions(home, 0), MODEL) == []


def test_chart_is_a_png_with_markers(tmp_path):
    _, spec = _task(tmp_path, LOG)
    events = [
        ChampionEvent(PROMOTION, "1", datetime(2026, 10, 5, tzinfo=timezone.utc), None),
        ChampionEvent(PROMOTION, "2", datetime(2026, 10, 10, tzinfo=timezone.utc), "1"),
        ChampionEvent(ROLLBACK, "1", datetime(2026, 10, 24, tzinfo=timezone.utc), "2"),
    ]
    path = plot_serving_quality(serving_quality(spec, read_task_log(spec, now=NOW), events, NOW), tmp_path / "chart.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    # Before any traffic or promotion there is still a chart: the gate line and "no labelled feedback yet".
    empty = serving_quality(spec, read_task_log(spec, now=T0), [], T0)
    assert empty.weeks == [] and empty.latest_measured is None and "latest week with feedback: none" in empty.summary_markdown()
    assert plot_serving_quality(empty, tmp_path / "empty.png").read_bytes().startswith(b"\x89PNG")


def test_serving_quality_materializes_with_its_metadata_contract(tmp_path, monkeypatch):
    task, _ = _task(tmp_path, LOG)
    home = LoopHome(tmp_path / "home")
    tracker = register_versions(home, 2)
    _promote(tracker, home, "1", None, datetime(2026, 10, 1, tzinfo=timezone.utc))
    _promote(tracker, home, "2", "1", datetime(2026, 10, 10, tzinfo=timezone.utc))
    _rollback(tracker, home, datetime(2026, 10, 24, tzinfo=timezone.utc))
    monkeypatch.setenv(CLOCK_ENV_VAR, NOW.isoformat())
    defs = build_definitions(str(task), str(home.root))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("monitor_job").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("production_log"), dg.AssetKey("serving_quality")],
        )
    assert result.success
    meta = contract.ServingQualityMetadata.from_dagster(result.asset_materializations_for_node("serving_quality")[0].metadata)
    # The first week is the one of v1's promotion (Mon 2026-09-28), before any traffic.
    assert (meta.weeks, meta.weeks_below_gate, meta.gate_line, meta.promotions, meta.rollbacks) == (5, 1, 0.5, 2, 1)
    assert (meta.latest_week, meta.latest_feedback_accuracy) == ("2026-10-26", pytest.approx(1 / 3))
    assert meta.chart.startswith("![serving quality](data:image/png;base64,")
    assert "rollback v2→v1 (2026-10-24)" in meta.table
    assert meta.mlflow_run.endswith(meta.mlflow_run_id)
    history = tracker.client.get_metric_history(meta.mlflow_run_id, "feedback_accuracy")
    assert [m.step for m in history] == [1, 2, 4]
    assert [a.path for a in tracker.client.list_artifacts(meta.mlflow_run_id, "serving_quality")] == [
        f"serving_quality/{p}" for p in sorted([meta.chart_path.rsplit("/", 1)[-1], "weeks.md"])
    ]


def test_serving_quality_is_skipped_without_a_production_log(tmp_path):
    task = write_tiny_task(tmp_path / "task", tmp_path / "no-model")
    config = yaml.safe_load(task.read_text())
    del config["data"]["production_log"]
    task.write_text(yaml.safe_dump(config))
    defs = build_definitions(str(task), str(tmp_path / "home"))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("monitor_job").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("production_log"), dg.AssetKey("serving_quality")],
        )
    assert result.success and result.asset_materializations_for_node("serving_quality") == []
