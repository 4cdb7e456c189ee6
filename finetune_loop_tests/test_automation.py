"""Retrain triggers evaluated for real by Dagster (build_sensor_context / build_schedule_context) on a
test instance whose drift reports, champion and runs carry frozen timestamps."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry

from finetune_loop.core.data.production_log import append_log_file
from finetune_loop.definitions import build_definitions
from finetune_loop.defs.metadata import DriftReportMetadata, MetadataContractError
from finetune_loop.defs.monitor import drift_retrain_sensor, feedback_retrain_sensor, six_week_retrain_schedule
from finetune_loop.defs.resources import TASK_TAG
from finetune_loop_tests.conftest import use_loop_home, write_tiny_task

T0 = datetime(2026, 11, 2, 6, tzinfo=timezone.utc)


@pytest.fixture
def task(tmp_path) -> Path:
    # The triggers read the task, never the model: the base model path is never opened here.
    path = write_tiny_task(tmp_path / "task", tmp_path / "no-model")
    text = path.read_text().replace("production.jsonl", "production_log")
    path.write_text(text + "feedback: {min_new_labels: 5, rolling_window: 4}\n")
    return path


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def _store_materialization(instance, key: str, run_id: str, when: datetime, metadata: dict) -> None:
    event = DagsterEvent(
        DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name="monitor_job",
        event_specific_data=StepMaterializationData(dg.AssetMaterialization(asset_key=key, metadata=metadata)),
    )
    instance.store_event(EventLogEntry(error_info=None, level="INFO", user_message="", run_id=run_id, timestamp=when.timestamp(), dagster_event=event))


def _report(instance, run_id: str, when: datetime, drifting: bool) -> None:
    report = DriftReportMetadata(
        drift_detected=drifting, signals_fired="input_drift" if drifting else "none", signals="", drift_share=0.75 if drifting else 0.0,
        drift_share_threshold=0.5, feedback_accuracy=None, champion_version=None, champion_eval_accuracy=None, feedback_rows=0,
        report_path="/dev/null", reference_rows=10, current_rows=10, quarantined_rows=0, quarantine_path="/dev/null",
        window="2026-10-26 .. 2026-11-02", window_end="2026-11-02", reported_at=when.isoformat(), columns={}, mlflow_run_id="r", mlflow_run="http://mlflow/r",
    )
    _store_materialization(instance, "drift_report", run_id, when, report.to_dagster())


def _sensor_tick(sensor, instance, task, cursor=None):
    defs = build_definitions(str(task), str(task.parent / "home"))
    # Entered as a context manager so the context releases the instance it holds when the tick ends.
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources) as context:
        return sensor.evaluate_tick(context)


def _start_retrain(instance, task_name: str) -> str:
    run = instance.create_run_for_job(
        build_definitions().resolve_job_def("retrain_job"), status=dg.DagsterRunStatus.STARTED,
        tags={"finetune_loop/job": "retrain", TASK_TAG: task_name},
    )
    return run.run_id


def test_one_drifting_report_requests_one_retrain_and_the_same_report_twice_still_one(instance, task):
    _report(instance, "report-1", T0, drifting=True)
    first = _sensor_tick(drift_retrain_sensor, instance, task)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.run_key == "drift-report-1"
    assert request.tags["finetune_loop/trigger"] == "drift"
    assert request.tags["finetune_loop/report"] == "report-1"
    assert request.tags["finetune_loop/task"] == "tiny_triage"
    assert "signals fired: input_drift" in request.tags["finetune_loop/evidence"]
    again = _sensor_tick(drift_retrain_sensor, instance, task, cursor=first.cursor)
    assert again.run_requests == [] and "no new drift_report" in again.skip_message
    # A lost cursor sees the same report again; its run key is the same, so Dagster launches nothing new.
    reset = _sensor_tick(drift_retrain_sensor, instance, task)
    assert [r.run_key for r in reset.run_requests] == ["drift-report-1"]


def test_hysteresis_and_cooldown_stop_a_flapping_signal(instance, task):
    # drift -> drift (still up: hysteresis) -> clean (re-arms) -> drift within 24 h (cooldown) -> drift after 24 h
    _report(instance, "r1", T0, drifting=True)
    first = _sensor_tick(drift_retrain_sensor, instance, task)
    _report(instance, "r2", T0 + timedelta(hours=2), drifting=True)
    held = _sensor_tick(drift_retrain_sensor, instance, task, first.cursor)
    assert held.run_requests == [] and "re-arms on a clean report" in held.skip_message
    _report(instance, "r3", T0 + timedelta(hours=4), drifting=False)
    _report(instance, "r4", T0 + timedelta(hours=6), drifting=True)
    cooled = _sensor_tick(drift_retrain_sensor, instance, task, held.cursor)
    assert cooled.run_requests == [] and "cooldown" in cooled.skip_message
    assert json.loads(cooled.cursor)["armed"] is True
    _report(instance, "r5", T0 + timedelta(hours=25), drifting=True)
    later = _sensor_tick(drift_retrain_sensor, instance, task, cooled.cursor)
    assert [r.run_key for r in later.run_requests] == ["drift-r5"]


def test_no_retrain_while_one_is_running_for_the_task(instance, task):
    _report(instance, "r1", T0, drifting=True)
    running = _start_retrain(instance, "tiny_triage")
    waiting = _sensor_tick(drift_retrain_sensor, instance, task)
    assert waiting.run_requests == [] and running in waiting.skip_message
    # The report is not consumed: once the run has finished, the next tick requests the retrain.
    instance.report_run_canceled(instance.get_run_by_id(running))
    after = _sensor_tick(drift_retrain_sensor, instance, task, waiting.cursor)
    assert [r.run_key for r in after.run_requests] == ["drift-r1"]
    # A retrain running for another task does not block this one.
    _start_retrain(instance, "other_task")
    assert len(_sensor_tick(drift_retrain_sensor, instance, task, waiting.cursor).run_requests) == 1


def _feedback_rows(start: datetime, count: int, *, correct: bool, prefix: str) -> list[dict]:
    return [
        {"request_id": f"{prefix}-{i}", "timestamp": (start + timedelta(minutes=i)).isoformat(), "text": "where is my parcel",
         "model_version": "1", "prediction": "shipping" if correct else "billing", "latency_ms": 30,
         "feedback": {"label": "shipping", "source": "agent"}}
        for i in range(count)
    ]


def test_feedback_sensor_on_volume_then_on_low_accuracy(instance, task):
    log = task.parent / "production_log"
    append_log_file(log, "week-1.jsonl", _feedback_rows(T0, 3, correct=True, prefix="a"))
    few = _sensor_tick(feedback_retrain_sensor, instance, task)
    assert few.run_requests == [] and "3 new labelled requests (need 5)" in few.skip_message
    append_log_file(log, "week-2.jsonl", _feedback_rows(T0 + timedelta(days=1), 2, correct=True, prefix="b"))
    volume = _sensor_tick(feedback_retrain_sensor, instance, task)
    assert len(volume.run_requests) == 1
    assert volume.run_requests[0].tags["finetune_loop/trigger"] == "feedback_volume"
    assert "5 new labelled requests" in volume.run_requests[0].tags["finetune_loop/evidence"]
    assert _sensor_tick(feedback_retrain_sensor, instance, task, volume.cursor).run_requests == []
    # Four wrong answers fill the rolling window (4) with accuracy 0, below a 0.7 gate.
    task.write_text(task.read_text().replace("min_accuracy: 0.0", "min_accuracy: 0.7"))
    append_log_file(log, "week-3.jsonl", _feedback_rows(T0 + timedelta(days=2), 4, correct=False, prefix="c"))
    low = _sensor_tick(feedback_retrain_sensor, instance, task, volume.cursor)
    assert [r.tags["finetune_loop/trigger"] for r in low.run_requests] == ["feedback_accuracy"]
    assert "accuracy 0.000 on the last 4 labelled requests < gate 0.700" in low.run_requests[0].tags["finetune_loop/evidence"]


def test_a_feedback_cursor_in_the_future_is_moved_back_not_kept(instance, task):
    # A cursor of 2099 (left by a future-dated request before such rows were quarantined) would hide
    # every new label for 73 years. It is reset to the newest accepted label: no retrain on the old
    # feedback, and the next labels count again.
    log = task.parent / "production_log"
    append_log_file(log, "week-1.jsonl", _feedback_rows(T0, 3, correct=True, prefix="a"))
    repaired = _sensor_tick(feedback_retrain_sensor, instance, task, cursor="2099-01-01T00:00:00+00:00")
    assert repaired.run_requests == []
    assert "feedback cursor 2099-01-01T00:00:00+00:00 was beyond now + " in repaired.skip_message
    newest = T0 + timedelta(minutes=2)
    assert repaired.cursor == newest.isoformat()
    append_log_file(log, "week-2.jsonl", _feedback_rows(T0 + timedelta(days=1), 5, correct=True, prefix="b"))
    resumed = _sensor_tick(feedback_retrain_sensor, instance, task, repaired.cursor)
    assert [r.tags["finetune_loop/trigger"] for r in resumed.run_requests] == ["feedback_volume"]
    assert "5 new labelled requests" in resumed.run_requests[0].tags["finetune_loop/evidence"]


def test_cadence_schedule_skips_while_a_retrain_is_running(instance, task):
    running = _start_retrain(instance, "tiny_triage")
    resources = build_definitions(str(task), str(task.parent / "home")).resources
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=T0, resources=resources) as context:
        result = six_week_retrain_schedule.evaluate_tick(context)
    assert result.run_requests == [] and running in result.skip_message


def test_a_drift_report_without_its_contract_keys_stops_the_sensor_loudly(instance, task):
    # A renamed key must break every reader, not make the sensor read "no drift" forever.
    _store_materialization(instance, "drift_report", "run-old", T0, {"drifting": True, "drift_share": 0.9})
    with pytest.raises(MetadataContractError, match=r"drift_report metadata lacks \[.*'drift_detected'") as raised:
        _sensor_tick(drift_retrain_sensor, instance, task)
    assert "present: ['drift_share', 'drifting']" in str(raised.value)


def test_feedback_a_retrain_already_saw_does_not_start_another(instance, task):
    # A drift retrain trained on (or was judged on) these labels; the feedback sensor, whose own
    # cursor never moved, must not start a second retrain on the same labels.
    from finetune_loop.core.common.home import LoopHome
    from finetune_loop.core.data.recent import FEEDBACK_SEEN_TAG
    from finetune_loop_tests.conftest import register_versions

    log = task.parent / "production_log"
    append_log_file(log, "week-1.jsonl", _feedback_rows(T0, 6, correct=True, prefix="a"))
    tracker = register_versions(LoopHome(task.parent / "home"), 1)
    tracker.tag_version("tiny_triage-adapter", "1", {FEEDBACK_SEEN_TAG: (T0 + timedelta(minutes=5)).isoformat()})
    seen = _sensor_tick(feedback_retrain_sensor, instance, task)
    assert seen.run_requests == [] and "0 new labelled requests (need 5)" in seen.skip_message
    append_log_file(log, "week-2.jsonl", _feedback_rows(T0 + timedelta(days=1), 5, correct=True, prefix="b"))
    fresh = _sensor_tick(feedback_retrain_sensor, instance, task)
    assert [r.tags["finetune_loop/trigger"] for r in fresh.run_requests] == ["feedback_volume"]
    assert fresh.run_requests[0].tags["finetune_loop/retrain_of"] == "tiny_triage"  # the run queue admits one per task
    assert "5 new labelled requests" in fresh.run_requests[0].tags["finetune_loop/evidence"]


def test_the_loop_clock_is_the_simulated_time_when_set_and_refuses_a_bad_value(monkeypatch):
    from finetune_loop.core.common.clock import CLOCK_ENV_VAR, ClockError, utc_now

    monkeypatch.setenv(CLOCK_ENV_VAR, "2026-03-02T07:00:00+01:00")
    assert utc_now() == datetime(2026, 3, 2, 6, tzinfo=timezone.utc) and utc_now().tzinfo == timezone.utc
    for bad, said in (("next monday", "is not an ISO 8601 time"), ("2026-03-02T06:00:00", "carries no time zone")):
        monkeypatch.setenv(CLOCK_ENV_VAR, bad)
        with pytest.raises(ClockError, match=said):
            utc_now()
    monkeypatch.delenv(CLOCK_ENV_VAR)
    assert abs((utc_now() - datetime.now(timezone.utc)).total_seconds()) < 5


def test_the_cadence_counts_on_the_simulated_clock(instance, task, monkeypatch):
    # A promotion stamped on the simulated clock (T0) and ticks 41 and 42 days later: due at 42.
    from finetune_loop.core.common.clock import CLOCK_ENV_VAR
    from finetune_loop.core.common.home import LoopHome
    from finetune_loop.core.ship import registry
    from finetune_loop_tests.conftest import register_versions

    home = LoopHome(task.parent / "home")
    tracker = register_versions(home, 1)
    monkeypatch.setenv(CLOCK_ENV_VAR, T0.isoformat())
    registry.promote(tracker, home.root / "locks", "tiny_triage-adapter", "1", holdout_primary=0.9, holdout_hash="h", evaluated_against=None)
    assert tracker.version_tags("tiny_triage-adapter", "1")[registry.CHAMPION_SINCE_TAG] == T0.isoformat(timespec="seconds")
    resources = build_definitions(str(task), str(home.root)).resources
    for days, due in ((41, False), (42, True)):
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=T0 + timedelta(days=days), resources=resources) as context:
            tick = six_week_retrain_schedule.evaluate_tick(context)
        assert bool(tick.run_requests) is due, tick.skip_message
    # That retrain ran and the gate refused it (v1 still serves): the next tick, a week later, waits.
    instance.create_run_for_job(
        build_definitions().resolve_job_def("retrain_job"), status=dg.DagsterRunStatus.SUCCESS, tags=tick.run_requests[0].tags | {"finetune_loop/job": "retrain"},
    )
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=T0 + timedelta(days=49), resources=resources) as context:
        later = six_week_retrain_schedule.evaluate_tick(context)
    assert later.run_requests == [] and "did not replace it: next one 42 days after that" in later.skip_message


def test_a_cadence_retrain_that_did_not_replace_the_champion_waits_a_cadence_before_the_next():
    from finetune_loop.core.monitor.triggers import cadence_decision
    from finetune_loop.core.ship.registry import ChampionRecord

    champion = ChampionRecord("tiny_triage-adapter", "1", T0, 0.9, "h")
    tried = T0 + timedelta(days=42)
    assert cadence_decision(champion, tried, 42).retrain
    # Refused a week ago: not retried at every weekly tick.
    waiting = cadence_decision(champion, tried + timedelta(days=7), 42, last_attempt=tried)
    assert not waiting.retrain and "a cadence retrain was requested 2026-12-14 and did not replace it" in waiting.evidence
    assert cadence_decision(champion, tried + timedelta(days=42), 42, last_attempt=tried).retrain
    # An attempt from before the current champion was promoted does not count.
    assert cadence_decision(ChampionRecord("tiny_triage-adapter", "2", tried + timedelta(days=1), 0.9, "h"), tried + timedelta(days=43), 42, last_attempt=tried).retrain


def _refund_rows(start: datetime, count: int, *, source: str = "agent", prefix: str = "refund") -> list[dict]:
    return [
        {"request_id": f"{prefix}-{start:%m%d}-{i}", "timestamp": (start + timedelta(minutes=i)).isoformat(), "text": "money back please",
         "model_version": "1", "prediction": "billing", "latency_ms": 30, "feedback": {"label": "refund", "source": source}}
        for i in range(count)
    ]


def _admit_refund(task: Path) -> None:
    import yaml

    config = yaml.safe_load(task.read_text())
    config["labels"] = [*config["labels"], "refund"]
    task.write_text(yaml.safe_dump(config, sort_keys=False))


def test_labels_admitted_waits_for_trainable_feedback_then_retrains_once(task):
    from finetune_loop.core.common.spec import load_task_spec
    from finetune_loop.core.data.production_log import read_task_log
    from finetune_loop.core.monitor.triggers import LABELS_ADMITTED, labels_admitted_decision

    _admit_refund(task)
    log = task.parent / "production_log"
    # Two trusted refunds three weeks ago, two from an untrusted source, four in the last week (the
    # oldest half of those trains: recent_suite.admitted_label_train_share).
    append_log_file(log, "a.jsonl", _refund_rows(T0 - timedelta(days=21), 2) + _refund_rows(T0 - timedelta(days=20), 2, source="crowd_vote"))
    append_log_file(log, "b.jsonl", _refund_rows(T0, 4) + _feedback_rows(T0, 3, correct=True, prefix="s"))
    spec = load_task_spec(task)
    trained = [["billing", "shipping", "login"]]

    def decide():
        labelled = read_task_log(spec, now=T0 + timedelta(days=1)).labelled()
        return labels_admitted_decision(spec, trained, labelled)

    assert labels_admitted_decision(spec, [], []).retrain is False  # versions without the tag: nothing to compare
    waiting = decide()
    assert waiting.retrain is False and "refund 4" in waiting.evidence
    assert "older than the recent window of 7 days, or the oldest 50% of the label's rows in it" in waiting.evidence
    append_log_file(log, "c.jsonl", _refund_rows(T0 - timedelta(days=14), 1))
    ready = decide()
    assert (ready.retrain, ready.trigger) == (True, LABELS_ADMITTED) and "refund 5" in ready.evidence
    # Once a version trained on it, promoted or refused, the label asks nothing more.
    trained.append(["billing", "shipping", "login", "refund"])
    assert decide().retrain is False


def test_feedback_sensor_retrains_on_an_admitted_label(instance, task, monkeypatch):
    from finetune_loop.core.common.clock import CLOCK_ENV_VAR
    from finetune_loop.core.common.home import LoopHome
    from finetune_loop.core.ship.registry import TRAINED_LABELS_TAG
    from finetune_loop_tests.conftest import register_versions

    monkeypatch.setenv(CLOCK_ENV_VAR, (T0 + timedelta(days=1)).isoformat())
    tracker = register_versions(LoopHome(task.parent / "home"), 1)
    from finetune_loop.core.data.recent import FEEDBACK_SEEN_TAG

    # The champion's retrain saw every label so far: no volume to count, only the admission.
    tracker.tag_version("tiny_triage-adapter", "1", {
        TRAINED_LABELS_TAG: json.dumps(["billing", "shipping", "login"]), FEEDBACK_SEEN_TAG: (T0 + timedelta(hours=1)).isoformat(),
    })
    append_log_file(task.parent / "production_log", "a.jsonl", _refund_rows(T0 - timedelta(days=14), 5) + _feedback_rows(T0, 1, correct=True, prefix="s"))
    before = _sensor_tick(feedback_retrain_sensor, instance, task)
    # Not yet admitted: refund feedback is quarantined as an unknown label, and no label awaits training.
    assert before.run_requests == [] and "every task label was trained on" in before.skip_message
    _admit_refund(task)
    after = _sensor_tick(feedback_retrain_sensor, instance, task)
    [request] = after.run_requests
    assert request.tags["finetune_loop/trigger"] == "labels_admitted" and "refund 5" in request.tags["finetune_loop/evidence"]



def test_the_accuracy_rule_judges_the_serving_champion_on_its_own_answers(task):
    # v1 answered four requests wrong, then v2 (promoted after them) answered two right: the window
    # of 4 holds only v2's answers, too few to judge v2, so no retrain on v1's mistakes.
    from finetune_loop.core.common.spec import load_task_spec
    from finetune_loop.core.data.production_log import read_task_log
    from finetune_loop.core.monitor.triggers import FEEDBACK_ACCURACY, feedback_decision

    task.write_text(task.read_text().replace("min_accuracy: 0.0", "min_accuracy: 0.7"))
    log = task.parent / "production_log"
    append_log_file(log, "v1.jsonl", _feedback_rows(T0, 4, correct=False, prefix="a"))
    v2 = [{**row, "model_version": "2"} for row in _feedback_rows(T0 + timedelta(days=2), 2, correct=True, prefix="b")]
    append_log_file(log, "v2.jsonl", v2)
    spec = load_task_spec(task)
    labelled = read_task_log(spec, now=T0 + timedelta(days=3)).labelled()
    # Three labels are new (min_new_labels 5: no volume retrain); the last is a day past the cursor.
    consumed = T0 + timedelta(minutes=2)
    # Without a champion every answer counts (2 wrong of v1, 2 right of v2): 0.5 asks for a retrain.
    unattributed = feedback_decision(spec, labelled, consumed)
    assert unattributed.retrain and "accuracy 0.500 on the last 4 labelled requests < gate 0.700" in unattributed.evidence
    judged_v2 = feedback_decision(spec, labelled, consumed, champion_version="2")
    assert not judged_v2.retrain and "rolling accuracy 1.000 on 2" in judged_v2.evidence
    # v1 still serving: its own four wrong answers fill the window and ask for a retrain.
    judged_v1 = feedback_decision(spec, labelled, consumed, champion_version="1")
    assert (judged_v1.retrain, judged_v1.trigger) == (True, FEEDBACK_ACCURACY)
    assert "accuracy 0.000 on the last 4 labelled requests champion v1 answered < gate 0.700" in judged_v1.evidence


def test_a_schedule_ticked_daily_is_evaluated_once_per_cron_tick(instance, task, monkeypatch):
    # The six-week schedule's cron is Mondays 03:00: a loop ticked every day evaluates it on the
    # Monday tick only, at the cron tick's time; the cursor says which tick it last saw.
    from finetune_loop.cli import SCHEDULE_TICK_SUFFIX, Session, run_trigger
    from finetune_loop.core.common.clock import CLOCK_ENV_VAR

    monday = datetime(2026, 11, 2, 3, tzinfo=timezone.utc)
    use_loop_home(monkeypatch, task.parent / "home")
    session = Session.open(task, None)
    defs = session.definitions()
    cursors: dict[str, str] = {}
    running = _start_retrain(instance, "tiny_triage")  # the schedule then skips instead of training
    reasons = []
    for day in range(9):
        monkeypatch.setenv(CLOCK_ENV_VAR, (monday + timedelta(days=day, hours=1)).isoformat())
        ran, reason = run_trigger(session, defs, instance, six_week_retrain_schedule, cursors, lambda *a, **k: None)
        assert ran == []
        reasons.append(reason)
    evaluated = [day for day, reason in enumerate(reasons) if running in reason]
    assert evaluated == [0, 7]
    assert all("already" in reasons[day] for day in range(9) if day not in evaluated)
    assert cursors[f"{six_week_retrain_schedule.name}{SCHEDULE_TICK_SUFFIX}"] == (monday + timedelta(days=7)).isoformat()
