"""The three verifications of a GGUF export, as plain functions over measured results.

- `matches_merged_model`: the unquantized GGUF under llama.cpp computes what the merged HF model
  computes (top-1 next token after each holdout prompt, and the label the evaluation's rule picks).
- `quant_within_budget`: every quantized file loses at most its budget of holdout accuracy
  (percentage points, never finer than one holdout row) against the merged HF model.
- `chat_template_roundtrip`: the prompt tokens training used, the GGUF's embedded chat template as
  llama.cpp renders it, and the Ollama Modelfile's TEMPLATE give the same token ids; the EOS that
  ends every training answer is the GGUF's EOS and a Modelfile stop; llama.cpp generation stops there.

Each returns a CheckOutcome whose metadata carries the numbers a failing check is judged on; the
Dagster layer turns it into an asset check result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import ExportSettings, TaskSpec
from finetune_loop.core.ship.llama_runtime import load_gguf, serving_tokens
from finetune_loop.core.ship.modelfile import (
    ModelfileError,
    parse_modelfile,
    render_go_template,
)
from finetune_loop.core.train.base_model import BaseModelError
from finetune_loop.core.train.prompts import (
    encode_completion,
    encode_prompt,
    prompt_segments,
    split_user_text,
)

MATCHES_MERGED_MODEL = "matches_merged_model"
QUANT_WITHIN_BUDGET = "quant_within_budget"
CHAT_TEMPLATE_ROUNDTRIP = "chat_template_roundtrip"


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, object] = field(default_factory=dict)


def matches_merged_model(
    merged_answers: Sequence[str],
    merged_next_tokens: Sequence[int],
    gguf_answers: Sequence[str],
    gguf_next_tokens: Sequence[int],
    settings: ExportSettings,
) -> CheckOutcome:
    """Agreement of the unquantized GGUF under llama.cpp with the merged HF model on the same prompts.

    Greedy-output agreement (`min_greedy_agreement`) is read on the answer both runtimes serve the
    task with (`answering.py`): the label whose answer tokens are most likely after the prompt, or
    the whole greedy answer of a generation task. `label_agreement` keeps its name for both kinds."""
    rows = len(merged_answers)
    top1 = sum(a == b for a, b in zip(merged_next_tokens, gguf_next_tokens)) / rows
    labels_agree = sum(a == b for a, b in zip(merged_answers, gguf_answers)) / rows
    passed = top1 >= settings.min_top1_agreement and labels_agree >= settings.min_greedy_agreement
    description = (
        f"top-1 next-token agreement {top1:.3f} (min {settings.min_top1_agreement}), "
        f"answer agreement {labels_agree:.3f} (min {settings.min_greedy_agreement}) over {rows} holdout prompts"
    )
    return CheckOutcome(
        MATCHES_MERGED_MODEL,
        passed,
        description,
        {
            "top1_agreement": top1,
            "label_agreement": labels_agree,
            "min_top1_agreement": settings.min_top1_agreement,
            "min_greedy_agreement": settings.min_greedy_agreement,
            "prompts": rows,
            "label_disagreements": sum(a != b for a, b in zip(merged_answers, gguf_answers)),
        },
    )


def quant_within_budget(
    merged_accuracy: float, accuracy_by_quant: dict[str, float], settings: ExportSettings, holdout_rows: int
) -> CheckOutcome:
    """Each quantized file's holdout accuracy may fall at most its budget (points) below the merged model's.

    A holdout of n rows measures accuracy in steps of 100/n points (`one_row_points`), so a budget
    finer than that step is judged at one row: a 0.5-pt budget on 120 rows (0.83 pt a row) would
    otherwise refuse any file that flips a single answer, which the holdout cannot tell from none.
    `effective_budget_points` is what each file was judged on."""
    one_row = 100 / holdout_rows
    metadata: dict[str, object] = {"merged_accuracy": merged_accuracy, "one_row_points": one_row}
    over = []
    for quant_type, accuracy in accuracy_by_quant.items():
        delta_points = 100 * (accuracy - merged_accuracy)
        budget = settings.budget_points(quant_type)
        effective = max(budget, one_row)
        metadata[f"{quant_type}_accuracy"] = accuracy
        metadata[f"{quant_type}_delta_points"] = delta_points
        metadata[f"{quant_type}_budget_points"] = budget
        metadata[f"{quant_type}_effective_budget_points"] = effective
        if -delta_points > effective + 1e-9:
            judged = f"budget -{budget} pt" if effective == budget else f"budget -{budget} pt, judged at one holdout row: -{effective:.2f} pt"
            over.append(f"{quant_type} {delta_points:+.2f} pt ({judged})")
    summary = ", ".join(f"{q} {metadata[f'{q}_delta_points']:+.2f} pt" for q in accuracy_by_quant)
    description = f"over budget: {'; '.join(over)}" if over else f"within budget vs merged accuracy {merged_accuracy:.3f}: {summary}"
    return CheckOutcome(QUANT_WITHIN_BUDGET, not over, description, metadata)


def chat_template_roundtrip(
    gguf_path: Path,
    tokenizer,
    spec: TaskSpec,
    texts: Sequence[str],
    modelfile_text: str,
    *,
    answer: str,
    n_ctx: int,
) -> CheckOutcome:
    """Training, the GGUF's own template and the Modelfile agree token for token, and generation ends at EOS.

    `answer` is a training answer (a holdout target): the token that ends it in training must be
    the GGUF's EOS. Generation is checked twice under llama.cpp: constrained by a GBNF grammar to
    the task's answers (the labels; any JSON value for a JSON generation task) — the gate: once an
    answer is complete the grammar admits only end-of-generation tokens, so the run must stop
    before max_tokens on a token llama.cpp treats as EOS — and free greedy generation, whose stop
    rate is recorded but not gated (an untrained or weak model may ramble). A free-text generation
    task has no grammar to constrain it: only the free stop rate is recorded."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    problems: list[str] = []
    llm = load_gguf(gguf_path, n_ctx=n_ctx, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)

        def token_text(token_id: int) -> str:
            return llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

        # The end of an answer, as training saw it, and as llama.cpp and Ollama will stop on it.
        training_eos = tokenizer.eos_token_id
        answer_ids = encode_completion(tokenizer, spec, texts[0], answer)
        if answer_ids[-1] != training_eos:
            problems.append(f"training answers end with token {answer_ids[-1]}, not the EOS {training_eos}")
        if llm.token_eos() != training_eos:
            problems.append(f"GGUF eos id {llm.token_eos()} ({token_text(llm.token_eos())!r}) != training EOS {training_eos} ({tokenizer.eos_token!r})")
        if not llama_cpp.llama_vocab_is_eog(vocab, training_eos):
            problems.append(f"llama.cpp does not end generation on the training EOS {tokenizer.eos_token!r}")
        try:
            modelfile = parse_modelfile(modelfile_text)
        except ModelfileError as exc:
            problems.append(f"Modelfile: {exc}")
            modelfile = None
        if modelfile is not None:
            if tokenizer.eos_token not in modelfile.stops:
                problems.append(f"Modelfile stops {list(modelfile.stops)} miss the EOS {tokenizer.eos_token!r}")
            for stop in modelfile.stops:
                ids = llm.tokenize(stop.encode(), add_bos=False, special=True)
                if len(ids) != 1 or not llama_cpp.llama_vocab_is_eog(vocab, ids[0]):
                    problems.append(f"Modelfile stop {stop!r} is not one end-of-generation token in the GGUF (tokens {ids})")

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            problems.append("the GGUF has no tokenizer.chat_template: llama.cpp servers would format chats their own way")
        formatter = (
            Jinja2ChatFormatter(template, eos_token=token_text(llm.token_eos()), bos_token=token_text(llm.token_bos()))
            if template else None
        )
        mismatches = {"gguf_template": 0, "modelfile_template": 0}
        renderers = {}
        if formatter is not None:
            renderers["gguf_template"] = _jinja_renderer(formatter)
        if modelfile is not None:
            go_template = modelfile.template
            renderers["modelfile_template"] = lambda messages: render_go_template(go_template, messages)
        first_mismatch = ""
        for text in texts:
            # What training and evaluation fed the model, and what a server gets from each template.
            expected = encode_prompt(tokenizer, spec, text)
            rendered = {}
            for source, render in list(renderers.items()):
                try:
                    rendered[source] = split_user_text(render, spec, text)
                except (ModelfileError, BaseModelError) as exc:
                    problems.append(f"{source}: {exc}")
                    del renderers[source]
            for source, prompt in rendered.items():
                ids = serving_tokens(llm, prompt)
                if ids != expected:
                    mismatches[source] += 1
                    first_mismatch = first_mismatch or _first_difference(source, expected, ids, token_text)
        for source, count in mismatches.items():
            if count:
                problems.append(f"{source} tokens differ from training on {count}/{len(texts)} prompts")

        stopped, free_stopped = _generation_stops(llm, tokenizer, spec, texts, formatter, answer)
    finally:
        llm.close()
    if stopped is not None and stopped < len(texts):
        problems.append(f"constrained generation reached max tokens without EOS on {len(texts) - stopped}/{len(texts)} prompts")
    metadata = {
        "prompts": len(texts),
        "gguf_template_mismatches": mismatches["gguf_template"],
        "modelfile_template_mismatches": mismatches["modelfile_template"],
        "training_eos_id": training_eos,
        "free_generation_stop_rate": free_stopped / len(texts),
        "problems": json.dumps(problems),
    }
    if stopped is not None:
        metadata["constrained_generation_stop_rate"] = stopped / len(texts)
    if first_mismatch:
        metadata["first_mismatch"] = first_mismatch
    description = "; ".join(problems) if problems else (
        f"training, GGUF template and Modelfile give identical prompt tokens on {len(texts)} prompts; "
        f"generation stops at {tokenizer.eos_token!r}"
    )
    return CheckOutcome(CHAT_TEMPLATE_ROUNDTRIP, not problems, description, metadata)


