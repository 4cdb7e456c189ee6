"""Reading rows from disk or the hub: labelled-example files of every supported format, and JSONL examples.

`_read_rows` reads `.jsonl`, `.csv`, `.parquet` or a `datasets.save_to_disk` directory into
(row number, row, problem) triples, turning parse errors into problems rather than crashes; the
hub readers load `owner/name#split` datasets; `read_examples` reads back the `Example` JSONL files
the loop writes itself. `CurationError` is the error of data that cannot be curated at all.
It is the bottom of the data stage: validation, suites, curation and contamination build on it,
and nothing here knows a task's field mapping.
"""

from __future__ import annotations

import csv
import json
import re
import threading
from pathlib import Path
from typing import NamedTuple

from finetune_loop.core.common.examples import (
    Example,
)


class CurationError(ValueError):
    """The input data cannot be curated at all (missing file, unsupported format, empty result)."""


def hub_dataset_fingerprint(hub_id: str) -> str:
    """The datasets library's fingerprint of a hub dataset: it changes when the dataset does."""
    return _load_hub_dataset(hub_id)._fingerprint


def _read_hub_dataset(hub_id: str) -> list[tuple[int, dict, str | None]]:
    return [(index, dict(row), None) for index, row in enumerate(_load_hub_dataset(hub_id), start=1)]


def _load_hub_dataset(hub_id: str):
    """`owner/name` or `owner/name#split` from the Hugging Face hub (or the local datasets cache)."""
    from datasets import load_dataset

    name, _, split = hub_id.partition("#")
    try:
        dataset = load_dataset(name, split=split or "train")
    except Exception as exc:  # offline, unknown id, missing split: datasets raises many types
        raise CurationError(
            f"cannot load Hugging Face dataset {name!r} (split {split or 'train'!r}): {exc}. Without network, point "
            "data.labeled_examples at a local file or a datasets.save_to_disk directory instead."
        ) from exc
    return dataset


def _read_rows(path: Path, required_column: str | None = None) -> list[tuple[int, dict, str | None]]:
    """(row number, parsed row, problem) per data row; parse errors become problems, not crashes.

    Formats: `.jsonl`, `.csv`, `.parquet`, or a directory written by Hugging Face
    `datasets.save_to_disk` (its `train` split when it holds several). `required_column` (the
    task's input field) must be a column of a CSV or Parquet file: without it the whole file is
    unusable (a wrong delimiter, a renamed column), which raises `CurationError` rather than
    quarantining every row."""
    if path.is_dir():
        return _read_hf_dataset_dir(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path, required_column)
    if suffix == ".parquet":
        return _read_parquet(path, required_column)
    raise CurationError(
        f"unsupported labeled examples format {suffix!r} for {path}; use .jsonl, .csv, .parquet "
        "or a datasets.save_to_disk directory"
    )


# Deeper rows than this are quarantined: nothing the loop trains on nests this deep, and a deeper
# one would only risk a RecursionError in some later json.dumps or comparison.
MAX_JSON_DEPTH = 100
BOM = b"\xef\xbb\xbf"


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (json.loads would silently keep the last)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _pairs_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    row: dict = {}
    for key, value in pairs:
        if key in row:
            raise DuplicateKeyError(key)
        row[key] = value
    return row


def loads_strict(text: str, **json_options) -> object:
    """`json.loads` (with `json_options`), except that a duplicate key raises `DuplicateKeyError`
    instead of the last one silently winning. Other failures are `json.JSONDecodeError`,
    `RecursionError` or `ValueError`. Every reader of untrusted JSON (labelled rows, JSON targets,
    the production log) parses through this."""
    return json.loads(text, object_pairs_hook=_pairs_without_duplicates, **json_options)


