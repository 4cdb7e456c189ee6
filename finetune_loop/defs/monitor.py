"""Group `monitor`: `drift_report` and `serving_quality` (feedback accuracy per week against the gate
line, a marker per promotion and rollback) on the production log, and the automation that closes the loop —
`retrain_job`, `monitor_job`, `six_week_retrain_schedule`, `daily_drift_schedule`,
`drift_retrain_sensor` and `feedback_retrain_sensor`. Core: `finetune_loop.core.monitor` (the
decisions themselves live in `core/monitor/triggers.py`; the sensors gather inputs and guard).

Every retrain request carries tags `finetune_loop/trigger` (cadence, drift, feedback_volume,
feedback_accuracy), `finetune_loop/evidence` (the numbers that tripped it), `finetune_loop/report`
(the Dagster run of the drift_report it acted on, where there is one), `finetune_loop/task` and
`finetune_loop/spec_sha256` (the task file it was decided on). No trigger requests a retrain while
one is queued or running for the same task. Who the champion is, since when, and what it scored
comes from the registry (`core/ship/registry.champion_record`), never from a materialization.
"""


import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg

from finetune_loop.core.common.clock import utc_now
from finetune_loop.core.common.files import inline_png_markdown, write_jsonl
from finetune_loop.core.common.tracker import CHAMPION_ALIAS, Tracker
from finetune_loop.core.data.curation import CuratedDataset
from finetune_loop.core.data.erasure import ErasureLedger
from finetune_loop.core.data.production_log import read_task_log
from finetune_loop.core.data.readers import read_examples
from finetune_loop.core.data.recent import FEEDBACK_SEEN_TAG
from finetune_loop.core.monitor import drift, portfolio, triggers
from finetune_loop.core.monitor import serving_quality as quality
from finetune_loop.core.ship.registry import (
    champion_events,
    champion_record,
    trained_label_sets,
)
from finetune_loop.defs.common import mlflow_link, run_tags
from finetune_loop.defs.data import (
    curated_dataset,
    holdout_suite,
    production_log,
    recent_suite,
    regression_suite,
)
from finetune_loop.defs.evaluate import eval_report
from finetune_loop.defs.metadata import DriftReportMetadata, ServingQualityMetadata
from finetune_loop.defs.resources import (
    SPEC_HASH_TAG,
    TASK_TAG,
    TRIGGER_TAG,
    LoopResource,
)
from finetune_loop.defs.ship import champion_model, gguf_export
from finetune_loop.defs.train import base_model, lora_adapter

