"""Group `ship`: the candidate is exported and verified first (`gguf_export` with its three blocking
checks), and only then promoted (`champion_model` moves the registry alias). A candidate whose gate
refused it is never exported; a GGUF that fails a check is never promoted and never joins the
version's rollback bundle, so the old champion keeps serving. Core: `finetune_loop.core.ship`."""


from dataclasses import dataclass

import dagster as dg

from finetune_loop.core.common.tracker import ModelVersionRef
from finetune_loop.core.data.suites import FrozenSuite
from finetune_loop.core.ship import erasure, export, gguf_checks, registry
from finetune_loop.core.ship.export_result import GgufExport
from finetune_loop.core.train.trainer import TrainedAdapter
from finetune_loop.defs.common import mlflow_link, run_tags
from finetune_loop.defs.evaluate import EvalReport
from finetune_loop.defs.metadata import ChampionModelMetadata, GgufExportMetadata
from finetune_loop.defs.resources import LoopResource

GROUP = "ship"
GGUF_CHECKS = {
    gguf_checks.MATCHES_MERGED_MODEL: "The unquantized GGUF under llama.cpp agrees with the merged HF model: top-1 next token and the label picked by the evaluation's rule (most likely whole answer) on the holdout.",
    gguf_checks.QUANT_WITHIN_BUDGET: "Every quantized file's holdout accuracy is within the task's budget (points) of the merged model.",
    gguf_checks.CHAT_TEMPLATE_ROUNDTRIP: "Training prompt tokens = GGUF chat template = Ollama Modelfile TEMPLATE; generation stops at EOS.",
}


@dataclass(frozen=True)
class CandidateExport:
    """The verified export of one registered candidate version."""

    version: ModelVersionRef
    export: GgufExport
    shipped: bool


def _refuse_unless_gate_passed(eval_report: EvalReport, what: str) -> None:
    # Blocking checks stop this in a run; this guards a hand-picked materialization, which runs none.
    if not eval_report.gate_passed:
        raise dg.Failure(
            f"release gate refused candidate v{eval_report.candidate_version.version}, not {what}: {eval_report.gate_summary}",
            allow_retries=False,
        )


@dg.asset(
    check_specs=[dg.AssetCheckSpec(name, asset="gguf_export", blocking=True, description=text) for name, text in GGUF_CHECKS.items()],
    description="The gated candidate merged and written as GGUF (unquantized + quantized) with Ollama Modelfiles and a model card, verified under llama.cpp before promotion.",
)
def gguf_export(
    context: dg.AssetExecutionContext, loop: LoopResource, eval_report: EvalReport, lora_adapter: TrainedAdapter, holdout_suite: FrozenSuite
):
    _refuse_unless_gate_passed(eval_report, "exporting it")
    candidate = eval_report.candidate_version
    if lora_adapter.model_version != candidate:
        raise dg.Failure(
            f"lora_adapter is v{lora_adapter.model_version.version} but eval_report gated v{candidate.version}: "
            "export exactly the candidate the gate passed (materialize lora_adapter, eval_report and gguf_export together)",
            allow_retries=False,
        )
    spec = loop.spec()
    tracker = loop.tracker()
    result = export.export_and_verify(
        spec, loop.base_model(), lora_adapter.directory, holdout_suite.path, loop.task_dir("exports") / f"v{candidate.version}", tracker,
        eval_accuracies={"base": eval_report.base_accuracy, "candidate": eval_report.candidate_accuracy},
        run_tags={**run_tags(context), "model_version": candidate.version},
    )
    shipped = export.publish_export(tracker, candidate, result)
    metadata = GgufExportMetadata.from_sources(
        result,
        model_name=candidate.name,
        model_version=candidate.version,
        shipped=shipped,
        failed_checks=", ".join(c.name for c in result.checks if not c.passed) or "none",
        file_size_mb=round(result.file_size_bytes / 2**20, 1),
        candidate_accuracy=eval_report.candidate_accuracy,
        variants=result.variants_markdown(),
        variant_stats={
            v.name: {"size_mb": round(v.size_bytes / 2**20, 1), "accuracy": v.accuracy, "accuracy_delta": v.accuracy_delta,
                     "generation_tokens_per_second": round(v.generation_tokens_per_second, 1)}
            for v in result.variants
        },
        modelfile=result.variants[1].modelfile_path,
        model_card=result.model_card_path,
        export_seconds=result.seconds,
        mlflow_run=mlflow_link(tracker, result.mlflow_run_id),
    )
    yield dg.Output(CandidateExport(candidate, result, shipped), metadata=metadata.to_dagster())
    for check in result.checks:
        yield dg.AssetCheckResult(check_name=check.name, passed=check.passed, description=check.description, metadata=check.metadata)


@dg.asset(
    description="Moves MLflow alias `champion` to the candidate whose gate and GGUF checks passed (under a registry lock; the one it replaces keeps `previous-champion`).",
)
def champion_model(eval_report: EvalReport, gguf_export: CandidateExport, loop: LoopResource) -> dg.Output[registry.PromotionResult]:
    _refuse_unless_gate_passed(eval_report, "promoting it")
    candidate = eval_report.candidate_version
    if gguf_export.version != candidate:
        raise dg.Failure(
            f"gguf_export verified v{gguf_export.version.version} but eval_report gated v{candidate.version}: not promoting",
            allow_retries=False,
        )
    spec = loop.spec()
    tracker = loop.tracker()
    # The registry, not the step's output, says whether this version's GGUF passed its checks.
    tags = tracker.version_tags(candidate.name, candidate.version)
    if tags.get(registry.GGUF_CHECKS_PASSED_TAG) != "True":
        raise dg.Failure(
            f"{candidate.name} v{candidate.version}: its GGUF did not pass every check "
            f"(failed: {tags.get('gguf_failed_checks', 'not exported')}); the champion keeps serving",
            allow_retries=False,
        )
    try:
        result = registry.promote(
            tracker, loop.task_dir("locks"), candidate.name, candidate.version,
            evaluated_against=eval_report.champion_version, holdout_primary=eval_report.candidate_accuracy,
            holdout_hash=eval_report.holdout_hash,
        )
    except registry.PromotionError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    champion = registry.champion_record(tracker, spec.registered_model_name)
    # A champion that did not train on erased records lets their requests close (purge + scan).
    erasures = erasure.complete_erasures(spec, loop.loop_home(), tracker)
    metadata = ChampionModelMetadata(
        model_name=result.model_name,
        version=result.version,
        previous_version=result.previous_version,
        candidate_accuracy=eval_report.candidate_accuracy,
        champion_since=champion.since.isoformat(),
        recheck=result.recheck or "champion unchanged since evaluation",
        erasures={e["request"]: e.get("open") or f"completed: {len(e['deleted'])} artifacts deleted, no stored copy of the text left"
                  for e in erasures},
    )
    return dg.Output(result, metadata=metadata.to_dagster())


# This stage's assets: `definitions.py` puts them in group GROUP (per task on the platform).
ASSETS = [gguf_export, champion_model]
