"""From a LoRA adapter to files llama.cpp serves: merge, write GGUF, quantize, classify.

`write_gguf` is a small, llama-only re-implementation of llama.cpp's `convert_hf_to_gguf.py`
(that script is not shipped on PyPI): the same metadata keys, tensor names, Q/K row permutation and
byte-level BPE vocabulary, written with the `gguf` package. `classify_with_llama_cpp` runs the
exported file the way production does, so evaluation measures the artifact that ships.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune_loop.core.specs import OUTTYPES, QUANT_TYPES

if TYPE_CHECKING:
    from finetune_loop.core.models import BaseModel
    from finetune_loop.core.registry import Tracker
    from finetune_loop.core.specs import TaskSpec

SUPPORTED_MODEL_TYPES = ("llama",)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class UnsupportedArchitectureError(ValueError):
    """The model directory holds an architecture this exporter cannot write as GGUF."""


def merge_adapter(base_model_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Fold a LoRA adapter into its base weights and save a plain HF model directory."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The merge adds B @ A * scale to every adapted weight. Doing it in fp32 keeps that small update
    # intact; merging into fp16/bf16 (or dequantized 4-bit) weights rounds much of it away, and the
    # merged model would no longer behave like base + adapter did in evaluation.
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)

    # Training may have changed the tokenizer (pad token, chat template); when it saved one beside
    # the adapter, that is the one the adapter was trained with.
    adapter_has_tokenizer = any((Path(adapter_dir) / name).is_file() for name in _TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if adapter_has_tokenizer else base_model_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_gguf(
    model_dir: Path, out_path: Path, *, outtype: str = "f16", tokenizer_pre: str | None = None
) -> Path:
    """Write a saved HF llama-family model (weights + tokenizer) as a GGUF file llama.cpp loads.

    `tokenizer_pre` names llama.cpp's pre-tokenizer (the regex split before BPE); when None it is
    inferred from tokenizer.json, and an unrecognised pre-tokenizer is an error rather than a guess,
    because a wrong one tokenizes differently from training without any visible failure.
    """
    import gguf
    from transformers import AutoTokenizer, LlamaConfig

    model_dir = Path(model_dir)
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"cannot export model_type {model_type!r} from {model_dir} to GGUF; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    config = LlamaConfig.from_pretrained(model_dir)
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
    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[arch])
    try:
        _add_hparams(writer, config, outtype, name=model_dir.name)
        _add_vocab(writer, model_dir, tokenizer, config.vocab_size, pre, chat_template)
        _add_tensors(writer, model_dir, config, outtype, gguf.get_tensor_name_map(arch, config.num_hidden_layers))
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


def classify_with_llama_cpp(
    gguf_path: Path,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    n_ctx: int = 1024,
    n_threads: int | None = None,
) -> list[str]:
    """Greedy-decode exactly one of `labels` after each already chat-rendered prompt.

    Decoding walks a trie of the labels' token sequences: at each step only tokens that continue
    some label compete, and where a label is complete but another label extends it, the
    end-of-generation tokens compete too. That is greedy decoding restricted to the label set (what
    a GBNF grammar of the labels gives) without a grammar engine, and it stops as soon as a single
    label remains, so most prompts cost one forward pass. Prompts sharing a prefix (the system
    prompt) reuse its KV cache.
    """
    import llama_cpp

    if not labels or len(set(labels)) != len(labels) or not all(labels):
        raise ValueError(f"labels must be distinct non-empty strings, got {list(labels)!r}")

    llm = llama_cpp.Llama(
        model_path=str(gguf_path), n_ctx=n_ctx, n_threads=n_threads, logits_all=False, verbose=False
    )
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        # A label in the training data sits right after "<|im_start|>assistant\n"; the pre-tokenizer
        # always splits there, so tokenizing a label on its own gives its in-context tokens.
        label_tokens = {label: tuple(llm.tokenize(label.encode(), add_bos=False, special=False)) for label in labels}
        # Every token llama.cpp ends generation on (for ChatML both <|im_end|> and <|endoftext|>).
        stop_ids = {token_id for token_id in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, token_id)}
        bos = [llm.token_bos()] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
        longest_label = max(len(tokens) for tokens in label_tokens.values())

        chosen = []
        for prompt in prompts:
            # Tokenize without llama.cpp's automatic specials so no EOS is ever appended to a prompt.
            tokens = bos + llm.tokenize(prompt.encode(), add_bos=False, special=True)
            if len(tokens) + longest_label > n_ctx:
                raise ValueError(f"a prompt of {len(tokens)} tokens plus a label does not fit n_ctx={n_ctx}")
            _eval_reusing_prefix(llm, tokens)
            chosen.append(_decode_label(llm, label_tokens, stop_ids))
        return chosen
    finally:
        llm.close()


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
    """Map the two pre-tokenizer layouts we can recognise with certainty to llama.cpp's names."""
    steps = _pre_tokenizer_steps(tokenizer_json)
    types = [step.get("type") for step in steps]

    def gpt2_byte_level(step: dict) -> bool:
        # add_prefix_space would prepend a space llama.cpp never adds.
        return step.get("use_regex", True) and not step.get("add_prefix_space", False)

    if tokenizer_json.get("normalizer") is None:
        if types == ["ByteLevel"] and gpt2_byte_level(steps[0]):
            return "gpt-2"
        if types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and gpt2_byte_level(steps[1]):
            return "smollm"
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


