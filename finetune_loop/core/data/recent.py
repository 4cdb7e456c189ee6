"""Labelled production feedback, split by time: the newest becomes the recent suite, the rest may train.

The frozen holdout says what a model must not forget; it cannot say whether a retrain follows what
production sends now. The recent suite does: the trusted labelled requests of the last
`recent_suite.days` (by request time), frozen and content-hashed for the evaluation that uses them.

The split is by time, and no model is ever judged on a row it trained on:

* the window starts at the newest labelled request − `recent_suite.days`, or later: never before
  the feedback the champion was trained on (`FEEDBACK_UNTIL_TAG` on its registry version), so the
  champion is not judged on its own training rows either;
* labelled feedback at or before the window's start (`training_cutoff`) may become training data;
  every row after it (in the suite or left out of it) may not, with one exception: a label admitted
  to the task that the serving champion did not train on (a refused candidate that did leaves the
  champion as ignorant as before). Its feedback is mostly new, so nearly all
  of it would sit in the window, judged but never learned, while that label's traffic grows. The
  oldest `recent_suite.admitted_label_train_share` of its window rows train (a cutoff of its own,
  `admitted_cutoffs`); the newer rest is judged. The split is still by time, per label, and the
  version's `FEEDBACK_UNTIL_TAG` is the newest row it trained on (`trained_until`);
* the suite obeys the training data's rules (`suites.suite_candidates`: valid, scrubbed, within
  max_length, unique, not in the holdout or regression suite), and curation treats it as a frozen
  suite: a training row repeating one of its texts is removed as contamination.

Feedback is a claim about the truth, so only `feedback.trusted_sources` make it; a request whose
feedback arrives twice with different labels is quarantined with both. Either way it stays in the
log and is reported (`LabelledFeedback.quarantine`), never trained or judged on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Collection, Sequence

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.files import sha256_file, write_jsonl, write_text_atomic
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.pii import scrubbed_excerpt
from finetune_loop.core.data.production_log import FEEDBACK_SOURCE, ProductionLog, ProductionRecord, feedback_rows
from finetune_loop.core.data.suites import FrozenSuite, suite_candidates, suite_counts

RECENT_SUITE = "recent"
# Registry version tag: the request time up to which the version's training feedback reaches.
FEEDBACK_UNTIL_TAG = "finetune_loop/feedback_until"
# The newest trusted labelled request a version's retrain saw, trained on or judged on: the feedback
# sensor counts only labels newer than what the latest retrain saw, so a retrain started for one
# reason (drift) is not followed by another (feedback volume) on the same labels.
FEEDBACK_SEEN_TAG = "finetune_loop/feedback_seen_until"


@dataclass(frozen=True)
class LabelledFeedback:
    # Trusted, unambiguous labelled requests, oldest first.
    records: list[ProductionRecord]
    # One entry per request left out: {"request_id", "reason", "text" (a scrubbed excerpt)}.
    quarantine: list[dict]


def labelled_feedback(spec: TaskSpec, log: ProductionLog) -> LabelledFeedback:
    """The log's labelled requests that may become labels: from a trusted source, and with one label."""
    trusted = set(spec.feedback.trusted_sources)
    # The reader keeps the first line of a request id and quarantines the later ones; a later line
    # with another label makes the request's truth unknown.
    later_labels: dict[str, list[str]] = {}
    for entry in log.quarantine:
        row = entry.get("row")
        if entry["reason"].startswith("duplicate request_id") and isinstance(row, dict) and isinstance(row.get("feedback"), dict):
            label = row["feedback"].get("label")
            if isinstance(label, str):
                later_labels.setdefault(str(row.get("request_id")), []).append(label)
    records, quarantine = [], []
    for record in sorted(log.labelled(), key=lambda r: r.timestamp):
        conflicting = sorted({label for label in later_labels.get(record.request_id, []) if label != record.feedback_label})
        if conflicting:
            reason = f"conflicting feedback labels: {record.feedback_label!r} and {', '.join(map(repr, conflicting))}"
        elif record.feedback_source not in trusted:
            reason = f"untrusted feedback source: {record.feedback_source!r} is not in feedback.trusted_sources {sorted(trusted)}"
        else:
            records.append(record)
            continue
        quarantine.append({"request_id": record.request_id, "reason": reason, "text": scrubbed_excerpt(record.text)})
    return LabelledFeedback(records, quarantine)


