"""The production log: what the serving layer records per request, read back with quarantine.

Layout: `data.production_log` names a directory of `.jsonl` files (or one `.jsonl` file). The log is
append-only: the serving layer (or `finetune-loop simulate-traffic`) adds new files and never
rewrites an old one, so the set of files and their hashes is the log's data version.

One JSON object per line:

    timestamp      ISO 8601 with a time zone                     required
    request_id     string, unique across the log                 required
    <fields.input> the request text ("text" by default)          required
    model_version  registry version of the model that answered   optional
    prediction     the label it answered, one of the task labels optional
    latency_ms     number >= 0                                   optional
    feedback       {"label": <task label>, "source": <who>}      optional: a human's correct label
    flags          list of strings, e.g. ["thumbs_down"]         optional: debugging signals

Only `feedback.label` may become a training label. A flag such as a thumbs-down says something
went wrong, not what was right, so it never turns into a label on its own.

Hostile input: no single line can stop, blind or move the loop. Every line that is not a usable
request becomes a quarantine entry `{"file", "line", "reason": "<kind>: <detail>", "row"}`; only
empty (or space/tab/CR only) lines are passed over. The rules:

- Lines are split on `\\n` only (a trailing `\\r` is dropped), as bytes, and each line is decoded on
  its own, so U+2028, U+2029 or U+0085 inside a JSON string never splits a row or shifts the line
  numbers of the rows after it. A UTF-8 byte-order mark at the start of a file is tolerated.
- "not UTF-8": a line that is not valid UTF-8 (the rest of the file is kept); its `row` is the text
  with the bad bytes as `\\xNN` escapes.
- "malformed JSON": not JSON (NaN and Infinity included), "nested too deep" (more than MAX_JSON_DEPTH levels of arrays and
  objects), "duplicate key '<k>'" in any object, or "lone surrogate" (an unpaired `\\ud800`-style
  escape in any key or string). For these `row` is the raw line.
- "bad timestamp": not ISO 8601, or without a time zone. A naive timestamp is rejected, never
  assumed to be UTC: the serving layer's local time is unknowable here.
- "timestamp in the future": later than `now + MAX_CLOCK_SKEW` (now: the wall clock unless the
  caller passes `now`), so one row stamped 2099 can neither anchor `ProductionLog.window` nor move
  the feedback sensor's cursor.
- "not a .jsonl file": in a directory log, `*.jsonl` files are read whatever the suffix's case
  (`.JSONL` too); every other entry (a `.json` file, a sub-directory, a broken link ...) is a
  quarantine entry with `"line": None` (also listed by `ProductionLog.skipped`), and
  `log_data_version` covers those entries as well as the files read.

So for every file read, records + quarantined lines + blank lines = the lines in the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.clock import utc_now
from finetune_loop.core.common.files import sha256_file
from finetune_loop.core.common.spec import FieldMapping, TaskSpec
from finetune_loop.core.data.pii import scrub_answer, scrub_pii, scrubbed_excerpt
from finetune_loop.core.data.erasure import ErasureLedger
from finetune_loop.core.data.readers import (
    BOM,
    DuplicateKeyError,
    depth_exceeds,
    find_lone_surrogate,
    loads_strict,
)

FEEDBACK_SOURCE = "production_feedback"
# A request stamped later than now + MAX_CLOCK_SKEW is quarantined ("timestamp in the future").
MAX_CLOCK_SKEW = timedelta(hours=1)
# Arrays and objects nested deeper than this are quarantined ("malformed JSON: nested too deep").
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class ProductionRecord:
    request_id: str
    timestamp: datetime
    text: str
    model_version: str | None = None
    prediction: str | None = None
    latency_ms: float | None = None
    feedback_label: str | None = None
    feedback_source: str | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProductionLog:
    records: list[ProductionRecord]
    # {"file", "line", "reason": "<kind>: <detail>", "row"} per rejected line
    quarantine: list[dict]
    files: list[Path] = field(default_factory=list)
    # Requests left out because their record was erased (core/data/erasure.py); never kept.
    erased: int = 0

    def reviewable_quarantine(self) -> list[dict]:
        """The rejected lines as they may be persisted: each raw line replaced by its PII-scrubbed
        excerpt (file, line and reason kept), so no report file holds raw personal data."""
        return [{**entry, "row": scrubbed_excerpt(entry["row"])} for entry in self.quarantine]

    @property
    def skipped(self) -> list[dict]:
        """The entries of a directory log that were not read (not `*.jsonl` files): quarantine
        entries with `"line": None`."""
        return [q for q in self.quarantine if q.get("line") is None]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.records]

    @property
    def first_timestamp(self) -> str | None:
        return min(self.records, key=lambda r: r.timestamp).timestamp.isoformat() if self.records else None

    @property
    def last_timestamp(self) -> str | None:
        return max(self.records, key=lambda r: r.timestamp).timestamp.isoformat() if self.records else None

    def window(self, days: float, end: datetime | None = None) -> "ProductionLog":
        """The records of the `days` before `end` (default: the newest record), quarantine kept whole.
        The newest record is never later than the reader's now + MAX_CLOCK_SKEW, so one row stamped
        in the future cannot move the window."""
        if not self.records:
            return self
        end = end or max(r.timestamp for r in self.records)
        try:
            start: datetime | None = end - timedelta(days=days)
        except OverflowError:  # an end near year 1: the window reaches back to the start of time
            start = None
        kept = [r for r in self.records if (start is None or start < r.timestamp) and r.timestamp <= end]
        return ProductionLog(kept, self.quarantine, self.files, self.erased)

    def labelled(self) -> list[ProductionRecord]:
        return [r for r in self.records if r.feedback_label is not None]


def _is_log_file(entry: Path) -> bool:
    return entry.suffix.lower() == ".jsonl" and entry.is_file()


def log_files(path: Path) -> list[Path]:
    """The `*.jsonl` files of the log (suffix in any case) in name order (a single file is a log of
    one file)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if _is_log_file(p))
    raise FileNotFoundError(f"production log not found: {path}")


