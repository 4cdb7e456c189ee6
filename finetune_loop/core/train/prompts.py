"""Prompt rendering: the one way every stage turns a task input (and its answer) into model text.

Training, evaluation, shadow scoring and the GGUF checks all render through `render_prompt` /
`render_completion`, so the tokens a model was trained on are the tokens it is evaluated and
served on; `rendered_length` counts an example exactly as training renders it (curation's
`token_length`, which quarantines rows beyond training.max_length). It is its own module, apart
from base_model.py (which fetches and hashes the base checkpoint), because the evaluate and ship
stages need the rendering and nothing of obtaining a base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.train.base_model import BaseModelError


def chat_messages(spec: TaskSpec, text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": spec.system_prompt()}, {"role": "user", "content": text}]


def render_prompt(tokenizer, spec: TaskSpec, text: str) -> str:
    """The chat-rendered prompt, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(chat_messages(spec, text), add_generation_prompt=True, tokenize=False)


def render_completion(tokenizer, spec: TaskSpec, text: str, label: str) -> str:
    """The answer as the chat template closes it, cut after the end-of-turn (EOS) marker: generation
    stops there, so whatever the template adds between turns is never trained or served."""
    prompt = render_prompt(tokenizer, spec, text)
    full = tokenizer.apply_chat_template(
        chat_messages(spec, text) + [{"role": "assistant", "content": label}], tokenize=False
    )
    if not full.startswith(prompt):
        raise BaseModelError("the tokenizer's chat template renders the prompt differently with and without the answer")
    completion = full[len(prompt):]
    stop = tokenizer.eos_token
    if not stop or stop not in completion:
        raise BaseModelError(f"the chat template does not close the assistant turn with the EOS token {stop!r}")
    return completion[: completion.index(stop) + len(stop)]


def rendered_length(spec: TaskSpec, base_dir: Path) -> Callable[[Example], int]:
    """Token count of an example exactly as training renders it (prompt plus answer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)

    def length(example: Example) -> int:
        rendered = render_prompt(tokenizer, spec, example.text) + render_completion(tokenizer, spec, example.text, example.label)
        return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    return length