def _first_difference(source: str, expected: list[int], got: list[int], token_text) -> str:
    position = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    window = slice(max(0, position - 3), position + 3)
    return (
        f"{source} at token {position}: training {[token_text(t) for t in expected[window]]} "
        f"vs {[token_text(t) for t in got[window]]}"
    )


def _jinja_renderer(formatter):
    """The GGUF's own chat template as a renderer of chat messages (see prompts.split_user_text)."""
    return lambda messages: formatter(messages=messages).prompt


# Room after the longest label for the grammar to reach its end-of-generation token.
_GENERATION_SLACK = 4
_FREE_GENERATION_TOKENS = 32


def _label_grammar(spec: TaskSpec) -> str:
    # GBNF string literals share JSON's escapes for the characters labels can hold.
    return "root ::= " + " | ".join(json.dumps(label) for label in spec.labels)


def _target_grammar(spec: TaskSpec) -> str | None:
    from llama_cpp.llama_grammar import JSON_GBNF

    # Any JSON value: the target decides its type, the metrics check it. Free text has no grammar.
    return JSON_GBNF.replace("root   ::= object", "root   ::= value", 1) if spec.target_format == "json" else None


# The GBNF grammar every answer obeys, for a constrained server, per task kind (core/common/kinds.py).
ANSWER_GRAMMARS: dict[str, Callable[[TaskSpec], str | None]] = {"classification": _label_grammar, "generation": _target_grammar}


