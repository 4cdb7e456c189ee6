"""Group `evaluate`: `eval_report` (base vs candidate vs champion on the frozen suites) with its blocking
`release_gate` check, and the blocking `shadow_agreement` check on recent production traffic.
Core: `finetune_loop.core.evaluate`."""


from dataclasses import dataclass

import dagster as dg

from finetune_loop.core.common.files import inline_png_markdown
from finetune_loop.core.common.row_store import RowStore
from finetune_loop.core.common.tracker import CHAMPION_ALIAS, ModelVersionRef
from finetune_loop.core.data.recent import RecentSuite
from finetune_loop.core.data.suites import FrozenSuite
from finetune_loop.core.evaluate import report, shadow
from finetune_loop.core.ship.registry import BUNDLE_ARTIFACT_PATH
from finetune_loop.core.train.trainer import TrainedAdapter, trained_rows_path
from finetune_loop.defs.common import mlflow_link, run_tags
from finetune_loop.defs.metadata import EvalReportMetadata
from finetune_loop.defs.resources import TRIGGER_TAG, LoopResource

GROUP = "evaluate"


@dataclass(frozen=True)
class EvalReport:
    base_accuracy: float
    candidate_accuracy: float
    gate_passed: bool
    gate_summary: str
    candidate_version: ModelVersionRef
    mlflow_run_id: str
    # The champion the candidate was compared with (None: there was none), and the frozen holdout
    # it was compared on: a promotion that finds another champion re-checks against these.
    champion_version: str | None
    holdout_hash: str
    report_path: str
    # The recent suite it was judged on too (None: there was none).
    recent_hash: str | None = None


@dg.asset(
    check_specs=[
        dg.AssetCheckSpec(
            "release_gate", asset="eval_report", blocking=True,
            description="Candidate ≥ threshold, > base, non-inferior to the champion on the holdout (paired bootstrap), follows recent traffic "
            "(the trigger's rule on the recent suite), no slice regression, regression suite and behaviour probes above their thresholds.",
        )
    ],
    description="Base vs candidate vs champion on the frozen holdout, the regression suite, the recent suite and the behaviour probes, "
    "and whether the candidate writes its training rows or planted canaries back verbatim; the release_gate check blocks export and promotion.",
)
def eval_report(
    context: dg.AssetExecutionContext,
    loop: LoopResource,
    lora_adapter: TrainedAdapter,
    holdout_suite: FrozenSuite,
    regression_suite: FrozenSuite,
    recent_suite: RecentSuite,
):
    spec = loop.spec()
    tracker = loop.tracker()
    out_dir = loop.task_dir("evals") / context.run.run_id
    champion_ref = tracker.version_by_alias(spec.registered_model_name, CHAMPION_ALIAS)
    champion = None
    if champion_ref:
        bundle = tracker.download_version(champion_ref, out_dir / "champion_bundle")
        # After base_model changed in the task file, the champion still answers on the base it was trained on.
        own_base = loop.champion_base(bundle)
        if own_base is not None:
            context.log.info(f"champion v{champion_ref.version} was trained on {own_base.name}; the candidate on {spec.base_model}: each answers on its own base")
        champion = report.ChampionAdapter(champion_ref.version, bundle, own_base.directory if own_base else None)
    trigger = context.run.tags.get(TRIGGER_TAG, "manual")
    version = lora_adapter.model_version
    # The exact rows the candidate trained on, by the hash its manifest names (the memorisation check's rows).
    training_rows = (
        trained_rows_path(lora_adapter.directory, RowStore.for_home(loop.loop_home()), f"training rows of {version.name} v{version.version}")
        if spec.memorisation.enabled else None
    )
    result = report.evaluate_candidate(
        spec, loop.base_model().directory, lora_adapter.directory, lora_adapter.model_version.version, holdout_suite.path,
        regression_suite.path, out_dir, tracker, champion, {**run_tags(context), "model_version": lora_adapter.model_version.version},
        recent_path=recent_suite.suite.path if recent_suite.suite else None,
        trigger=trigger,
        training_rows_path=training_rows,
        admitted_labels=set(recent_suite.admitted_cutoffs),
    )
    recent_hash = recent_suite.suite.content_hash if recent_suite.suite else None
    tracker.tag_version(
        lora_adapter.model_version.name, lora_adapter.model_version.version,
        {"recent_suite_sha256": recent_hash or "none", "holdout_sha256": holdout_suite.content_hash},
    )
    # The evaluation joins the candidate's bundle, so a rollback target carries its own evidence.
    tracker.log_artifact(lora_adapter.model_version.run_id, result.report_path, BUNDLE_ARTIFACT_PATH)
    verdict = result.verdict
    candidate = result.models["candidate"]
    value = EvalReport(
        base_accuracy=result.base.primary,
        candidate_accuracy=result.candidate.primary,
        gate_passed=verdict.passed,
        gate_summary=verdict.summary(),
        candidate_version=lora_adapter.model_version,
        mlflow_run_id=result.mlflow_run_id,
        champion_version=champion.version if champion else None,
        holdout_hash=holdout_suite.content_hash,
        report_path=str(result.report_path),
        recent_hash=recent_hash,
    )
    metadata = EvalReportMetadata(
        primary_metric=result.candidate.primary_name,
        base_accuracy=result.base.primary,
        candidate_accuracy=result.candidate.primary,
        champion_accuracy=result.champion.primary if result.champion else None,
        champion_version=champion.version if champion else None,
        candidate_model_version=lora_adapter.model_version.version,
        candidate_regression_pass_rate=candidate.regression.primary if candidate.regression else None,
        candidate_probe_pass_rate=candidate.probes.pass_rate if candidate.probes and candidate.probes.cases else None,
        regression_newly_failing=result.newly_failing[:20],
        gate_passed=verdict.passed,
        gate=verdict.summary(),
        gate_lines="\n".join(f"- **{g.name}** {g.line()}" for g in verdict.sub_gates),
        gate_power=verdict.power,
        holdout_rows=len(result.candidate.correct),
        recent_rows=recent_suite.size,
        recent_suite_hash=recent_hash,
        recent_candidate_accuracy=candidate.recent.primary if candidate.recent else None,
        recent_champion_accuracy=result.models["champion"].recent.primary if "champion" in result.models and result.models["champion"].recent else None,
        trigger=trigger,
        frontier=result.frontier_summary,
        memorisation=result.memorisation_summary,
        mlflow_run_id=result.mlflow_run_id,
        mlflow_run=mlflow_link(tracker, result.mlflow_run_id),
        eval_seconds=result.seconds,
        table=result.table_markdown,
        chart=inline_png_markdown(result.chart_path, "holdout per label and slice"),
        chart_path=str(result.chart_path),
        report_path=str(result.report_path),
    )
    yield dg.Output(value, metadata=metadata.to_dagster())
    failed = [g.name for g in verdict.sub_gates if not g.passed]
    yield dg.AssetCheckResult(
        check_name="release_gate",
        passed=verdict.passed,
        description=("PASSED all sub-gates" if verdict.passed else f"FAILED {', '.join(failed)}") + f" — {verdict.summary()}",
        metadata={g.name: dg.MetadataValue.text(g.line()) for g in verdict.sub_gates},
    )


