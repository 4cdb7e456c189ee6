"""Jobs, the six-week cadence and the drift trigger. Every run request says why it was made."""


from datetime import datetime, timedelta, timezone

import dagster as dg

from finetune_loop.defs.assets import (
    champion_model,
    curated_dataset,
    drift_report,
    eval_report,
    gguf_export,
    holdout_suite,
    lora_adapter,
    regression_suite,
)
from finetune_loop.defs.resources import LoopResource

TRIGGER_TAG = "finetune_loop/trigger"
# The run queue limits runs carrying this tag to one at a time (dagster.yaml), so a schedule tick
# and a sensor request never train concurrently.
RETRAIN_TAGS = {"finetune_loop/job": "retrain"}

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets(holdout_suite, regression_suite, curated_dataset, lora_adapter, eval_report, champion_model, gguf_export),
    tags=RETRAIN_TAGS,
    description="Curate → train → evaluate (gate) → promote → export.",
)

monitor_job = dg.define_asset_job(
    "monitor_job", selection=dg.AssetSelection.assets(drift_report), description="Drift of production traffic."
)


@dg.schedule(job=retrain_job, cron_schedule="0 3 * * 1", execution_timezone="UTC")
def six_week_retrain_schedule(context: dg.ScheduleEvaluationContext, loop: LoopResource):
    """Checks weekly; retrains when the champion is older than the task's cadence (42 days by
    default) or when there is no champion yet. Cron has no "every six weeks"."""
    cadence = timedelta(days=loop.spec().drift.cadence_days)
    now = context.scheduled_execution_time or datetime.now(timezone.utc)
    latest = context.instance.get_latest_materialization_event(champion_model.key)
    if latest is not None:
        promoted_at = datetime.fromtimestamp(latest.timestamp, tz=timezone.utc)
        age = now - promoted_at
        if age < cadence:
            return dg.SkipReason(f"champion promoted {age.days} days ago, cadence is {cadence.days} days")
        evidence = f"champion promoted {promoted_at:%Y-%m-%d}, {age.days} days ago"
    else:
        evidence = "no champion yet"
    return dg.RunRequest(
        run_key=f"cadence-{now:%Y-%m-%d}",
        tags={TRIGGER_TAG: "cadence", "finetune_loop/evidence": evidence},
    )


@dg.asset_sensor(asset_key=drift_report.key, job=retrain_job, minimum_interval_seconds=60)
def drift_retrain_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """One retrain per drifting report: the run key names the run that materialized the report
    (one report per run), so the same report seen twice, or after a cursor reset, never launches a
    second retrain."""
    materialization = asset_event.asset_materialization
    metadata = materialization.metadata if materialization else {}
    detected = metadata.get("drift_detected")
    share = metadata.get("drift_share")
    if detected is None or not detected.value:
        return dg.SkipReason(f"latest drift_report shows no drift (drift_share={share.value if share else 'n/a'})")
    report_path = metadata.get("report_path")
    return dg.RunRequest(
        run_key=f"drift-{asset_event.run_id}",
        tags={
            TRIGGER_TAG: "drift",
            "finetune_loop/evidence": f"drift_share={share.value if share else 'n/a'}",
            "finetune_loop/report": str(report_path.value) if report_path else "",
        },
    )
