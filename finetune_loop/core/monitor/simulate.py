"""Simulated production traffic, answered for real by the current champion, so the loop (drift,
feedback, retrain) can be watched end to end without a serving stack.

A week of requests is drawn from the task's traffic pool (`data.traffic_pool`: labelled rows set
aside for simulated traffic, never curated; their label is the truth a human would give as
feedback) and shifted on request. Never from the labelled examples: those are the rows curation
splits into training, validation and the frozen suites, so traffic drawn from them would replay
rows the model trained on, score it on its own training data, and feed them back into training.
Pool rows that repeat a labelled example anyway (exactly or nearly, by curation's own measure) are
left out and counted. The shifts:

* `phone_keyboard`: a share of requests rewritten the way people type on phones (lower case, no
  punctuation, "u"/"pls", a neighbouring-key typo);
* `mix`: a share of requests all of one label (`surge_label`), as when one problem spikes;
* `new_kind`: a share of requests of a kind the training data never saw, read from a file.

Every request is answered by the champion adapter (label-likelihood scoring, as in evaluation), its
latency is the measured batch time per request, a share gets human feedback, and some wrong answers
get a thumbs-down flag (a debugging signal only).
"""

from __future__ import annotations

import json
import random
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.dedup import find_overlaps
from finetune_loop.core.data.production_log import append_log_file, log_files, read_task_log
from finetune_loop.core.data.readers import CurationError
from finetune_loop.core.data.validation import read_labeled_examples
from finetune_loop.core.evaluate.scoring import predict_labels

SHIFTS = ("none", "phone_keyboard", "mix", "new_kind")
_NEIGHBOURS = {"a": "s", "e": "r", "i": "o", "o": "p", "n": "m", "t": "y", "s": "d", "r": "t", "l": "k", "d": "f"}
_SHORTHAND = {"you": "u", "please": "pls", "are": "r", "thanks": "thx", "because": "bc", "your": "ur"}

WEEK = timedelta(days=7)


class SimulationError(ValueError):
    """The simulation cannot run as asked (bad shift, missing file, no champion, no traffic pool)."""


class SimulationWarning(UserWarning):
    """The simulation ran, but left part of its input out (traffic-pool rows that repeat labelled examples)."""


@dataclass(frozen=True)
class TrafficSettings:
    rows: int = 200
    shift: str = "none"
    # share of requests the shift touches
    strength: float = 0.5
    surge_label: str | None = None
    new_kind_path: Path | None = None
    feedback_share: float = 0.3
    seed: int = 0


def phone_keyboard(rng: random.Random, text: str) -> str:
    words = ["".join(c for c in w.lower() if c.isalnum()) for w in text.split()]
    words = [_SHORTHAND.get(w, w) for w in words if w]
    if words:
        i = rng.randrange(len(words))
        word = words[i]
        j = next((k for k, c in enumerate(word) if c in _NEIGHBOURS), None)
        if j is not None:
            words[i] = word[:j] + _NEIGHBOURS[word[j]] + word[j + 1 :]
    return " ".join(words)


@dataclass(frozen=True)
class TrafficPool:
    """The rows simulated requests may be drawn from."""

    rows: list[Example]
    # Valid rows the pool file holds, the left-out ones included.
    rows_read: int
    # One entry per left-out row: find_overlaps' {"id", "text", "suite_id", "similarity", …}, naming
    # the labelled example it repeats (similarity 1.0: the same text once normalised).
    overlaps: tuple[dict, ...] = ()

    @property
    def skipped_overlap(self) -> int:
        return len(self.overlaps)


@dataclass(frozen=True)
class TrafficDraw:
    """A week's requests (text and true label) before any model sees them, and the pool they came from."""

    requests: list[Example]
    pool: TrafficPool

    @property
    def skipped_overlap(self) -> int:
        """Pool rows left out because they repeat a labelled example."""
        return self.pool.skipped_overlap


