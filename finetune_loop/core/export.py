"""From a LoRA adapter to files llama.cpp serves: merge, write GGUF, quantize, run under llama.cpp.

`write_gguf` is a small re-implementation of llama.cpp's `convert_hf_to_gguf.py` (that script is
not shipped on PyPI) for the llama family (Llama, SmolLM2, Mistral) and Qwen2: the same metadata
keys, tensor names, Q/K row permutation where the architecture needs it and byte-level BPE
vocabulary, written with the `gguf` package. `run_with_llama_cpp` runs an exported file the way
production does, so the numbers reported are those of the artifact that ships.
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune_loop.core.specs import OUTTYPES, QUANT_TYPES

if TYPE_CHECKING:
    from finetune_loop.core.gguf_checks import CheckOutcome
    from finetune_loop.core.models import BaseModel
    from finetune_loop.core.registry import Tracker
    from finetune_loop.core.specs import TaskSpec


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

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# Qwen2's pre-tokenizer split (its tokenizer.json Split regex); llama.cpp implements it as "qwen2".
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class UnsupportedArchitectureError(ValueError):
    """The model directory holds an architecture this exporter cannot write as GGUF."""


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
    manifest_path = Path(adapter_dir) / "rebuild_manifest.json"
    if not manifest_path.is_file():
        return False
    return bool(json.loads(manifest_path.read_text()).get("plan", {}).get("qlora", False))


def merge_adapter(
    base_model_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    check_prompts: Sequence[str] = (),
    tolerance: float = 1e-3,
) -> MergedModel:
    """Fold a LoRA adapter into its full-precision base, check it, and save a plain HF model directory.

    The merge adds B @ A * scale to every adapted weight. Doing it in fp32 keeps that small update
    intact; merging into fp16/bf16 or 4-bit weights rounds much of it away, and the merged model
    would no longer behave like base + adapter did in evaluation. A QLoRA adapter is therefore
    merged into the unquantized base too: the base directory holds full-precision weights, loaded
    here without any quantization config. `check_prompts` are run through base + adapter before the
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
    token_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in check_prompts]

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
    out_path.parent.mkdir(parents=True, exist_ok=True)
    arch = gguf.MODEL_ARCH[architecture.gguf_arch]
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[arch])
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


def quantize_gguf(source: Path, dest: Path, quant_type: str) -> Path:
    """Quantize an f32/f16/bf16 GGUF with llama.cpp's own quantizer (what llama-quantize runs)."""
    import llama_cpp

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"unknown quant type {quant_type!r}; supported: {', '.join(QUANT_TYPES)}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant_type}")
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp failed to quantize {source} to {quant_type} (return code {rc})")
    return dest


@dataclass(frozen=True)
class LlamaCppAnswers:
    labels: list[str]
    # Per prompt, llama.cpp's top-1 next token after the prompt (before any label constraint).
    next_token_ids: list[int]
    # Speed of this file on this machine: one prompt evaluated from an empty cache, then greedy
    # generation of SPEED_GENERATED_TOKENS tokens one at a time.
    prompt_tokens_per_second: float
    generation_tokens_per_second: float


SPEED_GENERATED_TOKENS = 32


def run_with_llama_cpp(
    gguf_path: Path,
    prompts: Sequence[str],
    label_sequences: Mapping[str, Sequence[int]],
    *,
    n_ctx: int = 1024,
    n_threads: int | None = None,
) -> LlamaCppAnswers:
    """Answer each already chat-rendered prompt with one label, and time the file.

    The decision rule is the evaluation's (`scoring.predict_labels`): the label whose answer tokens
    (`label_sequences`, ending on the end-of-turn token) have the highest total log-probability
    after the prompt; ties go to the label listed first. The same rule on both runtimes makes the
    GGUF's accuracy comparable with the HF model's. Answers that share leading tokens share their
    forward passes, and prompts sharing a prefix (the system prompt) reuse its KV cache.
    """
    import llama_cpp

    if not label_sequences or not all(label_sequences.values()):
        raise ValueError(f"every label needs its answer tokens, got {dict(label_sequences)!r}")
    if not prompts:
        raise ValueError("no prompts to run")

    llm = llama_cpp.Llama(
        model_path=str(gguf_path), n_ctx=n_ctx, n_threads=n_threads, logits_all=False, verbose=False
    )
    try:
        longest_label = max(len(tokens) for tokens in label_sequences.values())
        chosen, next_tokens = [], []
        for prompt in prompts:
            tokens = serving_tokens(llm, prompt)
            if len(tokens) + max(longest_label, SPEED_GENERATED_TOKENS) > n_ctx:
                raise ValueError(f"a prompt of {len(tokens)} tokens plus an answer does not fit n_ctx={n_ctx}")
            _eval_reusing_prefix(llm, tokens)
            next_tokens.append(int(np.argmax(_last_logits(llm))))
            chosen.append(_most_likely_label(llm, label_sequences))
        prompt_speed, generation_speed = _measure_speed(llm, serving_tokens(llm, prompts[0]))
        return LlamaCppAnswers(chosen, next_tokens, prompt_speed, generation_speed)
    finally:
        llm.close()


