"""Row validation: labelled rows mapped through the task's fields into `Example`s, or quarantined.

`read_labeled_examples` applies the task spec's field mapping to every row read by readers.py and
returns the valid examples plus one quarantine entry per rejected row with a "<kind>: <detail>"
reason (missing or unknown label, malformed JSON target, control characters, unknown source...);
`load_sources` reads the sources file (licence, revoked or active). It is its own module because
curation, suite freezing and the traffic simulator all read labelled rows through the same checks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import difflib
import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from finetune_loop.core.common.examples import (
    Example,
)
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.erasure import ERASED_REASON, ErasureLedger
from finetune_loop.core.data.readers import (
    CurationError,
    _read_hub_dataset,
    _read_rows,
    find_lone_surrogate,
    json_problem,
)


@dataclass(frozen=True)
class Source:
    name: str
    licence: str
    status: str  # "active" or "revoked": rows of a revoked source are excluded from curation


def load_sources(path: Path | None) -> dict[str, Source] | None:
    """The task's sources file (`sources: {name: {licence, status}}`), or None when it has none."""
    if path is None:
        return None
    if not path.is_file():
        raise CurationError(f"sources file not found: {path}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = raw.get("sources") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise CurationError(f"{path}: expected a non-empty mapping under 'sources'")
    sources = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("licence"), str) or entry.get("status") not in ("active", "revoked"):
            raise CurationError(f"{path}: source {name!r} needs a licence (string) and a status of 'active' or 'revoked'")
        sources[str(name)] = Source(str(name), entry["licence"], entry["status"])
    return sources


def read_labeled_examples(spec: TaskSpec, path: Path | None = None, *, leave_out_erased: bool = True) -> tuple[list[Example], list[dict]]:
    """Valid examples in file order, plus one quarantine entry per rejected row, whose reason reads
    "<kind>: <detail>". `path` defaults to the task's labeled examples; designated suite files are
    read through the same checks. A row of an erased record is left out with reason "erased" and
    no row (`leave_out_erased=False`: kept, for the erasure's own scan of what it must not find)."""
    if path is None and spec.labeled_examples_hub_id:
        raw_rows = _read_hub_dataset(spec.labeled_examples_hub_id)
        origin = spec.labeled_examples_hub_id
    else:
        path = path or spec.labeled_examples_path
        if not path.exists():
            raise CurationError(f"labeled examples file not found: {path} (named in {spec.spec_path})")
        raw_rows = _read_rows(path, required_column=spec.fields.input)
        origin = path.name
    sources = load_sources(spec.sources_path)
    ledger = ErasureLedger.load(spec.erasure_ledger_path) if leave_out_erased else ErasureLedger(spec.erasure_ledger_path)
    examples: list[Example] = []
    quarantine: list[dict] = []
    seen_ids: set[str] = set()
    for line_no, row, problem in raw_rows:
        example = None
        if problem is None:
            # Without an id column a row is named by its file and row number, so ids from a
            # designated suite file never collide with the training file's.
            example, problem = _validate_row(spec, row, f"{origin}:{line_no}", sources)
        if example is not None:
            erased_by = ledger.erased(example.id, example.text)
        else:  # a rejected row has no id yet; its text still identifies it
            raw_text = row.get(spec.fields.input) if isinstance(row, dict) else None
            erased_by = ledger.erased(None, raw_text if isinstance(raw_text, str) else None)
        if erased_by is not None:
            # Left out with its reason and line only: the row itself is kept nowhere, not even as evidence.
            quarantine.append({"line": line_no, "reason": f"{ERASED_REASON}: erasure request {erased_by}", ERASED_REASON: True})
            continue
        if problem is None and example.id in seen_ids:
            problem = f"duplicate id: {example.id!r} already used by an earlier row"
        if problem is not None:
            # The row as read, made JSON-safe (bytes, timestamps, numpy values from Parquet) so the
            # quarantine file can always be written.
            quarantine.append({"line": line_no, "reason": problem, "row": json_safe(row)})
            continue
        seen_ids.add(example.id)
        examples.append(example)
    return examples, quarantine


