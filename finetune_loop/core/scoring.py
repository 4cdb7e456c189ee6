"""How a model answers a suite: label likelihood for classification, greedy generation otherwise.

Classification scores every allowed label by the total log-probability of its rendered answer
tokens (exactly the tokens training taught, up to and including the end-of-turn token) and picks
the best. The answer is always one label, no output parsing, and the cost is a few batched forward
passes:

1. the instruction prefix every prompt shares goes through the model once; its key/value cache is
   copied per batch (the label list alone is most of a triage prompt);
2. each row's own suffix (ticket + assistant header), left-padded, attends to that cache: the logits
   of its last token give every label's first answer token;
3. the cache is repeated once per label and all labels' remaining tokens run as one batch.

Causal attention makes every log-probability identical (up to float rounding) to a full forward
pass over prompt + answer; the tests check that against a brute-force per-label computation.
"""

from __future__ import annotations

import copy
from typing import Sequence

from finetune_loop.core.models import render_completion, render_prompt
from finetune_loop.core.specs import TaskSpec

# Rows per batch: the label stage runs batch_size × labels rows at once.
DEFAULT_BATCH_SIZE = 16


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


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Leading tokens every row shares, keeping at least one token per row out of it: the logits
    of a row's last prompt token must come from that row's own forward pass."""
    first = rows[0]
    common = min(len(r) for r in rows) - 1
    for row in rows[1:]:
        common = next((i for i in range(common) if row[i] != first[i]), common)
    return max(common, 0)


def label_log_likelihoods(model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, float]]:
    """For every text, label -> total log-probability of that label's answer tokens after the prompt."""
    import torch
    from transformers import DynamicCache

    if not texts:
        return []
    labels = list(spec.labels)
    sequences = label_token_sequences(tokenizer, spec)
    prompts = [tokenizer(render_prompt(tokenizer, spec, t), add_special_tokens=False)["input_ids"] for t in texts]
    prefix_length = _common_prefix_length(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    # Every answer token after the first is predicted from the position of the token before it,
    # so the label stage feeds each answer minus its last token (right-padded: causal attention
    # keeps padding out of the real positions) and reads the next token's log-probability.
    feed_length = max(len(s) for s in sequences.values()) - 1
    feeds = torch.full((len(labels), feed_length), pad_id, dtype=torch.long)
    targets = torch.zeros((len(labels), feed_length), dtype=torch.long)
    target_mask = torch.zeros((len(labels), feed_length))
    for j, label in enumerate(labels):
        answer = sequences[label]
        feeds[j, : len(answer) - 1] = torch.tensor(answer[:-1])
        targets[j, : len(answer) - 1] = torch.tensor(answer[1:])
        target_mask[j, : len(answer) - 1] = 1.0
    first_tokens = torch.tensor([sequences[label][0] for label in labels], device=device)

    model.eval()
    results: list[dict[str, float] | None] = [None] * len(prompts)
    with torch.no_grad():
        prefix_cache = DynamicCache(config=model.config)
        if prefix_length:
            model(input_ids=torch.tensor([prompts[0][:prefix_length]], device=device), cache=prefix_cache, use_cache=True)
        # Batches of similar length waste less compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            totals = _score_batch(
                model, prefix_cache, prefix_length, [prompts[i][prefix_length:] for i in batch], pad_id,
                first_tokens, feeds, targets, target_mask,
            )
            for r, index in enumerate(batch):
                results[index] = {label: float(totals[r, j]) for j, label in enumerate(labels)}
    return results  # type: ignore[return-value]


def _score_batch(model, prefix_cache, prefix_length, suffixes, pad_id, first_tokens, feeds, targets, target_mask):
    """rows × labels total log-probabilities for one batch of prompt suffixes."""
    import torch

    device = first_tokens.device
    rows, label_count = len(suffixes), feeds.shape[0]
    width = max(len(s) for s in suffixes)
    suffix_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, prefix_length + width), dtype=torch.long)
    attention[:, :prefix_length] = 1
    positions = torch.full((rows, width), prefix_length, dtype=torch.long)
    for r, suffix in enumerate(suffixes):
        # Left padding puts every row's last prompt token in the last column.
        suffix_ids[r, width - len(suffix) :] = torch.tensor(suffix)
        attention[r, prefix_length + width - len(suffix) :] = 1
        positions[r, width - len(suffix) :] = torch.arange(prefix_length, prefix_length + len(suffix))
    cache = copy.deepcopy(prefix_cache)
    if prefix_length:
        cache.batch_repeat_interleave(rows)
    last_logits = model(
        input_ids=suffix_ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
        cache=cache, use_cache=True,
    ).logits[:, -1].float()
    totals = torch.log_softmax(last_logits, dim=-1)[:, first_tokens].cpu()

    # Row r's cache once per label: (row r, label j) is batch row r * labels + j.
    cache.batch_repeat_interleave(label_count)
    feed_length = feeds.shape[1]
    prompt_lengths = torch.tensor([prefix_length + len(s) for s in suffixes]).repeat_interleave(label_count)
    feed_attention = torch.cat(
        [attention.repeat_interleave(label_count, dim=0), torch.ones((rows * label_count, feed_length), dtype=torch.long)], dim=1
    )
    feed_logits = model(
        input_ids=feeds.repeat(rows, 1).to(device),
        attention_mask=feed_attention.to(device),
        position_ids=(prompt_lengths[:, None] + torch.arange(feed_length)[None, :]).to(device),
        cache=cache,
        use_cache=True,
    ).logits.float()
    log_probs = torch.log_softmax(feed_logits, dim=-1).gather(-1, targets.repeat(rows, 1).to(device)[..., None])[..., 0].cpu()
    totals += (log_probs * target_mask.repeat(rows, 1)).sum(dim=1).view(rows, label_count)
    return totals


def predict_labels(model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
    """The most likely label per text (ties go to the label listed first in the task)."""
    scores = label_log_likelihoods(model, tokenizer, spec, texts, batch_size=batch_size)
    return [max(spec.labels, key=lambda label: row[label]) for row in scores]


def generate_answers(model, tokenizer, spec: TaskSpec, texts: Sequence[str], *, max_new_tokens: int, batch_size: int = DEFAULT_BATCH_SIZE) -> list[str]:
    """Free greedy answers, batched, each cut at the end-of-turn token that stops generation:
    how a generation task answers, and what a classification model says when nothing constrains it
    (the behaviour probes)."""
    import torch

    stop_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
    prompts = [render_prompt(tokenizer, spec, t) for t in texts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str | None] = [None] * len(prompts)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last position of every row
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            encoded = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            encoded = encoded.to(next(model.parameters()).device)
            with torch.no_grad():
                generated = model.generate(
                    **encoded, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_id, pad_token_id=pad_id,
                )
            for row, index in enumerate(batch):
                tokens = generated[row, encoded["input_ids"].shape[1] :].tolist()
                tokens = tokens[: tokens.index(stop_id)] if stop_id in tokens else tokens
                answers[index] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    finally:
        tokenizer.padding_side = previous_side
    return answers  # type: ignore[return-value]
