"""The lineage graph. Each asset is thin: read the task, call one core function, report metadata."""


import os
from dataclasses import dataclass

import dagster as dg

from finetune_loop.core.common import files
from finetune_loop.core.common.tracker import CHAMPION_ALIAS, ModelVersionRef, Tracker
from finetune_loop.core.data import (
    contamination,
    curation,
    production_log,
    readers,
    suites,
)
from finetune_loop.core.evaluate import report
from finetune_loop.core.monitor import drift
from finetune_loop.core.ship import export, gguf_checks, registry
from finetune_loop.core.train import base_model, prompts, trainer
from finetune_loop.defs.resources import LoopResource

MLFLOW_UI_ENV_VAR = "FINETUNE_LOOP_MLFLOW_UI"


def _run_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    return {"dagster_run_id": context.run.run_id, "dagster_asset_key": context.asset_key.to_user_string()}


def _mlflow_link(tracker: Tracker, run_id: str) -> dg.MetadataValue:
    ui = os.environ.get(MLFLOW_UI_ENV_VAR, "http://127.0.0.1:5000")
    return dg.MetadataValue.url(f"{ui}/#/experiments/{tracker.experiment_id}/runs/{run_id}")


def _file_version(path) -> dg.DataVersion:
    return dg.DataVersion(files.sha256_file(path)[:16])


def _file_or_directory_version(path) -> dg.DataVersion:
    # A datasets.save_to_disk directory changes when any of its files does.
    return dg.DataVersion(files.sha256_tree(path)[:16]) if path.is_dir() else _file_version(path)


@dg.observable_source_asset(description="Labelled examples named by the task's data.labeled_examples.")
def labeled_examples(loop: LoopResource) -> dg.ObserveResult:
    spec = loop.spec()
    if spec.labeled_examples_hub_id:
        return dg.ObserveResult(
            data_version=dg.DataVersion(readers.hub_dataset_fingerprint(spec.labeled_examples_hub_id)),
            metadata={"hub_dataset": spec.labeled_examples_hub_id},
        )
    return dg.ObserveResult(
        data_version=_file_or_directory_version(spec.labeled_examples_path),
        metadata={"path": dg.MetadataValue.path(str(spec.labeled_examples_path))},
    )


@dg.observable_source_asset(description="Append-only production log (a directory of JSONL files) named by the task's data.production_log.")
def production_log(loop: LoopResource) -> dg.ObserveResult:
    spec = loop.spec()
    if spec.production_log_path is None:
        return dg.ObserveResult(data_version=dg.DataVersion("not-configured"), metadata={"path": "the task names no data.production_log"})
    files = production_log.log_files(spec.production_log_path)
    # The version hashes every file's name and content: it changes when a new file arrives.
    return dg.ObserveResult(
        data_version=dg.DataVersion(production_log.log_data_version(spec.production_log_path)),
        metadata={"path": dg.MetadataValue.path(str(spec.production_log_path)), "files": len(files)},
    )


def _suite_metadata(suite: suites.FrozenSuite) -> dict:
    return {
        "content_hash": suite.content_hash,
        "size": suite.size,
        "created_this_run": suite.created,
        "path": dg.MetadataValue.path(str(suite.path)),
        "per_label": dg.MetadataValue.json(suite.per_label),
        "per_slice": dg.MetadataValue.json(suite.per_slice),
    }


@dg.asset(deps=[labeled_examples], description="Frozen holdout: created once (designated file or seeded split), hash-checked ever after.")
def holdout_suite(context: dg.AssetExecutionContext, loop: LoopResource) -> suites.FrozenSuite:
    spec = loop.spec()
    suite = suites.freeze_suite(spec, "holdout", loop.loop_home().task_dir(spec.name, "suites"))
    context.add_output_metadata(_suite_metadata(suite))
    return suite


