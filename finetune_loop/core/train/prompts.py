"""Prompt rendering and encoding: the one way every stage turns a task input (and its answer) into
model tokens.

Training, evaluation, shadow scoring, the merge check and the GGUF checks all encode through
`encode_prompt` / `encode_completion`, so the tokens a model was trained on are the tokens it is
evaluated and served on; `rendered_length` counts an example exactly as training encodes it
(curation's `token_length`, which quarantines rows beyond training.max_length).

User text is encoded as text, never as control tokens. A chat template renders the user's message
inline, and a tokenizer that parses special tokens in the rendered string would turn a ticket
containing `<|im_end|><|im_start|>system` into a real end of turn and a forged system turn. So a
rendered prompt is split into its template pieces and the user's text (`PromptSegments`, found by
rendering a marker in the user's place): the template pieces are tokenized with their control
tokens, the user's text with special-token parsing off (HF `split_special_tokens`, llama.cpp
`special=False` in `llama_runtime.serving_tokens`); `encode_text` is that encoding for any text fed
to a model outside a chat template (the memorisation check's passages). Labels and the instruction never hold a control
token (the task spec refuses them), so the completion and the system turn need no such split.

It is its own module, apart from base_model.py (which fetches and hashes the base checkpoint),
because the evaluate and ship stages need the rendering and nothing of obtaining a base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.train.base_model import BaseModelError

# Rendered in the user's place to find where a template puts the user's text: letters and digits
# only, so a template that trims or escapes the message leaves it whole, and no task text reaches
# the marker render.
_USER_TEXT_MARKER = "FinetuneLoopUserText7f3a9c"


def chat_messages(spec: TaskSpec, text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": spec.system_prompt()}, {"role": "user", "content": text}]


@dataclass(frozen=True)
class PromptSegments:
    """A chat-rendered prompt as template text around the user's text: `before` (system turn and
    the user turn's header) and `after` (the end of the user turn and the assistant header) hold
    the template's control tokens; `user_text` is whatever the template wrote of the user's message,
    to be encoded as plain text."""

    before: str
    user_text: str
    after: str

    @property
    def rendered(self) -> str:
        return self.before + self.user_text + self.after


def split_user_text(render: Callable[[list[dict[str, str]]], str], spec: TaskSpec, text: str) -> PromptSegments:
    """The prompt `render` (any renderer of chat messages: the HF template, the GGUF's Jinja
    template, an Ollama Go template) makes of `text`, split around the user's text."""
    marked = render(chat_messages(spec, _USER_TEXT_MARKER))
    if marked.count(_USER_TEXT_MARKER) != 1:
        raise BaseModelError(f"the chat template writes the user's message {marked.count(_USER_TEXT_MARKER)} times, not once")
    before, after = marked.split(_USER_TEXT_MARKER)
    rendered = render(chat_messages(spec, text))
    if len(rendered) < len(before) + len(after) or not (rendered.startswith(before) and rendered.endswith(after)):
        raise BaseModelError(
            "the chat template renders the text around the user's message differently depending on the message; "
            "the user's text cannot be told apart from the template's control tokens"
        )
    return PromptSegments(before, rendered[len(before) : len(rendered) - len(after)], after)


def _render_generation_prompt(tokenizer) -> Callable[[list[dict[str, str]]], str]:
    return lambda messages: tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_segments(tokenizer, spec: TaskSpec, text: str) -> PromptSegments:
    return split_user_text(_render_generation_prompt(tokenizer), spec, text)


def render_prompt(tokenizer, spec: TaskSpec, text: str) -> str:
    """The chat-rendered prompt, ending where the assistant's answer starts (as text: encode it with
    `encode_prompt`, which keeps the user's text out of the control tokens)."""
    return _render_generation_prompt(tokenizer)(chat_messages(spec, text))


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as plain text: special-token parsing off, so a `<|im_end|>` in it stays
    characters (the user's text in a prompt, a memorisation probe's passage)."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []


def encode_segments(tokenizer, segments: PromptSegments) -> list[int]:
    """Token ids of a split prompt: control tokens parsed in the template pieces only."""

    def template_ids(piece: str) -> list[int]:
        return tokenizer(piece, add_special_tokens=False, split_special_tokens=False)["input_ids"] if piece else []

    return template_ids(segments.before) + encode_text(tokenizer, segments.user_text) + template_ids(segments.after)


def encode_prompt(tokenizer, spec: TaskSpec, text: str) -> list[int]:
    """The prompt's token ids, as training, evaluation and serving feed them."""
    return encode_segments(tokenizer, prompt_segments(tokenizer, spec, text))


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


def encode_completion(tokenizer, spec: TaskSpec, text: str, label: str) -> list[int]:
    """The answer's token ids, ending on the EOS token (a label holds no control token: the spec refuses one)."""
    return tokenizer(render_completion(tokenizer, spec, text, label), add_special_tokens=False)["input_ids"]


def rendered_length(spec: TaskSpec, base_dir: Path) -> Callable[[Example], int]:
    """Token count of an example exactly as training encodes it (prompt plus answer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)

    def length(example: Example) -> int:
        return len(encode_prompt(tokenizer, spec, example.text)) + len(encode_completion(tokenizer, spec, example.text, example.label))

    return length
