"""Shared-prefix training: the instruction every prompt starts with is computed once per batch.

A task's prompts all open with the same system instruction (the label list alone is often most of
the prompt), so a plain batch spends most of its compute on B identical copies of it. Here the
prefix goes through the model once, its key/value cache is repeated across the batch, and only each
row's own suffix (the ticket and the answer) is computed per row. Causal attention makes the suffix
logits identical to the full-sequence ones, and autograd sums the prefix gradients over the rows,
so the loss and the gradients are those of the plain batch. The one difference: LoRA dropout on the
prefix draws one mask for the batch instead of one per row.

The trainer class is built on first use (`shared_prefix_trainer_class`), not at import: trainer.py
imports this module at its top, as every finetune_loop import is, and the Dagster definitions and
the CLI import trainer.py, which must not cost them torch and TRL (seconds) on every load.
"""

from __future__ import annotations

import functools


def shared_prefix_length(input_ids: list[list[int]], labels: list[list[int]]) -> int:
    """How many leading tokens can be computed once: the longest token prefix every row shares,
    stopping one token before the earliest answer token (the logit that predicts the first answer
    token must come from a row's own forward pass, where its loss is taken)."""
    if not input_ids:
        return 0
    first = input_ids[0]
    common = len(first)
    for ids in input_ids[1:]:
        limit = min(common, len(ids))
        common = next((i for i in range(limit) if ids[i] != first[i]), limit)
    # Labels are -100 except on answer tokens (completion-only loss).
    first_answer = min(next((i for i, label in enumerate(row) if label != -100), len(row)) for row in labels)
    return max(0, min(common, first_answer - 1))


@functools.cache
def shared_prefix_trainer_class() -> type:
    """`SharedPrefixSFTTrainer`, a subclass of TRL's SFTTrainer, defined on the first call (torch,
    transformers and TRL are imported then) and the same class on every later one."""
    import torch
    from transformers import DynamicCache
    from trl import SFTTrainer

    class SharedPrefixSFTTrainer(SFTTrainer):
        """SFTTrainer whose training loss computes the shared instruction prefix once per batch.

        Batches whose rows do not all start with the prefix (never the case for a task's own rows)
        and gradient checkpointing (which recomputes layers without the cache) use the plain path."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            dataset = self.train_dataset
            self.prefix_length = shared_prefix_length(dataset["input_ids"], dataset["labels"])
            self.prefix_ids = torch.tensor(dataset[0]["input_ids"][: self.prefix_length]) if self.prefix_length else None

        def _shares_prefix(self, input_ids: torch.Tensor) -> bool:
            if self.prefix_ids is None or input_ids.shape[1] <= self.prefix_length:
                return False
            return bool((input_ids[:, : self.prefix_length] == self.prefix_ids.to(input_ids.device)).all())

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            input_ids = inputs["input_ids"]
            if return_outputs or "attention_mask" not in inputs or not self._shares_prefix(input_ids):
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            prefix = self.prefix_length
            batch = input_ids.shape[0]
            cache = DynamicCache(config=self.model.config)
            model(input_ids=input_ids[:1, :prefix], past_key_values=cache, use_cache=True)
            # repeat_interleave (not a view) keeps autograd: the prefix gradient is the sum over rows.
            cache.batch_repeat_interleave(batch)
            positions = torch.arange(prefix, input_ids.shape[1], device=input_ids.device).expand(batch, -1)
            logits = model(
                input_ids=input_ids[:, prefix:],
                attention_mask=inputs["attention_mask"],
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).logits
            # logits[:, j] sits at position prefix + j and predicts the token after it.
            labels = inputs["labels"][:, prefix + 1 :]
            per_token = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            answer_tokens = (labels != -100).sum() if num_items_in_batch is None else num_items_in_batch
            return per_token / torch.as_tensor(answer_tokens).clamp(min=1)

    return SharedPrefixSFTTrainer