@dg.asset(deps=[labeled_examples], description="Frozen regression cases: created once, never overlapping the holdout, hash-checked ever after.")
def regression_suite(context: dg.AssetExecutionContext, loop: LoopResource, holdout_suite: suites.FrozenSuite) -> suites.FrozenSuite:
    spec = loop.spec()
    suite = suites.freeze_suite(spec, "regression", loop.loop_home().task_dir(spec.name, "suites"), exclude=[holdout_suite])
    context.add_output_metadata(_suite_metadata(suite))
    return suite


@dg.asset(
    deps=[labeled_examples, production_log],
    check_specs=[dg.AssetCheckSpec("no_contamination", asset="curated_dataset", blocking=True, description="No training or validation row repeats a frozen suite row or a behaviour probe, exactly or nearly.")],
    description="Validated, PII-scrubbed, licence-filtered, de-duplicated train/validation split; bad rows quarantined with a reason.",
)
def curated_dataset(
    context: dg.AssetExecutionContext, loop: LoopResource, holdout_suite: suites.FrozenSuite, regression_suite: suites.FrozenSuite
):
    spec = loop.spec()
    base = base_model.prepare_base_model(spec.base_model, loop.loop_home().artifacts / "base_models")
    suites = [holdout_suite, regression_suite]
    # Labelled production feedback (never a bare thumbs-down) joins the labelled examples.
    feedback = production_log.write_feedback_examples(spec, loop.loop_home().task_dir(spec.name, "feedback"))
    dataset = curation.curate_dataset(
        spec, suites, loop.loop_home().task_dir(spec.name, "datasets"), token_length=prompts.rendered_length(spec, base.directory),
        extra_inputs=[feedback] if feedback else [],
    )
    report = dataset.report
    yield dg.Output(
        dataset,
        data_version=dg.DataVersion(dataset.data_version),
        metadata={
            "data_version": dataset.data_version,
            "rows_read": report.rows_read,
            "train_rows": report.train_rows,
            "validation_rows": report.validation_rows,
            "quarantined_rows": sum(report.quarantined.values()),
            "quarantine_reasons": dg.MetadataValue.json(report.quarantined),
            "revoked_source_rows": dg.MetadataValue.json(report.revoked_removed),
            "pii_replacements": dg.MetadataValue.json(report.pii_replacements),
            "duplicates_removed": report.duplicates_removed,
            "near_duplicates_removed": report.near_duplicates_removed,
            "contamination_removed": dg.MetadataValue.json(report.contamination_removed),
            "suite_rows_reserved": dg.MetadataValue.json(report.suite_rows_reserved),
            "truncation_rate": report.truncation_rate,
            "per_label_train": dg.MetadataValue.json(report.per_label_train),
            "per_slice_train": dg.MetadataValue.json(report.per_slice_train),
            "dedup_audit": dg.MetadataValue.md(report.dedup_audit_markdown),
            "quarantine_path": dg.MetadataValue.path(str(dataset.quarantine_path)),
            "feedback_rows_in": sum(1 for _ in feedback.open()) if feedback else 0,
            "directory": dg.MetadataValue.path(str(dataset.directory)),
        },
    )
    remaining = contamination.contamination_between(spec, dataset, suites)
    yield dg.AssetCheckResult(
        check_name="no_contamination",
        passed=not remaining,
        description=f"{len(remaining)} curated rows overlap a frozen suite or probe" if remaining else "no curated row overlaps a frozen suite or probe",
        metadata={
            "removed_during_curation": dg.MetadataValue.json(report.contamination_removed),
            "remaining_overlaps": len(remaining),
            "examples": dg.MetadataValue.json(remaining[:5]),
        },
    )


# What a GPU worker needs: dagster-k8s gives the step's pod one GPU; the `gpu` concurrency pool
# (limit 1 per GPU in dagster.yaml) keeps a second training step from sharing it.
TRAINING_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}},
    },
}
TRAINING_POOL = "gpu"
# Run-level tag for jobs that train; dagster.yaml's run queue admits one such run at a time.
TRAINING_RUN_TAGS = {"finetune_loop/gpu": "1"}
# A killed or crashed training step is retried; each retry resumes from the last checkpoint of the
# same data version and task spec, so a retry costs at most checkpoint_every_steps steps.
TRAINING_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


