"""Running GGUF files under llama.cpp (llama-cpp-python): quantizing them, answering, timing.

`quantize_gguf` calls llama.cpp's own quantizer; `run_with_llama_cpp` answers split chat prompts
(`PromptSegments`) with the evaluation's decision rule (the label with the highest total log-probability),
reusing the KV cache of a shared prompt prefix and decoding every label's answer in one batch, and
measures prompt and generation speed;
`serving_tokens` tokenizes as a server should: control tokens parsed in the template's pieces only,
the user's text as text. Everything that needs the llama_cpp package is
here, apart from the model file's writing (gguf_writer.py) and the checks over the measured
results (gguf_checks.py), so the export numbers are those of the artifact that ships.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finetune_loop.core.common.files import atomic_path
from finetune_loop.core.common.spec import QUANT_TYPES
from finetune_loop.core.train.prompts import PromptSegments


def load_gguf(gguf_path: Path, *, parallel_sequences: int = 1, **kwargs):
    """A `llama_cpp.Llama` over `gguf_path` on llama.cpp's plain CPU buffers.

    llama.cpp moves weights into "extra" buffer types where the CPU has them (AMX tiles, repacked
    Q4/Q8 layouts). On an Intel Xeon with AMX in this project's (virtualised) CI machine, decoding a
    Q8_0 file from an AMX buffer segfaults; the plain buffers compute the same numbers everywhere.
    `parallel_sequences` > 1 gives the context that many KV sequences in one unified cache (cells
    shared between sequences are stored once), which `_most_likely_label` decodes every answer in.
    The `Llama` constructor has no switch for either, so the default model and context parameters
    it starts from are swapped for the duration of the load."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    if not 1 <= parallel_sequences <= MAX_PARALLEL_SEQUENCES:
        raise ValueError(f"llama.cpp holds 1 to {MAX_PARALLEL_SEQUENCES} sequences in one context, asked for {parallel_sequences}")
    model_defaults = llama_module.llama_cpp.llama_model_default_params
    context_defaults = llama_module.llama_cpp.llama_context_default_params

    def plain_buffers():
        params = model_defaults()
        params.use_extra_bufts = False
        return params

    def sequences():
        params = context_defaults()
        params.n_seq_max = parallel_sequences
        params.kv_unified = True
        return params

    llama_module.llama_cpp.llama_model_default_params = plain_buffers
    llama_module.llama_cpp.llama_context_default_params = sequences
    try:
        return llama_cpp.Llama(model_path=str(gguf_path), **kwargs)
    finally:
        llama_module.llama_cpp.llama_model_default_params = model_defaults
        llama_module.llama_cpp.llama_context_default_params = context_defaults


# LLAMA_MAX_SEQ in llama.cpp (src/llama-cparams.h): sequence 0 holds the prompt, one per label more.
MAX_PARALLEL_SEQUENCES = 256


