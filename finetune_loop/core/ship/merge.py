"""Merging a LoRA adapter into its full-precision base, checked against base + adapter.

`merge_adapter` folds the adapter in fp32 (also a QLoRA adapter, into the unquantized base), saves
a plain HF model directory and fails when the merged model's logits drift from base + adapter's
beyond a tolerance; `training_tokenizer_dir` says which tokenizer the adapter was trained with.
It is its own module because merging is the first, torch/peft-only step of an export and is
tested on its own; the GGUF writing and the llama.cpp runs live in gguf_writer.py and
llama_runtime.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from finetune_loop.core.train.trainer import REBUILD_MANIFEST_FILE

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class MergeMismatchError(RuntimeError):
    """The merged model does not compute what base + adapter computed."""


@dataclass(frozen=True)
class MergedModel:
    directory: Path
    # Largest |logit| difference between the merged model and base + adapter (PeftModel) over
    # every position of the sampled prompts.
    max_abs_logit_diff: float
    prompts_checked: int
    # The adapter was trained against 4-bit weights; it was merged into the unquantized base.
    adapter_was_qlora: bool


def adapter_was_trained_with_qlora(adapter_dir: Path) -> bool:
    """What the adapter's rebuild manifest says training actually did (the plan, after any CPU fallback)."""
    manifest_path = Path(adapter_dir) / REBUILD_MANIFEST_FILE
    if not manifest_path.is_file():
        return False
    return bool(json.loads(manifest_path.read_text()).get("plan", {}).get("qlora", False))


def merge_adapter(
    base_model_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    check_prompts: Sequence[Sequence[int]] = (),
    tolerance: float = 1e-3,
) -> MergedModel:
    """Fold a LoRA adapter into its full-precision base, check it, and save a plain HF model directory.

    The merge adds B @ A * scale to every adapted weight. Doing it in fp32 keeps that small update
    intact; merging into fp16/bf16 or 4-bit weights rounds much of it away, and the merged model
    would no longer behave like base + adapter did in evaluation. A QLoRA adapter is therefore
    merged into the unquantized base too: the base directory holds full-precision weights, loaded
    here without any quantization config. `check_prompts` (token ids) are run through base + adapter before the
    merge and through the merged model after; a logit difference above `tolerance` is an error.
    """
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_model_dir, adapter_dir = Path(base_model_dir), Path(adapter_dir)
    base_config = json.loads((base_model_dir / "config.json").read_text())
    if "quantization_config" in base_config:
        raise MergeMismatchError(
            f"the base in {base_model_dir} is saved quantized ({base_config['quantization_config'].get('quant_method', '?')}); "
            "merging a LoRA update into quantized weights loses it. Point base_model at the unquantized checkpoint."
        )
    tokenizer = AutoTokenizer.from_pretrained(training_tokenizer_dir(adapter_dir, base_model_dir))
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    adapted = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    token_ids = [list(prompt) for prompt in check_prompts]

    def logits(model) -> list[torch.Tensor]:
        with torch.no_grad():
            return [model(input_ids=torch.tensor([ids])).logits[0] for ids in token_ids]

    expected = logits(adapted)
    merged = adapted.merge_and_unload()
    max_diff = max((float((a - b).abs().max()) for a, b in zip(expected, logits(merged))), default=0.0)
    if max_diff > tolerance:
        raise MergeMismatchError(
            f"merging {adapter_dir} into {base_model_dir} changed the logits by up to {max_diff:.3g} "
            f"(tolerance {tolerance:g}, {len(token_ids)} prompts): the merged model is not base + adapter"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return MergedModel(out_dir, max_diff, len(token_ids), adapter_was_trained_with_qlora(adapter_dir))


def training_tokenizer_dir(adapter_dir: Path, base_dir: Path) -> Path:
    """Training may have changed the tokenizer (pad token, chat template); when it saved one beside
    the adapter, that is the one the adapter was trained with."""
    adapter_has_tokenizer = any((Path(adapter_dir) / name).is_file() for name in _TOKENIZER_FILES)
    return Path(adapter_dir) if adapter_has_tokenizer else Path(base_dir)