@dg.asset(
    description="LoRA/QLoRA adapter trained with TRL SFTTrainer (resumable from checkpoints), logged to MLflow and registered with alias `challenger`.",
    tags={"finetune_loop/stage": "train"},
    op_tags=TRAINING_OP_TAGS,
    pool=TRAINING_POOL,
    retry_policy=TRAINING_RETRY_POLICY,
)
def lora_adapter(
    context: dg.AssetExecutionContext, loop: LoopResource, curated_dataset: curation.CuratedDataset, holdout_suite: suites.FrozenSuite
) -> trainer.TrainedAdapter:
    spec = loop.spec()
    home = loop.loop_home()
    tracker = loop.tracker(spec)
    base = base_model.prepare_base_model(spec.base_model, home.artifacts / "base_models")
    out_dir = home.task_dir(spec.name, "adapters") / context.run.run_id
    try:
        adapter = trainer.train_adapter(
            spec, base, curated_dataset, holdout_suite.content_hash, out_dir, tracker, _run_tags(context),
            checkpoints_root=home.task_dir(spec.name, "checkpoints"),
        )
    except trainer.TrainingConfigError as exc:
        # A retry cannot fix the task file; only crashes and kills are worth retrying.
        raise dg.Failure(str(exc), allow_retries=False) from exc
    context.add_output_metadata(
        {
            "mlflow_run_id": adapter.mlflow_run_id,
            "mlflow_run": _mlflow_link(tracker, adapter.mlflow_run_id),
            "model_name": adapter.model_version.name,
            "model_version": adapter.model_version.version,
            "data_version": curated_dataset.data_version,
            "base_model_sha256": base.source_sha256,
            "train_rows_used": adapter.train_rows_used,
            "steps": adapter.steps,
            "final_train_loss": adapter.final_train_loss,
            "validation_loss": adapter.validation_loss if adapter.validation_loss is not None else float("nan"),
            "tokens_per_second": adapter.tokens_per_second,
            "train_seconds": adapter.train_seconds,
            "device": adapter.device,
            "resumed_from_step": adapter.resumed_from_step,
            "peak_memory_mb": adapter.peak_memory_mb,
            "loss_curve": dg.MetadataValue.path(str(adapter.loss_curve_path)),
            "adapter_path": dg.MetadataValue.path(str(adapter.directory)),
        }
    )
    return adapter


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
    champion_version: str | None = None
    holdout_hash: str = ""
    report_path: str = ""


