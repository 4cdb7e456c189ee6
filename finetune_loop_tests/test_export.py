"""GGUF export checked against llama.cpp itself: the exported file must compute what the HF model does.

Everything runs on tiny random llama / Mistral / Qwen2 models built in-process
(finetune_loop_tests.tiny_models), so the tests need no download and take seconds on a CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from finetune_loop.core.ship import gguf_writer
from finetune_loop.core.ship.gguf_writer import UnsupportedArchitectureError, write_gguf
from finetune_loop.core.ship.llama_runtime import classify_with_llama_cpp, load_gguf, quantize_gguf
from finetune_loop.core.ship.merge import MergeMismatchError, merge_adapter
from finetune_loop.core.train.prompts import PromptSegments
from finetune_loop_tests.tiny_models import (
    CHATML_TEMPLATE,
    build_tiny_llama,
    build_tiny_model,
)

CORPUS = [
    "The printer on floor 3 is broken again, error code 500.",
    "My invoice shows a double charge of $42.50 for order 12345!",
    "Login fails after the 2024-01-05 update; password reset does nothing.",
    "Café crème — naïve façade 😀 résumé",
    "Please refund me.\n\tTabs,  double  spaces and\nnew lines.",
    "billing bug report feature request question other",
] * 4

SYSTEM = {"role": "system", "content": "Classify the ticket."}
CONVERSATIONS = [
    [SYSTEM, {"role": "user", "content": "Printer 42 jams on page 3."}],
    [SYSTEM, {"role": "user", "content": "Charged twice: $19.99 + $19.99"}],
    [{"role": "user", "content": "Résumé upload fails 😀  with   spaces\nand a newline"}],
    [SYSTEM, {"role": "user", "content": "double charge on invoice 12345"}],
]

# Tight enough that one wrong tensor layout fails by orders of magnitude (f32 weights, f32 KV cache).
F32_LOGIT_ATOL = 1e-3


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), CORPUS, seed=0)


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[str]:
    return [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in CONVERSATIONS]


@pytest.fixture(scope="module")
def prompt_ids(tokenizer, prompts) -> list[list[int]]:
    return [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]


def _trusted(prompts: list[str]) -> list[PromptSegments]:
    """The test's own chat renderings as prompts with no user text to keep apart (all of it is the
    test's, so every control token in it is meant)."""
    return [PromptSegments(prompt, "", "") for prompt in prompts]