GROUP = "monitor"
EVIDENCE_TAG = "finetune_loop/evidence"
REPORT_TAG = "finetune_loop/report"
# When the trigger asked, on the loop's clock (the schedule's tick time for the cadence).
REQUESTED_AT_TAG = "finetune_loop/requested_at"
# Every retrain run carries RETRAIN_TAGS (what the in-flight guard looks for) and RETRAIN_OF_TAG =
# its task, which the run queue admits one at a time per value (dagster.yaml): a schedule tick and
# a sensor request never train one task concurrently; other tasks' retrains run beside it.
RETRAIN_TAGS = {"finetune_loop/job": "retrain"}
RETRAIN_OF_TAG = "finetune_loop/retrain_of"
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.asset(
    deps=[production_log],
    # A task without a production log yet is not a failure: the report is simply not materialized.
    output_required=False,
    description="Evidently drift of the latest production window against the training data: inputs, predictions, feedback labels, feedback accuracy vs the champion's registered holdout score, and feedback naming labels the task does not know (new_labels).",
)
def drift_report(context: dg.AssetExecutionContext, loop: LoopResource, curated_dataset: CuratedDataset):
    spec = loop.spec()
    tracker = loop.tracker()
    if spec.production_log_path is None:
        context.log.info(f"monitoring not configured yet: {spec.spec_path} names no data.production_log")
        return
    report_path = loop.task_dir("drift") / f"{context.run.run_id}.html"
    now = utc_now()
    log = read_task_log(spec, now=now)
    quarantine_path = report_path.with_suffix(".quarantine.jsonl")
    write_jsonl(quarantine_path, log.reviewable_quarantine())
    window = log.window(spec.drift.window_days)
    if not window.records:
        raise dg.Failure(f"no usable production rows in {spec.production_log_path}; {len(log.quarantine)} quarantined, reasons in {quarantine_path}")
    unknown, known_labelled = _new_label_evidence(spec, now, log, window)
    reference = read_examples(curated_dataset.train_path)
    # Live feedback accuracy is compared with the score of the model serving now (after a rollback,
    # the restored version's), as the registry records it.
    champion = champion_record(tracker, spec.registered_model_name)
    eval_accuracy = champion.holdout_primary if champion else None
    result = drift.build_drift_report(
        [e.text for e in reference], [e.label for e in reference], window.records, report_path, spec.drift, eval_accuracy,
        unknown_feedback=unknown, known_labelled=known_labelled,
    )
    signal_values = {f"signal_{s.name}": s.value for s in result.signals.values() if s.value is not None}
    with tracker.run(f"drift-{spec.name}", tags={"stage": "drift", "signals_fired": ",".join(result.signals_fired), **run_tags(context)}) as run_id:
        tracker.log_metrics(
            run_id, {"drift_share": result.drift_share, "drift_detected": float(result.drift_detected),
                     "new_label_rows": float(result.new_labels["count"]), **signal_values},
        )
        tracker.log_params(
            run_id,
            {"reference_data_version": curated_dataset.data_version, "current_rows": result.current_rows,
             "window": f"{window.first_timestamp} .. {window.last_timestamp}", "settings": spec.drift,
             "champion_version": champion.version if champion else "none"},
        )
        tracker.log_artifact(run_id, report_path, "drift")
        tracker.log_text(run_id, result.signals_markdown(), "drift/signals.md")
        tracker.log_text(run_id, json.dumps(result.new_labels, indent=2, ensure_ascii=False), "drift/new_labels.json")
    metadata = DriftReportMetadata(
        drift_detected=result.drift_detected,
        signals_fired=", ".join(result.signals_fired) or "none",
        signals=result.signals_markdown(),
        drift_share=result.drift_share,
        drift_share_threshold=result.drift_share_threshold,
        feedback_accuracy=result.feedback_accuracy,
        champion_version=champion.version if champion else None,
        champion_eval_accuracy=eval_accuracy,
        feedback_rows=result.feedback_rows,
        report_path=str(report_path),
        reference_rows=result.reference_rows,
        current_rows=result.current_rows,
        quarantined_rows=len(log.quarantine),
        quarantine_path=str(quarantine_path),
        window=f"{window.first_timestamp} .. {window.last_timestamp}",
        window_end=str(window.last_timestamp),
        reported_at=now.isoformat(),
        columns=result.columns,
        new_label_rows=result.new_labels["count"],
        new_labels=result.new_labels,
        mlflow_run_id=run_id,
        mlflow_run=mlflow_link(tracker, run_id),
    )
    yield dg.Output(result, metadata=metadata.to_dagster())


def _new_label_evidence(spec, now: datetime, log, window) -> tuple[list, int]:
    """The requests the label check quarantined for their feedback label alone (read again without
    it, same `now`), and the count of known-label feedback, over the last `drift.new_label_days`
    ending at the newest request of either kind (a burst of new-label feedback after the last
    known-label request is not cut off). Everything else in the report stays on the window."""
    unknown = drift.unknown_feedback(read_task_log(spec, now=now, check_labels=False).records, spec.labels)
    end = max(r.timestamp for r in [*window.records, *unknown])
    known = drift.in_window(log.labelled(), spec.drift.new_label_days, end)
    return drift.in_window(unknown, spec.drift.new_label_days, end), len(known)