@dg.asset(
    check_specs=[
        dg.AssetCheckSpec(
            "release_gate", asset="eval_report", blocking=True,
            description="Candidate ≥ threshold, > base, non-inferior to the champion (paired bootstrap), no slice regression, regression suite and behaviour probes above their thresholds.",
        )
    ],
    description="Base vs candidate vs champion on the frozen holdout, the regression suite and the behaviour probes; the release_gate check blocks promotion and export.",
)
def eval_report(
    context: dg.AssetExecutionContext,
    loop: LoopResource,
    lora_adapter: trainer.TrainedAdapter,
    holdout_suite: suites.FrozenSuite,
    regression_suite: suites.FrozenSuite,
):
    spec = loop.spec()
    home = loop.loop_home()
    tracker = loop.tracker(spec)
    base = base_model.prepare_base_model(spec.base_model, home.artifacts / "base_models")
    out_dir = home.task_dir(spec.name, "evals") / context.run.run_id
    champion_ref = tracker.version_by_alias(spec.registered_model_name, CHAMPION_ALIAS)
    champion = (
        report.ChampionAdapter(champion_ref.version, tracker.download_version(champion_ref, out_dir / "champion_bundle"))
        if champion_ref else None
    )
    result = report.evaluate_candidate(
        spec, base.directory, lora_adapter.directory, lora_adapter.model_version.version, holdout_suite.path, regression_suite.path,
        out_dir, tracker, champion,
        {**_run_tags(context), "model_version": lora_adapter.model_version.version},
    )
    # The evaluation joins the candidate's bundle, so a rollback target carries its own evidence.
    tracker.log_artifact(lora_adapter.model_version.run_id, result.report_path, registry.BUNDLE_ARTIFACT_PATH)
    verdict = result.verdict
    candidate = result.models["candidate"]
    report = EvalReport(
        base_accuracy=result.base.primary,
        candidate_accuracy=result.candidate.primary,
        gate_passed=verdict.passed,
        gate_summary=verdict.summary(),
        candidate_version=lora_adapter.model_version,
        mlflow_run_id=result.mlflow_run_id,
        champion_version=champion.version if champion else None,
        holdout_hash=holdout_suite.content_hash,
        report_path=str(result.report_path),
    )
    yield dg.Output(
        report,
        metadata={
            "primary_metric": result.candidate.primary_name,
            "base_accuracy": result.base.primary,
            "candidate_accuracy": result.candidate.primary,
            "champion_accuracy": result.champion.primary if result.champion else float("nan"),
            "champion_version": champion.version if champion else "none",
            "candidate_regression_pass_rate": candidate.regression.primary if candidate.regression else float("nan"),
            "regression_newly_failing": dg.MetadataValue.json(result.newly_failing[:20]),
            "candidate_probe_pass_rate": candidate.probes.pass_rate if candidate.probes and candidate.probes.cases else float("nan"),
            "gate_passed": verdict.passed,
            "gate": verdict.summary(),
            "gate_lines": dg.MetadataValue.md("\n".join(f"- **{g.name}** {g.line()}" for g in verdict.sub_gates)),
            "holdout_rows": len(result.candidate.correct),
            "frontier": result.frontier_summary,
            "mlflow_run_id": result.mlflow_run_id,
            "mlflow_run": _mlflow_link(tracker, result.mlflow_run_id),
            "candidate_model_version": lora_adapter.model_version.version,
            "eval_seconds": result.seconds,
            "table": dg.MetadataValue.md(result.table_markdown),
            "chart": dg.MetadataValue.md(report.chart_markdown(result.chart_path)),
            "chart_path": dg.MetadataValue.path(str(result.chart_path)),
            "report_path": dg.MetadataValue.path(str(result.report_path)),
        },
    )
    failed = [g.name for g in verdict.sub_gates if not g.passed]
    yield dg.AssetCheckResult(
        check_name="release_gate",
        passed=verdict.passed,
        description=("PASSED all sub-gates" if verdict.passed else f"FAILED {', '.join(failed)}") + f" — {verdict.summary()}",
        metadata={g.name: dg.MetadataValue.text(g.line()) for g in verdict.sub_gates},
    )


@dataclass(frozen=True)
class Champion:
    model_name: str
    version: str
    previous_version: str | None


@dg.asset(description="Moves MLflow alias `champion` to the candidate that passed the gate (under a registry lock; the one it replaces keeps `previous-champion`).")
def champion_model(context: dg.AssetExecutionContext, loop: LoopResource, eval_report: EvalReport) -> Champion:
    # The blocking check already stops this asset in a run; this guards a hand-picked
    # materialization of champion_model alone, which runs no check.
    if not eval_report.gate_passed:
        raise dg.Failure(f"release gate failed, not promoting: {eval_report.gate_summary}")
    spec = loop.spec()
    candidate = eval_report.candidate_version
    try:
        result = registry.promote(
            loop.tracker(spec), loop.loop_home().task_dir(spec.name, "locks"), candidate.name, candidate.version,
            evaluated_against=eval_report.champion_version, holdout_primary=eval_report.candidate_accuracy, holdout_hash=eval_report.holdout_hash,
        )
    except registry.PromotionError as exc:
        raise dg.Failure(str(exc), allow_retries=False) from exc
    champion = Champion(result.model_name, result.version, result.previous_version)
    context.add_output_metadata(
        {
            "model_name": champion.model_name,
            "version": champion.version,
            "previous_version": champion.previous_version or "none",
            "candidate_accuracy": eval_report.candidate_accuracy,
            "recheck": result.recheck or "champion unchanged since evaluation",
        }
    )
    return champion