def read_traffic_pool(spec: TaskSpec) -> TrafficPool:
    """The task's `data.traffic_pool`, read and validated like labelled examples, less the rows that
    repeat a labelled example.

    A row that repeats one is skipped (and counted), not refused: the labelled examples keep growing
    (newly labelled tickets are added, rows move between files), so a pool that was disjoint when it
    was set aside can start to overlap without anyone touching it. Skipping keeps the guarantee that
    matters, no drawn request is a row the model may have trained on, and the count says how much of
    the pool is gone; a pool with nothing left is refused. "Repeats" is curation's own measure (the
    one that keeps training rows off the frozen suites): the same text after normalisation, or a
    near duplicate at `curation.contamination_threshold`, whatever the label. An invalid row is
    refused: the pool's labels become feedback and then training data, so a broken file is an error
    to fix, not rows to drop quietly."""
    path = spec.traffic_pool_path
    if path is None:
        raise SimulationError(
            f"task {spec.name} names no data.traffic_pool in {spec.spec_path}: simulate-traffic draws its requests only from "
            "labelled rows set aside for it, because drawing traffic from the labelled examples would replay rows the model "
            "trained on (its accuracy on them would be inflated and their feedback would re-enter training); "
            "add `traffic_pool: FILE` under `data:`, a file of labelled rows (same columns) that are not in data.labeled_examples"
        )
    try:
        rows, rejected = read_labeled_examples(spec, path)
        labelled, _ = read_labeled_examples(spec)
    except CurationError as exc:
        raise SimulationError(str(exc)) from None
    if rejected:
        first = rejected[0]
        raise SimulationError(f"data.traffic_pool {path}: {len(rejected)} invalid rows, first (line {first['line']}): {first['reason']}")
    if not rows:
        raise SimulationError(f"data.traffic_pool {path} holds no rows to draw traffic from")
    overlaps = find_overlaps(rows, {"labeled_examples": labelled}, spec.curation.contamination_threshold)
    left_out = {o["id"] for o in overlaps}
    kept = [e for e in rows if e.id not in left_out]
    if not kept:
        raise SimulationError(
            f"every one of the {len(rows)} rows of data.traffic_pool {path} repeats a labelled example of "
            f"{spec.labeled_examples_location} (first: pool row {overlaps[0]['id']!r} ~ {overlaps[0]['suite_id']!r}); "
            "drawing traffic from them would replay rows the model trained on"
        )
    return TrafficPool(kept, len(rows), tuple(overlaps))


def draw_requests(spec: TaskSpec, settings: TrafficSettings) -> TrafficDraw:
    """The week's requests (text and true label) before any model sees them, drawn from the task's
    traffic pool only (see `read_traffic_pool`)."""
    if settings.shift not in SHIFTS:
        raise SimulationError(f"unknown shift {settings.shift!r}; choose from {', '.join(SHIFTS)}")
    if not (0 <= settings.strength <= 1) or not (0 <= settings.feedback_share <= 1):
        raise SimulationError("strength and feedback_share must be in [0, 1]")
    rng = random.Random(settings.seed)
    traffic_pool = read_traffic_pool(spec)
    if traffic_pool.skipped_overlap:
        first = traffic_pool.overlaps[0]
        warnings.warn(
            f"simulate-traffic: left out {traffic_pool.skipped_overlap} of {traffic_pool.rows_read} data.traffic_pool rows that "
            f"repeat a labelled example (first: {first['id']!r} ~ {first['suite_id']!r}, similarity {first['similarity']})",
            SimulationWarning,
            stacklevel=2,
        )
    pool = traffic_pool.rows
    new_kind: list[Example] = []
    if settings.shift == "new_kind":
        if settings.new_kind_path is None or not settings.new_kind_path.is_file():
            raise SimulationError(f"shift new_kind needs a JSONL file of new requests (text, label); got {settings.new_kind_path}")
        new_kind, rejected = read_labeled_examples(spec, settings.new_kind_path)
        if rejected or not new_kind:
            raise SimulationError(f"{settings.new_kind_path}: {len(rejected)} invalid rows, first: {rejected[:1]}")
    surge = settings.surge_label or spec.labels[-1]
    if surge not in spec.labels:
        raise SimulationError(f"surge_label {surge!r} is not a task label")
    by_label = [e for e in pool if e.label == surge]

    requests = []
    for _ in range(settings.rows):
        shifted = rng.random() < settings.strength
        if settings.shift == "new_kind" and shifted:
            example = rng.choice(new_kind)
        elif settings.shift == "mix" and shifted and by_label:
            example = rng.choice(by_label)
        else:
            example = rng.choice(pool)
        if settings.shift == "phone_keyboard" and shifted:
            example = Example(example.id, phone_keyboard(rng, example.text), example.label, example.source)
        requests.append(example)
    return TrafficDraw(requests, traffic_pool)