def quantize_gguf(source: Path, dest: Path, quant_type: str) -> Path:
    """Quantize an f32/f16/bf16 GGUF with llama.cpp's own quantizer (what llama-quantize runs)."""
    import llama_cpp

    if quant_type not in QUANT_TYPES:
        raise ValueError(f"unknown quant type {quant_type!r}; supported: {', '.join(QUANT_TYPES)}")
    dest = Path(dest)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant_type}")
    with atomic_path(dest) as staging:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(staging).encode(), ctypes.byref(params))
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
    prompts: Sequence[PromptSegments],
    label_sequences: Mapping[str, Sequence[int]],
    *,
    n_ctx: int = 1024,
    n_threads: int | None = None,
) -> LlamaCppAnswers:
    """Answer each split chat prompt with one label, and time the file.

    The decision rule is the evaluation's (`scoring.predict_labels`): the label whose answer tokens
    (`label_sequences`, ending on the end-of-turn token) have the highest total log-probability
    after the prompt; ties go to the label listed first. The same rule on both runtimes makes the
    GGUF's accuracy comparable with the HF model's. Answers that share leading tokens share their
    forward passes, and prompts sharing a prefix (the system prompt) reuse its KV cache.
    """

    if not label_sequences or not all(label_sequences.values()):
        raise ValueError(f"every label needs its answer tokens, got {dict(label_sequences)!r}")
    if not prompts:
        raise ValueError("no prompts to run")

    if len(label_sequences) >= MAX_PARALLEL_SEQUENCES:
        raise ValueError(f"{len(label_sequences)} labels: llama.cpp scores at most {MAX_PARALLEL_SEQUENCES - 1} answers in parallel")
    llm = load_gguf(
        gguf_path, parallel_sequences=len(label_sequences) + 1, n_ctx=n_ctx, n_threads=n_threads, logits_all=False, verbose=False
    )
    try:
        longest_label = max(len(tokens) for tokens in label_sequences.values())
        chosen, next_tokens = [], []
        for prompt in prompts:
            next_tokens.append(_eval_prompt(llm, prompt, longest_label, n_ctx))
            chosen.append(_most_likely_label(llm, label_sequences))
        prompt_speed, generation_speed = _measure_speed(llm, serving_tokens(llm, prompts[0]))
        return LlamaCppAnswers(chosen, next_tokens, prompt_speed, generation_speed)
    finally:
        llm.close()


@dataclass(frozen=True)
class LlamaCppGenerations:
    # Per prompt, the greedy answer's token ids up to (without) the first end-of-generation token.
    token_ids: list[list[int]]
    # Per prompt, the first greedy token (the end-of-generation token itself for an empty answer).
    next_token_ids: list[int]
    prompt_tokens_per_second: float
    generation_tokens_per_second: float