GGUF_CHECKS = {
    gguf_checks.MATCHES_MERGED_MODEL: "The unquantized GGUF under llama.cpp agrees with the merged HF model: top-1 next token and the label picked by the evaluation's rule (most likely whole answer) on the holdout.",
    gguf_checks.QUANT_WITHIN_BUDGET: "Every quantized file's holdout accuracy is within the task's budget (points) of the merged model.",
    gguf_checks.CHAT_TEMPLATE_ROUNDTRIP: "Training prompt tokens = GGUF chat template = Ollama Modelfile TEMPLATE; generation stops at EOS.",
}


@dg.asset(
    check_specs=[dg.AssetCheckSpec(name, asset="gguf_export", blocking=True, description=text) for name, text in GGUF_CHECKS.items()],
    description="Merged model as GGUF (unquantized + quantized) with Ollama Modelfiles and a model card, verified under llama.cpp.",
)
def gguf_export(
    context: dg.AssetExecutionContext,
    loop: LoopResource,
    champion_model: Champion,
    eval_report: EvalReport,
    lora_adapter: trainer.TrainedAdapter,
    holdout_suite: suites.FrozenSuite,
):
    spec = loop.spec()
    home = loop.loop_home()
    tracker = loop.tracker(spec)
    base = base_model.prepare_base_model(spec.base_model, home.artifacts / "base_models")
    out_dir = home.task_dir(spec.name, "exports") / f"v{champion_model.version}"
    result = export.export_and_verify(
        spec, base, lora_adapter.directory, holdout_suite.path, out_dir, tracker,
        eval_accuracies={"base": eval_report.base_accuracy, "candidate": eval_report.candidate_accuracy},
        model_version=(champion_model.model_name, champion_model.version),
        run_tags={**_run_tags(context), "model_version": champion_model.version},
    )
    # The shipped GGUF, its Modelfile and the model card join the version's rollback bundle (the
    # version's source), so rolling back to this version serves the very file these checks passed.
    for path in result.shipped_files():
        tracker.log_artifact(lora_adapter.model_version.run_id, path, registry.BUNDLE_ARTIFACT_PATH)
    per_variant = {}
    for variant in result.variants:
        per_variant |= {
            f"size_mb_{variant.name}": round(variant.size_bytes / 2**20, 1),
            f"accuracy_{variant.name}": variant.accuracy,
            f"generation_tokens_per_second_{variant.name}": round(variant.generation_tokens_per_second, 1),
        }
    yield dg.Output(
        result,
        metadata={
            "gguf_path": dg.MetadataValue.path(str(result.gguf_path)),
            "quant_type": result.quant_type,
            "file_size_mb": round(result.file_size_bytes / 2**20, 1),
            "unquantized_path": dg.MetadataValue.path(str(result.unquantized_path)),
            "outtype": result.outtype,
            "outtype_reason": result.outtype_reason,
            "accuracy_gguf": result.accuracy_gguf,
            "accuracy_delta": result.accuracy_delta,
            "merged_accuracy": result.merged_accuracy,
            "candidate_accuracy": eval_report.candidate_accuracy,
            "merge_max_abs_logit_diff": result.merge_max_abs_logit_diff,
            "adapter_was_qlora": result.adapter_was_qlora,
            "variants": dg.MetadataValue.md(result.variants_markdown()),
            **per_variant,
            "modelfile": dg.MetadataValue.path(str(result.variants[1].modelfile_path)),
            "model_card": dg.MetadataValue.path(str(result.model_card_path)),
            "export_seconds": result.seconds,
            "mlflow_run_id": result.mlflow_run_id,
            "mlflow_run": _mlflow_link(tracker, result.mlflow_run_id),
        },
    )
    for check in result.checks:
        yield dg.AssetCheckResult(check_name=check.name, passed=check.passed, description=check.description, metadata=check.metadata)


