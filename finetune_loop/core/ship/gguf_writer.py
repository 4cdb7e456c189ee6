"""GGUF writing: a saved (merged) HF model directory written as one GGUF file with the `gguf` package.

`write_gguf` is a small re-implementation of llama.cpp's `convert_hf_to_gguf.py` (that script is
not shipped on PyPI) for the llama family (Llama, SmolLM2, Mistral) and Qwen2: the same metadata
keys, tensor names, Q/K row permutation where the architecture needs it, and the byte-level BPE
vocabulary with its pre-tokenizer, which is inferred from tokenizer.json and never guessed.
`resolve_outtype` picks the unquantized file type. It is separate from export.py, which runs the
whole export, because it is pure file conversion: no llama.cpp runtime, no tracking, no checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune_loop.core.common.files import atomic_path
from finetune_loop.core.common.spec import OUTTYPES


@dataclass(frozen=True)
class _Architecture:
    gguf_arch: str  # member name of gguf.MODEL_ARCH
    # HF llama checkpoints rotate half-split RoPE pairs, llama.cpp's LLAMA arch adjacent pairs, so Q/K
    # rows are reordered on export; llama.cpp's QWEN2 arch uses HF's (NeoX) layout as it is.
    permute_qk: bool


# HF model_type -> how llama.cpp runs it. Mistral is the llama architecture in GGUF.
_ARCHITECTURES = {
    "llama": _Architecture("LLAMA", permute_qk=True),
    "mistral": _Architecture("LLAMA", permute_qk=True),
    "qwen2": _Architecture("QWEN2", permute_qk=False),
}


SUPPORTED_MODEL_TYPES = tuple(_ARCHITECTURES)


# Qwen2's pre-tokenizer split (its tokenizer.json Split regex); llama.cpp implements it as "qwen2".
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class UnsupportedArchitectureError(ValueError):
    """The model directory holds an architecture this exporter cannot write as GGUF."""


def write_gguf(
    model_dir: Path, out_path: Path, *, outtype: str = "f16", tokenizer_pre: str | None = None
) -> Path:
    """Write a saved HF model (weights + tokenizer) of a supported architecture as a GGUF file.

    `tokenizer_pre` names llama.cpp's pre-tokenizer (the regex split before BPE); when None it is
    inferred from tokenizer.json, and an unrecognised pre-tokenizer is an error rather than a guess,
    because a wrong one tokenizes differently from training without any visible failure.
    """
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if model_type not in _ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"cannot export model_type {model_type!r} from {model_dir} to GGUF; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    architecture = _ARCHITECTURES[model_type]
    config = AutoConfig.from_pretrained(model_dir)
    rope = config.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedArchitectureError(
            f"rope_type {rope.get('rope_type')!r} in {model_dir} is not supported; only unscaled RoPE ('default') is"
        )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer_json = _read_byte_level_bpe(model_dir)
    pre = tokenizer_pre if tokenizer_pre is not None else _infer_tokenizer_pre(tokenizer_json, model_dir)
    chat_template = tokenizer.chat_template
    if not chat_template:
        raise ValueError(
            f"the tokenizer in {model_dir} has no chat template; a GGUF without tokenizer.chat_template makes "
            "llama.cpp servers format chats their own way and the model never emits its end-of-turn token"
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {model_dir} has no eos token; generation could never stop")

    out_path = Path(out_path)
    arch = gguf.MODEL_ARCH[architecture.gguf_arch]
    # Written under a temporary name: a killed export never leaves a truncated file under the real one.
    with atomic_path(out_path) as staging:
        writer = gguf.GGUFWriter(staging, gguf.MODEL_ARCH_NAMES[arch])
        try:
            _add_hparams(writer, config, outtype, name=model_dir.name)
            _add_vocab(writer, model_dir, tokenizer, config.vocab_size, pre, chat_template)
            tensor_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
            _add_tensors(writer, model_dir, config, outtype, tensor_map, architecture)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out_path


def _permute_for_rope(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder Q or K projection rows from HF's RoPE layout to llama.cpp's.

    HF llama rotates dimension i of each head with dimension i + head_dim/2 (rotate_half); llama.cpp's
    LLAMA architecture rotates adjacent pairs (2i, 2i+1), as Meta's original weights did. Interleaving
    each head's two halves makes llama.cpp rotate the same pairs HF does. `n_heads` is the number of
    heads the projection produces (the kv-head count for K under grouped-query attention).
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_heads, 2, rows // n_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _add_hparams(writer, config, outtype: str, *, name: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_types[outtype])


def _read_byte_level_bpe(model_dir: Path) -> dict:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{model_dir} has no tokenizer.json; GGUF export needs a fast (byte-level BPE) tokenizer")
    tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
    steps = _pre_tokenizer_steps(tokenizer_json)
    if tokenizer_json["model"].get("type") != "BPE" or not any(step.get("type") == "ByteLevel" for step in steps):
        raise ValueError(
            f"the tokenizer in {model_dir} is not a byte-level BPE (GPT-2 style); only those can be exported"
        )
    return tokenizer_json


def _pre_tokenizer_steps(tokenizer_json: dict) -> list[dict]:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    return pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]


def _infer_tokenizer_pre(tokenizer_json: dict, model_dir: Path) -> str:
    """Map the pre-tokenizer layouts we can recognise with certainty to llama.cpp's names."""
    steps = _pre_tokenizer_steps(tokenizer_json)
    types = [step.get("type") for step in steps]
    normalizer = tokenizer_json.get("normalizer") or {}

    def gpt2_byte_level(step: dict) -> bool:
        # add_prefix_space would prepend a space llama.cpp never adds.
        return step.get("use_regex", True) and not step.get("add_prefix_space", False)

    if tokenizer_json.get("normalizer") is None:
        if types == ["ByteLevel"] and gpt2_byte_level(steps[0]):
            return "gpt-2"
        if types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and gpt2_byte_level(steps[1]):
            return "smollm"
    # Qwen2: its own split regex, then bytes without the GPT-2 regex. The NFC normalizer it declares
    # only changes text that is not already composed; llama.cpp's qwen2 pre-tokenizer skips it too.
    if normalizer.get("type") in (None, "NFC") and types == ["Split", "ByteLevel"]:
        split, byte_level = steps
        if (
            split.get("pattern", {}).get("Regex") == QWEN2_SPLIT_REGEX
            and split.get("behavior") == "Isolated"
            and not split.get("invert", False)
            and not byte_level.get("use_regex", True)
            and not byte_level.get("add_prefix_space", False)
        ):
            return "qwen2"
    raise ValueError(
        f"cannot infer llama.cpp's pre-tokenizer for {model_dir} "
        f"(pre_tokenizer={json.dumps(tokenizer_json.get('pre_tokenizer'))}); "
        "pass tokenizer_pre explicitly, e.g. the tokenizer.ggml.pre value of the base model's GGUF"
    )