def classify_with_llama_cpp(gguf_path: Path, prompts: Sequence[str], label_sequences: Mapping[str, Sequence[int]], **kwargs) -> list[str]:
    """The label llama.cpp picks for each chat-rendered prompt (see run_with_llama_cpp)."""
    return run_with_llama_cpp(gguf_path, prompts, label_sequences, **kwargs).labels


def serving_tokens(llm, rendered: str) -> list[int]:
    """Token ids of an already chat-rendered text as a llama.cpp server feeds them: special tokens
    parsed, BOS prepended exactly when the GGUF says the model adds one, never an EOS."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    bos = [llm.token_bos()] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
    return bos + llm.tokenize(rendered.encode(), add_bos=False, special=True)


def _last_logits(llm) -> np.ndarray:
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))


def _measure_speed(llm, prompt_tokens: list[int]) -> tuple[float, float]:
    """(prompt tokens/s from an empty cache, greedy generation tokens/s); EOS does not stop the
    timing loop, so every file is timed over the same number of tokens."""
    llm.n_tokens = 0  # drop the cache: time the whole prompt
    started = time.perf_counter()
    llm.eval(prompt_tokens)
    prompt_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(SPEED_GENERATED_TOKENS):
        llm.eval([int(np.argmax(_last_logits(llm)))])
    generation_seconds = time.perf_counter() - started
    return len(prompt_tokens) / prompt_seconds, SPEED_GENERATED_TOKENS / generation_seconds


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


def _eval_reusing_prefix(llm, tokens: list[int]) -> None:
    """Evaluate `tokens`, keeping the KV cache of the prefix shared with what was evaluated last.

    Prompts of one task share their system prompt, so this skips most of the prompt after the first.
    At least one token is always re-evaluated: the logits of the last prompt token are what we need.
    """
    previous = llm.input_ids[: llm.n_tokens]
    shared = 0
    for a, b in zip(previous, tokens[:-1]):
        if a != b:
            break
        shared += 1
    # Llama.eval drops cached positions from n_tokens on before decoding (as Llama.generate relies on).
    llm.n_tokens = shared
    llm.eval(tokens[shared:])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _most_likely_label(llm, label_sequences: Mapping[str, Sequence[int]]) -> str:
    """Score every label's answer tokens after the prompt just evaluated; return the most likely.

    Each distinct answer prefix is evaluated once, one token at a time (only the last position's
    logits are kept), rewinding the cache to the prompt plus the prefix it shares with the last one."""
    prompt_length = llm.n_tokens
    log_probs = {(): _log_softmax(_last_logits(llm))}
    in_cache: tuple[int, ...] = ()
    totals = {}
    for label, sequence in label_sequences.items():
        total = 0.0
        for depth, token in enumerate(sequence):
            prefix = tuple(sequence[:depth])
            if prefix not in log_probs:
                shared = next((i for i, (a, b) in enumerate(zip(in_cache, prefix)) if a != b), min(len(in_cache), len(prefix)))
                llm.n_tokens = prompt_length + shared
                for cut in range(shared, len(prefix)):
                    llm.eval([prefix[cut]])
                    log_probs[prefix[: cut + 1]] = _log_softmax(_last_logits(llm))
                in_cache = prefix
            total += log_probs[prefix][token]
        totals[label] = total
    return max(label_sequences, key=totals.__getitem__)


# Enough context for a chat-rendered ticket plus the answer; llama.cpp allocates the KV cache for it.
LLAMA_CPP_CONTEXT = 2048
# Holdout prompts run through base + adapter and the merged model to check the merge (all positions).
MERGE_CHECK_PROMPTS = 8
# Holdout prompts the chat template round trip renders three ways and generates from.
ROUNDTRIP_PROMPTS = 16


def resolve_outtype(outtype: str) -> tuple[str, str]:
    """(outtype, why): "auto" keeps the merged weights bit for bit."""
    if outtype == "auto":
        return "f32", (
            "auto: the merged weights are fp32 (base + LoRA update computed in fp32); f16/bf16 would round "
            "the update whatever dtype the base was published in, so the unquantized file is f32"
        )
    return outtype, f"set in the task (export.outtype: {outtype}); quantized files are made from this file"


@dataclass(frozen=True)
class GgufVariant:
    """One GGUF file of the export, measured under llama.cpp on the frozen holdout."""

    name: str  # the quant type, or the unquantized outtype
    path: Path
    size_bytes: int
    accuracy: float
    accuracy_delta: float  # against the merged HF model on the same holdout
    per_label_accuracy: dict[str, float]  # recall of each label on the holdout
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    modelfile_path: Path


@dataclass(frozen=True)
class GgufExport:
    gguf_path: Path  # the shipped (first configured) quantized file
    quant_type: str
    file_size_bytes: int
    unquantized_path: Path
    outtype: str
    outtype_reason: str
    accuracy_gguf: float
    accuracy_delta: float
    merged_accuracy: float
    merge_max_abs_logit_diff: float
    adapter_was_qlora: bool
    variants: list[GgufVariant]  # unquantized first, then every quant type in task order
    checks: list["CheckOutcome"]  # matches_merged_model, quant_within_budget, chat_template_roundtrip
    model_card_path: Path
    mlflow_run_id: str
    seconds: float

    def shipped_files(self) -> tuple[Path, Path, Path]:
        """What serves this version without anything else: the shipped GGUF, its Ollama Modelfile
        (FROM names the GGUF beside it) and the model card."""
        return self.gguf_path, self.variants[1].modelfile_path, self.model_card_path

    def variants_markdown(self) -> str:
        lines = [
            "| file | size MB | holdout accuracy | delta vs merged (pt) | prompt tok/s | generation tok/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {v.path.name} | {v.size_bytes / 2**20:.1f} | {v.accuracy:.3f} | {100 * v.accuracy_delta:+.2f} | "
            f"{v.prompt_tokens_per_second:.0f} | {v.generation_tokens_per_second:.1f} |"
            for v in self.variants
        ]
        lines.append(f"| merged HF model (reference) | | {self.merged_accuracy:.3f} | | | |")
        return "\n".join(lines)


def export_and_verify(
    spec: "TaskSpec",
    base: "BaseModel",
    adapter_dir: Path,
    holdout_path: Path,
    out_dir: Path,
    tracker: "Tracker",
    *,
    eval_accuracies: dict[str, float],
    model_version: tuple[str, str] | None = None,
    run_tags: dict[str, str] | None = None,
) -> GgufExport:
    """Merge (checked against base + adapter), write the unquantized GGUF, quantize every configured
    type, run the frozen holdout through every file under llama.cpp, run the three checks, and ship
    an Ollama Modelfile per file and a model card. `eval_accuracies` (base/candidate from the
    evaluation) go into the model card; `model_version` (registered name, version) gets the export's
    tags and the model card as its description. A failing check is reported in `checks`, not raised."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_loop.core import gguf_checks
    from finetune_loop.core.curate import read_examples
    from finetune_loop.core.metrics import score
    from finetune_loop.core.scoring import label_token_sequences, score_prompts
    from finetune_loop.core.model_card import write_model_card
    from finetune_loop.core.modelfile import build_modelfile
    from finetune_loop.core.models import render_prompt

    if not spec.is_classification:
        raise ValueError(f"task {spec.name} is {spec.kind!r}: GGUF verification scores label answers, classification only")
    started = time.perf_counter()
    settings = spec.export
    holdout = read_examples(holdout_path)
    texts = [e.text for e in holdout]
    out_dir = Path(out_dir)

    tokenizer = AutoTokenizer.from_pretrained(training_tokenizer_dir(adapter_dir, base.directory))
    prompts = [render_prompt(tokenizer, spec, text) for text in texts]
    merged = merge_adapter(
        base.directory, adapter_dir, out_dir / "merged", tolerance=settings.merge_logit_tolerance,
        check_prompts=prompts[:MERGE_CHECK_PROMPTS],
    )
    # The reference every GGUF is judged against: the merged model in fp32, as HF runs it.
    merged_model = AutoModelForCausalLM.from_pretrained(merged.directory, dtype=torch.float32)
    merged_scores = score_prompts(merged_model, tokenizer, spec, texts)
    merged_labels = [scores.best_label for scores in merged_scores]
    merged_next_tokens = [scores.next_token_id for scores in merged_scores]
    label_sequences = label_token_sequences(tokenizer, spec)
    merged_accuracy = score(holdout, merged_labels, spec.labels).accuracy
    del merged_model

    outtype, outtype_reason = resolve_outtype(settings.outtype)
    unquantized = write_gguf(
        merged.directory, out_dir / f"{spec.name}-{outtype}.gguf", outtype=outtype, tokenizer_pre=base.gguf_tokenizer_pre
    )
    paths = {outtype: unquantized}
    for quant_type in settings.quant_types:
        paths[quant_type] = quantize_gguf(unquantized, out_dir / f"{spec.name}-{quant_type}.gguf", quant_type)

    variants, answers = [], {}
    for name, path in paths.items():
        answers[name] = run_with_llama_cpp(path, prompts, label_sequences, n_ctx=LLAMA_CPP_CONTEXT)
        scores = score(holdout, answers[name].labels, spec.labels)
        modelfile = build_modelfile(tokenizer, path.name, spec.system_prompt()).write(path.with_suffix(".Modelfile"))
        variants.append(
            GgufVariant(
                name, path, path.stat().st_size, scores.accuracy, scores.accuracy - merged_accuracy,
                {label: stats.recall for label, stats in scores.per_label.items()},
                answers[name].prompt_tokens_per_second, answers[name].generation_tokens_per_second, modelfile,
            )
        )
    checks = [
        gguf_checks.matches_merged_model(
            merged_labels, merged_next_tokens, answers[outtype].labels, answers[outtype].next_token_ids, settings
        ),
        gguf_checks.quant_within_budget(merged_accuracy, {v.name: v.accuracy for v in variants[1:]}, settings, len(holdout)),
        gguf_checks.chat_template_roundtrip(
            unquantized, tokenizer, spec, texts[:ROUNDTRIP_PROMPTS], variants[0].modelfile_path.read_text(), n_ctx=LLAMA_CPP_CONTEXT
        ),
    ]
    # The unquantized GGUF holds every merged weight; the HF copy is only an intermediate.
    shutil.rmtree(merged.directory)
    shipped = variants[1]
    seconds = time.perf_counter() - started

    with tracker.run(f"export-{spec.name}", tags={"stage": "export", **(run_tags or {})}) as run_id:
        tracker.log_params(
            run_id,
            {"outtype": outtype, "outtype_reason": outtype_reason, "quant_types": ",".join(settings.quant_types),
             "shipped_quant_type": shipped.name, "adapter_was_qlora": merged.adapter_was_qlora,
             "quant_budget_points": {q: settings.budget_points(q) for q in settings.quant_types}},
        )
        metrics = {
            "merged_accuracy": merged_accuracy,
            "merge_max_abs_logit_diff": merged.max_abs_logit_diff,
            "export_seconds": seconds,
            **{f"check_{c.name}_passed": float(c.passed) for c in checks},
            **{f"{c.name}.{k}": v for c in checks for k, v in c.metadata.items() if isinstance(v, (int, float))},
        }
        for variant in variants:
            metrics |= {
                f"accuracy_gguf_{variant.name}": variant.accuracy,
                f"accuracy_delta_{variant.name}": variant.accuracy_delta,
                f"size_mb_{variant.name}": variant.size_bytes / 2**20,
                f"prompt_tokens_per_second_{variant.name}": variant.prompt_tokens_per_second,
                f"generation_tokens_per_second_{variant.name}": variant.generation_tokens_per_second,
            }
        tracker.log_metrics(run_id, metrics)
        result = GgufExport(
            gguf_path=shipped.path, quant_type=shipped.name, file_size_bytes=shipped.size_bytes,
            unquantized_path=unquantized, outtype=outtype, outtype_reason=outtype_reason,
            accuracy_gguf=shipped.accuracy, accuracy_delta=shipped.accuracy_delta, merged_accuracy=merged_accuracy,
            merge_max_abs_logit_diff=merged.max_abs_logit_diff, adapter_was_qlora=merged.adapter_was_qlora,
            variants=variants, checks=checks, model_card_path=out_dir / "README.md", mlflow_run_id=run_id, seconds=seconds,
        )
        card = write_model_card(result.model_card_path, spec, base, adapter_dir, result, eval_accuracies)
        tracker.log_artifact(run_id, card, "gguf")
        for variant in variants:
            tracker.log_artifact(run_id, variant.modelfile_path, "gguf")
        tracker.log_text(run_id, json.dumps([c.__dict__ for c in checks], indent=2, default=str), "gguf/checks.json")
        if model_version is not None:
            name, version = model_version
            tracker.tag_version(name, version, {
                "gguf_export_run_id": run_id, "gguf_quant_type": shipped.name, "gguf_accuracy": f"{shipped.accuracy:.4f}",
                "gguf_checks_passed": all(c.passed for c in checks),
            })
            tracker.describe_version(name, version, card.read_text(encoding="utf-8"))
    return result



def training_tokenizer_dir(adapter_dir: Path, base_dir: Path) -> Path:
    """Training may have changed the tokenizer (pad token, chat template); when it saved one beside
    the adapter, that is the one the adapter was trained with."""
    adapter_has_tokenizer = any((Path(adapter_dir) / name).is_file() for name in _TOKENIZER_FILES)
    return Path(adapter_dir) if adapter_has_tokenizer else Path(base_dir)
