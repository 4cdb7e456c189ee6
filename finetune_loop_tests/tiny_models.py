"""Tiny, fully local stand-ins for SmolLM2: a byte-level BPE tokenizer and a 2-layer llama.

Tests build them in a fraction of a second, so nothing is ever fetched from the Hugging Face hub,
yet they exercise the same code paths as the real base: ChatML special tokens, a chat template,
grouped-query attention (kv heads < heads) and tied embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts`, laid out like SmolLM2's (same special tokens, no BOS)."""
    tokenizer = Tokenizer(models.BPE())
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


def build_tiny_llama(out_dir: Path, texts: Iterable[str], *, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer llama and its tokenizer to `out_dir` (HF layout)."""
    tokenizer = build_tiny_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        # Multiples of 32 so every 2-D weight row splits into whole Q8_0 blocks.
        hidden_size=64,
        intermediate_size=128,
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
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Norm weights start at exactly 1.0; perturbing them makes a misplaced norm tensor visible.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
