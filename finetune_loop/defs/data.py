"""Group `data`: the labelled examples and the production log as observed sources, the frozen suites,
and the curated training set with its `no_contamination` check. Core: `finetune_loop.core.data`."""


import dagster as dg

from finetune_loop.core.data import curation, readers, suites
from finetune_loop.core.data import production_log as production
from finetune_loop.defs.common import file_or_directory_version
from finetune_loop.defs.metadata import CuratedDatasetMetadata, SuiteMetadata
from finetune_loop.defs.resources import LoopResource

GROUP = "data"


@dg.observable_source_asset(group_name=GROUP, description="Labelled examples named by the task's data.labeled_examples.")
def labeled_examples(loop: LoopResource) -> dg.ObserveResult:
    spec = loop.spec()
    if spec.labeled_examples_hub_id:
        return dg.ObserveResult(
            data_version=dg.DataVersion(readers.hub_dataset_fingerprint(spec.labeled_examples_hub_id)),
            metadata={"hub_dataset": spec.labeled_examples_hub_id},
        )
    return dg.ObserveResult(
        data_version=file_or_directory_version(spec.labeled_examples_path),
        metadata={"path": dg.MetadataValue.path(str(spec.labeled_examples_path))},
    )


@dg.observable_source_asset(
    group_name=GROUP, description="Append-only production log (a directory of JSONL files) named by the task's data.production_log."
)
def production_log(loop: LoopResource) -> dg.ObserveResult:
    spec = loop.spec()
    if spec.production_log_path is None:
        return dg.ObserveResult(data_version=dg.DataVersion("not-configured"), metadata={"path": "the task names no data.production_log"})
    # The version hashes every file's name and content: it changes when a new file arrives.
    return dg.ObserveResult(
        data_version=dg.DataVersion(production.log_data_version(spec.production_log_path)),
        metadata={"path": dg.MetadataValue.path(str(spec.production_log_path)), "files": len(production.log_files(spec.production_log_path))},
    )


def _suite_output(suite: suites.FrozenSuite) -> dg.Output:
    metadata = SuiteMetadata(
        content_hash=suite.content_hash, size=suite.size, created_this_run=suite.created, path=str(suite.path),
        per_label=suite.per_label, per_slice=suite.per_slice, excluded=suite.excluded,
    )
    return dg.Output(suite, metadata=metadata.to_dagster())


def _freeze(loop: LoopResource, name: str, exclude: list[suites.FrozenSuite]) -> dg.Output[suites.FrozenSuite]:
    # Suites obey training's rules too: the length rule needs the base's tokenizer.
    return _suite_output(suites.freeze_suite(loop.spec(), name, loop.task_dir("suites"), exclude=exclude, token_length=loop.token_length()))


@dg.asset(
    group_name=GROUP, deps=[labeled_examples, dg.AssetKey("base_model")],
    description="Frozen holdout: created once (designated file or seeded split) under curation's rules, verified (hash, labels, sources) ever after.",
)
def holdout_suite(loop: LoopResource) -> dg.Output[suites.FrozenSuite]:
    return _freeze(loop, "holdout", exclude=[])


@dg.asset(
    group_name=GROUP, deps=[labeled_examples, dg.AssetKey("base_model")],
    description="Frozen regression cases: created once under curation's rules, never overlapping the holdout, verified ever after.",
)
def regression_suite(loop: LoopResource, holdout_suite: suites.FrozenSuite) -> dg.Output[suites.FrozenSuite]:
    return _freeze(loop, "regression", exclude=[holdout_suite])


@dg.asset(
    group_name=GROUP,
    # The base's tokenizer measures rendered lengths (over-long rows are quarantined).
    deps=[labeled_examples, production_log, dg.AssetKey("base_model")],
    check_specs=[dg.AssetCheckSpec("no_contamination", asset="curated_dataset", blocking=True, description="No training or validation row repeats a frozen suite row or a behaviour probe, exactly or nearly.")],
    description="Validated, PII-scrubbed, licence-filtered, de-duplicated train/validation split; bad rows quarantined with a reason.",
)
def curated_dataset(loop: LoopResource, holdout_suite: suites.FrozenSuite, regression_suite: suites.FrozenSuite):
    spec = loop.spec()
    base = loop.base_model()
    frozen = [holdout_suite, regression_suite]
    # Labelled production feedback (never a bare thumbs-down) joins the labelled examples.
    feedback = production.write_feedback_examples(spec, loop.task_dir("feedback"))
    dataset = curation.curate_dataset(
        spec, frozen, loop.task_dir("datasets"), token_length=loop.token_length(),
        extra_inputs=[feedback] if feedback else [],
    )
    report = dataset.report
    metadata = CuratedDatasetMetadata.from_sources(
        report, dataset,
        base_model_sha256=base.source_sha256,
        quarantined_rows=sum(report.quarantined.values()),
        quarantine_reasons=report.quarantined,
        revoked_source_rows=report.revoked_removed,
        pii_replacements=report.pii_replacements,
        dedup_audit=report.dedup_audit_markdown,
        feedback_rows_in=sum(1 for _ in feedback.open()) if feedback else 0,
    )
    yield dg.Output(dataset, data_version=dg.DataVersion(dataset.data_version), metadata=metadata.to_dagster())
    remaining = curation.contamination_between(spec, dataset, frozen)
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