def generate_with_llama_cpp(
    gguf_path: Path, prompts: Sequence[PromptSegments], *, max_tokens: int, n_ctx: int = 1024, n_threads: int | None = None
) -> LlamaCppGenerations:
    """Greedy answers of a generation task under llama.cpp, token by token (argmax of the logits,
    as the HF reference's `do_sample=False`), each ending on the first token llama.cpp treats as
    end of generation or after `max_tokens`; prompts sharing a prefix reuse its KV cache."""
    import llama_cpp

    if not prompts:
        raise ValueError("no prompts to run")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    llm = load_gguf(gguf_path, n_ctx=n_ctx, n_threads=n_threads, logits_all=False, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        answers, first_tokens = [], []
        for prompt in prompts:
            first_tokens.append(_eval_prompt(llm, prompt, max_tokens, n_ctx))
            answer: list[int] = []
            for _ in range(max_tokens):
                token = int(np.argmax(_last_logits(llm)))
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                answer.append(token)
                llm.eval([token])
            answers.append(answer)
        prompt_speed, generation_speed = _measure_speed(llm, serving_tokens(llm, prompts[0]))
        return LlamaCppGenerations(answers, first_tokens, prompt_speed, generation_speed)
    finally:
        llm.close()


def classify_with_llama_cpp(gguf_path: Path, prompts: Sequence[PromptSegments], label_sequences: Mapping[str, Sequence[int]], **kwargs) -> list[str]:
    """The label llama.cpp picks for each split chat prompt (see run_with_llama_cpp)."""
    return run_with_llama_cpp(gguf_path, prompts, label_sequences, **kwargs).labels


def serving_tokens(llm, prompt: PromptSegments) -> list[int]:
    """Token ids of a split chat prompt as a llama.cpp server should feed them: special tokens
    parsed in the template's pieces, the user's text tokenized as text (a `<|im_end|>` typed in a
    ticket stays five ordinary tokens), BOS prepended exactly when the GGUF says the model adds
    one, never an EOS."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    bos = [llm.token_bos()] if llama_cpp.llama_vocab_get_add_bos(vocab) else []

    def ids(piece: str, *, parse_special: bool) -> list[int]:
        return llm.tokenize(piece.encode(), add_bos=False, special=parse_special) if piece else []

    return bos + ids(prompt.before, parse_special=True) + ids(prompt.user_text, parse_special=False) + ids(prompt.after, parse_special=True)


def _eval_prompt(llm, prompt: PromptSegments, answer_tokens: int, n_ctx: int) -> int:
    """Evaluate one split chat prompt (reusing the cached prefix) and return llama.cpp's top-1 next
    token; the prompt plus `answer_tokens` (or the speed probe's tokens) must fit the context."""
    tokens = serving_tokens(llm, prompt)
    if len(tokens) + max(answer_tokens, SPEED_GENERATED_TOKENS) > n_ctx:
        raise ValueError(f"a prompt of {len(tokens)} tokens plus {answer_tokens} answer tokens does not fit n_ctx={n_ctx}")
    _eval_reusing_prefix(llm, tokens)
    return int(np.argmax(_last_logits(llm)))


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

    The answers form a token trie (labels sharing leading tokens share its nodes), decoded in one
    llama.cpp batch instead of one token at a time: each label gets its own KV sequence, starting as
    a copy of the prompt's cells (sequence 0; the copy shares them), and each trie node is one batch
    token at its depth's position, in the sequences of every label through it, so it attends to the
    prompt and its own ancestors only. A label's total is the prompt's next-token log-probability of
    its first token plus each node's of the next. The label sequences are dropped afterwards, leaving
    the cache holding the prompt, as `_eval_reusing_prefix` expects."""
    import llama_cpp

    prompt_length = llm.n_tokens
    root = _log_softmax(_last_logits(llm))
    seq_of = {label: index + 1 for index, label in enumerate(label_sequences)}
    # Trie node (an answer prefix of at least one token) -> the sequences of the labels through it.
    members: dict[tuple[int, ...], list[int]] = {}
    for label, sequence in label_sequences.items():
        for depth in range(1, len(sequence)):
            members.setdefault(tuple(sequence[:depth]), []).append(seq_of[label])
    nodes = sorted(members, key=len)  # positions never decrease within a sequence
    log_probs = {(): root}
    memory = llama_cpp.llama_get_memory(llm.ctx)
    used = sorted({s for seqs in members.values() for s in seqs})
    for s in used:
        llama_cpp.llama_memory_seq_cp(memory, 0, s, -1, -1)
    try:
        for start in range(0, len(nodes), llm.n_batch):
            chunk = nodes[start : start + llm.n_batch]
            batch = llama_cpp.llama_batch_init(len(chunk), 0, len(used))
            try:
                for i, node in enumerate(chunk):
                    batch.token[i] = node[-1]
                    batch.pos[i] = prompt_length + len(node) - 1
                    batch.n_seq_id[i] = len(members[node])
                    for j, s in enumerate(members[node]):
                        batch.seq_id[i][j] = s
                    batch.logits[i] = True
                batch.n_tokens = len(chunk)
                rc = llama_cpp.llama_decode(llm.ctx, batch)
                if rc != 0:
                    raise RuntimeError(f"llama.cpp failed to decode {len(chunk)} answer tokens (return code {rc})")
                for i, node in enumerate(chunk):
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, i), shape=(llm.n_vocab(),))
                    log_probs[node] = _log_softmax(logits)
            finally:
                llama_cpp.llama_batch_free(batch)
    finally:
        for s in used:
            llama_cpp.llama_memory_seq_rm(memory, s, -1, -1)
    totals = {
        label: sum(log_probs[tuple(sequence[:depth])][token] for depth, token in enumerate(sequence))
        for label, sequence in label_sequences.items()
    }
    return max(label_sequences, key=totals.__getitem__)


# Enough context for a chat-rendered ticket plus the answer; llama.cpp allocates the KV cache for it.
LLAMA_CPP_CONTEXT = 2048
