"""The shadow_agreement check on eval_report: the challenger re-labels the champion's recent
production requests before promotion. Blocking, like release_gate: with shadow.max_disagreement
below 1.0 a challenger that would change too many answers is not promoted."""

import dagster as dg

from finetune_loop.core.common.tracker import CHAMPION_ALIAS
from finetune_loop.core.evaluate import shadow
from finetune_loop.core.train import base_model, trainer
from finetune_loop.defs.assets import EvalReport, eval_report
from finetune_loop.defs.resources import LoopResource


@dg.asset_check(
    asset=eval_report,
    blocking=True,
    additional_ins={"lora_adapter": dg.AssetIn("lora_adapter")},
    description="Challenger vs champion on the champion's recent production requests: disagreement rate and, with feedback, both accuracies.",
)
def shadow_agreement(loop: LoopResource, eval_report: EvalReport, lora_adapter: trainer.TrainedAdapter) -> dg.AssetCheckResult:
    spec = loop.spec()
    tracker = loop.tracker(spec)
    champion = tracker.version_by_alias(spec.registered_model_name, CHAMPION_ALIAS)
    if champion is None:
        return dg.AssetCheckResult(passed=True, description="no champion yet: nothing to shadow")
    base = base_model.prepare_base_model(spec.base_model, loop.loop_home().artifacts / "base_models")
    result = shadow.shadow_evaluate(spec, base.directory, lora_adapter.directory, champion.version)
    if result is None:
        return dg.AssetCheckResult(passed=True, description=f"no production requests answered by champion v{champion.version} to shadow")
    metrics = {"shadow_rows": result.rows, "shadow_disagreement": result.disagreement_rate, "shadow_feedback_rows": result.feedback_rows}
    if result.feedback_rows:
        metrics |= {"shadow_champion_accuracy": result.champion_accuracy, "shadow_challenger_accuracy": result.challenger_accuracy}
    # The numbers join the evaluation's own MLflow run, beside the holdout accuracies.
    tracker.log_metrics(eval_report.mlflow_run_id, metrics)
    return dg.AssetCheckResult(
        passed=result.passed,
        description=result.summary(),
        metadata={**metrics, "champion_version": champion.version, "max_disagreement": result.max_disagreement},
    )
