"""The metadata contract: one frozen dataclass per asset, written by the asset, read back by sensors,
schedules, the CLI summary and the tests.

An asset builds its dataclass and calls `to_dagster()`; a reader calls `from_dagster()` on the
materialization's metadata. A key the reader expects and the writer did not write raises
`MetadataContractError` naming the asset and the keys, so renaming a field breaks loudly in every
reader (and in the tests) instead of a sensor silently reading its default and never retraining.

Field kinds: plain `str`, `int`, `float`, `bool` and `None` (absent value, e.g. no champion yet) are
stored as themselves; `markdown_field()`, `path_field()`, `url_field()` and `json_field()` mark fields that the UI renders
as such.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, TypeVar

import dagster as dg

_KIND = "finetune_loop.metadata_kind"
_WRITERS = {
    "markdown": dg.MetadataValue.md,
    "path": lambda value: dg.MetadataValue.path(str(value)),
    "url": dg.MetadataValue.url,
    "json": dg.MetadataValue.json,
}

T = TypeVar("T", bound="AssetMetadata")


class MetadataContractError(KeyError):
    """Metadata read back lacks a key its contract declares."""


def markdown_field():
    return dataclasses.field(metadata={_KIND: "markdown"})


def path_field():
    return dataclasses.field(metadata={_KIND: "path"})


def url_field():
    return dataclasses.field(metadata={_KIND: "url"})


def json_field():
    return dataclasses.field(metadata={_KIND: "json"})


def _value(value: Any, kind: str | None) -> dg.MetadataValue:
    if value is None:
        return dg.MetadataValue.null()
    if kind is not None:
        return _WRITERS[kind](value)
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    return dg.MetadataValue.text(str(value))


@dataclass(frozen=True, kw_only=True)
class AssetMetadata:
    asset: ClassVar[str]

    def to_dagster(self) -> dict[str, dg.MetadataValue]:
        return {f.name: _value(getattr(self, f.name), f.metadata.get(_KIND)) for f in dataclasses.fields(self)}

    @classmethod
    def from_sources(cls: type[T], *sources: object, **values: Any) -> T:
        """The contract filled from `values`, then, field by field, from the first source object
        that has an attribute of the field's name (a report, an adapter, an export result). A field
        neither gives is a TypeError: nothing is left at a default."""
        for f in dataclasses.fields(cls):
            if f.name not in values:
                source = next((s for s in sources if hasattr(s, f.name)), None)
                if source is not None:
                    values[f.name] = getattr(source, f.name)
        return cls(**values)

    @classmethod
    def from_dagster(cls: type[T], metadata: Mapping[str, Any]) -> T:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in metadata]
        if missing:
            raise MetadataContractError(f"{cls.asset} metadata lacks {missing} (present: {sorted(metadata)})")
        return cls(**{name: _read(metadata[name]) for name in names})


def _read(entry: Any) -> Any:
    return entry.value if isinstance(entry, dg.MetadataValue) else entry


@dataclass(frozen=True, kw_only=True)
class TrackedMetadata(AssetMetadata):
    """An asset whose work is an MLflow run: its id, and a link that opens it in the MLflow UI."""

    mlflow_run_id: str
    mlflow_run: str = url_field()


@dataclass(frozen=True, kw_only=True)
class SuiteMetadata(AssetMetadata):
    asset: ClassVar[str] = "holdout_suite / regression_suite"
    content_hash: str
    size: int
    created_this_run: bool
    path: str = path_field()
    per_label: dict = json_field()
    per_slice: dict = json_field()
    # Rows left out when the suite was frozen, per reason (revoked source, over-long input, …).
    excluded: dict = json_field()


@dataclass(frozen=True, kw_only=True)
class RecentSuiteMetadata(AssetMetadata):
    asset: ClassVar[str] = "recent_suite"
    # Empty when no labelled request is in the window: the gate then says "not evaluated".
    content_hash: str | None
    size: int
    window: str
    training_cutoff: str | None
    # Admitted labels no version trained on: their window rows up to this time train too.
    admitted_label_cutoffs: dict = json_field()
    window_rows: int
    per_label: dict = json_field()
    excluded: dict = json_field()
    feedback_quarantined: int
    feedback_quarantine_reasons: dict = json_field()
    suite_path: str | None = path_field()


@dataclass(frozen=True, kw_only=True)
class CuratedDatasetMetadata(AssetMetadata):
    asset: ClassVar[str] = "curated_dataset"
    data_version: str
    base_model_sha256: str
    rows_read: int
    train_rows: int
    validation_rows: int
    quarantined_rows: int
    quarantine_reasons: dict = json_field()
    revoked_source_rows: dict = json_field()
    erased_removed: int
    pii_replacements: dict = json_field()
    duplicates_removed: int
    near_duplicates_removed: int
    contamination_removed: dict = json_field()
    suite_rows_reserved: dict = json_field()
    truncation_rate: float
    per_label_train: dict = json_field()
    per_slice_train: dict = json_field()
    dedup_audit: str = markdown_field()
    quarantine_path: str = path_field()
    feedback_rows_in: int
    directory: str = path_field()


@dataclass(frozen=True, kw_only=True)
class LoraAdapterMetadata(TrackedMetadata):
    asset: ClassVar[str] = "lora_adapter"
    model_name: str
    model_version: str
    data_version: str
    base_model_sha256: str
    train_rows_used: int
    steps: int
    final_train_loss: float
    validation_loss: float | None
    tokens_per_second: float
    train_seconds: float
    device: str
    resumed_from_step: int | None
    peak_memory_mb: float
    loss_curve: str = path_field()
    adapter_path: str = path_field()


@dataclass(frozen=True, kw_only=True)
class EvalReportMetadata(TrackedMetadata):
    asset: ClassVar[str] = "eval_report"
    primary_metric: str
    base_accuracy: float
    candidate_accuracy: float
    champion_accuracy: float | None
    champion_version: str | None
    candidate_model_version: str
    candidate_regression_pass_rate: float | None
    candidate_probe_pass_rate: float | None
    regression_newly_failing: list = json_field()
    gate_passed: bool
    gate: str
    gate_lines: str = markdown_field()
    # Each paired sub-gate's operating characteristic: the chance a candidate δ points better or worse passes.
    gate_power: dict = json_field()
    holdout_rows: int
    # The recent suite: labelled production requests newer than any model's training feedback.
    recent_rows: int
    recent_suite_hash: str | None
    recent_candidate_accuracy: float | None
    recent_champion_accuracy: float | None
    trigger: str
    frontier: str
    # The memorisation check in one line: verbatim training rows of candidate and base, canaries exposed.
    memorisation: str
    eval_seconds: float
    table: str = markdown_field()
    chart: str = markdown_field()
    chart_path: str = path_field()
    report_path: str = path_field()


@dataclass(frozen=True, kw_only=True)
class GgufExportMetadata(TrackedMetadata):
    asset: ClassVar[str] = "gguf_export"
    model_name: str
    model_version: str
    shipped: bool
    failed_checks: str
    gguf_path: str = path_field()
    quant_type: str
    file_size_mb: float
    unquantized_path: str = path_field()
    outtype: str
    outtype_reason: str
    accuracy_gguf: float
    accuracy_delta: float
    merged_accuracy: float
    candidate_accuracy: float
    merge_max_abs_logit_diff: float
    adapter_was_qlora: bool
    variants: str = markdown_field()
    # Per file: size MB, holdout accuracy, delta vs merged, generation tokens/s.
    variant_stats: dict = json_field()
    modelfile: str = path_field()
    model_card: str = path_field()
    export_seconds: float


@dataclass(frozen=True, kw_only=True)
class ChampionModelMetadata(AssetMetadata):
    asset: ClassVar[str] = "champion_model"
    model_name: str
    version: str
    previous_version: str | None
    candidate_accuracy: float
    champion_since: str
    recheck: str
    # Erasure requests this promotion closed ("completed: …") or left open (why), by request id.
    erasures: dict = json_field()


@dataclass(frozen=True, kw_only=True)
class DriftReportMetadata(TrackedMetadata):
    asset: ClassVar[str] = "drift_report"
    drift_detected: bool
    signals_fired: str
    signals: str = markdown_field()
    drift_share: float
    drift_share_threshold: float
    feedback_accuracy: float | None
    # The serving champion's holdout score as the registry records it (None: no champion yet).
    champion_version: str | None
    champion_eval_accuracy: float | None
    feedback_rows: int
    report_path: str = path_field()
    reference_rows: int
    current_rows: int
    quarantined_rows: int
    quarantine_path: str = path_field()
    window: str
    window_end: str
    # The loop's clock when the report was made (`clock.utc_now()`, simulated or not): the drift
    # sensor's cooldown is measured between these, not between Dagster's storage times.
    reported_at: str
    columns: dict = json_field()
    # Feedback naming labels the task does not know (the new_labels signal): rows in the window, and
    # drift.new_labels_summary (count, share, per label its count and scrubbed examples). Defaults
    # for writers that predate the signal; from_dagster still requires both keys.
    new_label_rows: int = 0
    new_labels: dict = dataclasses.field(default_factory=dict, metadata={_KIND: "json"})


@dataclass(frozen=True, kw_only=True)
class ServingQualityMetadata(TrackedMetadata):
    asset: ClassVar[str] = "serving_quality"
    weeks: int
    # The newest week with labelled feedback (None: no feedback yet); `summary` says whether it was evaluated.
    latest_feedback_accuracy: float | None
    latest_week: str | None
    gate_line: float
    # Evaluated weeks (at least drift.min_signal_rows labelled rows) below the gate line.
    weeks_below_gate: int
    promotions: int
    rollbacks: int
    summary: str = markdown_field()
    table: str = markdown_field()
    chart: str = markdown_field()
    chart_path: str = path_field()
