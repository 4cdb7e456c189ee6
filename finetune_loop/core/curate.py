"""Curation: read labelled rows, quarantine the bad ones with a reason, de-duplicate, split.

Nothing is dropped silently: every input row ends up in exactly one of the curated splits, the
frozen holdout, the quarantine file (with its reason), or the duplicates file (with the id it
duplicates). The counts in `CurationReport` add up to the rows read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune_loop.core.files import sha256_file, write_jsonl
from finetune_loop.core.specs import TaskSpec


class CurationError(ValueError):
    """The input data cannot be curated at all (missing file, unsupported format, empty result)."""


class HoldoutChangedError(RuntimeError):
    """A frozen holdout file no longer matches the hash recorded when it was frozen."""


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: str


@dataclass
class CurationReport:
    rows_read: int
    quarantined: dict[str, int]
    duplicates_removed: int
    overlapping_holdout_removed: int
    train_rows: int
    validation_rows: int
    per_label_train: dict[str, int]


@dataclass
class CuratedDataset:
    data_version: str
    directory: Path
    train_path: Path
    validation_path: Path
    quarantine_path: Path
    duplicates_path: Path
    report: CurationReport


@dataclass
class HoldoutSuite:
    path: Path
    sha256: str
    size: int
    per_label: dict[str, int]
    created: bool = field(default=False)


def normalize_text(text: str) -> str:
    """The key for exact de-duplication: case, Unicode form and spacing do not make a new ticket."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def read_labeled_examples(spec: TaskSpec) -> tuple[list[Example], list[dict]]:
    """Valid examples in file order, plus one quarantine entry per rejected row, whose reason reads
    "<kind>: <detail>"."""
    path = spec.labeled_examples_path
    if not path.is_file():
        raise CurationError(f"labeled examples file not found: {path} (set data.labeled_examples in {spec.spec_path})")
    raw_rows = _read_rows(path)
    examples: list[Example] = []
    quarantine: list[dict] = []
    seen_ids: set[str] = set()
    allowed = set(spec.labels)
    fields = spec.fields
    for line_no, row, problem in raw_rows:
        if problem is None:
            text = row.get(fields.input)
            label = row.get(fields.label)
            row_id = row.get(fields.id) if fields.id else None
            row_id = str(row_id) if row_id not in (None, "") else f"line-{line_no}"
            if fields.input not in row:
                problem = f"missing input: field {fields.input!r} is absent"
            elif not isinstance(text, str):
                problem = f"input not a string: field {fields.input!r} is {type(text).__name__}"
            elif not text.strip():
                problem = "empty input"
            elif _has_control_chars(text):
                problem = "control characters in input"
            elif fields.label not in row or label in (None, ""):
                problem = f"missing label: field {fields.label!r} is absent or empty"
            elif not isinstance(label, str):
                problem = f"label not a string: got {type(label).__name__}"
            elif label.strip() not in allowed:
                problem = f"unknown label: {label!r} is not in the task's label set"
            elif row_id in seen_ids:
                problem = f"duplicate id: {row_id!r} already used by an earlier row"
        if problem is not None:
            quarantine.append({"line": line_no, "reason": problem, "row": row})
            continue
        seen_ids.add(row_id)
        examples.append(Example(id=row_id, text=text.strip(), label=label.strip()))
    return examples, quarantine


def _read_rows(path: Path) -> list[tuple[int, dict, str | None]]:
    """(line number, parsed row or raw text, problem) per data row; parse errors become problems."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise CurationError(f"unsupported labeled examples format {suffix!r} for {path}; use .jsonl or .csv")
    rows: list[tuple[int, dict, str | None]] = []
    raw_lines = path.read_bytes().split(b"\n")
    if suffix == ".jsonl":
        for line_no, raw in enumerate(raw_lines, start=1):
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
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CurationError(f"{path} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    reader = csv.DictReader(text.splitlines())
    for row in reader:
        line_no = reader.line_num
        if None in row:  # more cells than header columns
            rows.append((line_no, {k: v for k, v in row.items() if k is not None}, "malformed CSV: more cells than header columns"))
        elif any(value is None for value in row.values()):
            rows.append((line_no, {k: v for k, v in row.items() if v is not None}, "malformed CSV: fewer cells than header columns"))
        else:
            rows.append((line_no, row, None))
    return rows


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" and ch not in "\n\t\r" for ch in text)


def deduplicate(examples: list[Example]) -> tuple[list[Example], list[dict], list[dict]]:
    """Keep the first of each normalised-text group; a group whose rows disagree on the label is
    quarantined whole, because no single row of it can be trusted as ground truth."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[normalize_text(example.text)].append(example)
    kept: list[Example] = []
    duplicates: list[dict] = []
    conflicts: list[dict] = []
    for group in groups.values():
        labels = sorted({e.label for e in group})
        if len(labels) > 1:
            conflicts.extend(
                {"id": e.id, "reason": f"conflicting labels: same text as {len(group) - 1} other row(s), labelled {labels}", "row": asdict(e)}
                for e in group
            )
            continue
        kept.append(group[0])
        duplicates.extend({"id": e.id, "duplicate_of": group[0].id, "row": asdict(e)} for e in group[1:])
    order = {e.id: i for i, e in enumerate(examples)}
    kept.sort(key=lambda e: order[e.id])
    return kept, duplicates, conflicts


