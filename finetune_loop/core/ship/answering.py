"""What an answer is, for the export's verification: one interface per task kind, two runtimes.

The export judges every GGUF file against the merged HF model on the frozen holdout. What "the
answer" is depends on the task's kind, and this module is the one place that says it:

* classification: the label whose whole answer is most likely after the prompt (the evaluation's
  decision rule; `scoring.score_prompts` on HF, `llama_runtime.run_with_llama_cpp` under llama.cpp);
* generation: the greedy answer up to the end-of-turn token (`scoring.generate_answer_ids` on HF,
  `llama_runtime.generate_with_llama_cpp`), both decoded by the training tokenizer, so the two
  runtimes' texts differ only where their tokens do.

Each runtime's answers come with the top-1 next token after every prompt, which
`matches_merged_model` compares too. The metrics over the answers are the evaluation's
(`metrics.score_suite`); `EXPORT_ANSWERING` is this stage's part of the kind seam
(core/common/kinds.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.evaluate.scoring import (
    answer_budget,
    decode_answer,
    generate_answer_ids,
    label_token_sequences,
    score_prompts,
)
from finetune_loop.core.ship.llama_runtime import (
    LLAMA_CPP_CONTEXT,
    generate_with_llama_cpp,
    run_with_llama_cpp,
)
from finetune_loop.core.train.prompts import PromptSegments


@dataclass(frozen=True)
class RuntimeAnswers:
    answers: list[str]
    next_token_ids: list[int]
    # Measured under llama.cpp only (None for the HF reference).
    prompt_tokens_per_second: float | None = None
    generation_tokens_per_second: float | None = None


class Answering(Protocol):
    """How one task kind answers the holdout, on the merged HF model and under llama.cpp."""

    def reference(self, model) -> RuntimeAnswers: ...

    def under_llama_cpp(self, gguf_path: Path) -> RuntimeAnswers: ...


@dataclass(frozen=True)
class LabelAnswering:
    tokenizer: object
    spec: TaskSpec
    texts: list[str]
    prompts: list[PromptSegments]

    def reference(self, model) -> RuntimeAnswers:
        scores = score_prompts(model, self.tokenizer, self.spec, self.texts)
        return RuntimeAnswers([s.best_label for s in scores], [s.next_token_id for s in scores])

    def under_llama_cpp(self, gguf_path: Path) -> RuntimeAnswers:
        run = run_with_llama_cpp(gguf_path, self.prompts, label_token_sequences(self.tokenizer, self.spec), n_ctx=LLAMA_CPP_CONTEXT)
        return RuntimeAnswers(run.labels, run.next_token_ids, run.prompt_tokens_per_second, run.generation_tokens_per_second)


@dataclass(frozen=True)
class GreedyAnswering:
    tokenizer: object
    spec: TaskSpec
    texts: list[str]
    prompts: list[PromptSegments]
    max_new_tokens: int

    def reference(self, model) -> RuntimeAnswers:
        ids = generate_answer_ids(model, self.tokenizer, self.spec, self.texts, max_new_tokens=self.max_new_tokens)
        return RuntimeAnswers([decode_answer(self.tokenizer, t) for t in ids], [self._first(t) for t in ids])

    def under_llama_cpp(self, gguf_path: Path) -> RuntimeAnswers:
        run = generate_with_llama_cpp(gguf_path, self.prompts, max_tokens=self.max_new_tokens, n_ctx=LLAMA_CPP_CONTEXT)
        answers = [decode_answer(self.tokenizer, t) for t in run.token_ids]
        return RuntimeAnswers(answers, run.next_token_ids, run.prompt_tokens_per_second, run.generation_tokens_per_second)

    def _first(self, tokens: Sequence[int]) -> int:
        # An empty answer is the end-of-turn token straight after the prompt.
        return tokens[0] if tokens else self.tokenizer.eos_token_id


def _label_answering(tokenizer, spec: TaskSpec, holdout: Sequence[Example], prompts: Sequence[PromptSegments]) -> Answering:
    return LabelAnswering(tokenizer, spec, [e.text for e in holdout], list(prompts))


def _greedy_answering(tokenizer, spec: TaskSpec, holdout: Sequence[Example], prompts: Sequence[PromptSegments]) -> Answering:
    return GreedyAnswering(tokenizer, spec, [e.text for e in holdout], list(prompts), answer_budget(tokenizer, spec, holdout))


# How the export answers the holdout on both runtimes, per task kind (core/common/kinds.py).
EXPORT_ANSWERING: dict[str, Callable[[object, TaskSpec, Sequence[Example], Sequence[PromptSegments]], Answering]] = {
    "classification": _label_answering, "generation": _greedy_answering,
}


def answering_for(spec: TaskSpec, tokenizer, holdout: Sequence[Example], prompts: Sequence[PromptSegments]) -> Answering:
    """The task kind's answering over the holdout (`prompts` are its rows' split chat prompts)."""
    return EXPORT_ANSWERING[kind_of(spec).name](tokenizer, spec, holdout, prompts)
