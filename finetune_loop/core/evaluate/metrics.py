"""Task metrics of one model's answers on one suite, overall and per slice.

Classification: accuracy (the primary metric), macro-F1, per-label precision/recall/F1, confusion
table. Generation: exact match (primary), normalised match, and for JSON targets schema validity
(the answer parses to the same JSON type with the same keys) and per-field F1. Every result keeps
its per-example correctness, which the gate's paired bootstrap and the regression diff use.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from finetune_loop.core.common.examples import MISSING_SLICE_VALUE, Example, normalize_answer
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec


@dataclass(frozen=True)
class LabelStats:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Scores:
    # The gate's metric: accuracy (classification) or exact match (generation).
    primary_name: str
    primary: float
    predictions: list[str]
    # 1.0 where the answer is right, per example, in suite order.
    correct: list[float]
    # Every other metric by name (macro_f1, normalized_match, json_valid, ...).
    metrics: dict[str, float] = field(default_factory=dict)
    per_label: dict[str, LabelStats] = field(default_factory=dict)
    # confusion[true][predicted] = count (classification only).
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    # slice field -> slice value -> (primary metric, rows).
    per_slice: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    per_field_f1: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """The primary metric; named accuracy where callers (export, drift) compare accuracies."""
        return self.primary


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def score(examples: Sequence[Example], predictions: Sequence[str], labels: Sequence[str]) -> Scores:
    """Classification metrics of `predictions` against the examples' labels."""
    _check_lengths(examples, predictions)
    correct = [float(e.label == p) for e, p in zip(examples, predictions)]
    confusion: dict[str, dict[str, int]] = {}
    for e, p in zip(examples, predictions):
        confusion.setdefault(e.label, {}).setdefault(p, 0)
        confusion[e.label][p] += 1
    predicted = Counter(predictions)
    support = Counter(e.label for e in examples)
    per_label = {}
    for label in labels:
        hits = confusion.get(label, {}).get(label, 0)
        precision = hits / predicted[label] if predicted[label] else 0.0
        recall = hits / support[label] if support[label] else 0.0
        per_label[label] = LabelStats(precision, recall, _f1(precision, recall), support[label])
    # Macro-F1 over the labels the suite contains: a label with no rows has no recall to average.
    present = [s.f1 for label, s in per_label.items() if s.support]
    accuracy = sum(correct) / len(correct)
    return Scores(
        primary_name="accuracy",
        primary=accuracy,
        predictions=list(predictions),
        correct=correct,
        metrics={"accuracy": accuracy, "macro_f1": sum(present) / len(present)},
        per_label=per_label,
        confusion=confusion,
        per_slice=_per_slice(examples, correct),
    )


def score_generation(examples: Sequence[Example], predictions: Sequence[str], target_format: str) -> Scores:
    """Generation metrics: exact match is primary; JSON targets add validity and per-field F1."""
    _check_lengths(examples, predictions)
    correct = [float(p.strip() == e.label.strip()) for e, p in zip(examples, predictions)]
    normalized = [float(normalize_answer(p) == normalize_answer(e.label)) for e, p in zip(examples, predictions)]
    metrics = {"exact_match": sum(correct) / len(correct), "normalized_match": sum(normalized) / len(normalized)}
    per_field: dict[str, float] = {}
    if target_format == "json":
        valid, per_field = _json_scores(examples, predictions)
        metrics["json_valid"] = valid
        if per_field:
            metrics["field_f1_macro"] = sum(per_field.values()) / len(per_field)
    return Scores(
        primary_name="exact_match",
        primary=metrics["exact_match"],
        predictions=list(predictions),
        correct=correct,
        metrics=metrics,
        per_slice=_per_slice(examples, correct),
        per_field_f1=per_field,
    )


def _label_scores(spec: TaskSpec, examples: Sequence[Example], predictions: Sequence[str]) -> Scores:
    return score(examples, predictions, spec.labels)


def _generation_scores(spec: TaskSpec, examples: Sequence[Example], predictions: Sequence[str]) -> Scores:
    return score_generation(examples, predictions, spec.target_format)


# How answers score, per task kind (core/common/kinds.py).
SCORERS: dict[str, Callable[[TaskSpec, Sequence[Example], Sequence[str]], Scores]] = {
    "classification": _label_scores, "generation": _generation_scores,
}


def score_suite(spec: TaskSpec, examples: Sequence[Example], predictions: Sequence[str]) -> Scores:
    return SCORERS[kind_of(spec).name](spec, examples, predictions)


def _json_scores(examples: Sequence[Example], predictions: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Share of answers that parse to the target's JSON type with the target's keys, and per
    top-level field F1: a field counts as predicted when the answer has it, and as right when its
    value equals the target's."""
    valid = 0
    # field -> [true positives, predicted, expected]
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for e, p in zip(examples, predictions):
        target = json.loads(e.label)
        try:
            answer = json.loads(p)
        except json.JSONDecodeError:
            answer = None
        if isinstance(target, dict):
            answer_fields = answer if isinstance(answer, dict) else {}
            valid += isinstance(answer, dict) and set(answer) == set(target)
            for key in set(target) | set(answer_fields):
                tally = counts[key]
                tally[0] += key in target and key in answer_fields and answer_fields[key] == target[key]
                tally[1] += key in answer_fields
                tally[2] += key in target
        else:
            valid += type(answer) is type(target)
    per_field = {}
    for key, (hits, predicted, expected) in sorted(counts.items()):
        precision = hits / predicted if predicted else 0.0
        recall = hits / expected if expected else 0.0
        per_field[key] = _f1(precision, recall)
    return valid / len(examples), per_field


def _per_slice(examples: Sequence[Example], correct: Sequence[float]) -> dict[str, dict[str, tuple[float, int]]]:
    by_slice: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e, ok in zip(examples, correct):
        for slice_field in e.slices:
            by_slice[slice_field][e.slices[slice_field]].append(ok)
    # A row without a value for a field some rows carry is its own "(missing)" slice value.
    for slice_field, values in by_slice.items():
        for e, ok in zip(examples, correct):
            if slice_field not in e.slices:
                values[MISSING_SLICE_VALUE].append(ok)
    return {
        f: {value: (sum(oks) / len(oks), len(oks)) for value, oks in sorted(values.items())}
        for f, values in sorted(by_slice.items())
    }


def _check_lengths(examples: Sequence[Example], predictions: Sequence[str]) -> None:
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        raise ValueError("cannot score an empty suite")