def _add_vocab(writer, model_dir: Path, tokenizer, vocab_size: int, pre: str, chat_template) -> None:
    import gguf

    by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"tokenizer ids reach {max(by_id)} but the model's vocab_size is {vocab_size}")
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    token_types: list[int] = []
    # The embedding matrix may have more rows than the tokenizer has tokens (padding for speed);
    # llama.cpp needs one vocabulary entry per row.
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            token_types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            token = by_id[token_id]
            # llama.cpp matches added tokens against raw text, so store them as the text they decode to.
            if not added[token_id].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            tokens.append(token)
            token_types.append(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            token_types.append(gguf.TokenType.NORMAL)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    # SpecialVocab knows both merge formats tokenizer.json has used (strings and pairs).
    writer.add_token_merges(gguf.SpecialVocab(model_dir, load_merges=True).merges)

    for token_id, add_id in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
    ):
        if token_id is not None:
            add_id(token_id)
    # Whether BOS/EOS are added is observed, not read from config: transformers 5 decides it in
    # Python, and tokenizer_config.json need not say.
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(len(with_specials) > len(plain) and with_specials[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(with_specials) > len(plain) and with_specials[-1] == tokenizer.eos_token_id)
    if isinstance(chat_template, dict):
        chat_template = [{"name": name, "template": template} for name, template in chat_template.items()]
    writer.add_chat_template(chat_template)


def _add_tensors(writer, model_dir: Path, config, outtype: str, tensor_map, architecture: _Architecture) -> None:
    import gguf
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    n_heads = config.num_attention_heads
    n_kv_heads = config.num_key_value_heads or n_heads
    seen = set()
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                # Tied embeddings: llama.cpp reuses token_embd when output.weight is absent.
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue
                gguf_name = tensor_map.get_name(name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise UnsupportedArchitectureError(
                        f"tensor {name!r} in {file} has no GGUF name for {architecture.gguf_arch.lower()}"
                    )
                data = weights.get_tensor(name).float().numpy()
                if architecture.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = _permute_for_rope(data, n_heads)
                elif architecture.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
                    data = _permute_for_rope(data, n_kv_heads)
                seen.add(gguf_name)
                # Norms and biases are tiny and precision-sensitive: llama.cpp expects them in F32.
                if data.ndim == 1 or outtype == "f32":
                    writer.add_tensor(gguf_name, data)
                elif outtype == "f16":
                    writer.add_tensor(gguf_name, data.astype(np.float16))
                else:
                    bf16 = gguf.GGMLQuantizationType.BF16
                    writer.add_tensor(gguf_name, gguf.quants.quantize(data, bf16), raw_dtype=bf16)
    if not config.tie_word_embeddings and "output.weight" not in seen:
        raise ValueError(f"{model_dir} has tie_word_embeddings=false but no lm_head.weight")


def resolve_outtype(outtype: str) -> tuple[str, str]:
    """(outtype, why): "auto" keeps the merged weights bit for bit."""
    if outtype == "auto":
        return "f32", (
            "auto: the merged weights are fp32 (base + LoRA update computed in fp32); f16/bf16 would round "
            "the update whatever dtype the base was published in, so the unquantized file is f32"
        )
    return outtype, f"set in the task (export.outtype: {outtype}); quantized files are made from this file"
