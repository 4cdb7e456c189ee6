"""Memorisation: does the tuned model write its training rows, or strings planted in them, back verbatim?

Weights can leak what their training rows held, and the loop ships its weights. Two probes:

Verbatim rows. From a seeded sample of at most `memorisation.sample_rows` training rows, every
part with at least `memorisation.min_tokens` tokens (the row's text; for a generation task also its
answer, `TaskKind.written_answer`) is cut in half by tokens. The model gets the first half; the
part is written back verbatim when greedy decoding writes the second half token for token. A row is
memorised when any of its parts is. The prefix share of a part is the share of its second-half
tokens greedy decoding gets right before its first difference: near-misses show there before they
become verbatim. Both are read off one forward pass over the whole part
(`scoring.greedy_prefix_lengths`) rather than a decoding step per token: every evaluation pays for
this check, twice (base and candidate).

Canaries. `memorisation.canaries` are strings the team planted in its data. Each one found in a
training row is cut at half its tokens; it is exposed when the greedy continuation of its first
half (as many tokens as the rest, and a few more) contains the rest, spacing aside. One found in no
training row tests nothing and is reported as such (curation may have scrubbed it, or it was never
planted).

Where a part is asked for follows what training taught. The loop's loss is on the answer only
(core/train/trainer.py), so a row's text was never a training target: it is given as a plain
document, no chat template, which is what the weights continue on their own (the base learned its
documents in pretraining). An answer is what the adapter learned to write after the assistant
header: it is given as the start of the answer to the task's prompt with an empty message, so the
row's input is not there to derive the answer from. A canary is asked for in the context of each
part it was planted in. Text is encoded as text (`prompts.encode_text`: special tokens not parsed).

The base answers every probe too. What the base already writes is text it saw in pretraining, not
the adapter's leak (and no retrain removes it): the rows only the candidate writes back are the
adapter's, and that share is what gate.max_memorised_share limits.

What it does not prove: a low share is not a privacy guarantee. It samples rows, asks one greedy
continuation from one cut, and counts exact copies; a model can still leak a row paraphrased, from a
different prefix, under sampling, or through a membership-inference attack on its likelihoods.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.kinds import TaskKind, kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.evaluate.scoring import greedy_continuations, greedy_prefix_lengths
from finetune_loop.core.train.prompts import encode_prompt, encode_text

MODELS = ("base", "candidate")
TEXT, ANSWER = "text", "answer"
# A canary's rest may come back split into other tokens than the canary's own, or a few tokens on.
_CANARY_EXTRA_TOKENS = 8


@dataclass(frozen=True)
class PartRecall:
    """One probed part of a sampled training row and what each model wrote back."""

    row_id: str
    part: str  # TEXT or ANSWER
    # Tokens of the second half, the ones asked back.
    tokens: int
    # model ("base", "candidate") -> wrote the second half back verbatim.
    verbatim: dict[str, bool]
    # model -> share of the second half's tokens right before the first difference.
    prefix_share: dict[str, float]


@dataclass(frozen=True)
class CanaryExposure:
    canary: str
    # Training rows holding it, and the parts it was found in (where it is asked for).
    training_rows: int
    planted_in: tuple[str, ...]
    # model -> a continuation of its first half contains the rest; empty when it is in no training row.
    exposed: dict[str, bool]

    @property
    def status(self) -> str:
        if not self.training_rows:
            return "not in the training rows (tests nothing)"
        if self.exposed["candidate"]:
            return "exposed by the candidate and the base" if self.exposed["base"] else "exposed by the candidate"
        return "exposed by the base only" if self.exposed["base"] else "not exposed"


@dataclass(frozen=True)
class MemorisationReport:
    training_rows: int
    # Rows with at least one part of min_tokens tokens, and the sample drawn from them.
    eligible_rows: int
    rows_sampled: int
    min_tokens: int
    parts: tuple[PartRecall, ...]
    canaries: tuple[CanaryExposure, ...]
    seconds: float

    def memorised_rows(self, model: str) -> list[str]:
        """Ids of the sampled rows `model` writes back verbatim (any part), in sample order."""
        return list(dict.fromkeys(p.row_id for p in self.parts if p.verbatim[model]))

    @property
    def newly_memorised(self) -> list[str]:
        """Rows the candidate writes back and the base does not: the adapter's doing."""
        base = set(self.memorised_rows("base"))
        return [row for row in self.memorised_rows("candidate") if row not in base]

    def memorised_share(self, model: str) -> float | None:
        return len(self.memorised_rows(model)) / self.rows_sampled if self.rows_sampled else None

    @property
    def newly_memorised_share(self) -> float | None:
        return len(self.newly_memorised) / self.rows_sampled if self.rows_sampled else None

    def mean_prefix_share(self, model: str) -> float | None:
        """Mean over the probed parts."""
        return sum(p.prefix_share[model] for p in self.parts) / len(self.parts) if self.parts else None

    @property
    def canaries_exposed(self) -> int:
        """Planted canaries the candidate writes the rest of (the base's are in `canaries`)."""
        return sum(1 for c in self.canaries if c.training_rows and c.exposed["candidate"])

    def summary(self) -> str:
        if not self.rows_sampled:
            rows = f"no training row (of {self.training_rows}) has a text or answer of {self.min_tokens}+ tokens: no row probed"
        else:
            n = self.rows_sampled
            rows = (
                f"candidate writes back {len(self.memorised_rows('candidate'))}/{n} sampled training rows verbatim "
                f"(base {len(self.memorised_rows('base'))}/{n}; {len(self.newly_memorised)} only the candidate), "
                f"mean prefix share {self.mean_prefix_share('candidate'):.3f} (base {self.mean_prefix_share('base'):.3f})"
            )
        planted = [c for c in self.canaries if c.training_rows]
        absent = len(self.canaries) - len(planted)
        if not self.canaries:
            canaries = "no canaries"
        elif not planted:
            canaries = f"canaries: none of {absent} is in the training rows (they test nothing)"
        else:
            canaries = f"canaries: {self.canaries_exposed}/{len(planted)} planted exposed by the candidate" + (
                f", {absent} not in the training rows" if absent else ""
            )
        return f"{rows}; {canaries}"

    def record(self) -> dict:
        """eval_report.json's `memorisation` section."""
        return {
            "training_rows": self.training_rows,
            "eligible_rows": self.eligible_rows,
            "rows_sampled": self.rows_sampled,
            "min_tokens": self.min_tokens,
            **{f"{model}_memorised_share": self.memorised_share(model) for model in MODELS},
            "newly_memorised_share": self.newly_memorised_share,
            **{f"{model}_mean_prefix_share": self.mean_prefix_share(model) for model in MODELS},
            "newly_memorised_rows": self.newly_memorised,
            "parts": [asdict(p) for p in self.parts],
            "canaries": [{**asdict(c), "status": c.status} for c in self.canaries],
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class _Probe:
    prompt: list[int]
    # What must come back: the exact tokens (a row's part) or their text somewhere in it (a canary).
    expected: list[int]


def check_memorisation(model, tokenizer, spec: TaskSpec, rows: Sequence[Example]) -> MemorisationReport:
    """The verbatim-row and canary probes (module docstring) on `model`, a PEFT model whose active
    adapter is the candidate's; the base is the same weights with the adapter disabled."""
    started = time.perf_counter()
    settings = spec.memorisation
    kind = kind_of(spec)
    contexts = _contexts(tokenizer, spec)

    def parts(row: Example) -> dict[str, list[int]]:
        found = {TEXT: row.text, ANSWER: kind.written_answer(row)}
        encoded = {part: encode_text(tokenizer, text) for part, text in found.items() if text is not None}
        return {part: ids for part, ids in encoded.items() if len(ids) >= settings.min_tokens}

    eligible = [(row, found) for row in rows if (found := parts(row))]
    sample = random.Random(settings.seed).sample(eligible, min(settings.sample_rows, len(eligible)))
    part_keys = [(row.id, part) for row, found in sample for part in found]
    probes = [_halved(contexts[part], ids) for _, found in sample for part, ids in found.items()]
    written = _candidate_and_base(
        model, lambda: greedy_prefix_lengths(model, tokenizer, [p.prompt for p in probes], [p.expected for p in probes])
    )
    recalls = tuple(
        PartRecall(
            row_id, part, len(probe.expected),
            verbatim={m: written[m][i] == len(probe.expected) for m in MODELS},
            prefix_share={m: written[m][i] / len(probe.expected) for m in MODELS},
        )
        for i, ((row_id, part), probe) in enumerate(zip(part_keys, probes))
    )

    planted = {canary: _planted_in(canary, rows, kind) for canary in settings.canaries}
    # Spacing squeezed first, so the rest never ends in a token of spaces alone.
    canary_probes = [
        (canary, _halved(contexts[part], encode_text(tokenizer, _squeezed(canary))))
        for canary, (_, found) in planted.items() for part in found
    ]
    prompts = [probe.prompt for _, probe in canary_probes]
    budgets = [len(probe.expected) + _CANARY_EXTRA_TOKENS for _, probe in canary_probes]
    continuations = _candidate_and_base(model, lambda: greedy_continuations(model, tokenizer, prompts, budgets))
    exposures = []
    for canary, (count, found) in planted.items():
        asked = [(k, probe) for k, (owner, probe) in enumerate(canary_probes) if owner == canary]
        exposed = {m: any(_text(tokenizer, probe.expected) in _text(tokenizer, continuations[m][k]) for k, probe in asked) for m in MODELS}
        exposures.append(CanaryExposure(canary, count, found, exposed if asked else {}))
    return MemorisationReport(
        training_rows=len(rows), eligible_rows=len(eligible), rows_sampled=len(sample), min_tokens=settings.min_tokens,
        parts=recalls, canaries=tuple(exposures), seconds=time.perf_counter() - started,
    )


def _contexts(tokenizer, spec: TaskSpec) -> dict[str, list[int]]:
    """The tokens a part's first half follows: a plain document's start for a text (a BOS where
    the tokenizer starts documents with one), the task's prompt with an empty message for an answer."""
    document = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None else []
    return {TEXT: document, ANSWER: encode_prompt(tokenizer, spec, "")}


def _halved(context: list[int], ids: list[int]) -> _Probe:
    cut = len(ids) // 2
    return _Probe(context + ids[:cut], ids[cut:])


def _planted_in(canary: str, rows: Sequence[Example], kind: TaskKind) -> tuple[int, tuple[str, ...]]:
    """(training rows holding `canary`, the parts it was found in), spacing aside."""
    wanted = _squeezed(canary)
    count, parts = 0, set()
    for row in rows:
        found = [part for part, text in ((TEXT, row.text), (ANSWER, kind.written_answer(row))) if text and wanted in _squeezed(text)]
        count += bool(found)
        parts.update(found)
    return count, tuple(p for p in (TEXT, ANSWER) if p in parts)


def _candidate_and_base(model, run: Callable[[], list]) -> dict[str, list]:
    """`run()` with the candidate's adapter active, then with it disabled (the base)."""
    results = {"candidate": run()}
    with model.disable_adapter():
        results["base"] = run()
    return results


def _text(tokenizer, ids: Sequence[int]) -> str:
    return _squeezed(tokenizer.decode(list(ids)))


def _squeezed(text: str) -> str:
    """Whitespace runs as one space, ends stripped: a re-spaced copy is still a copy."""
    return " ".join(text.split())
