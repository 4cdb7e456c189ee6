"""Label-likelihood scoring against a brute-force reference: one full forward pass per (text, label)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.evaluate import scoring
from finetune_loop.core.train.prompts import encode_prompt
from finetune_loop_tests.conftest import tiny_rows, write_tiny_task


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_base_model):
    spec = load_task_spec(write_tiny_task(tmp_path_factory.mktemp("task"), tiny_base_model))
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model, dtype=torch.float32)
    return spec, tokenizer, model


def _brute_force(model, tokenizer, spec, text: str) -> dict[str, float]:
    """Sum of log-probabilities of each label's answer tokens, from prompt + answer in one pass."""
    prompt = encode_prompt(tokenizer, spec, text)
    totals = {}
    for label, answer in scoring.label_token_sequences(tokenizer, spec).items():
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([prompt + list(answer)])).logits[0].float(), dim=-1)
        totals[label] = sum(log_probs[len(prompt) - 1 + k, token].item() for k, token in enumerate(answer))
    return totals


def test_batched_label_scores_equal_one_full_forward_per_label(tiny):
    spec, tokenizer, model = tiny
    # Rows of different lengths in batches of 4: padding, the shared prefix cache and the labels
    # packed under one attention mask must not change a single score.
    texts = [r["text"] for r in tiny_rows()[:9]] + ["x", "a much longer ticket " * 6]
    batched = scoring.label_log_likelihoods(model, tokenizer, spec, texts, batch_size=4)
    for text, scores in zip(texts, batched):
        expected = _brute_force(model, tokenizer, spec, text)
        assert scores == pytest.approx(expected, abs=1e-3)
    predictions = scoring.predict_labels(model, tokenizer, spec, texts, batch_size=4)
    assert predictions == [max(spec.labels, key=s.__getitem__) for s in batched]
    # The same passes give the model's unconstrained top-1 next token (what the GGUF check compares).
    next_tokens = [s.next_token_id for s in scoring.score_prompts(model, tokenizer, spec, texts, batch_size=4)]
    with torch.no_grad():
        expected_next = [
            int(model(torch.tensor([encode_prompt(tokenizer, spec, t)])).logits[0, -1].argmax())
            for t in texts
        ]
    assert next_tokens == expected_next


def test_scores_through_a_lora_adapter_equal_the_brute_force(tiny):
    from peft import LoraConfig, get_peft_model

    spec, tokenizer, model = tiny
    torch.manual_seed(3)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.float32), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    texts = [r["text"] for r in tiny_rows()[:5]]
    batched = scoring.label_log_likelihoods(adapted, tokenizer, spec, texts, batch_size=2)
    for text, scores in zip(texts, batched):
        assert scores == pytest.approx(_brute_force(adapted, tokenizer, spec, text), abs=1e-3)
    # The adapter moved the scores: the check above is not comparing the base with itself.
    assert batched[0] != pytest.approx(scoring.label_log_likelihoods(model, tokenizer, spec, texts[:1])[0], abs=1e-3)


def test_batched_generation_equals_one_generate_call_per_text(tiny):
    spec, tokenizer, model = tiny
    texts = ["where is my parcel", "x", "my account is locked please help asap"]
    answers = scoring.generate_answers(model, tokenizer, spec, texts, max_new_tokens=6)
    for text, answer in zip(texts, answers):
        ids = torch.tensor([encode_prompt(tokenizer, spec, text)])
        prompt = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            tokens = model.generate(**prompt, max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id)[0, prompt["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        assert answer == tokenizer.decode(tokens, skip_special_tokens=True).strip()