def _champion_eval_accuracy(instance: dg.DagsterInstance) -> float | None:
    """The serving champion's holdout accuracy when it was promoted (None before the first champion)."""
    event = instance.get_latest_materialization_event(champion_model.key)
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return metadata["candidate_accuracy"].value if "candidate_accuracy" in metadata else None


@dg.asset(deps=[production_log], description="Evidently drift of the latest production window against the training data: inputs, predictions, feedback labels, feedback accuracy.")
def drift_report(context: dg.AssetExecutionContext, loop: LoopResource, curated_dataset: curation.CuratedDataset) -> drift.DriftResult:
    spec = loop.spec()
    tracker = loop.tracker(spec)
    if spec.production_log_path is None:
        raise dg.Failure(f"task {spec.name} names no data.production_log in {spec.spec_path}: nothing to monitor")
    report_path = loop.loop_home().task_dir(spec.name, "drift") / f"{context.run.run_id}.html"
    log = production_log.read_production_log(spec.production_log_path, spec.fields.input, spec.labels)
    quarantine_path = report_path.with_suffix(".quarantine.jsonl")
    files.write_jsonl(quarantine_path, log.quarantine)
    window = log.window(spec.drift.window_days)
    if not window.records:
        raise dg.Failure(f"no usable production rows in {spec.production_log_path}; {len(log.quarantine)} quarantined, reasons in {quarantine_path}")
    reference = readers.read_examples(curated_dataset.train_path)
    eval_accuracy = _champion_eval_accuracy(context.instance)
    result = drift.build_drift_report(
        [e.text for e in reference], [e.label for e in reference], window.records, report_path, spec.drift, eval_accuracy
    )
    signal_values = {f"signal_{s.name}": s.value for s in result.signals.values() if s.value is not None}
    with tracker.run(f"drift-{spec.name}", tags={"stage": "drift", "signals_fired": ",".join(result.signals_fired), **_run_tags(context)}) as run_id:
        tracker.log_metrics(run_id, {"drift_share": result.drift_share, "drift_detected": float(result.drift_detected), **signal_values})
        tracker.log_params(
            run_id,
            {"reference_data_version": curated_dataset.data_version, "current_rows": result.current_rows,
             "window": f"{window.first_timestamp} .. {window.last_timestamp}", "settings": spec.drift},
        )
        tracker.log_artifact(run_id, report_path, "drift")
        tracker.log_text(run_id, result.signals_markdown(), "drift/signals.md")
    context.add_output_metadata(
        {
            "drift_detected": result.drift_detected,
            "signals_fired": ", ".join(result.signals_fired) or "none",
            "signals": dg.MetadataValue.md(result.signals_markdown()),
            "drift_share": result.drift_share,
            "drift_share_threshold": result.drift_share_threshold,
            "feedback_accuracy": result.feedback_accuracy if result.feedback_accuracy is not None else float("nan"),
            "champion_eval_accuracy": eval_accuracy if eval_accuracy is not None else float("nan"),
            "feedback_rows": result.feedback_rows,
            "report_path": dg.MetadataValue.path(str(report_path)),
            "reference_rows": result.reference_rows,
            "current_rows": result.current_rows,
            "quarantined_rows": len(log.quarantine),
            "quarantine_path": dg.MetadataValue.path(str(quarantine_path)),
            "window": f"{window.first_timestamp} .. {window.last_timestamp}",
            "window_end": window.last_timestamp,
            "columns": dg.MetadataValue.json(result.columns),
            "mlflow_run_id": run_id,
            "mlflow_run": _mlflow_link(tracker, run_id),
        }
    )
    return result
