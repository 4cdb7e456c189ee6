"""Group `data`: the labelled examples and the production log as observed sources, the frozen suites,
and the curated training set with its `no_contamination` check. Core: `finetune_loop.core.data`."""


import dataclasses
from collections import Counter
from datetime import datetime

import dagster as dg

from finetune_loop.core.common.files import write_jsonl
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.common.tracker import CHAMPION_ALIAS
from finetune_loop.core.data import curation, readers, recent, suites
from finetune_loop.core.data import production_log as production
from finetune_loop.core.data.validation import reason_kind
from finetune_loop.core.ship.registry import trained_label_sets, untrained_labels
from finetune_loop.defs.common import file_or_directory_version
from finetune_loop.defs.metadata import (
    CuratedDatasetMetadata,
    RecentSuiteMetadata,
    SuiteMetadata,
)
from finetune_loop.defs.resources import LoopResource

GROUP = "data"


@dg.observable_source_asset(description="Labelled examples named by the task's data.labeled_examples.")
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
    description="Append-only production log (a directory of JSONL files) named by the task's data.production_log."
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
    deps=[labeled_examples, dg.AssetKey("base_model")],
    description="Frozen holdout: created once (designated file or seeded split) under curation's rules, verified (hash, labels, sources) ever after.",
)
def holdout_suite(loop: LoopResource) -> dg.Output[suites.FrozenSuite]:
    return _freeze(loop, "holdout", exclude=[])


@dg.asset(
    deps=[labeled_examples, dg.AssetKey("base_model")],
    description="Frozen regression cases: created once under curation's rules, never overlapping the holdout, verified ever after.",
)
def regression_suite(loop: LoopResource, holdout_suite: suites.FrozenSuite) -> dg.Output[suites.FrozenSuite]:
    return _freeze(loop, "regression", exclude=[holdout_suite])


def _champion_tags(loop: LoopResource) -> dict[str, str]:
    """The serving champion's registry tags; none without a champion."""
    spec = loop.spec()
    tracker = loop.tracker()
    champion = tracker.version_by_alias(spec.registered_model_name, CHAMPION_ALIAS)
    return tracker.version_tags(spec.registered_model_name, champion.version) if champion else {}


def _feedback_until(champion_tags: dict[str, str]) -> datetime | None:
    until = champion_tags.get(recent.FEEDBACK_UNTIL_TAG)
    return datetime.fromisoformat(until) if until else None


def _labels_never_trained(spec: TaskSpec, champion_tags: dict[str, str]) -> list[str]:
    """Admitted labels the serving champion does not know. A version that trained on one and was
    refused (or not shipped) does not end the carve-out: until a champion knows the label, its rows
    inside the recent window are all the training rows it has."""
    return untrained_labels(spec.labels, trained_label_sets([champion_tags]))


@dg.asset(
    deps=[production_log, dg.AssetKey("base_model")],
    description="Recent suite: trusted labelled production requests of the last recent_suite.days, newer than the champion's "
    "training feedback; frozen per evaluation, never trained on.",
)
def recent_suite(loop: LoopResource, holdout_suite: suites.FrozenSuite, regression_suite: suites.FrozenSuite) -> dg.Output[recent.RecentSuite]:
    spec = loop.spec()
    if spec.production_log_path is None:
        value = recent.RecentSuite(None, None, None, 0, note="the task names no data.production_log")
    else:
        log = production.read_task_log(spec, check_labels=False)
        champion_tags = _champion_tags(loop)
        value = recent.freeze_recent_suite(
            spec, log, loop.task_dir("suites"), champion_feedback_until=_feedback_until(champion_tags),
            untrained_labels=_labels_never_trained(spec, champion_tags), exclude=[holdout_suite, regression_suite], token_length=loop.token_length(),
        )
        # The same read of the log gives curated_dataset the feedback older than the suite.
        cutoff = value.training_cutoff.timestamp() if value.training_cutoff else "none"
        name = f"feedback-{production.log_data_version(spec.production_log_path)}-{cutoff}.jsonl"
        value = dataclasses.replace(value, training_feedback=recent.write_training_feedback(spec, log, value, loop.task_dir("feedback") / name))
    quarantine_path = None
    if value.feedback_quarantine:
        quarantine_path = loop.task_dir("feedback") / "feedback_quarantine.jsonl"
        write_jsonl(quarantine_path, value.feedback_quarantine)
    metadata = RecentSuiteMetadata(
        content_hash=value.suite.content_hash if value.suite else None,
        size=value.size,
        window=value.note,
        training_cutoff=value.training_cutoff.isoformat() if value.training_cutoff else None,
        admitted_label_cutoffs={label: cutoff.isoformat() for label, cutoff in value.admitted_cutoffs.items()},
        window_rows=value.window_rows,
        per_label=value.suite.per_label if value.suite else {},
        excluded=value.excluded,
        feedback_quarantined=len(value.feedback_quarantine),
        feedback_quarantine_reasons=dict(Counter(reason_kind(q["reason"]) for q in value.feedback_quarantine)),
        suite_path=str(value.suite.path) if value.suite else None,
    )
    return dg.Output(value, metadata=metadata.to_dagster())


@dg.asset(
    # The base's tokenizer measures rendered lengths (over-long rows are quarantined).
    deps=[labeled_examples, production_log, dg.AssetKey("base_model")],
    check_specs=[dg.AssetCheckSpec("no_contamination", asset="curated_dataset", blocking=True, description="No training or validation row repeats a frozen suite row (holdout, regression, recent) or a behaviour probe, exactly or nearly.")],
    description="Validated, PII-scrubbed, licence-filtered, de-duplicated train/validation split; bad rows quarantined with a reason.",
)
def curated_dataset(
    loop: LoopResource, holdout_suite: suites.FrozenSuite, regression_suite: suites.FrozenSuite, recent_suite: recent.RecentSuite,
):
    spec = loop.spec()
    base = loop.base_model()
    frozen = [holdout_suite, regression_suite] + ([recent_suite.suite] if recent_suite.suite else [])
    # Trusted labelled feedback older than the recent suite joins the labelled examples (never a
    # bare thumbs-down, never a row the recent suite judges).
    feedback = recent_suite.training_feedback
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


# This stage's assets: `definitions.py` puts them in group GROUP (per task on the platform).
ASSETS = [labeled_examples, production_log, holdout_suite, regression_suite, recent_suite, curated_dataset]