@dataclass(frozen=True)
class RecentSuite:
    # None when no labelled request falls in the window (or none survives the suite rules).
    suite: FrozenSuite | None
    # Labelled feedback at or before this time may train; None: there is no labelled feedback.
    training_cutoff: datetime | None
    window_end: datetime | None
    # Trusted labelled requests in the window, before the suite rules and max_rows.
    window_rows: int
    # Rows of the window left out, per reason (a label the task does not know yet, a suite rule, max_rows).
    excluded: dict[str, int] = field(default_factory=dict)
    feedback_quarantine: list[dict] = field(default_factory=list)
    note: str = ""
    # The feedback that may train, as a labelled-examples file for curation (write_training_feedback);
    # None: none may, or it was not written.
    training_feedback: Path | None = None
    # Per admitted label no version trained on: its window rows at or before this time train too.
    admitted_cutoffs: dict[str, datetime] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.suite.size if self.suite else 0

    @property
    def trained_until(self) -> datetime | None:
        """The newest request time a version trained on this split may have trained on."""
        return max([self.training_cutoff, *self.admitted_cutoffs.values()]) if self.training_cutoff else None

    def may_train(self, record: ProductionRecord) -> bool:
        return self.training_cutoff is not None and _trains(record, self.training_cutoff, self.admitted_cutoffs)


def _trains(record: ProductionRecord, training_cutoff: datetime, admitted_cutoffs: dict[str, datetime]) -> bool:
    """The split's one rule: a row trains at or before its label's own cutoff (an admitted,
    never-trained label) or else the common one."""
    return record.timestamp <= admitted_cutoffs.get(record.feedback_label or "", training_cutoff)


def admitted_label_split(spec: TaskSpec, window: Sequence[ProductionRecord], label: str) -> datetime | None:
    """The time at or before which an admitted, never-trained label's rows in the recent window
    train: the oldest `recent_suite.admitted_label_train_share` of them (rounded down; ties in time
    go together, so no request time is both trained and judged). None: none of them train."""
    times = sorted(r.timestamp for r in window if r.feedback_label == label)
    carved = int(len(times) * spec.recent_suite.admitted_label_train_share)
    return times[carved - 1] if carved else None


def trainable_admitted_rows(spec: TaskSpec, records: Sequence[ProductionRecord], label: str) -> int:
    """How many of `records` (trusted labelled feedback) of an admitted, never-trained `label` a
    retrain now would train on: those older than the recent window plus its carved share of the window."""
    if not records:
        return 0
    start = max(r.timestamp for r in records) - timedelta(days=spec.recent_suite.days)
    cutoff = admitted_label_split(spec, [r for r in records if r.timestamp > start], label)
    cutoffs = {label: cutoff} if cutoff else {}
    return sum(1 for r in records if r.feedback_label == label and _trains(r, start, cutoffs))


def _example(record: ProductionRecord) -> Example:
    return Example(f"feedback-{record.request_id}", record.text, record.feedback_label or "", source=FEEDBACK_SOURCE)