def stratified_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(rest, picked): `fraction` of every label picked at random, at least one per label that has
    two or more rows, so every label is represented on both sides."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example.label].append(example)
    rng = random.Random(seed)
    picked_ids: set[str] = set()
    for label in sorted(by_label):
        rows = sorted(by_label[label], key=lambda e: e.id)
        rng.shuffle(rows)
        count = round(len(rows) * fraction)
        if fraction > 0 and len(rows) >= 2:
            count = min(max(count, 1), len(rows) - 1)
        picked_ids.update(e.id for e in rows[:count])
    rest = [e for e in examples if e.id not in picked_ids]
    picked = [e for e in examples if e.id in picked_ids]
    return rest, picked


def read_examples(path: Path) -> list[Example]:
    with path.open(encoding="utf-8") as handle:
        return [Example(**json.loads(line)) for line in handle if line.strip()]


def freeze_holdout(spec: TaskSpec, suites_dir: Path) -> HoldoutSuite:
    """Create the holdout once (seeded stratified split of the valid, de-duplicated rows), then only
    verify it: a holdout that changed under us would make every later comparison meaningless."""
    holdout_path = suites_dir / "holdout.jsonl"
    manifest_path = suites_dir / "holdout.manifest.json"
    if holdout_path.exists() or manifest_path.exists():
        if not (holdout_path.exists() and manifest_path.exists()):
            raise HoldoutChangedError(
                f"frozen holdout is incomplete in {suites_dir}: expected both holdout.jsonl and holdout.manifest.json; "
                "restore the missing file or remove both to freeze a new holdout on purpose"
            )
        manifest = json.loads(manifest_path.read_text())
        found = sha256_file(holdout_path)
        if found != manifest["sha256"]:
            raise HoldoutChangedError(
                f"frozen holdout {holdout_path} changed: expected sha256 {manifest['sha256']}, found {found}. "
                "Restore the file, or replace the suite explicitly by removing it and its manifest."
            )
        examples = read_examples(holdout_path)
        return HoldoutSuite(holdout_path, found, len(examples), dict(Counter(e.label for e in examples)))

    examples, _ = read_labeled_examples(spec)
    unique, _, _ = deduplicate(examples)
    _, holdout = stratified_split(unique, spec.split.holdout_fraction, spec.split.seed)
    if not holdout:
        raise CurationError(f"no valid rows to freeze a holdout from {spec.labeled_examples_path}")
    write_jsonl(holdout_path, [asdict(e) for e in holdout])
    digest = sha256_file(holdout_path)
    manifest_path.write_text(
        json.dumps(
            {"sha256": digest, "size": len(holdout), "source": str(spec.labeled_examples_path),
             "source_sha256": sha256_file(spec.labeled_examples_path), "seed": spec.split.seed,
             "fraction": spec.split.holdout_fraction},
            indent=2,
        )
    )
    return HoldoutSuite(holdout_path, digest, len(holdout), dict(Counter(e.label for e in holdout)), created=True)


def curate_dataset(spec: TaskSpec, holdout: HoldoutSuite, datasets_dir: Path) -> CuratedDataset:
    examples, quarantine = read_labeled_examples(spec)
    unique, duplicates, conflicts = deduplicate(examples)
    quarantine.extend({"line": None, **c} for c in conflicts)
    holdout_keys = {normalize_text(e.text) for e in read_examples(holdout.path)}
    # Rows that are (after normalisation) holdout tickets would leak the answers into training.
    candidates = [e for e in unique if normalize_text(e.text) not in holdout_keys]
    overlapping = len(unique) - len(candidates)
    train, validation = stratified_split(candidates, spec.split.validation_fraction, spec.split.seed)
    if not train:
        raise CurationError(f"no training rows left after curation of {spec.labeled_examples_path}")
    missing_labels = sorted(set(spec.labels) - {e.label for e in train})
    if missing_labels:
        raise CurationError(f"labels with no training rows after curation: {missing_labels}")

    train_rows = [asdict(e) for e in train]
    validation_rows = [asdict(e) for e in validation]
    payload = json.dumps({"train": train_rows, "validation": validation_rows, "holdout": holdout.sha256}, sort_keys=True)
    data_version = hashlib.sha256(payload.encode()).hexdigest()[:16]
    directory = datasets_dir / data_version
    paths = {name: directory / f"{name}.jsonl" for name in ("train", "validation", "quarantine", "duplicates")}
    write_jsonl(paths["train"], train_rows)
    write_jsonl(paths["validation"], validation_rows)
    write_jsonl(paths["quarantine"], quarantine)
    write_jsonl(paths["duplicates"], duplicates)
    report = CurationReport(
        rows_read=len(examples) + sum(1 for q in quarantine if q["line"] is not None),
        quarantined=dict(Counter(reason_kind(q["reason"]) for q in quarantine)),
        duplicates_removed=len(duplicates),
        overlapping_holdout_removed=overlapping,
        train_rows=len(train),
        validation_rows=len(validation),
        per_label_train={label: sum(1 for e in train if e.label == label) for label in spec.labels},
    )
    (directory / "report.json").write_text(json.dumps(asdict(report), indent=2))
    return CuratedDataset(data_version, directory, paths["train"], paths["validation"], paths["quarantine"], paths["duplicates"], report)


def reason_kind(reason: str) -> str:
    """Every quarantine reason reads "<kind>: <detail>"; counts group by kind, the detail stays in
    the quarantine file."""
    return reason.partition(":")[0]