@dg.asset(
    deps=[production_log],
    output_required=False,
    description="Feedback accuracy per ISO week of the production log against the gate line, with the registry's promotions and rollbacks marked: how the served models did in the product, not only on the benchmark.",
)
def serving_quality(context: dg.AssetExecutionContext, loop: LoopResource):
    spec = loop.spec()
    tracker = loop.tracker()
    if spec.production_log_path is None:
        context.log.info(f"monitoring not configured yet: {spec.spec_path} names no data.production_log")
        return
    now = utc_now()
    result = quality.serving_quality(spec, read_task_log(spec, now=now), champion_events(tracker, spec.registered_model_name), now)
    chart_path = quality.plot_serving_quality(result, loop.task_dir("serving_quality") / f"{context.run.run_id}.png")
    table = result.table_markdown()
    with tracker.run(f"serving-quality-{spec.name}", tags={"stage": "serving_quality", **run_tags(context)}) as run_id:
        # One step per week, stamped with the week's start, so MLflow's charts read as a calendar too.
        for step, week in enumerate(result.weeks):
            tracker.log_metrics(run_id, week.metrics(), step=step, timestamp_ms=int(week.starts_at.timestamp() * 1000))
        tracker.log_params(run_id, {"gate_line": result.gate_line, "min_signal_rows": result.min_rows, "reported_at": now.isoformat()})
        tracker.log_artifact(run_id, chart_path, "serving_quality")
        tracker.log_text(run_id, f"{result.summary_markdown()}\n\n{table}\n", "serving_quality/weeks.md")
    latest = result.latest_measured
    metadata = ServingQualityMetadata(
        weeks=len(result.weeks),
        latest_feedback_accuracy=latest.feedback_accuracy if latest else None,
        latest_week=latest.week_start.isoformat() if latest else None,
        gate_line=result.gate_line,
        weeks_below_gate=len(result.weeks_below_gate),
        promotions=result.promotions,
        rollbacks=result.rollbacks,
        summary=result.summary_markdown(),
        table=table,
        chart=inline_png_markdown(chart_path, "serving quality"),
        chart_path=str(chart_path),
        mlflow_run_id=run_id,
        mlflow_run=mlflow_link(tracker, run_id),
    )
    yield dg.Output(result, metadata=metadata.to_dagster())


def _retrain_request(
    loop: LoopResource, run_key: str, decision: triggers.Decision, report: str = "", at: datetime | None = None
) -> dg.RunRequest:
    spec = loop.spec()
    tags = {TASK_TAG: spec.name, RETRAIN_OF_TAG: spec.name, TRIGGER_TAG: decision.trigger, EVIDENCE_TAG: decision.evidence,
            SPEC_HASH_TAG: spec.spec_sha256, REQUESTED_AT_TAG: (at or utc_now()).isoformat()}
    if report:
        tags[REPORT_TAG] = report
    return dg.RunRequest(run_key=run_key, tags=tags)


