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
import io
import json
from pathlib import Path

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


def _read_rows(path: Path) -> list[tuple[int, dict, str | None]]:
    """(row number, parsed row, problem) per data row; parse errors become problems, not crashes.

    Formats: `.jsonl`, `.csv`, `.parquet`, or a directory written by Hugging Face
    `datasets.save_to_disk` (its `train` split when it holds several)."""
    if path.is_dir():
        return _read_hf_dataset_dir(path)
    readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise CurationError(
            f"unsupported labeled examples format {path.suffix.lower()!r} for {path}; use .jsonl, .csv, .parquet "
            "or a datasets.save_to_disk directory"
        )
    return reader(path)


def _read_jsonl(path: Path) -> list[tuple[int, dict, str | None]]:
    rows: list[tuple[int, dict, str | None]] = []
    for line_no, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append((line_no, {"raw": raw.decode("utf-8", "replace")}, f"not valid UTF-8: {exc.reason} at byte {exc.start}"))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((line_no, {"raw": line}, f"malformed JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(row, dict):
            rows.append((line_no, {"raw": line}, f"not a JSON object: got {type(row).__name__}"))
            continue
        rows.append((line_no, row, None))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict, str | None]]:
    # surrogateescape keeps undecodable bytes as lone surrogates, so the one row holding them is
    # quarantined ("not valid UTF-8") while the rest of the file is read.
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    rows: list[tuple[int, dict, str | None]] = []
    # newline="" keeps quoted multi-line cells inside their row.
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for row in reader:
        line_no = reader.line_num
        if None in row:  # more cells than header columns
            rows.append((line_no, {k: v for k, v in row.items() if k is not None}, "malformed CSV: more cells than header columns"))
        elif any(value is None for value in row.values()):
            rows.append((line_no, {k: v for k, v in row.items() if v is not None}, "malformed CSV: fewer cells than header columns"))
        else:
            rows.append((line_no, row, None))
    return rows


def _read_parquet(path: Path) -> list[tuple[int, dict, str | None]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise CurationError(f"{path} is not a readable Parquet file: {exc}") from exc
    # NaN means "missing" in a Parquet column; validation expects None for that.
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return [(index, row, None) for index, row in enumerate(records, start=1)]


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