def skipped_entries(path: Path) -> list[Path]:
    """The entries of a directory log that are not read: everything but its `*.jsonl` files."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if not _is_log_file(p))
    if path.is_file():
        return []
    raise FileNotFoundError(f"production log not found: {path}")


def _skip_reason(entry: Path) -> str:
    if entry.is_dir():
        kind = "a directory"
    elif entry.is_file():
        kind = f"a {entry.suffix or 'suffix-less'} file, only *.jsonl files are read"
    elif entry.is_symlink():
        kind = "a broken link"
    else:
        kind = "not a regular file"
    return f"not a .jsonl file: {entry.name!r} is {kind}"


def _entry_fingerprint(entry: Path) -> str:
    """What of a skipped entry the data version covers: a file's content, a directory's listing
    (relative paths and sizes), else its kind."""
    if entry.is_file():
        return sha256_file(entry)
    if entry.is_dir():
        listing = hashlib.sha256()
        for sub in sorted(entry.rglob("*")):
            size = sub.stat().st_size if sub.is_file() else -1
            listing.update(f"{sub.relative_to(entry).as_posix()}\0{size}\n".encode("utf-8", "backslashreplace"))
        return "dir:" + listing.hexdigest()
    return "other"


def log_data_version(path: Path) -> str:
    """Changes when a file arrives, disappears or changes: a hash over every read file's name and
    content and over every skipped entry (see `skipped_entries`), so a `.json` file or a
    sub-directory dropped into the log changes the version too."""
    digest = hashlib.sha256()
    for file in log_files(path):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode("utf-8", "backslashreplace"))
    for entry in skipped_entries(path):
        digest.update(f"skipped\0{entry.name}\0{_entry_fingerprint(entry)}\n".encode("utf-8", "backslashreplace"))
    return digest.hexdigest()[:16]


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _parse_line(text: str) -> tuple[object, str | None]:
    """The JSON value of one line, or a "malformed JSON: <detail>" reason. Parsed as every reader
    of untrusted JSON parses (duplicate keys refused), and stricter than labelled rows in two
    ways: NaN/Infinity are refused and nesting is capped at MAX_JSON_DEPTH."""
    try:
        row = loads_strict(text, parse_constant=_no_constant)
    except DuplicateKeyError as exc:
        return None, f"malformed JSON: duplicate key {exc.key!r}"
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON: {exc.msg}"
    except ValueError as exc:  # NaN/Infinity, an integer of more digits than Python converts
        return None, f"malformed JSON: {exc}"
    except RecursionError:
        return None, f"malformed JSON: nested too deep (more than {MAX_JSON_DEPTH} levels)"
    if depth_exceeds(row, MAX_JSON_DEPTH):
        return None, f"malformed JSON: nested too deep (more than {MAX_JSON_DEPTH} levels)"
    surrogate = find_lone_surrogate(row)
    if surrogate is not None:
        where = f"key {surrogate.key!r}" if surrogate.key is not None else "a string"
        return None, f"malformed JSON: lone surrogate in {where}"
    return row, None


def _lines(file: Path):
    """(line number, bytes) per line: split on b"\\n" only, a trailing b"\\r" dropped, a leading
    byte-order mark of the file dropped."""
    data = file.read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM) :]
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        yield line_no, raw[:-1] if raw.endswith(b"\r") else raw


def read_production_log(
    path: Path,
    input_field: str = "text",
    labels: Sequence[str] | None = None,
    *,
    now: datetime | None = None,
    max_clock_skew: timedelta = MAX_CLOCK_SKEW,
) -> ProductionLog:
    """Every usable request of the log; each rejected line is quarantined with "<kind>: <detail>"
    (the rules are in the module docstring), and so is every entry of a directory log that is not
    a `*.jsonl` file (with `"line": None`).

    With `labels`, a prediction or feedback label outside the task's label set is rejected too.
    A timestamp later than `now` (default: `clock.utc_now()`) + `max_clock_skew` is rejected.
    """
    if now is None:
        now = utc_now()
    elif now.tzinfo is None:
        raise ValueError(f"now must carry a time zone, got {now.isoformat()}")
    latest = now + max_clock_skew
    files = log_files(path)
    records: list[ProductionRecord] = []
    quarantine: list[dict] = [
        {"file": entry.name, "line": None, "reason": _skip_reason(entry), "row": None} for entry in skipped_entries(path)
    ]
    first_seen: dict[str, str] = {}
    allowed = set(labels) if labels is not None else None
    for file in files:
        for line_no, raw in _lines(file):
            if not raw.strip(b" \t\r"):
                continue
            where = f"{file.name}:{line_no}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not UTF-8: byte 0x{raw[exc.start]:02x} at position {exc.start} ({exc.reason})"
                quarantine.append({"file": file.name, "line": line_no, "reason": reason, "row": raw.decode("utf-8", "backslashreplace")})
                continue
            row, problem = _parse_line(text)
            if problem is not None:
                quarantine.append({"file": file.name, "line": line_no, "reason": problem, "row": text})
                continue
            record, problem = _parse_row(row, input_field, allowed)
            if problem is None and record.timestamp > latest:
                problem = (
                    f"timestamp in the future: {row['timestamp']!r} is later than {now.isoformat()} "
                    f"+ {max_clock_skew} of allowed clock skew"
                )
            if problem is None and record.request_id in first_seen:
                problem = f"duplicate request_id: {record.request_id!r} first seen at {first_seen[record.request_id]}"
            if problem is not None:
                quarantine.append({"file": file.name, "line": line_no, "reason": problem, "row": row})
                continue
            first_seen[record.request_id] = where
            records.append(record)
    return ProductionLog(records, quarantine, files)


def _parse_row(row: object, input_field: str, allowed: set[str] | None) -> tuple[ProductionRecord | None, str | None]:
    if not isinstance(row, dict):
        return None, f"not a JSON object: got {type(row).__name__}"
    text = row.get(input_field)
    if not isinstance(text, str) or not text.strip():
        return None, f"missing input: field {input_field!r} is absent, empty or not a string"
    request_id = row.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        return None, "missing request_id: field 'request_id' is absent, empty or not a string"
    try:
        timestamp = datetime.fromisoformat(row["timestamp"])
    except (KeyError, TypeError, ValueError):
        return None, f"bad timestamp: {row.get('timestamp')!r} is not ISO 8601"
    if timestamp.tzinfo is None:
        return None, f"bad timestamp: {row['timestamp']!r} has no time zone"
    prediction = row.get("prediction")
    if prediction is not None and (not isinstance(prediction, str) or (allowed is not None and prediction not in allowed)):
        return None, f"unknown prediction: {prediction!r} is not a task label"
    latency = row.get("latency_ms")
    if latency is not None and (
        isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency) or latency < 0
    ):
        return None, f"bad latency_ms: {latency!r} is not a finite number >= 0"
    feedback = row.get("feedback")
    feedback_label = feedback_source = None
    if feedback is not None:
        if not isinstance(feedback, dict) or not isinstance(feedback.get("label"), str):
            return None, "bad feedback: expected an object with a string 'label'"
        feedback_label = feedback["label"]
        if allowed is not None and feedback_label not in allowed:
            return None, f"unknown feedback label: {feedback_label!r} is not a task label"
        feedback_source = str(feedback.get("source", "unspecified"))
    flags = row.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        return None, f"bad flags: expected a list of strings, got {flags!r}"
    model_version = row.get("model_version")
    record = ProductionRecord(
        request_id=request_id,
        timestamp=timestamp,
        text=text,
        model_version=str(model_version) if model_version is not None else None,
        prediction=prediction,
        latency_ms=float(latency) if latency is not None else None,
        feedback_label=feedback_label,
        feedback_source=feedback_source,
        flags=tuple(flags),
    )
    return record, None


def feedback_rows(records: Sequence[ProductionRecord], fields: FieldMapping, *, scrub: bool = True) -> list[dict]:
    """Labelled feedback as labelled-example rows in the task's own field names, for curation to
    validate, scrub, de-duplicate and quarantine like any other data. Flags never become labels.

    These rows are written to a file in the state directory before curation reads them, so with
    `scrub` (the default; callers pass curation.scrub_pii) the text and the label -- a label outside
    the task's set reaches curation's quarantine as written -- are PII-scrubbed here already: no raw
    request text is copied out of the log. Curation's scrub is idempotent, so its PII counts leave
    these rows out."""
    rows = []
    for r in records:
        if r.feedback_label is None:
            continue
        text, label = (scrub_pii(r.text).text, scrub_answer(r.feedback_label)) if scrub else (r.text, r.feedback_label)
        row = {fields.input: text, fields.label: label}
        if fields.id:
            row[fields.id] = f"feedback-{r.request_id}"
        if fields.source:
            row[fields.source] = FEEDBACK_SOURCE
        rows.append(row)
    return rows


def read_task_log(spec: TaskSpec, *, now: datetime | None = None, check_labels: bool = True, leave_out_erased: bool = True) -> ProductionLog:
    """The task's production log read with its own input field, clock-skew tolerance
    (`drift.max_clock_skew_hours`) and, with `check_labels`, its label set: how every stage reads
    it. Feedback for curation is read without the label check, so an unknown feedback label reaches
    curation's quarantine with its did-you-mean instead of vanishing here. Requests of erased
    records are left out and counted (`leave_out_erased=False`: kept, for the erasure's own scan
    of what it must not find)."""
    log = read_production_log(
        spec.production_log_path, spec.fields.input, spec.labels if check_labels else None, now=now,
        max_clock_skew=timedelta(hours=spec.drift.max_clock_skew_hours),
    )
    ledger = ErasureLedger.load(spec.erasure_ledger_path)
    if not leave_out_erased or not ledger.requests:
        return log
    # Requests of erased records leave every stage (drift, feedback, the recent suite), counted.
    kept = [r for r in log.records if ledger.erased(r.request_id, r.text) is None]
    return replace(log, records=kept, erased=log.erased + len(log.records) - len(kept))


def append_log_file(directory: Path, name: str, rows: Sequence[dict]) -> Path:
    """Add one new file to the log; refuses to overwrite, because the log is append-only."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with path.open("x", encoding="utf-8") as handle:  # "x": fail if it exists
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
