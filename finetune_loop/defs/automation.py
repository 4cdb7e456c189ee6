"""Jobs, schedules and sensors: the loop retrains on cadence and on signal, and says why.

Every retrain request carries tags `finetune_loop/trigger` (cadence, drift, feedback_volume,
feedback_accuracy), `finetune_loop/evidence` (the numbers that tripped it), `finetune_loop/report`
(the Dagster run of the drift_report it acted on, where there is one) and `finetune_loop/task`.
No trigger requests a retrain while one is queued or running for the same task.
"""

import json
from datetime import datetime, timedelta, timezone

import dagster as dg

from finetune_loop.core.data.production_log import read_production_log
from finetune_loop.defs.assets import (
    TRAINING_RUN_TAGS,
    champion_model,
    curated_dataset,
    drift_report,
    eval_report,
    gguf_export,
    holdout_suite,
    lora_adapter,
    production_log,
    regression_suite,
)
from finetune_loop.defs.resources import LoopResource

TRIGGER_TAG = "finetune_loop/trigger"
EVIDENCE_TAG = "finetune_loop/evidence"
REPORT_TAG = "finetune_loop/report"
TASK_TAG = "finetune_loop/task"
# The run queue limits runs carrying this tag to one at a time (dagster.yaml), so a schedule tick
# and a sensor request never train concurrently.
RETRAIN_TAGS = {"finetune_loop/job": "retrain"}
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets(holdout_suite, regression_suite, curated_dataset, lora_adapter, eval_report, champion_model, gguf_export),
    tags={**RETRAIN_TAGS, **TRAINING_RUN_TAGS},
    description="Curate → train → evaluate (gate) → promote → export.",
)

monitor_job = dg.define_asset_job(
    "monitor_job",
    selection=dg.AssetSelection.assets(production_log.key, drift_report),
    description="Observe the production log, then report drift on its latest window.",
)

daily_drift_schedule = dg.ScheduleDefinition(
    name="daily_drift_schedule",
    job=monitor_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    description="A drift_report every morning; drift_retrain_sensor acts on it.",
)


def _retrain_request(task: str, run_key: str, trigger: str, evidence: str, report: str = "") -> dg.RunRequest:
    tags = {TASK_TAG: task, TRIGGER_TAG: trigger, EVIDENCE_TAG: evidence}
    if report:
        tags[REPORT_TAG] = report
    return dg.RunRequest(run_key=run_key, tags=tags)