def next_week_start(spec: TaskSpec, now: datetime) -> datetime:
    """Traffic continues where the log ends (right after its newest request), but a simulated week
    never ends after `now`: the production log quarantines requests stamped in the future, so such
    a week would never reach the drift report or the sensors."""
    latest_start = now - WEEK
    if spec.production_log_path is None or not spec.production_log_path.exists():
        return latest_start
    log = read_task_log(spec, now=now, check_labels=False)
    newest = max((r.timestamp for r in log.records), default=None)
    return latest_start if newest is None else min(newest + timedelta(seconds=1), latest_start)


def write_week(
    spec: TaskSpec,
    settings: TrafficSettings,
    base_dir: Path,
    adapter_dir: Path,
    model_version: str,
    start: datetime,
) -> Path:
    """Draw a week of requests, answer them with the adapter, and append them to the task's log."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer


    log_dir = spec.production_log_path
    if log_dir is None:
        raise SimulationError(f"task {spec.name} names no data.production_log in {spec.spec_path}")
    if log_dir.is_file():
        raise SimulationError(f"data.production_log is a single file ({log_dir}); simulate-traffic appends files to a directory log")
    requests = draw_requests(spec, settings).requests
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    answers = answer_requests(model, tokenizer, spec, [e.text for e in requests])

    rng = random.Random(settings.seed + 1)
    step = WEEK / max(len(requests), 1)
    rows = []
    for i, (example, (prediction, latency)) in enumerate(zip(requests, answers)):
        feedback, flags = None, None
        if rng.random() < settings.feedback_share:
            feedback = {"label": example.label, "source": "simulated_agent"}
        elif prediction != example.label and rng.random() < 0.5:
            flags = ["thumbs_down"]
        rows.append(log_row(
            spec, start + i * step, f"{start:%Y%m%d}-{settings.seed}-{i:06d}", example.text, model_version, prediction, latency,
            feedback=feedback, flags=flags,
        ))
    name = f"{start:%Y-%m-%dT%H%M%S}-{settings.shift}-{len(log_files(log_dir)) if log_dir.exists() else 0:04d}.jsonl"
    return append_log_file(log_dir, name, rows)


# Requests answered together, as a server batches them; each is charged its batch's time per request.
SERVING_BATCH = 16


def answer_requests(model, tokenizer, spec: TaskSpec, texts: list[str]) -> list[tuple[str, float]]:
    """(label, latency in ms) per text, answered in serving batches by the evaluation's scorer."""
    answers: list[tuple[str, float]] = []
    for first in range(0, len(texts), SERVING_BATCH):
        chunk = texts[first : first + SERVING_BATCH]
        started = time.perf_counter()
        labels = predict_labels(model, tokenizer, spec, chunk, batch_size=SERVING_BATCH)
        latency = 1000 * (time.perf_counter() - started) / len(chunk)
        answers += [(label, latency) for label in labels]
    return answers


def log_row(
    spec: TaskSpec, timestamp: datetime, request_id: str, text: str, model_version: str, prediction: str, latency_ms: float,
    *, feedback: dict | None = None, flags: list[str] | None = None,
) -> dict:
    """One production-log line, as the log reader expects it."""
    row = {
        "timestamp": timestamp.isoformat(), "request_id": request_id, spec.fields.input: text,
        "model_version": model_version, "prediction": prediction, "latency_ms": round(latency_ms, 2),
    }
    if feedback:
        row["feedback"] = feedback
    if flags:
        row["flags"] = flags
    return row


def summary(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {
        "path": str(path),
        "rows": len(rows),
        "feedback_rows": sum(1 for r in rows if "feedback" in r),
        "thumbs_down": sum(1 for r in rows if "thumbs_down" in r.get("flags", [])),
        "feedback_accuracy": (
            sum(r["prediction"] == r["feedback"]["label"] for r in rows if "feedback" in r) / max(1, sum(1 for r in rows if "feedback" in r))
        ),
    }