@pytest.fixture(scope="module")
def f32_gguf(tiny_dir, tmp_path_factory) -> Path:
    return write_gguf(tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", outtype="f32")


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _llama_cpp_logits(gguf_path: Path, prompts: list[str]) -> list[tuple[list[int], np.ndarray]]:
    """Per prompt: llama.cpp's token ids and its logits at every position."""
    # An f32 KV cache, so the only difference left against HF is float summation order.
    llm = load_gguf(
        gguf_path, n_ctx=512, logits_all=True, verbose=False,
        type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
    )
    try:
        results = []
        for prompt in prompts:
            llm.reset()
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            llm.eval(ids)
            results.append((ids, llm.scores[: len(ids)].copy()))
        return results
    finally:
        llm.close()


def _compare_with_hf(gguf_path, prompts, tokenizer, hf_model) -> tuple[float, float]:
    """(max |logit difference|, share of positions whose top-1 token agrees), over all prompts."""
    max_diff, agree, total = 0.0, 0, 0
    for prompt, (ids, cpp) in zip(prompts, _llama_cpp_logits(gguf_path, prompts)):
        assert ids == tokenizer(prompt, add_special_tokens=False)["input_ids"]
        hf = _hf_logits(hf_model, ids)
        max_diff = max(max_diff, float(np.abs(cpp - hf).max()))
        agree += int((cpp.argmax(-1) == hf.argmax(-1)).sum())
        total += len(ids)
    return max_diff, agree / total


def _reader_value(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, f"{key} missing from GGUF"
    return field.contents()


@pytest.mark.parametrize("architecture", ["llama", "mistral", "qwen2"])
def test_llama_cpp_matches_hf_logits_and_tokens(architecture, tmp_path, prompts):
    model_dir = build_tiny_model(tmp_path / architecture, CORPUS, architecture=architecture)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    path = write_gguf(model_dir, tmp_path / f"{architecture}.gguf", outtype="f32")
    max_diff, top1_agreement = _compare_with_hf(path, prompts, AutoTokenizer.from_pretrained(model_dir), model)
    assert max_diff < F32_LOGIT_ATOL
    assert top1_agreement == 1.0


def test_qwen2_gguf_keeps_biases_tokenizer_and_rope_base(tmp_path):
    model_dir = build_tiny_model(tmp_path / "qwen2", CORPUS, architecture="qwen2")
    reader = gguf.GGUFReader(write_gguf(model_dir, tmp_path / "qwen2.gguf", outtype="f16"))
    assert _reader_value(reader, "general.architecture") == "qwen2"
    assert _reader_value(reader, "tokenizer.ggml.pre") == "qwen2"
    assert _reader_value(reader, "qwen2.rope.freq_base") == pytest.approx(1e6)
    assert _reader_value(reader, "tokenizer.ggml.add_bos_token") is False
    types = {t.name: t.tensor_type for t in reader.tensors}
    # q/k/v biases travel (in f32, like norms); tied embeddings leave no output.weight.
    assert {f"blk.1.attn_{x}.bias" for x in "qkv"} <= set(types)
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in types


def test_export_without_rope_permutation_is_caught(tiny_dir, tmp_path, prompts, tokenizer, hf_model, monkeypatch):
    # Proves the comparison above can fail: HF's Q/K row order fed to llama.cpp unchanged.
    monkeypatch.setattr(gguf_writer, "_permute_for_rope", lambda weights, n_heads: weights)
    broken = write_gguf(tiny_dir, tmp_path / "broken.gguf", outtype="f32")
    max_diff, top1_agreement = _compare_with_hf(broken, prompts, tokenizer, hf_model)
    assert max_diff > 100 * F32_LOGIT_ATOL
    assert top1_agreement < 0.9


# bf16 keeps 8 mantissa bits against f16's 11, hence the looser bound (logits here reach about 7).
@pytest.mark.parametrize(("outtype", "logit_atol"), [("f16", 0.1), ("bf16", 0.6)])
def test_half_precision_exports_load_and_agree(tiny_dir, tmp_path, outtype, logit_atol, prompts, tokenizer, hf_model):
    path = write_gguf(tiny_dir, tmp_path / f"tiny-{outtype}.gguf", outtype=outtype)
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    expected = gguf.GGMLQuantizationType.F16 if outtype == "f16" else gguf.GGMLQuantizationType.BF16
    assert types["blk.0.attn_q.weight"] == expected
    assert types["token_embd.weight"] == expected
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    max_diff, top1_agreement = _compare_with_hf(path, prompts, tokenizer, hf_model)
    assert max_diff < logit_atol
    assert top1_agreement >= 0.9


def test_gguf_carries_architecture_and_tokenizer_metadata(f32_gguf, tokenizer, hf_model):
    reader = gguf.GGUFReader(f32_gguf)
    config = hf_model.config
    assert _reader_value(reader, "general.architecture") == "llama"
    assert _reader_value(reader, "llama.context_length") == 512
    assert _reader_value(reader, "llama.embedding_length") == 64
    assert _reader_value(reader, "llama.block_count") == 2
    assert _reader_value(reader, "llama.feed_forward_length") == 128
    assert _reader_value(reader, "llama.attention.head_count") == 4
    assert _reader_value(reader, "llama.attention.head_count_kv") == 2
    assert _reader_value(reader, "llama.rope.dimension_count") == 16
    assert _reader_value(reader, "llama.vocab_size") == config.vocab_size
    assert _reader_value(reader, "general.file_type") == gguf.LlamaFileType.ALL_F32

    assert _reader_value(reader, "tokenizer.chat_template") == CHATML_TEMPLATE
    assert _reader_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert _reader_value(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert _reader_value(reader, "tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert _reader_value(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert _reader_value(reader, "tokenizer.ggml.add_bos_token") is False
    tokens = _reader_value(reader, "tokenizer.ggml.tokens")
    token_types = _reader_value(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == config.vocab_size
    im_end = tokens.index("<|im_end|>")
    assert token_types[im_end] == gguf.TokenType.CONTROL
    assert token_types[tokens.index("Ġ")] == gguf.TokenType.NORMAL
    assert len(_reader_value(reader, "tokenizer.ggml.merges")) > 0

    names = {t.name for t in reader.tensors}
    # Tied embeddings: llama.cpp falls back to token_embd for the output projection.
    assert "output.weight" not in names
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_k.weight", "blk.1.ffn_down.weight"} <= names


def test_llama_cpp_stops_on_im_end(f32_gguf):
    llm = load_gguf(f32_gguf, n_ctx=512, verbose=False)
    try:
        assert llm.token_eos() == llm.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]
        assert llm.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE
    finally:
        llm.close()


def test_quantize_q8_0_is_smaller_and_loads(f32_gguf, tmp_path, prompts):
    q8 = quantize_gguf(f32_gguf, tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    assert q8.stat().st_size < f32_gguf.stat().st_size
    reader = gguf.GGUFReader(q8)
    assert {t.name: t.tensor_type for t in reader.tensors}["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    [(ids, logits)] = _llama_cpp_logits(q8, prompts[:1])
    assert np.isfinite(logits).all()


def test_quantize_rejects_unknown_type(f32_gguf, tmp_path):
    with pytest.raises(ValueError, match="Q8_0"):
        quantize_gguf(f32_gguf, tmp_path / "x.gguf", "Q3_XYZ")


def _hf_most_likely_label(model, tokenizer, prompt: str, sequences: dict[str, list[int]]) -> str:
    """Reference: one full HF forward pass per label over prompt + answer, log-probabilities summed."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    totals = {}
    for label, answer in sequences.items():
        logits = torch.from_numpy(_hf_logits(model, prompt_ids + answer))
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        totals[label] = sum(log_probs[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(answer))
    return max(sequences, key=totals.__getitem__)


def test_classify_picks_the_label_whose_whole_answer_is_most_likely(f32_gguf, prompts, tokenizer, hf_model):
    # "printer" is a token prefix of two other labels: their answers share forward passes under
    # llama.cpp, and only the end-of-turn token tells "printer" from "printer jam".
    labels = ["printer", "printer jam", "printer broken", "billing"]
    sequences = {label: tokenizer(label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for label in labels}
    expected = [_hf_most_likely_label(hf_model, tokenizer, prompt, sequences) for prompt in prompts]
    # The second round reuses cached prompt prefixes and answer prefixes; answers must not change.
    chosen = classify_with_llama_cpp(f32_gguf, _trusted(prompts) * 2, sequences, n_ctx=512)
    assert chosen == expected * 2
    with pytest.raises(ValueError, match="answer tokens"):
        classify_with_llama_cpp(f32_gguf, _trusted(prompts), {"printer": []}, n_ctx=512)


def test_unsupported_architecture_is_rejected_naming_the_supported_ones(tmp_path):
    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="supported model types: llama, mistral, qwen2") as error:
        write_gguf(tmp_path, tmp_path / "out.gguf")
    assert "'gpt2'" in str(error.value)


def test_tokenizer_without_chat_template_is_rejected(tiny_dir, tmp_path):
    model_dir = shutil.copytree(tiny_dir, tmp_path / "model")
    (model_dir / "chat_template.jinja").unlink()
    with pytest.raises(ValueError, match="no chat template"):
        write_gguf(model_dir, tmp_path / "out.gguf")


def test_invalid_outtype_is_rejected(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="outtype"):
        write_gguf(tiny_dir, tmp_path / "out.gguf", outtype="q8_0")


def _with_pre_tokenizer(tiny_dir: Path, dest: Path, pre_tokenizer: dict) -> Path:
    model_dir = shutil.copytree(tiny_dir, dest)
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer_json["pre_tokenizer"] = pre_tokenizer
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    return model_dir


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def _llama_cpp_tokens(gguf_path: Path, text: str) -> list[int]:
    llm = load_gguf(gguf_path, vocab_only=True, verbose=False)
    try:
        return llm.tokenize(text.encode(), add_bos=False)
    finally:
        llm.close()


def test_smollm_pre_tokenizer_is_inferred_and_tokenizes_like_hf(tiny_dir, tmp_path):
    digits_then_bytes = {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL],
    }
    model_dir = _with_pre_tokenizer(tiny_dir, tmp_path / "model", digits_then_bytes)
    path = write_gguf(model_dir, tmp_path / "smollm.gguf", outtype="f32")
    assert _reader_value(gguf.GGUFReader(path), "tokenizer.ggml.pre") == "smollm"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "order 12345 costs $42.50 on 2024-01-05"
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert _llama_cpp_tokens(path, text) == expected
    # The pre-tokenizer name matters: "gpt-2" would apply this tokenizer's digit merges ("12", "202").
    wrong = write_gguf(model_dir, tmp_path / "gpt2-pre.gguf", outtype="f32", tokenizer_pre="gpt-2")
    assert _llama_cpp_tokens(wrong, text) != expected


def test_unknown_pre_tokenizer_needs_explicit_name(tiny_dir, tmp_path):
    unusual = {"type": "Sequence", "pretokenizers": [{"type": "Punctuation", "behavior": "Isolated"}, BYTE_LEVEL]}
    model_dir = _with_pre_tokenizer(tiny_dir, tmp_path / "model", unusual)
    with pytest.raises(ValueError, match="tokenizer_pre"):
        write_gguf(model_dir, tmp_path / "out.gguf")
    path = write_gguf(model_dir, tmp_path / "out.gguf", tokenizer_pre="gpt-2")
    assert _reader_value(gguf.GGUFReader(path), "tokenizer.ggml.pre") == "gpt-2"


def _random_adapter(model_dir: Path, adapter_dir: Path, *, seed: int = 1) -> Path:
    """A LoRA adapter with random A and B (as trained weights would be), saved like training saves it."""
    import peft

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
        init_lora_weights=False,  # random B as well as A, so the adapter changes the outputs
    )
    torch.manual_seed(seed)
    peft.get_peft_model(base, lora).save_pretrained(adapter_dir)
    return adapter_dir


def test_merge_adapter_equals_base_plus_adapter(tiny_dir, tmp_path, hf_model, tokenizer, prompts, prompt_ids):
    import peft

    adapter_dir = _random_adapter(tiny_dir, tmp_path / "adapter")
    adapted = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32), adapter_dir).eval()
    ids = prompt_ids[0]
    with torch.no_grad():
        expected = adapted(input_ids=torch.tensor([ids])).logits[0].numpy()

    merged = merge_adapter(tiny_dir, adapter_dir, tmp_path / "merged", check_prompts=prompt_ids)

    # The merge measured itself against base + adapter, in fp32, on every position of every prompt.
    assert merged.prompts_checked == len(prompts)
    assert 0 <= merged.max_abs_logit_diff < 1e-4
    assert merged.adapter_was_qlora is False
    merged_model = AutoModelForCausalLM.from_pretrained(merged.directory, dtype=torch.float32).eval()
    merged_logits = _hf_logits(merged_model, ids)
    np.testing.assert_allclose(merged_logits, expected, atol=1e-4)
    assert np.abs(merged_logits - _hf_logits(hf_model, ids)).max() > 0.1
    # The merged directory is a complete export source: weights, config and the chat template.
    merged_gguf = write_gguf(merged.directory, tmp_path / "merged.gguf", outtype="f32")
    max_diff, _ = _compare_with_hf(merged_gguf, prompts, tokenizer, merged_model)
    assert max_diff < F32_LOGIT_ATOL


def test_merge_beyond_tolerance_is_an_error_with_the_numbers(tiny_dir, tmp_path, prompt_ids):
    adapter_dir = _random_adapter(tiny_dir, tmp_path / "adapter")
    # fp32 summation order alone moves logits by ~1e-6; a tolerance below that must trip.
    with pytest.raises(MergeMismatchError, match=r"changed the logits by up to .* \(tolerance 1e-12, 4 prompts\)"):
        merge_adapter(tiny_dir, adapter_dir, tmp_path / "merged", check_prompts=prompt_ids, tolerance=1e-12)
    assert not (tmp_path / "merged").exists()


def test_qlora_adapter_is_merged_into_the_unquantized_base_only(tiny_dir, tmp_path, prompt_ids):
    adapter_dir = _random_adapter(tiny_dir, tmp_path / "adapter")
    (adapter_dir / "rebuild_manifest.json").write_text(json.dumps({"plan": {"qlora": True}}))
    merged = merge_adapter(tiny_dir, adapter_dir, tmp_path / "merged", check_prompts=prompt_ids[:1])
    assert merged.adapter_was_qlora is True
    assert json.loads((merged.directory / "config.json").read_text()).get("dtype") == "float32"
    # A base saved in 4-bit would swallow the LoRA update: refused before any merge.
    quantized_base = shutil.copytree(tiny_dir, tmp_path / "base-4bit")
    config = json.loads((quantized_base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized_base / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeMismatchError, match="saved quantized \\(bitsandbytes\\)"):
        merge_adapter(quantized_base, adapter_dir, tmp_path / "merged-4bit")


def test_an_interrupted_gguf_write_leaves_the_previous_file_whole(tiny_dir, tmp_path, monkeypatch):
    out = write_gguf(tiny_dir, tmp_path / "tiny.gguf", outtype="f32")
    before = out.read_bytes()

    def killed(self, *args, **kwargs):
        self.fout[0].write(b"half a tensor")  # bytes on disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", killed)
    with pytest.raises(KeyboardInterrupt):
        write_gguf(tiny_dir, out, outtype="f32")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]  # no temporary file left behind


def test_a_failed_quantization_writes_nothing_under_the_real_name(tmp_path):
    source = tmp_path / "not-a-model.gguf"
    source.write_bytes(b"GGUF but not really")
    with pytest.raises(RuntimeError, match="failed to quantize"):
        quantize_gguf(source, tmp_path / "out-Q8_0.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-model.gguf"]