def json_problem(text: str) -> tuple[object, str | None]:
    """(parsed value, None), or (None, "malformed JSON: <detail>") for text that does not parse
    cleanly: a syntax error, a duplicate key, nesting too deep, or a number Python refuses."""
    try:
        value = loads_strict(text)
    except DuplicateKeyError as exc:
        return None, f"malformed JSON: duplicate key {exc.key!r}"
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "malformed JSON: nested too deep"
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        return None, f"malformed JSON: {exc}"
    if depth_exceeds(value, MAX_JSON_DEPTH):
        return None, f"malformed JSON: nested too deep (more than {MAX_JSON_DEPTH} levels)"
    return value, None


def depth_exceeds(value: object, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


class LoneSurrogate(NamedTuple):
    field: str | None  # the top-level field it sits under
    char: str
    key: str | None  # the object key that holds it, when it is in a key rather than a value


def find_lone_surrogate(value: object, field: str | None = None) -> LoneSurrogate | None:
    """The first lone surrogate (U+D800..U+DFFF) in a string, key or nested value, or None. JSON
    can escape one (`"\\ud800"`); no tokenizer or UTF-8 file can hold it."""
    stack: list[tuple[object, str | None, bool]] = [(value, field, False)]
    while stack:
        item, name, is_key = stack.pop()
        if isinstance(item, str):
            for ch in item:
                if "\ud800" <= ch <= "\udfff":
                    return LoneSurrogate(name, ch, item if is_key else None)
        elif isinstance(item, dict):
            for key, child in item.items():
                child_name = name if name is not None else (key if isinstance(key, str) else repr(key))
                stack.append((key, child_name, True))
                stack.append((child, child_name, False))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, name, False) for child in item)
    return None


def _read_jsonl(path: Path) -> list[tuple[int, dict, str | None]]:
    rows: list[tuple[int, dict, str | None]] = []
    data = path.read_bytes()
    if data.startswith(BOM):  # utf-8-sig: a BOM from a Windows editor is not part of the first row
        data = data[len(BOM):]
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append((line_no, {"raw": raw.decode("utf-8", "replace")}, f"not valid UTF-8: {exc.reason} at byte {exc.start}"))
            continue
        row, problem = json_problem(line)
        if problem is not None:
            rows.append((line_no, {"raw": line}, problem))
            continue
        if not isinstance(row, dict):
            rows.append((line_no, {"raw": line}, f"not a JSON object: got {type(row).__name__}"))
            continue
        surrogate = find_lone_surrogate(row)
        if surrogate is not None:
            rows.append((line_no, {"raw": line}, f"invalid Unicode: lone surrogate U+{ord(surrogate.char):04X} in field {surrogate.field!r}"))
            continue
        rows.append((line_no, row, None))
    return rows


_csv_limit_lock = threading.Lock()


