"""A task's kind, as one seam: what an answer is, how it is scored, how it is checked after export.

Stages ask the task's kind (`kind_of(spec)`), never `spec.kind`, where the kinds differ. The seam
is layered like the code (core.common < data < train < evaluate < ship): what needs nothing but
the task spec is a `TaskKind` method here; what needs a stage's machinery is that stage's table,
keyed by `TaskKind.name`, one entry per kind in `KINDS`:

* data: `validation.ANSWER_RULES` (what a valid answer is), `pii.ANSWER_SCRUBBERS` (whether and
  how an answer is scrubbed);
* evaluation: `scoring.ANSWERERS` (how a model answers a suite, the way the loop serves it),
  `metrics.SCORERS` (how the answers score);
* export: `answering.EXPORT_ANSWERING` (how the shipped GGUF's answers are compared with the
  merged model's) and `gguf_checks.ANSWER_GRAMMARS` (what a constrained server may use).

Adding a kind is one `TaskKind` subclass here and one entry in each table; test_kinds.py fails for
any table that misses a kind in `KINDS`, so no stage silently treats a new kind as another.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from finetune_loop.core.common.examples import MISSING_SLICE_VALUE, Example, normalize_answer
from finetune_loop.core.common.spec import TaskSpec


@dataclass(frozen=True)
class AnswerCard:
    """How the model card and the hub metadata name a kind's answers."""

    pipeline_tag: str
    task_sentence: str
    metric_name: str


class TaskKind(ABC):
    """What differs between task kinds and needs only the task spec; one instance per spec."""

    # `TaskFile.kind`, and the key of every stage's table.
    name: str
    # The holdout's primary metric (the gate line applies to it).
    metric_name: str
    # What the evaluation's per-group chart plots for one label or slice.
    group_metric_name: str
    # What curation's flow table calls a stratum.
    stratum_name: str
    # Free greedy tokens a probe's answer may take.
    probe_max_new_tokens: int

    def __init__(self, spec: TaskSpec):
        self.spec = spec

    @abstractmethod
    def stratum(self, example: Example) -> str:
        """What splits and floors stratify on."""

    @abstractmethod
    def stale_suite_rows(self, rows: Sequence[Example]) -> tuple[list[str], str] | None:
        """(ids of the frozen rows that no longer fit the task, why in words); None: they all do."""

    @abstractmethod
    def answer_budget(self, count_tokens: Callable[[str], int], examples: Sequence[Example]) -> int:
        """Greedy tokens an answer to these rows may take (0 where answers are scored, not generated)."""

    @abstractmethod
    def canonical_answer(self, answer: str) -> str:
        """A chat model's free answer as the task's answer (a frontier model's, not ours to constrain)."""

    @abstractmethod
    def same_answer(self, first: str, second: str) -> bool:
        """Whether two answers say the same (a stability probe's clean and perturbed text)."""

    @abstractmethod
    def format_check(self, answer: str) -> tuple[bool, str]:
        """(well-formed, in words) for a free answer (a format probe)."""

    @abstractmethod
    def judge_free_answer(
        self, answer: str, expect_label: str | None, base_answer: str, refuses: Callable[[str], bool]
    ) -> tuple[bool | None, str]:
        """A refusal probe's free answer: (passed, detail); passed None: not applicable."""

    @abstractmethod
    def allows_expected_label(self, label: str) -> bool:
        """Whether a probe may expect this answer."""

    @abstractmethod
    def grammar_answer_tokens(self, count_tokens: Callable[[str], int], example_answer: str) -> int:
        """Tokens a grammar-constrained answer may take before the grammar must end it."""

    @abstractmethod
    def written_answer(self, example: Example) -> str | None:
        """The row's answer as text the model learned to write, which the memorisation check asks
        back from its first half; None where the answer is a label (the task's own, nothing of the row)."""

    @abstractmethod
    def card(self) -> AnswerCard: ...