def freeze_recent_suite(
    spec: TaskSpec,
    log: ProductionLog,
    suites_dir: Path,
    *,
    champion_feedback_until: datetime | None,
    untrained_labels: Collection[str] = (),
    exclude: Sequence[FrozenSuite] = (),
    token_length: Callable[[Example], int] | None = None,
) -> RecentSuite:
    """Split the log's trusted labelled feedback by time and freeze the recent part (see the module
    docstring). `log` is read without the label check: a label the task does not know is counted
    (`excluded["label not in the task yet: X"]`) and joins the suite once the task admits it.
    `untrained_labels`: task labels the champion did not train on (their window rows are split)."""
    feedback = labelled_feedback(spec, log)
    records = feedback.records
    if not records:
        return RecentSuite(None, None, None, 0, feedback_quarantine=feedback.quarantine, note="no trusted labelled feedback in the production log")
    newest = records[-1].timestamp
    start = newest - timedelta(days=spec.recent_suite.days)
    note = f"labelled requests after {start.isoformat()} (the last {spec.recent_suite.days:g} days)"
    if champion_feedback_until is not None and champion_feedback_until > start:
        start = champion_feedback_until
        note = f"labelled requests after {start.isoformat()} (the champion trained on feedback until then)"
    window = [r for r in records if r.timestamp > start]
    excluded: Counter = Counter()
    known = set(spec.labels)
    cutoffs = {label: cutoff for label in sorted(set(untrained_labels) & known) if (cutoff := admitted_label_split(spec, window, label))}
    # Every window row is after `start`: the rows that train are the carved ones.
    carved = [_trains(r, start, cutoffs) for r in window]
    excluded.update(f"trains the admitted label {r.feedback_label}" for r, train in zip(window, carved) if train)
    window_rest = [r for r, train in zip(window, carved) if not train]
    admitted = [r for r in window_rest if not known or r.feedback_label in known]
    excluded.update(f"label not in the task yet: {r.feedback_label}" for r in window_rest if known and r.feedback_label not in known)
    # Newest first under max_rows; the rest of the window is neither judged nor trained on.
    admitted = sorted(admitted, key=lambda r: r.timestamp, reverse=True)
    beyond = admitted[spec.recent_suite.max_rows :]
    excluded["beyond recent_suite.max_rows"] += len(beyond)
    examples = [_example(r) for r in admitted[: spec.recent_suite.max_rows]]
    rows, rule_exclusions = suite_candidates(spec, examples, [], exclude, token_length=token_length)
    excluded.update(rule_exclusions)
    excluded = Counter({reason: count for reason, count in sorted(excluded.items()) if count})
    if cutoffs:
        note += "; the oldest share of never-trained admitted labels trains (" + ", ".join(
            f"{label} until {cutoff.isoformat()}" for label, cutoff in cutoffs.items()) + ")"
    suite = _write_suite(spec, rows, suites_dir, start, newest, dict(excluded)) if rows else None
    return RecentSuite(
        suite, start, newest, len(window), dict(excluded), feedback.quarantine, note if rows else note + ": none usable",
        admitted_cutoffs=cutoffs,
    )


def _write_suite(spec: TaskSpec, rows: list[Example], suites_dir: Path, start: datetime, end: datetime, excluded: dict[str, int]) -> FrozenSuite:
    """Frozen under its content hash: the same rows are the same file, and an evaluation's suite is
    never rewritten by a later one."""
    ordered = sorted(rows, key=lambda e: e.id)
    body = "".join(json.dumps(asdict(e), ensure_ascii=False, sort_keys=True) + "\n" for e in ordered)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    directory = suites_dir / RECENT_SUITE
    path = directory / f"{digest[:16]}.jsonl"
    if not path.exists():
        write_jsonl(path, [asdict(e) for e in ordered])
        manifest = {
            "suite": RECENT_SUITE, "content_hash": digest, "size": len(ordered), "window_start": start.isoformat(),
            "window_end": end.isoformat(), "excluded": excluded,
        }
        write_text_atomic(path.with_suffix(".manifest.json"), json.dumps(manifest, indent=2))
    return FrozenSuite(RECENT_SUITE, path, sha256_file(path), len(ordered), *suite_counts(ordered, spec), created=True, excluded=excluded)


def write_training_feedback(spec: TaskSpec, log: ProductionLog, recent: RecentSuite, out_path: Path) -> Path | None:
    """The trusted labelled feedback that may train (at or before the recent suite's start), as a
    labelled-examples file for curation, which validates, scrubs and de-duplicates it like any
    data; None when there is none. Scrubbed before it is written (unless curation.scrub_pii is off):
    no raw request text is copied out of the log."""
    rows = feedback_rows([r for r in labelled_feedback(spec, log).records if recent.may_train(r)], spec.fields, scrub=spec.curation.scrub_pii)
    if not rows:
        return None
    write_jsonl(out_path, rows)
    return out_path
