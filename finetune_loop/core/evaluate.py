"""Evaluation on the frozen holdout: every model answers with exactly one allowed label.

Predictions use greedy decoding constrained to the label set (a token trie over the rendered
answers), batched with a KV cache: a handful of forward passes per batch instead of one free
generation per example, and never an answer outside the label set that would need parsing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from finetune_loop.core.curate import Example, read_examples
from finetune_loop.core.gate import GateVerdict, decide_release
from finetune_loop.core.registry import Tracker
from finetune_loop.core.models import render_completion, render_prompt
from finetune_loop.core.specs import TaskSpec


@dataclass(frozen=True)
class Scores:
    accuracy: float
    per_label_accuracy: dict[str, float]
    predictions: list[str]


def label_token_sequences(tokenizer, spec: TaskSpec) -> dict[str, tuple[int, ...]]:
    """Each label's answer tokens up to and including the end-of-turn token that stops generation."""
    stop_id = tokenizer.eos_token_id
    sequences = {}
    for label in spec.labels:
        ids = tokenizer(render_completion(tokenizer, spec, "-", label), add_special_tokens=False)["input_ids"]
        if stop_id not in ids:
            raise ValueError(f"the chat template does not close the answer with the EOS token {tokenizer.eos_token!r}")
        sequences[label] = tuple(ids[: ids.index(stop_id) + 1])
    if len(set(sequences.values())) != len(sequences):
        raise ValueError("two labels render to the same tokens; rename one of them")
    return sequences


def predict_labels(model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, batch_size: int = 16) -> list[str]:
    import torch

    sequences = label_token_sequences(tokenizer, spec)
    by_tokens = {tokens: label for label, tokens in sequences.items()}
    # children[prefix] = token ids allowed after that prefix of some label's answer
    children: dict[tuple[int, ...], set[int]] = {}
    for tokens in sequences.values():
        for cut in range(len(tokens)):
            children.setdefault(tokens[:cut], set()).add(tokens[cut])
    allowed = {prefix: sorted(ids) for prefix, ids in children.items()}
    max_answer = max(len(t) for t in sequences.values())
    stop_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id

    prompts = [render_prompt(tokenizer, spec, text) for text in texts]
    # Batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    predictions: list[str | None] = [None] * len(prompts)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch_ids = order[start : start + batch_size]
            encoded = tokenizer([prompts[i] for i in batch_ids], return_tensors="pt", padding=True, add_special_tokens=False)
            prompt_len = encoded["input_ids"].shape[1]

            def allowed_next(_row: int, input_ids: "torch.Tensor") -> list[int]:
                prefix = tuple(input_ids[prompt_len:].tolist())
                # A finished row (prefix is a whole answer) only pads until the batch is done.
                return allowed.get(prefix, [pad_id])

            with torch.no_grad():
                generated = model.generate(
                    **encoded,
                    max_new_tokens=max_answer,
                    do_sample=False,
                    prefix_allowed_tokens_fn=allowed_next,
                    eos_token_id=stop_id,
                    pad_token_id=pad_id,
                )
            for row, index in enumerate(batch_ids):
                answer = generated[row, prompt_len:].tolist()
                answer = tuple(answer[: answer.index(stop_id) + 1]) if stop_id in answer else tuple(answer)
                predictions[index] = by_tokens[answer]
    finally:
        tokenizer.padding_side = previous_side
    return predictions  # type: ignore[return-value]


def score(examples: Sequence[Example], predictions: Sequence[str], labels: Sequence[str]) -> Scores:
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        raise ValueError("cannot score an empty suite")
    correct = [e.label == p for e, p in zip(examples, predictions)]
    totals = Counter(e.label for e in examples)
    hits = Counter(e.label for e, ok in zip(examples, correct) if ok)
    per_label = {label: hits[label] / totals[label] for label in labels if totals[label]}
    return Scores(sum(correct) / len(correct), per_label, list(predictions))


def comparison_table(labels: Sequence[str], support: Counter, columns: dict[str, Scores]) -> str:
    """Markdown table: one row per label plus the overall accuracy, one column per model."""
    names = list(columns)
    lines = ["| label | n | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for label in labels:
        if support[label]:
            cells = " | ".join(f"{columns[n].per_label_accuracy[label]:.3f}" for n in names)
            lines.append(f"| {label} | {support[label]} | {cells} |")
    overall = " | ".join(f"**{columns[n].accuracy:.3f}**" for n in names)
    lines.append(f"| **all** | {sum(support.values())} | {overall} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class EvalResult:
    base: Scores
    candidate: Scores
    support: Counter
    verdict: GateVerdict
    table_markdown: str
    mlflow_run_id: str
    seconds: float


def evaluate_candidate(
    spec: TaskSpec,
    base_dir: Path,
    adapter_dir: Path,
    holdout_path: Path,
    tracker: Tracker,
    run_tags: dict[str, str] | None = None,
) -> EvalResult:
    """Base and candidate on the same frozen holdout, in one process, then the release verdict."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    holdout = read_examples(holdout_path)
    texts = [e.text for e in holdout]
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base = score(holdout, predict_labels(model, tokenizer, spec, texts), spec.labels)
    # The adapter wraps the already-loaded base: one load serves both models.
    candidate_model = PeftModel.from_pretrained(model, adapter_dir)
    candidate = score(holdout, predict_labels(candidate_model, tokenizer, spec, texts), spec.labels)
    verdict = decide_release(spec.gate, candidate_accuracy=candidate.accuracy, base_accuracy=base.accuracy)
    support = Counter(e.label for e in holdout)
    table = comparison_table(spec.labels, support, {"base": base, "candidate": candidate})
    seconds = time.perf_counter() - started

    with tracker.run(f"eval-{spec.name}", tags={"stage": "eval", **(run_tags or {})}) as run_id:
        tracker.log_params(run_id, {"holdout_rows": len(holdout), "holdout_path": holdout_path, "gate": spec.gate})
        tracker.log_metrics(
            run_id,
            {"base_accuracy": base.accuracy, "candidate_accuracy": candidate.accuracy, "gate_passed": float(verdict.passed), "eval_seconds": seconds},
        )
        tracker.set_tags(run_id, {"gate_verdict": verdict.summary()})
        tracker.log_text(run_id, table, "eval_table.md")
        rows = [
            {"id": e.id, "label": e.label, "base": b, "candidate": c}
            for e, b, c in zip(holdout, base.predictions, candidate.predictions)
        ]
        tracker.log_text(run_id, "\n".join(json.dumps(r) for r in rows), "predictions.jsonl")
    return EvalResult(base, candidate, support, verdict, table, run_id, seconds)