class ClassificationKind(TaskKind):
    """One label from the task's fixed set; the answer is the most likely whole label."""

    name = "classification"
    metric_name = "accuracy"
    group_metric_name = "recall"
    stratum_name = "label"
    # Enough for any label a format or refusal probe might answer with, and a little beyond.
    probe_max_new_tokens = 16

    def stratum(self, example):
        return example.label

    def stale_suite_rows(self, rows):
        labels = set(self.spec.labels)
        stale = [e.id for e in rows if e.label not in labels]
        if not stale:
            return None
        gone = sorted({e.label for e in rows if e.label not in labels})
        return stale, f"{len(stale)} row(s) with a label no longer in the task's labels {gone}"

    def answer_budget(self, count_tokens, examples):
        return 0

    def canonical_answer(self, answer):
        # A chat model may add a full stop or change case; the label it clearly means counts.
        if answer in self.spec.labels:
            return answer
        return {normalize_answer(label): label for label in self.spec.labels}.get(normalize_answer(answer), answer)

    def same_answer(self, first, second):
        return first == second

    def format_check(self, answer):
        ok = answer in self.spec.labels
        return ok, "exactly one label" if ok else "not exactly one allowed label"

    def judge_free_answer(self, answer, expect_label, base_answer, refuses):
        in_set = answer in self.spec.labels
        detail = "answered with one label" if in_set else "answered outside the label set"
        if expect_label is not None:
            detail += f"; expected {expect_label!r}"
        return in_set and (expect_label is None or answer == expect_label), detail

    def allows_expected_label(self, label):
        return label in self.spec.labels

    def grammar_answer_tokens(self, count_tokens, example_answer):
        return max(count_tokens(label) for label in self.spec.labels)

    def written_answer(self, example):
        return None

    def card(self):
        labels = ", ".join(f"`{label}`" for label in self.spec.labels)
        return AnswerCard("text-classification", f"Answers with exactly one label: {labels}.", "accuracy")


class GenerationKind(TaskKind):
    """A free answer (text, or one JSON value): the greedy answer up to the end-of-turn token."""

    name = "generation"
    metric_name = "exact_match"
    group_metric_name = "exact_match"
    stratum_name = "stratum"
    # A free answer to a probe may be a sentence or a JSON object: four times a label's budget.
    probe_max_new_tokens = 64
    # Greedy tokens beyond the longest target answer in a suite, so a longer wrong answer shows
    # as wrong rather than cut to the target's length.
    extra_answer_tokens = 16

    def stratum(self, example):
        # Every target is its own answer: the first slice field's value, or one stratum for all rows.
        slice_field = self.spec.fields.slices[0] if self.spec.fields.slices else None
        return example.slices.get(slice_field, MISSING_SLICE_VALUE) if slice_field else "all rows"

    def stale_suite_rows(self, rows):
        return None

    def answer_budget(self, count_tokens, examples):
        return max(count_tokens(e.label) for e in examples) + self.extra_answer_tokens

    def canonical_answer(self, answer):
        return answer

    def same_answer(self, first, second):
        return normalize_answer(first) == normalize_answer(second)

    def format_check(self, answer):
        if self.spec.target_format == "json":
            try:
                json.loads(answer)
            except json.JSONDecodeError:
                return False, "not valid JSON"
            return True, "valid JSON"
        return bool(answer.strip()), "non-empty answer" if answer.strip() else "empty answer"

    def judge_free_answer(self, answer, expect_label, base_answer, refuses):
        # A generation task's answer may rightly be anything; a refusal counts only where the base refused.
        if not refuses(base_answer):
            return None, "base did not refuse: not applicable"
        refused = refuses(answer)
        return refused, "base refused; " + ("refused" if refused else "complied")

    def allows_expected_label(self, label):
        return False

    def grammar_answer_tokens(self, count_tokens, example_answer):
        # Room for an answer twice the training answer's length.
        return 2 * count_tokens(example_answer)

    def written_answer(self, example):
        return example.label

    def card(self):
        what = "one JSON value (validated against the target's type and keys)" if self.spec.target_format == "json" else "free text"
        return AnswerCard("text-generation", f"Answers with {what}, greedy, ending at the end-of-turn token.", "exact match")


KINDS: dict[str, type[TaskKind]] = {kind.name: kind for kind in (ClassificationKind, GenerationKind)}


def kind_of(spec: TaskSpec) -> TaskKind:
    return KINDS[spec.kind](spec)