def retrain_in_flight(instance: dg.DagsterInstance, task: str) -> str | None:
    """The id of a retrain run of `task` that is queued or running, if any."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=_IN_FLIGHT, tags={**RETRAIN_TAGS, TASK_TAG: task}), limit=1)
    return runs[0].run_id if runs else None


@dg.schedule(job=retrain_job, cron_schedule="0 3 * * 1", execution_timezone="UTC")
def six_week_retrain_schedule(context: dg.ScheduleEvaluationContext, loop: LoopResource):
    """Checks weekly; retrains when the champion is older than the task's cadence (42 days by
    default) or when there is no champion yet. Cron has no "every six weeks"."""
    spec = loop.spec()
    cadence = timedelta(days=spec.drift.cadence_days)
    now = context.scheduled_execution_time or datetime.now(timezone.utc)
    latest = context.instance.get_latest_materialization_event(champion_model.key)
    if latest is not None:
        promoted_at = datetime.fromtimestamp(latest.timestamp, tz=timezone.utc)
        age = now - promoted_at
        if age < cadence:
            return dg.SkipReason(f"champion promoted {age.days} days ago, cadence is {cadence.days} days")
        evidence = f"champion promoted {promoted_at:%Y-%m-%d}, {age.days} days ago (cadence {cadence.days} days)"
    else:
        evidence = "no champion yet"
    running = retrain_in_flight(context.instance, spec.name)
    if running:
        return dg.SkipReason(f"retrain run {running} of {spec.name} is queued or running")
    return _retrain_request(spec.name, f"cadence-{now:%Y-%m-%d}", "cadence", evidence)


def _drift_evidence(metadata) -> str:
    fired = metadata["signals_fired"].value if "signals_fired" in metadata else "input_drift"
    share = metadata["drift_share"].value if "drift_share" in metadata else float("nan")
    window = metadata["window"].value if "window" in metadata else "n/a"
    return f"signals fired: {fired}; input drift share {share:.2f}; window {window}"


@dg.sensor(job=retrain_job, minimum_interval_seconds=60)
def drift_retrain_sensor(context: dg.SensorEvaluationContext, loop: LoopResource):
    """One retrain per drifting `drift_report`, with hysteresis and a cooldown.

    * The run key names the run that materialized the report, so the same report seen twice (or
      after a cursor reset) never launches a second retrain.
    * Hysteresis: after a request, further drifting reports request nothing until a report comes
      back clean; a signal that stays up does not retrain on every report.
    * Cooldown: two drift retrains are at least `drift.cooldown_hours` apart, measured between the
      reports' timestamps, so a flapping signal (drift, clean, drift ...) retrains once per cooldown.
    * Guard: while a retrain of the task is queued or running, the report waits (the cursor stays).
    """
    spec = loop.spec()
    cooldown = timedelta(hours=spec.drift.cooldown_hours).total_seconds()
    state = json.loads(context.cursor) if context.cursor else {"after_storage_id": None, "armed": True, "last_request_at": None}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=drift_report.key, after_storage_id=state["after_storage_id"]), limit=100, ascending=True
    ).records
    requests, notes = [], []
    for record in records:
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        drifting = bool(metadata["drift_detected"].value) if "drift_detected" in metadata else False
        if drifting and state["armed"]:
            last = state["last_request_at"]
            if last is not None and record.timestamp - last < cooldown:
                notes.append(f"report of run {record.run_id} drifts, but within the {spec.drift.cooldown_hours:g} h cooldown")
            else:
                running = retrain_in_flight(context.instance, spec.name)
                if running:
                    notes.append(f"report of run {record.run_id} drifts; waiting for retrain run {running} of {spec.name} to finish")
                    break
                requests.append(_retrain_request(spec.name, f"drift-{record.run_id}", "drift", _drift_evidence(metadata), record.run_id))
                state.update(armed=False, last_request_at=record.timestamp)
        elif drifting:
            notes.append(f"report of run {record.run_id} still drifts; a retrain was already requested (re-arms on a clean report)")
        else:
            state["armed"] = True
            notes.append(f"report of run {record.run_id} shows no drift")
        state["after_storage_id"] = record.storage_id
    if not records:
        notes.append("no new drift_report")
    return dg.SensorResult(
        run_requests=requests, cursor=json.dumps(state), skip_reason=None if requests else "; ".join(notes)
    )


@dg.sensor(job=retrain_job, minimum_interval_seconds=300)
def feedback_retrain_sensor(context: dg.SensorEvaluationContext, loop: LoopResource):
    """Retrains when enough new labelled feedback has arrived (`feedback.min_new_labels`), or when
    accuracy over the last `feedback.rolling_window` labelled requests is below `gate.min_accuracy`
    (then at most once per `drift.cooldown_hours` of feedback time). The next curated_dataset takes
    the labelled feedback in through the same validation and quarantine as any data."""
    spec = loop.spec()
    if spec.production_log_path is None:
        return dg.SkipReason(f"task {spec.name} names no data.production_log")
    labelled = sorted(read_production_log(spec.production_log_path, spec.fields.input, spec.labels).labelled(), key=lambda r: r.timestamp)
    if not labelled:
        return dg.SkipReason("no labelled feedback in the production log")
    consumed = datetime.fromisoformat(context.cursor) if context.cursor else None
    new = [r for r in labelled if consumed is None or r.timestamp > consumed]
    newest = labelled[-1].timestamp
    rolling = [r for r in labelled[-spec.feedback.rolling_window :] if r.prediction is not None]
    accuracy = sum(r.prediction == r.feedback_label for r in rolling) / len(rolling) if rolling else None

    trigger = None
    if len(new) >= spec.feedback.min_new_labels:
        trigger = ("feedback_volume", f"{len(new)} new labelled requests (min_new_labels {spec.feedback.min_new_labels}), newest {newest.isoformat()}")
    elif (
        accuracy is not None
        and len(rolling) >= spec.feedback.rolling_window
        and accuracy < spec.gate.min_accuracy
        and (consumed is None or newest - consumed >= timedelta(hours=spec.drift.cooldown_hours))
    ):
        trigger = ("feedback_accuracy", f"accuracy {accuracy:.3f} on the last {len(rolling)} labelled requests < gate {spec.gate.min_accuracy:.3f}")
    if trigger is None:
        accuracy_text = f"{accuracy:.3f} on {len(rolling)}" if accuracy is not None else "n/a"
        return dg.SkipReason(f"{len(new)} new labelled requests (need {spec.feedback.min_new_labels}); rolling accuracy {accuracy_text}")
    running = retrain_in_flight(context.instance, spec.name)
    if running:
        return dg.SkipReason(f"{trigger[0]}: waiting for retrain run {running} of {spec.name} to finish")
    request = _retrain_request(spec.name, f"feedback-{newest.isoformat()}", trigger[0], trigger[1])
    return dg.SensorResult(run_requests=[request], cursor=newest.isoformat())
