"""How a model answers a suite: label likelihood for classification, greedy generation otherwise.

Classification scores every allowed label by the total log-probability of its rendered answer
tokens (exactly the tokens training taught, up to and including the end-of-turn token) and picks
the best. The answer is always one label, no output parsing, and the cost is one forward pass per
batch of prompts:

1. the instruction prefix every prompt shares goes through the model once; its key/value cache is
   copied per batch (the label list alone is much of a triage prompt);
2. each row is its own prompt suffix (ticket + assistant header, left-padded) followed by every
   label's answer tokens packed one after another; a 4-D attention mask lets each label's tokens
   see the prompt and the earlier tokens of the same label only, and position ids restart at the
   prompt's end for every label. Logits at the last prompt token give every label's first answer
   token, logits inside each label's block the rest.

The labels share the prompt's keys and values instead of each getting a copy of them, so a batch
costs little more than the prompts alone. Causal attention makes every log-probability equal (up
to float rounding) to a full forward pass over prompt + answer; the tests check that against a
brute-force per-label computation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.train.prompts import encode_completion, encode_prompt

# Rows per batch: the label stage runs batch_size × labels rows at once.
DEFAULT_BATCH_SIZE = 16


def label_token_sequences(tokenizer, spec: TaskSpec) -> dict[str, tuple[int, ...]]:
    """Each label's answer tokens up to and including the end-of-turn token that stops generation."""
    stop_id = tokenizer.eos_token_id
    sequences = {}
    for label in spec.labels:
        ids = encode_completion(tokenizer, spec, "-", label)
        if stop_id not in ids:
            raise ValueError(f"the chat template does not close the answer with the EOS token {tokenizer.eos_token!r}")
        sequences[label] = tuple(ids[: ids.index(stop_id) + 1])
    if len(set(sequences.values())) != len(sequences):
        raise ValueError("two labels render to the same tokens; rename one of them")
    return sequences


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Leading tokens every row shares, keeping at least one token per row out of it: the logits
    of a row's last prompt token must come from that row's own forward pass."""
    first = rows[0]
    common = min(len(r) for r in rows) - 1
    for row in rows[1:]:
        common = next((i for i in range(common) if row[i] != first[i]), common)
    return max(common, 0)


@dataclass(frozen=True)
class PromptScores:
    # label -> total log-probability of that label's answer tokens after the prompt, in task order.
    labels: dict[str, float]
    # The model's own top-1 next token after the prompt, before any label is scored.
    next_token_id: int

    @property
    def best_label(self) -> str:
        """The most likely label (ties go to the label listed first in the task)."""
        return max(self.labels, key=self.labels.__getitem__)


def label_log_likelihoods(model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, float]]:
    """For every text, label -> total log-probability of that label's answer tokens after the prompt."""
    return [scores.labels for scores in score_prompts(model, tokenizer, spec, texts, batch_size=batch_size)]