def retrain_in_flight(instance: dg.DagsterInstance, task: str) -> str | None:
    """The id of a retrain run of `task` that is queued or running, if any."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=_IN_FLIGHT, tags={**RETRAIN_TAGS, TASK_TAG: task}), limit=1)
    return runs[0].run_id if runs else None


@dataclass(frozen=True)
class TaskWiring:
    """How one task's definitions are named: unprefixed for the single-task code location, each key,
    job, schedule and sensor prefixed with the task's name on the platform (one code location, every
    task of a directory: `definitions.build_platform_definitions`)."""

    task: str | None = None

    def key(self, key: dg.AssetKey) -> dg.AssetKey:
        return key if self.task is None else dg.AssetKey([self.task, *key.path])

    def name(self, name: str) -> str:
        return name if self.task is None else f"{self.task}__{name}"

    def loop(self, loop: LoopResource) -> LoopResource:
        """The task's resource: the platform's serves every task, a schedule or sensor serves one."""
        return loop if self.task is None else loop.for_task(self.task)


@dataclass(frozen=True)
class TaskAutomation:
    # define_asset_job's (unresolved) job definitions
    retrain_job: object
    monitor_job: object
    schedules: list
    sensors: list


RETRAIN_ASSETS = (base_model, holdout_suite, regression_suite, recent_suite, curated_dataset, lora_adapter, eval_report, gguf_export, champion_model)
MONITOR_ASSETS = (production_log, drift_report, serving_quality)


def task_automation(wiring: TaskWiring) -> TaskAutomation:
    """The jobs, schedules and sensors of one task's loop."""
    retrain_job = dg.define_asset_job(
        wiring.name("retrain_job"),
        selection=dg.AssetSelection.assets(*(wiring.key(a.key) for a in RETRAIN_ASSETS)),
        tags={**RETRAIN_TAGS, **({TASK_TAG: wiring.task, RETRAIN_OF_TAG: wiring.task} if wiring.task else {})},
        description="Curate → train → evaluate (gate) → export and verify → promote.",
    )
    monitor_job = dg.define_asset_job(
        wiring.name("monitor_job"),
        selection=dg.AssetSelection.assets(*(wiring.key(a.key) for a in MONITOR_ASSETS)),
        tags={TASK_TAG: wiring.task} if wiring.task else {},
        description="Observe the production log, then report drift on its latest window and serving quality per week.",
    )
    daily_drift_schedule = dg.ScheduleDefinition(
        name=wiring.name("daily_drift_schedule"),
        job=monitor_job,
        cron_schedule="0 6 * * *",
        execution_timezone="UTC",
        description="A drift_report every morning; drift_retrain_sensor acts on it.",
    )

    @dg.schedule(name=wiring.name("six_week_retrain_schedule"), job=retrain_job, cron_schedule="0 3 * * 1", execution_timezone="UTC")
    def six_week_retrain_schedule(context: dg.ScheduleEvaluationContext, loop: LoopResource):
        """Checks weekly; retrains when the registry's champion has served longer than the task's cadence
        (42 days by default; counted from its promotion or the rollback that restored it) or when there
        is no champion yet. Cron has no "every six weeks"."""
        loop = wiring.loop(loop)
        spec = loop.spec()
        # The tick's time: the daemon's, or the loop clock's when `monitor` evaluates it (automation_tick).
        now = context.scheduled_execution_time
        last = context.instance.get_runs(filters=dg.RunsFilter(tags={**RETRAIN_TAGS, TASK_TAG: spec.name, TRIGGER_TAG: triggers.CADENCE}), limit=1)
        last_attempt = datetime.fromisoformat(last[0].tags[REQUESTED_AT_TAG]) if last and REQUESTED_AT_TAG in last[0].tags else None
        decision = triggers.cadence_decision(champion_record(loop.tracker(), spec.registered_model_name), now, spec.drift.cadence_days, last_attempt)
        if not decision.retrain:
            return dg.SkipReason(decision.evidence)
        running = retrain_in_flight(context.instance, spec.name)
        if running:
            return dg.SkipReason(f"retrain run {running} of {spec.name} is queued or running")
        return _retrain_request(loop, f"cadence-{now:%Y-%m-%d}", decision, at=now)


    @dg.sensor(name=wiring.name("drift_retrain_sensor"), job=retrain_job, minimum_interval_seconds=60)
    def drift_retrain_sensor(context: dg.SensorEvaluationContext, loop: LoopResource):
        """One retrain per drifting `drift_report` (hysteresis and cooldown: `triggers.DriftHysteresis`).

        * The run key names the run that materialized the report, so the same report seen twice (or
          after a cursor reset) never launches a second retrain.
        * Guard: while a retrain of the task is queued or running, the report waits (the cursor stays).
        """
        loop = wiring.loop(loop)
        spec = loop.spec()
        cooldown_seconds = spec.drift.cooldown_hours * 3600
        state = json.loads(context.cursor) if context.cursor else {"after_storage_id": None, "armed": True, "last_request_at": None}
        hysteresis = triggers.DriftHysteresis(state["armed"], state["last_request_at"])
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=wiring.key(drift_report.key), after_storage_id=state["after_storage_id"]), limit=100, ascending=True
        ).records
        requests, notes = [], []
        for record in records:
            report = DriftReportMetadata.from_dagster(record.asset_materialization.metadata)
            reported_at = datetime.fromisoformat(report.reported_at).timestamp()
            outcome = hysteresis.observe(report.drift_detected, reported_at, cooldown_seconds)
            if outcome == "request":
                running = retrain_in_flight(context.instance, spec.name)
                if running:
                    notes.append(f"report of run {record.run_id} drifts; waiting for retrain run {running} of {spec.name} to finish")
                    break
                evidence = f"signals fired: {report.signals_fired}; input drift share {report.drift_share:.2f}; window {report.window}"
                requests.append(_retrain_request(loop, f"drift-{record.run_id}", triggers.Decision(True, triggers.DRIFT, evidence), record.run_id))
                hysteresis.requested(reported_at)
            else:
                notes.append({
                    "cooldown": f"report of run {record.run_id} drifts, but within the {spec.drift.cooldown_hours:g} h cooldown",
                    "already_requested": f"report of run {record.run_id} still drifts; a retrain was already requested (re-arms on a clean report)",
                    "clean": f"report of run {record.run_id} shows no drift",
                }[outcome])
            state["after_storage_id"] = record.storage_id
        if not records:
            notes.append("no new drift_report")
        state.update(armed=hysteresis.armed, last_request_at=hysteresis.last_request_at)
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(state), skip_reason=None if requests else "; ".join(notes))


    @dg.sensor(name=wiring.name("feedback_retrain_sensor"), job=retrain_job, minimum_interval_seconds=300)
    def feedback_retrain_sensor(context: dg.SensorEvaluationContext, loop: LoopResource):
        """Retrains on labelled feedback volume or on low rolling feedback accuracy
        (`triggers.feedback_decision`), or once labels admitted to the task have feedback to train on
        (`triggers.labels_admitted_decision`). The next curated_dataset takes the labelled feedback in through
        the same validation and quarantine as any data."""
        loop = wiring.loop(loop)
        spec = loop.spec()
        if spec.production_log_path is None:
            return dg.SkipReason(f"task {spec.name} names no data.production_log")
        now = utc_now()
        labelled = read_task_log(spec, now=now).labelled()
        consumed, repaired = triggers.feedback_cursor(spec, context.cursor, labelled, now)
        if repaired:
            context.log.warning(repaired)
        version_tags = loop.tracker().all_version_tags(spec.registered_model_name).values()
        seen = [v[FEEDBACK_SEEN_TAG] for v in version_tags if FEEDBACK_SEEN_TAG in v]
        consumed = triggers.newest_consumed(consumed, max((datetime.fromisoformat(s) for s in seen), default=None))
        champion = loop.tracker().version_by_alias(spec.registered_model_name, CHAMPION_ALIAS)
        decision = triggers.feedback_decision(spec, labelled, consumed, champion.version if champion else None)
        if not decision.retrain:
            # A label a person admitted (new_labels) is a task change no volume count waits for.
            admitted = triggers.labels_admitted_decision(spec, trained_label_sets(version_tags), labelled)
            evidence = admitted.evidence if admitted.retrain else f"{decision.evidence}; {admitted.evidence}"
            decision = triggers.FeedbackDecision(admitted.retrain, admitted.trigger if admitted.retrain else decision.trigger, evidence, decision.newest)
        waiting = None if not decision.retrain else retrain_in_flight(context.instance, spec.name)
        if not decision.retrain or waiting:
            reason = decision.evidence if not decision.retrain else f"{decision.trigger}: waiting for retrain run {waiting} of {spec.name} to finish"
            if repaired:
                return dg.SensorResult(skip_reason=f"{reason}; {repaired}", cursor=consumed.isoformat() if consumed else None)
            return dg.SkipReason(reason)
        request = _retrain_request(loop, f"{decision.trigger}-{decision.newest.isoformat()}", decision)
        return dg.SensorResult(run_requests=[request], cursor=decision.newest.isoformat())

    @dg.sensor(name=wiring.name("erasure_retrain_sensor"), job=retrain_job, minimum_interval_seconds=300)
    def erasure_retrain_sensor(context: dg.SensorEvaluationContext, loop: LoopResource):
        """Retrains once per erasure request while the champion trained on its records
        (`triggers.erasure_decision`); champion_model closes the request once a version without them ships."""
        loop = wiring.loop(loop)
        spec = loop.spec()
        champion = loop.tracker().version_by_alias(spec.registered_model_name, CHAMPION_ALIAS)
        decision, request = triggers.erasure_decision(ErasureLedger.load(spec.erasure_ledger_path).open_requests(), champion.version if champion else None)
        if not decision.retrain:
            return dg.SkipReason(decision.evidence)
        waiting = retrain_in_flight(context.instance, spec.name)
        if waiting:
            return dg.SkipReason(f"{decision.evidence}: waiting for retrain run {waiting} of {spec.name} to finish")
        return dg.SensorResult(run_requests=[_retrain_request(loop, f"erasure-{request.request}", decision)])

    return TaskAutomation(
        retrain_job, monitor_job, [six_week_retrain_schedule, daily_drift_schedule],
        [drift_retrain_sensor, feedback_retrain_sensor, erasure_retrain_sensor],
    )