def _generation_stops(llm, tokenizer, spec: TaskSpec, texts, formatter, answer: str) -> tuple[int | None, int]:
    """(prompts whose constrained greedy generation ended on EOS, or None where the task's answers
    have no grammar (free text); the same count for free greedy generation)."""
    from llama_cpp import LlamaGrammar

    kind = kind_of(spec)
    gbnf = ANSWER_GRAMMARS[kind.name](spec)
    grammar = LlamaGrammar.from_string(gbnf, verbose=False) if gbnf is not None else None
    longest = kind.grammar_answer_tokens(lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=False)), answer)
    free_tokens = max(_FREE_GENERATION_TOKENS, longest)
    stopped = 0 if grammar is not None else None
    free_stopped = 0
    for text in texts:
        prompt = split_user_text(_jinja_renderer(formatter), spec, text) if formatter else prompt_segments(tokenizer, spec, text)
        tokens = serving_tokens(llm, prompt)
        if grammar is not None:
            constrained = llm.create_completion(tokens, max_tokens=longest + _GENERATION_SLACK, temperature=0.0, grammar=grammar)
            stopped += constrained["choices"][0]["finish_reason"] == "stop"
        free = llm.create_completion(tokens, max_tokens=free_tokens, temperature=0.0)
        free_stopped += free["choices"][0]["finish_reason"] == "stop"
    return stopped, free_stopped