def _validate_row(spec: TaskSpec, row: dict, default_id: str, sources: dict[str, Source] | None) -> tuple[Example | None, str | None]:
    """(example, None) for a usable row, (None, "<kind>: <detail>") for a rejected one."""
    fields = spec.fields
    surrogate = find_lone_surrogate(row)
    if surrogate is not None:
        field, ch = surrogate.field, surrogate.char
        if "\udc80" <= ch <= "\udcff":  # an undecodable byte kept by surrogateescape (CSV)
            if field == fields.input:
                return None, "not valid UTF-8: the input holds bytes that do not decode"
            return None, f"not valid UTF-8: field {field!r} holds bytes that do not decode"
        return None, f"invalid Unicode: lone surrogate U+{ord(ch):04X} in field {field!r}"
    text = row.get(fields.input)
    raw_id = row.get(fields.id) if fields.id else None
    if raw_id not in (None, "") and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        return None, f"id not a string or integer: field {fields.id!r} is {type(raw_id).__name__}"
    row_id = str(raw_id) if raw_id not in (None, "") else default_id
    source = row.get(fields.source) if fields.source else None
    source = str(source) if source not in (None, "") else "unspecified"
    if fields.input not in row:
        return None, f"missing input: field {fields.input!r} is absent"
    if not isinstance(text, str):
        return None, f"input not a string: field {fields.input!r} is {type(text).__name__}"
    if not text.strip():
        return None, "empty input"
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        return None, "not valid UTF-8: the input holds bytes that do not decode"
    if "\ufffd" in text:
        return None, "replacement character in input: U+FFFD means the text was decoded lossily upstream"
    if _has_control_chars(text):
        return None, "control characters in input"
    if not any(ch.isalnum() for ch in text):
        return None, f"no content: the input has no letters or digits ({text.strip()[:40]!r})"
    answer, problem = ANSWER_RULES[kind_of(spec).name](spec, row.get(fields.label), fields.label)
    if problem is not None:
        return None, problem
    if sources is not None and source not in sources:
        return None, f"unknown source: {source!r} is not in {spec.sources_path.name}"
    licence = row.get(fields.licence) if fields.licence else None
    if licence in (None, ""):
        licence = sources[source].licence if sources is not None else "unspecified"
    elif not isinstance(licence, str):
        return None, f"licence not a string: field {fields.licence!r} is {type(licence).__name__}"
    slices = {}
    for slice_field in fields.slices:
        value = row.get(slice_field)
        if value in (None, ""):
            continue  # a row without a slice value is reported under "(missing)" in the audit
        if isinstance(value, (dict, list)):
            return None, f"slice not a scalar: field {slice_field!r} is {type(value).__name__}"
        slices[slice_field] = str(value).strip()
    return Example(id=row_id, text=text.strip(), label=answer, source=source, licence=licence.strip(), slices=slices), None


def validate_label(spec: TaskSpec, value: object, column: str) -> tuple[str | None, str | None]:
    """A classification row's answer: one of the task's labels."""
    if value in (None, ""):
        return None, f"missing label: field {column!r} is absent or empty"
    if not isinstance(value, str):
        return None, f"label not a string: got {type(value).__name__}"
    if value.strip() not in spec.labels:
        close = difflib.get_close_matches(value.strip().casefold(), [l.casefold() for l in spec.labels], n=1)
        hint = f" (did you mean {spec.labels[[l.casefold() for l in spec.labels].index(close[0])]!r}?)" if close else ""
        return None, f"unknown label: {value!r} is not in the task's label set{hint}"
    return value.strip(), None


def validate_target(spec: TaskSpec, value: object, column: str) -> tuple[str | None, str | None]:
    """A generation row's answer: a non-empty target (valid JSON for JSON tasks, re-serialised
    compactly so formatting differences never make two targets differ)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"missing target: field {column!r} is absent or empty"
    if spec.target_format == "text":
        if not isinstance(value, str):
            return None, f"target not a string: field {column!r} is {type(value).__name__}"
        if _has_control_chars(value):
            return None, "control characters in target"
        return value.strip(), None
    if isinstance(value, str):
        value, problem = json_problem(value)
        if problem is not None:
            return None, "malformed JSON target: " + problem.partition(": ")[2]
        surrogate = find_lone_surrogate(value)
        if surrogate is not None:
            return None, f"invalid Unicode: lone surrogate U+{ord(surrogate.char):04X} in the JSON target"
    if not isinstance(value, (dict, list)):
        return None, f"JSON target not an object or array: got {type(value).__name__}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), None


# What a valid answer is, per task kind (core/common/kinds.py).
ANSWER_RULES: dict[str, Callable[[TaskSpec, object, str], tuple[str | None, str | None]]] = {
    "classification": validate_label, "generation": validate_target,
}


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" and ch not in "\n\t\r" for ch in text)


def reason_kind(reason: str) -> str:
    """Every quarantine reason reads "<kind>: <detail>"; counts group by kind, the detail stays in
    the quarantine file."""
    return reason.partition(":")[0]


_MAX_SAFE_DEPTH = 50


def json_safe(value: object, _depth: int = 0) -> object:
    """`value` with every part JSON-serialisable, for a quarantine row: bytes as a short hex
    string, dates and timestamps as ISO strings, numpy and Arrow scalars as Python values,
    anything else unknown as its repr. Strings, numbers, None, lists and dicts stay as they are."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if _depth > _MAX_SAFE_DEPTH:
        return repr(value)[:200]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(json_safe(k, _depth + 1)): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, _depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        shown = raw[:64].hex()
        return f"<{len(raw)} bytes: {shown}{'...' if len(raw) > 64 else ''}>"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):  # pandas.Timestamp is a datetime
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    for method in ("tolist", "as_py", "item"):  # numpy arrays and scalars, Arrow scalars
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                converted = convert()
            except Exception:  # a scalar that refuses conversion still gets its repr below
                continue
            if converted is not value:
                return json_safe(converted, _depth + 1)
    return repr(value)[:200]