def _add_tensors(writer, model_dir: Path, config, outtype: str, tensor_map) -> None:
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
                    raise UnsupportedArchitectureError(f"tensor {name!r} in {file} has no GGUF name for llama")
                data = weights.get_tensor(name).float().numpy()
                if name.endswith(("q_proj.weight", "q_proj.bias")):
                    data = _permute_for_rope(data, n_heads)
                elif name.endswith(("k_proj.weight", "k_proj.bias")):
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


def _decode_label(llm, label_tokens: dict[str, tuple[int, ...]], stop_ids: set[int]) -> str:
    """Walk the label trie greedily, starting from the logits of the last evaluated prompt token."""
    import llama_cpp

    candidates = dict(label_tokens)
    depth = 0
    while len(candidates) > 1:
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        continuations = sorted({tokens[depth] for tokens in candidates.values() if len(tokens) > depth})
        best = max(continuations, key=lambda token_id: logits[token_id])
        complete = [label for label, tokens in candidates.items() if len(tokens) == depth]
        if complete and stop_ids and max(logits[token_id] for token_id in stop_ids) > logits[best]:
            return complete[0]
        candidates = {label: tokens for label, tokens in candidates.items() if tokens[depth : depth + 1] == (best,)}
        llm.eval([best])
        depth += 1
    return next(iter(candidates))


@dataclass(frozen=True)
class GgufExport:
    gguf_path: Path
    quant_type: str
    file_size_bytes: int
    unquantized_path: Path
    accuracy_gguf: float
    accuracy_delta: float
    # quant type -> holdout accuracy under llama.cpp, for every quantized file written
    accuracy_by_quant: dict[str, float]
    mlflow_run_id: str
    seconds: float


def export_and_verify(
    spec: "TaskSpec",
    base: "BaseModel",
    adapter_dir: Path,
    holdout_path: Path,
    out_dir: Path,
    tracker: "Tracker",
    *,
    reference_accuracy: float,
    run_tags: dict[str, str] | None = None,
) -> GgufExport:
    """Merge, write GGUF, quantize every configured type, and re-run the frozen holdout under
    llama.cpp: the accuracy reported is the accuracy of the file that ships. The first quant type
    in the task is the shipped one."""
    import shutil
    import time

    from transformers import AutoTokenizer

    from finetune_loop.core.curate import read_examples
    from finetune_loop.core.evaluate import score
    from finetune_loop.core.models import render_prompt

    started = time.perf_counter()
    merged_dir = merge_adapter(base.directory, adapter_dir, out_dir / "merged")
    unquantized = write_gguf(
        merged_dir, out_dir / f"{spec.name}-{spec.export.outtype}.gguf", outtype=spec.export.outtype, tokenizer_pre=base.gguf_tokenizer_pre
    )
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    holdout = read_examples(holdout_path)
    prompts = [render_prompt(tokenizer, spec, e.text) for e in holdout]
    # The unquantized GGUF holds every merged weight; the HF copy is only an intermediate.
    shutil.rmtree(merged_dir)

    quantized: dict[str, Path] = {}
    accuracy_by_quant: dict[str, float] = {}
    for quant_type in spec.export.quant_types:
        path = quantize_gguf(unquantized, out_dir / f"{spec.name}-{quant_type}.gguf", quant_type)
        quantized[quant_type] = path
        accuracy_by_quant[quant_type] = score(holdout, classify_with_llama_cpp(path, prompts, spec.labels), spec.labels).accuracy
    shipped_type = spec.export.quant_types[0]
    shipped = quantized[shipped_type]
    accuracy = accuracy_by_quant[shipped_type]
    seconds = time.perf_counter() - started

    with tracker.run(f"export-{spec.name}", tags={"stage": "export", **(run_tags or {})}) as run_id:
        tracker.log_params(run_id, {"outtype": spec.export.outtype, "quant_types": ",".join(spec.export.quant_types), "shipped_quant_type": shipped_type})
        metrics = {"reference_accuracy": reference_accuracy, "export_seconds": seconds, f"size_mb_{spec.export.outtype}": unquantized.stat().st_size / 2**20}
        for quant_type, quant_accuracy in accuracy_by_quant.items():
            metrics[f"accuracy_gguf_{quant_type}"] = quant_accuracy
            metrics[f"accuracy_delta_{quant_type}"] = quant_accuracy - reference_accuracy
            metrics[f"size_mb_{quant_type}"] = quantized[quant_type].stat().st_size / 2**20
        tracker.log_metrics(run_id, metrics)
        tracker.log_artifact(run_id, shipped, "gguf")
    return GgufExport(
        gguf_path=shipped,
        quant_type=shipped_type,
        file_size_bytes=shipped.stat().st_size,
        unquantized_path=unquantized,
        accuracy_gguf=accuracy,
        accuracy_delta=accuracy - reference_accuracy,
        accuracy_by_quant=accuracy_by_quant,
        mlflow_run_id=run_id,
        seconds=seconds,
    )
