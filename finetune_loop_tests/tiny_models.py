"""Tiny, fully local stand-ins for SmolLM2 and Qwen2: byte-level BPE tokenizers and 2-layer models.

Tests build them in a fraction of a second, so nothing is ever fetched from the Hugging Face hub,
yet they exercise the same code paths as the real bases: ChatML special tokens, a chat template,
grouped-query attention (kv heads < heads), tied embeddings and (Qwen2) q/k/v biases and Qwen2's
own pre-tokenizer regex.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from finetune_loop.core.ship.gguf_writer import QWEN2_SPLIT_REGEX

# SmolLM2-Instruct's ChatML layout, without its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 400, *, qwen2: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, laid out like SmolLM2's (same special tokens, no BOS);
    with `qwen2`, split like Qwen2's tokenizer (its regex and NFC normalizer, then bytes)."""
    tokenizer = Tokenizer(models.BPE())
    if qwen2:
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        # The GPT-2 split regex + byte-level alphabet: what llama.cpp implements as pre-tokenizer "gpt-2".
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets only touches offsets; it adds no tokens, so nothing (no BOS) is prepended.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        # Every byte gets a token, so any text (emoji, accents) can be encoded without an unk.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        add_bos_token=False,
    )


# architecture -> (model class, config class); Mistral is the llama layout with its own config.
TINY_ARCHITECTURES = {
    "llama": (LlamaForCausalLM, LlamaConfig),
    "mistral": (MistralForCausalLM, MistralConfig),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config),
}


def build_tiny_model(
    out_dir: Path, texts: Iterable[str], *, architecture: str = "llama", seed: int = 0, hidden_size: int = 64
) -> Path:
    """Save a randomly initialised 2-layer model and its tokenizer to `out_dir` (HF layout).

    Qwen2 gets Qwen2's pre-tokenizer and its q/k/v biases. The default width splits every weight
    row into whole Q8_0 blocks (32); k-quants (Q4_K_M) need rows of 256, which `hidden_size=256` gives."""
    model_class, config_class = TINY_ARCHITECTURES[architecture]
    tokenizer = build_tiny_tokenizer(texts, qwen2=architecture == "qwen2")
    extra = {"rope_theta": 1_000_000.0} if architecture == "qwen2" else {}
    config = config_class(**_tiny_dimensions(tokenizer, hidden_size), **extra)
    return _save(model_class, config, tokenizer, out_dir, seed)


def build_tiny_llama(out_dir: Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    return build_tiny_model(out_dir, texts, architecture="llama", seed=seed)


def _tiny_dimensions(tokenizer, hidden_size: int) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # The default 0.02 leaves attention scores near zero (uniform attention), which would hide a
        # wrong Q/K layout; 0.2 makes attention sharp and logits spread, so export bugs show.
        initializer_range=0.2,
    )


def _save(model_class, config, tokenizer, out_dir: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        # Norm weights start at exactly 1.0 and biases at 0; perturbing them makes a misplaced or
        # dropped norm or bias tensor visible in the outputs.
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