def score_prompts(model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[PromptScores]:
    """Every label's answer log-likelihood and the top-1 next token after each text's prompt, from
    the same batched forward passes."""
    import torch
    from transformers import DynamicCache

    if not texts:
        return []
    labels = list(spec.labels)
    sequences = label_token_sequences(tokenizer, spec)
    prompts = [encode_prompt(tokenizer, spec, t) for t in texts]
    prefix_length = _common_prefix_length(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    # Every answer token after the first is predicted from the position of the token before it,
    # so each label contributes its answer minus the last token ("feed"), packed label after label.
    feeds = [sequences[label][:-1] for label in labels]
    packed = [token for feed in feeds for token in feed]
    starts = [sum(len(f) for f in feeds[:j]) for j in range(len(labels))]

    model.eval()
    results: list[PromptScores | None] = [None] * len(prompts)
    with torch.no_grad():
        prefix_cache = DynamicCache(config=model.config)
        if prefix_length:
            model(input_ids=torch.tensor([prompts[0][:prefix_length]], device=device), cache=prefix_cache, use_cache=True, logits_to_keep=1)
        # Batches of similar length waste less compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            suffixes = [prompts[i][prefix_length:] for i in batch]
            log_probs = _packed_forward(model, prefix_cache, prefix_length, suffixes, pad_id, packed, feeds, starts)
            for r, index in enumerate(batch):
                row = {}
                for j, label in enumerate(labels):
                    answer = sequences[label]
                    # Answer token 0 is read at the last prompt token (index 0), token k at the
                    # label's packed token k - 1 (index 1 + starts[j] + k - 1).
                    total = log_probs[r, 0, answer[0]]
                    for k in range(1, len(answer)):
                        total = total + log_probs[r, starts[j] + k, answer[k]]
                    row[label] = float(total)
                results[index] = PromptScores(row, int(log_probs[r, 0].argmax()))
    return results  # type: ignore[return-value]


def _packed_forward(model, prefix_cache, prefix_length, suffixes, pad_id, packed, feeds, starts):
    """Log-probabilities (rows × (1 + packed answer tokens) × vocabulary) of one batch: prompt
    suffixes, each followed by every label's packed answer tokens, over the shared prefix's cache.
    Index 0 is the last prompt token, index 1 + k the k-th packed answer token."""
    import torch

    device = next(model.parameters()).device
    rows, width, packed_length = len(suffixes), max(len(s) for s in suffixes), len(packed)
    queries = width + packed_length
    input_ids = torch.full((rows, queries), pad_id, dtype=torch.long)
    positions = torch.full((rows, queries), prefix_length, dtype=torch.long)
    allowed = torch.zeros((rows, queries, prefix_length + queries), dtype=torch.bool)
    # Every query sees the whole shared prefix (a padding query too: a fully masked row is NaN).
    allowed[:, :, :prefix_length] = True
    causal = torch.tril(torch.ones((width, width), dtype=torch.bool))
    for r, suffix in enumerate(suffixes):
        pad = width - len(suffix)
        # Left padding puts every row's last prompt token in the last suffix column.
        input_ids[r, pad:width] = torch.tensor(suffix)
        input_ids[r, width:] = torch.tensor(packed)
        prompt_length = prefix_length + len(suffix)
        positions[r, pad:width] = torch.arange(prefix_length, prompt_length)
        real = torch.zeros(width, dtype=torch.bool)
        real[pad:] = True
        allowed[r, :width, prefix_length : prefix_length + width] = causal & real[None, :]
        # Each label's tokens see the row's prompt and their own label's earlier tokens.
        allowed[r, width:, prefix_length : prefix_length + width] = real[None, :]
        for feed, start in zip(feeds, starts):
            block = slice(width + start, width + start + len(feed))
            allowed[r, block, prefix_length + width + start : prefix_length + width + start + len(feed)] = torch.tril(
                torch.ones((len(feed), len(feed)), dtype=torch.bool)
            )
            positions[r, block] = torch.arange(prompt_length, prompt_length + len(feed))
    dtype = next(model.parameters()).dtype
    # Additive form: what every attention implementation (eager, sdpa) accepts as a custom mask.
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
    cache = copy.deepcopy(prefix_cache)
    if prefix_length:
        cache.batch_repeat_interleave(rows)
    # Only the last prompt position and the label positions are read: the vocabulary projection
    # (the largest matrix of a small model) runs on those alone.
    logits = model(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device), cache=cache, use_cache=True,
        logits_to_keep=packed_length + 1,
    ).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def predict_labels(model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
    """The most likely label per text (ties go to the label listed first in the task)."""
    return [scores.best_label for scores in score_prompts(model, tokenizer, spec, texts, batch_size=batch_size)]


def generate_answers(model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, max_new_tokens: int, batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
    """Free greedy answers, batched, each cut at the end-of-turn token that stops generation:
    how a generation task answers, and what a classification model says when nothing constrains it
    (the behaviour probes)."""
    ids = generate_answer_ids(model, tokenizer, spec, texts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [decode_answer(tokenizer, tokens) for tokens in ids]


def _scored_labels(model, tokenizer, spec: TaskSpec, texts: Sequence[str], max_new_tokens: int) -> list[str]:
    return predict_labels(model, tokenizer, spec, texts)


def _greedy_answers(model, tokenizer, spec: TaskSpec, texts: Sequence[str], max_new_tokens: int) -> list[str]:
    return generate_answers(model, tokenizer, spec, texts, max_new_tokens=max_new_tokens)


# How a model answers a suite the way the loop serves it, per task kind (core/common/kinds.py):
# the most likely whole label, or the greedy answer within `max_new_tokens`.
ANSWERERS: dict[str, Callable[..., list[str]]] = {"classification": _scored_labels, "generation": _greedy_answers}


def answer_suite(model, tokenizer, spec: TaskSpec, texts: Sequence[str], max_new_tokens: int) -> list[str]:
    return ANSWERERS[kind_of(spec).name](model, tokenizer, spec, texts, max_new_tokens)


def answer_budget(tokenizer, spec: TaskSpec, examples: Sequence[Example]) -> int:
    """Greedy tokens an answer to these rows may take (the evaluation's and the export's)."""
    return kind_of(spec).answer_budget(lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]), examples)


def decode_answer(tokenizer, tokens: Sequence[int]) -> str:
    """An answer's text as every runtime reports it: special tokens dropped, ends stripped."""
    return tokenizer.decode(list(tokens), skip_special_tokens=True).strip()


def generate_answer_ids(
    model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, max_new_tokens: int, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[list[int]]:
    """The greedy answer's token ids per text, up to (without) the end-of-turn token."""
    prompts = [encode_prompt(tokenizer, spec, t) for t in texts]
    return greedy_continuations(model, tokenizer, prompts, [max_new_tokens] * len(prompts), batch_size=batch_size)


def greedy_prefix_lengths(
    model, tokenizer, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[int]:
    """How many leading tokens of each target greedy decoding after its prompt (non-empty) would
    write. Greedy decoding writes target[k] exactly when it is the most likely token after prompt +
    target[:k], so one forward pass over prompt + target answers it, where decoding would take one
    step per token."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(targets[i]))
    lengths = [0] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        rows = [list(prompts[i]) + list(targets[i]) for i in batch]
        width, longest = max(len(r) for r in rows), max(len(targets[i]) for i in batch)
        # Left padding ends every row's target at the last column, so the predictions of all
        # targets are in the last `longest + 1` positions: the vocabulary projection runs on those alone.
        input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.no_grad():
            logits = model(
                input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=longest + 1,
            ).logits
        for row, index in enumerate(batch):
            target = list(targets[index])
            # Kept position j predicts the token after it; target token k is predicted at longest - len + k.
            predicted = logits[row, longest - len(target) : longest].argmax(-1).tolist()
            lengths[index] = next((k for k, (p, t) in enumerate(zip(predicted, target)) if p != t), len(target))
    return lengths


def greedy_continuations(
    model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[list[int]]:
    """The greedy tokens after each prompt (token ids), at most `max_new_tokens[i]` after prompt i,
    cut before the end-of-turn token; batched by prompt length."""
    import torch

    stop_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    continuations: list[list[int] | None] = [None] * len(prompts)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            encoded = tokenizer.pad({"input_ids": [list(prompts[i]) for i in batch]}, return_tensors="pt", padding=True)
            encoded = encoded.to(next(model.parameters()).device)
            with torch.no_grad():
                generated = model.generate(
                    **encoded, max_new_tokens=max(max_new_tokens[i] for i in batch), do_sample=False, eos_token_id=stop_id,
                    pad_token_id=pad_id,
                )
            for row, index in enumerate(batch):
                # Greedy decoding: a row's first k tokens are the same however many the batch runs for.
                tokens = generated[row, encoded["input_ids"].shape[1] :].tolist()[: max_new_tokens[index]]
                continuations[index] = tokens[: tokens.index(stop_id)] if stop_id in tokens else tokens
    finally:
        tokenizer.padding_side = previous_side
    return continuations  # type: ignore[return-value]