# The single-task code location's automation (and what the CLI's `monitor` evaluates).
_SINGLE = task_automation(TaskWiring())
retrain_job, monitor_job = _SINGLE.retrain_job, _SINGLE.monitor_job
six_week_retrain_schedule, daily_drift_schedule = _SINGLE.schedules
drift_retrain_sensor, feedback_retrain_sensor, erasure_retrain_sensor = _SINGLE.sensors


# This stage's assets: `definitions.py` puts them in group GROUP (per task on the platform).
ASSETS = [drift_report, serving_quality]


# The platform's own MLflow experiment (portfolio reports), beside each task's.
PLATFORM_EXPERIMENT = "finetune_loop_platform"


@dg.asset(
    group_name="platform",
    description="Every task of the platform on one page: base vs champion on its frozen holdout against its gate, champion version and age, last gate verdict, drift, export; broken task files with their errors.",
)
def portfolio_report(context: dg.AssetExecutionContext, loop: LoopResource):
    if not loop.tasks_dir:
        raise dg.Failure("portfolio_report belongs to the platform code location (FINETUNE_LOOP_TASKS_DIR), which serves a tasks directory")
    home = loop.loop_home()
    standings = portfolio.portfolio(Path(loop.tasks_dir), home, utc_now())
    chart_path = portfolio.plot_portfolio(standings, home.artifacts / "portfolio" / f"{context.run.run_id}.png")
    table = portfolio.portfolio_markdown(standings)
    tracker = Tracker.for_task(home, PLATFORM_EXPERIMENT)
    served = [s for s in standings if not s.error]
    with tracker.run("portfolio", tags={"stage": "portfolio", **run_tags(context)}) as run_id:
        tracker.log_metrics(run_id, {f"{s.name}.champion": s.champion for s in served if s.champion is not None}
                            | {"tasks": float(len(served)), "broken_task_files": float(len(standings) - len(served))})
        tracker.log_artifact(run_id, chart_path, "portfolio")
        tracker.log_text(run_id, table + "\n", "portfolio/portfolio.md")
    return dg.MaterializeResult(metadata={
        "tasks": len(served),
        "broken_task_files": dg.MetadataValue.json({str(s.task_file): s.error for s in standings if s.error}),
        "below_gate": ", ".join(s.name for s in served if s.below_gate) or "none",
        "table": dg.MetadataValue.md(table),
        "chart": dg.MetadataValue.md(inline_png_markdown(chart_path, "portfolio")),
        "mlflow_run": dg.MetadataValue.url(mlflow_link(tracker, run_id)),
    })