class _LineFeed:
    """Physical lines for csv.reader, with a position that can be rewound to re-read lines."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.pos = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _physical_lines(text: str) -> list[str]:
    # The line breaks io.StringIO(newline="") splits on (\r\n, \n, \r), kept on each line.
    return re.findall(r"[^\r\n]*(?:\r\n|\n|\r)|[^\r\n]+\Z", text)


def _looks_like_record(line: str, width: int) -> bool:
    """A physical line that parses on its own into exactly `width` cells with its quotes balanced:
    inside a multi-line cell it is most likely a record swallowed by an unclosed quote."""
    if line.count('"') % 2:
        return False
    try:
        cells = next(csv.reader([line]), [])
    except csv.Error:
        return False
    return len(cells) == width


def _read_csv(path: Path, required_column: str | None = None) -> list[tuple[int, dict, str | None]]:
    # utf-8-sig drops a BOM (or it would become part of the first header name); surrogateescape
    # keeps undecodable bytes as lone surrogates, so the one row holding them is quarantined
    # ("not valid UTF-8") while the rest of the file is read.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    lines = _physical_lines(text)
    # No cell can be longer than the file: with that limit the csv module never raises on a long
    # cell, and the length checks downstream quarantine an over-long row like any other.
    with _csv_limit_lock:
        previous = csv.field_size_limit()
        csv.field_size_limit(max(previous, len(text) + 1))
        try:
            return _parse_csv(path, lines, required_column)
        finally:
            csv.field_size_limit(previous)


def _parse_csv(path: Path, lines: list[str], required_column: str | None) -> list[tuple[int, dict, str | None]]:
    feed = _LineFeed(lines)
    reader = csv.reader(feed)
    header: list[str] | None = None
    while header is None:
        try:
            cells = next(reader)
        except StopIteration:
            return []
        except csv.Error as exc:
            raise CurationError(f"{path}: the CSV header cannot be parsed: {exc}") from exc
        if cells:
            header = cells
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise CurationError(f"{path}: the CSV header names {', '.join(repr(n) for n in duplicated)} more than once; header: {header!r}")
    if required_column is not None and required_column not in header:
        raise CurationError(_missing_column_message(path, lines, header, required_column))
    width = len(header)
    rows: list[tuple[int, dict, str | None]] = []
    while feed.pos < len(lines):
        start = feed.pos  # index of the record's first physical line
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            rows.append((start + 1, {"raw": lines[start]}, f"malformed CSV: {exc}"))
            feed.pos = start + 1
            reader = csv.reader(feed)
            continue
        end = feed.pos  # one past its last physical line
        if not cells:
            continue  # a blank line, as csv.DictReader skips it
        if end - start > 1:
            swallowed = [i for i in range(start + 1, end) if _looks_like_record(lines[i], width)]
            if swallowed or len(cells) != width:
                # A quote opened on this line and closed (if ever) lines later: quarantine this line
                # and read the lines it swallowed again as records of their own.
                detail = f"{len(swallowed)} following line(s) that look like records" if swallowed else f"{end - start - 1} following line(s)"
                rows.append((start + 1, {"raw": lines[start]}, f"malformed CSV: unclosed quote on line {start + 1} runs over {detail}; they are read again on their own"))
                feed.pos = start + 1
                continue
        line_no = end
        row = dict(zip(header, cells))
        if len(cells) > width:
            rows.append((line_no, row, "malformed CSV: more cells than header columns"))
        elif len(cells) < width:
            rows.append((line_no, row, "malformed CSV: fewer cells than header columns"))
        else:
            rows.append((line_no, row, None))
    return rows


def _missing_column_message(path: Path, lines: list[str], header: list[str], column: str) -> str:
    sample = "".join(lines[:20])
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
        guess = f"the file seems to use {delimiter!r} as its delimiter" + (" (the loop reads comma-separated CSV)" if delimiter != "," else "")
    except csv.Error:
        guess = "its delimiter could not be determined"
    return f"{path}: the CSV header has no {column!r} column (the task's input field); found header {header!r}; {guess}"


def _python_value(value: object) -> object:
    """numpy scalars and arrays (list columns) as plain Python values, so validation's checks and
    comparisons see str, int, list and dict rather than numpy types."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return [_python_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_python_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _python_value(v) for k, v in value.items()}
    return value


def _read_parquet(path: Path, required_column: str | None = None) -> list[tuple[int, dict, str | None]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise CurationError(f"{path} is not a readable Parquet file: {exc}") from exc
    if required_column is not None and required_column not in frame.columns:
        raise CurationError(f"{path}: the Parquet file has no {required_column!r} column (the task's input field); its columns: {list(map(str, frame.columns))!r}")
    # NaN means "missing" in a Parquet column; validation expects None for that.
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [(index, {k: _python_value(v) for k, v in row.items()}, None) for index, row in enumerate(records, start=1)]


def _read_hf_dataset_dir(path: Path) -> list[tuple[int, dict, str | None]]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise CurationError(f"{path} is a directory but not a datasets.save_to_disk dataset: {exc}") from exc
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise CurationError(f"{path} holds splits {sorted(dataset)}; the loop reads the 'train' split")
        dataset = dataset["train"]
    return [(index, dict(row), None) for index, row in enumerate(dataset, start=1)]


def read_examples(path: Path) -> list[Example]:
    with path.open(encoding="utf-8") as handle:
        return [Example(**json.loads(line)) for line in handle if line.strip()]
