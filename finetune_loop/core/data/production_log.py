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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.files import sha256_file, write_jsonl
from finetune_loop.core.common.spec import FieldMapping, TaskSpec

FEEDBACK_SOURCE = "production_feedback"


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
        """The records of the `days` before `end` (default: the newest record), quarantine kept whole."""
        if not self.records:
            return self
        end = end or max(r.timestamp for r in self.records)
        start = end - timedelta(days=days)
        kept = [r for r in self.records if start < r.timestamp <= end]
        return ProductionLog(kept, self.quarantine, self.files)

    def labelled(self) -> list[ProductionRecord]:
        return [r for r in self.records if r.feedback_label is not None]


def log_files(path: Path) -> list[Path]:
    """The `.jsonl` files of the log in name order (a single file is a log of one file)."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.jsonl") if p.is_file())
    raise FileNotFoundError(f"production log not found: {path}")


def log_data_version(path: Path) -> str:
    """Changes when a file arrives, disappears or changes: a hash over every file's name and content."""
    digest = hashlib.sha256()
    for file in log_files(path):
        digest.update(f"{file.name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()[:16]


def read_production_log(path: Path, input_field: str = "text", labels: Sequence[str] | None = None) -> ProductionLog:
    """Every usable request of the log; each rejected line is quarantined with "<kind>: <detail>".

    With `labels`, a prediction or feedback label outside the task's label set is rejected too.
    """
    files = log_files(path)
    records: list[ProductionRecord] = []
    quarantine: list[dict] = []
    first_seen: dict[str, str] = {}
    allowed = set(labels) if labels is not None else None
    for file in files:
        for line_no, raw in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if not raw.strip():
                continue
            where = f"{file.name}:{line_no}"
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                quarantine.append({"file": file.name, "line": line_no, "reason": f"malformed JSON: {exc.msg}", "row": raw})
                continue
            record, problem = _parse_row(row, input_field, allowed)
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
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency < 0):
        return None, f"bad latency_ms: {latency!r} is not a number >= 0"
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


def feedback_rows(records: Sequence[ProductionRecord], fields: FieldMapping) -> list[dict]:
    """Labelled feedback as labelled-example rows in the task's own field names, for curation to
    validate, scrub, de-duplicate and quarantine like any other data. Flags never become labels."""
    rows = []
    for r in records:
        if r.feedback_label is None:
            continue
        row = {fields.input: r.text, fields.label: r.feedback_label}
        if fields.id:
            row[fields.id] = f"feedback-{r.request_id}"
        if fields.source:
            row[fields.source] = FEEDBACK_SOURCE
        rows.append(row)
    return rows


def write_feedback_examples(spec: TaskSpec, out_dir: Path) -> Path | None:
    """The log's labelled feedback as a labelled-examples file for the next curated_dataset, named
    by the log's data version; None when the task has no log or the log holds no feedback."""
    if spec.production_log_path is None:
        return None
    log = read_production_log(spec.production_log_path, spec.fields.input)
    rows = feedback_rows(log.records, spec.fields)
    if not rows:
        return None
    path = out_dir / f"feedback-{log_data_version(spec.production_log_path)}.jsonl"
    write_jsonl(path, rows)
    return path


def append_log_file(directory: Path, name: str, rows: Sequence[dict]) -> Path:
    """Add one new file to the log; refuses to overwrite, because the log is append-only."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with path.open("x", encoding="utf-8") as handle:  # "x": fail if it exists
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