@dg.asset_check(
    asset=eval_report,
    blocking=True,
    additional_ins={"lora_adapter": dg.AssetIn("lora_adapter")},
    description="Challenger vs champion on the champion's recent production requests: disagreement rate and, with feedback, both accuracies.",
)
def shadow_agreement(loop: LoopResource, eval_report: EvalReport, lora_adapter: TrainedAdapter) -> dg.AssetCheckResult:
    """Blocking, like release_gate: with shadow.max_disagreement below 1.0 a challenger that would
    change too many of the champion's answers is neither exported nor promoted."""
    spec = loop.spec()
    tracker = loop.tracker()
    # The champion the candidate was evaluated against: the registry's, as eval_report read it.
    if eval_report.champion_version is None:
        return dg.AssetCheckResult(passed=True, description="no champion yet: nothing to shadow")
    result = shadow.shadow_evaluate(spec, loop.base_model().directory, lora_adapter.directory, eval_report.champion_version)
    if result is None:
        return dg.AssetCheckResult(passed=True, description=f"no production requests answered by champion v{eval_report.champion_version} to shadow")
    metrics = {"shadow_rows": result.rows, "shadow_disagreement": result.disagreement_rate, "shadow_feedback_rows": result.feedback_rows}
    if result.feedback_rows:
        metrics |= {"shadow_champion_accuracy": result.champion_accuracy, "shadow_challenger_accuracy": result.challenger_accuracy}
    # The numbers join the evaluation's own MLflow run, beside the holdout accuracies.
    tracker.log_metrics(eval_report.mlflow_run_id, metrics)
    return dg.AssetCheckResult(
        passed=result.passed,
        description=result.summary(),
        metadata={**metrics, "champion_version": eval_report.champion_version, "max_disagreement": result.max_disagreement},
    )


# This stage's assets: `definitions.py` puts them in group GROUP (per task on the platform).
ASSETS = [eval_report]
