"""Curation: read labelled rows, quarantine the bad ones with a reason, de-duplicate, split.

Nothing is dropped silently: every input row ends up in exactly one of the curated splits, the
frozen holdout, the quarantine file (with its reason), or the duplicates file (with the id it
duplicates). The counts in `CurationReport` add up to the rows read.
"""

from __future__ import annotations

import csv
import io
import hashlib
import json
import random
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import yaml

from finetune_loop.core.dedup import NearDuplicateSettings, find_overlaps, remove_near_duplicates
from finetune_loop.core.examples import Example, normalize_text
from finetune_loop.core.files import sha256_file, write_jsonl
from finetune_loop.core.pii import scrub_pii
from finetune_loop.core.specs import TaskSpec


class CurationError(ValueError):
    """The input data cannot be curated at all (missing file, unsupported format, empty result)."""


class SuiteChangedError(RuntimeError):
    """A frozen suite file no longer matches the content hash recorded when it was frozen."""


SUITE_NAMES = ("holdout", "regression")


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


@dataclass
class CurationReport:
    rows_read: int
    quarantined: dict[str, int]
    revoked_removed: dict[str, int]
    pii_replacements: dict[str, int]
    duplicates_removed: int
    near_duplicates_removed: int
    # suite name -> training rows removed because they (nearly) repeat a suite row
    contamination_removed: dict[str, int]
    train_rows: int
    validation_rows: int
    per_label_train: dict[str, int]
    # share of rows beyond training.max_length after chat rendering (quarantined, not truncated)
    truncation_rate: float
    dedup_audit_markdown: str


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
class FrozenSuite:
    name: str
    path: Path
    content_hash: str
    size: int
    per_label: dict[str, int]
    created: bool = field(default=False)


def read_labeled_examples(spec: TaskSpec, path: Path | None = None) -> tuple[list[Example], list[dict]]:
    """Valid examples in file order, plus one quarantine entry per rejected row, whose reason reads
    "<kind>: <detail>". `path` defaults to the task's labeled examples; designated suite files are
    read through the same checks."""
    path = path or spec.labeled_examples_path
    if not path.exists():
        raise CurationError(f"labeled examples file not found: {path} (named in {spec.spec_path})")
    raw_rows = _read_rows(path)
    sources = load_sources(spec.sources_path)
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
            source = row.get(fields.source) if fields.source else None
            source = str(source) if source not in (None, "") else "unspecified"
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
            elif sources is not None and source not in sources:
                problem = f"unknown source: {source!r} is not in {spec.sources_path.name}"
        if problem is not None:
            quarantine.append({"line": line_no, "reason": problem, "row": row})
            continue
        seen_ids.add(row_id)
        examples.append(Example(id=row_id, text=text.strip(), label=label.strip(), source=source))
    return examples, quarantine


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
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CurationError(f"{path} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
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


def _scrub(examples: list[Example], enabled: bool) -> tuple[list[Example], Counter]:
    """PII placeholders replace e-mails, phones, cards, IBANs and IPs before anything is compared
    or written, so no later file (suite, split, quarantine of duplicates) holds them."""
    counts: Counter = Counter()
    if not enabled:
        return examples, counts
    scrubbed = []
    for example in examples:
        result = scrub_pii(example.text)
        counts.update(result.counts)
        scrubbed.append(replace(example, text=result.text) if result.counts else example)
    return scrubbed, counts


def _suite_paths(suites_dir: Path, name: str) -> tuple[Path, Path]:
    return suites_dir / f"{name}.jsonl", suites_dir / f"{name}.manifest.json"


def freeze_suite(spec: TaskSpec, name: str, suites_dir: Path, exclude: Sequence[FrozenSuite] = ()) -> FrozenSuite:
    """Create a frozen evaluation suite once, then only verify it: a suite that changed under us
    would make every later comparison meaningless. Rows come from the task's designated file
    (data.holdout / data.regression) or else from a seeded stratified split of the labelled rows,
    never overlapping the suites in `exclude`."""
    if name not in SUITE_NAMES:
        raise ValueError(f"unknown suite {name!r}; suites are {SUITE_NAMES}")
    suite_path, manifest_path = _suite_paths(suites_dir, name)
    if suite_path.exists() or manifest_path.exists():
        return _verify_suite(name, suite_path, manifest_path)

    designated = {"holdout": spec.holdout_path, "regression": spec.regression_path}[name]
    examples, _ = read_labeled_examples(spec, designated)
    examples, _ = _scrub(examples, spec.curation.scrub_pii)
    unique, _, _ = deduplicate(examples)
    taken = {normalize_text(e.text) for suite in exclude for e in read_examples(suite.path)}
    candidates = [e for e in unique if normalize_text(e.text) not in taken]
    if designated is not None:
        rows, fraction = candidates, None
    else:
        # The regression share is of all rows; the holdout has already taken its share of them.
        fraction = spec.split.holdout_fraction if name == "holdout" else spec.split.regression_fraction / (1 - spec.split.holdout_fraction)
        _, rows = stratified_split(candidates, fraction, spec.split.seed)
    if name == "holdout" and not rows:
        raise CurationError(f"no valid rows to freeze a holdout from {designated or spec.labeled_examples_path}")
    write_jsonl(suite_path, [asdict(e) for e in rows])
    content_hash = sha256_file(suite_path)
    source = designated or spec.labeled_examples_path
    manifest = {
        "suite": name, "version": _archived_versions(suites_dir, name) + 1, "content_hash": content_hash, "size": len(rows),
        "source": str(source), "source_sha256": sha256_file(source) if source.is_file() else None,
        "seed": spec.split.seed, "fraction": fraction,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return FrozenSuite(name, suite_path, content_hash, len(rows), dict(Counter(e.label for e in rows)), created=True)


def _verify_suite(name: str, suite_path: Path, manifest_path: Path) -> FrozenSuite:
    if not (suite_path.exists() and manifest_path.exists()):
        raise SuiteChangedError(
            f"frozen {name} suite is incomplete in {suite_path.parent}: expected both {suite_path.name} and "
            f"{manifest_path.name}; restore the missing file, or replace the suite explicitly "
            f"(finetune-loop replace-suite --suite {name})"
        )
    manifest = json.loads(manifest_path.read_text())
    found = sha256_file(suite_path)
    if found != manifest["content_hash"]:
        raise SuiteChangedError(
            f"frozen {name} suite {suite_path} changed: expected content hash {manifest['content_hash']}, found {found}. "
            f"Restore the file, or replace the suite explicitly (finetune-loop replace-suite --suite {name})."
        )
    examples = read_examples(suite_path)
    return FrozenSuite(name, suite_path, found, len(examples), dict(Counter(e.label for e in examples)))


def _archived_versions(suites_dir: Path, name: str) -> int:
    return len(list((suites_dir / "archive").glob(f"{name}.v*.manifest.json")))


def archive_suite(suites_dir: Path, name: str) -> Path:
    """Replacing a suite is an explicit act: the current files move to archive/<name>.v<N>.*, and
    the next freeze writes version N+1."""
    suite_path, manifest_path = _suite_paths(suites_dir, name)
    if not suite_path.exists() or not manifest_path.exists():
        raise CurationError(f"no frozen {name} suite to replace in {suites_dir}")
    version = json.loads(manifest_path.read_text()).get("version", _archived_versions(suites_dir, name) + 1)
    archive = suites_dir / "archive"
    archive.mkdir(exist_ok=True)
    target = archive / f"{name}.v{version}.jsonl"
    suite_path.rename(target)
    manifest_path.rename(archive / f"{name}.v{version}.manifest.json")
    return target


def curate_dataset(
    spec: TaskSpec,
    suites: Sequence[FrozenSuite],
    datasets_dir: Path,
    token_length: Callable[[Example], int] | None = None,
) -> CuratedDataset:
    """Validate, exclude revoked sources, scrub PII, de-duplicate (exact, then near), remove rows
    that overlap the frozen suites, and split. `token_length` measures a row after chat rendering;
    rows beyond the task's max_length are quarantined rather than silently truncated."""
    settings = spec.curation
    examples, quarantine = read_labeled_examples(spec)
    rows_read = len(examples) + len(quarantine)

    sources = load_sources(spec.sources_path)
    revoked = [e for e in examples if sources is not None and sources[e.source].status == "revoked"]
    examples = [e for e in examples if sources is None or sources[e.source].status == "active"]
    if token_length is not None:
        kept = []
        limit = spec.training.max_length
        for example in examples:
            length = token_length(example)
            if length > limit:
                quarantine.append({"line": None, "id": example.id, "reason": f"over-long input: {length} tokens after chat rendering > max_length {limit}", "row": asdict(example)})
            else:
                kept.append(example)
        examples = kept

    examples, pii_counts = _scrub(examples, settings.scrub_pii)
    unique, duplicates, conflicts = deduplicate(examples)
    quarantine.extend({"line": None, **c} for c in conflicts)
    near_settings = NearDuplicateSettings(threshold=settings.near_duplicate_threshold, min_rows_per_label=settings.min_rows_per_label, seed=spec.split.seed)
    unique, audit = remove_near_duplicates(unique, near_settings)

    suite_rows = {suite.name: read_examples(suite.path) for suite in suites}
    contaminated = find_overlaps(unique, suite_rows, settings.contamination_threshold)
    contaminated_ids = {c["id"] for c in contaminated}
    candidates = [e for e in unique if e.id not in contaminated_ids]

    share = sum(1 for q in quarantine) / rows_read if rows_read else 1.0
    directory_for_errors = datasets_dir / "rejected"
    if share > settings.max_quarantine_share:
        write_jsonl(directory_for_errors / "quarantine.jsonl", quarantine)
        top = Counter(reason_kind(q["reason"]) for q in quarantine).most_common(3)
        raise CurationError(
            f"{share:.1%} of {rows_read} rows quarantined, above curation.max_quarantine_share "
            f"{settings.max_quarantine_share:.1%}; top reasons: " + ", ".join(f"{kind} ({n})" for kind, n in top)
            + f"; every row and its reason: {directory_for_errors / 'quarantine.jsonl'}"
        )

    train, validation = stratified_split(candidates, spec.split.validation_fraction, spec.split.seed)
    if not train:
        raise CurationError(f"no training rows left after curation of {spec.labeled_examples_path}")
    missing_labels = sorted(set(spec.labels) - {e.label for e in train})
    if missing_labels:
        raise CurationError(f"labels with no training rows after curation: {missing_labels}")

    train_rows = [asdict(e) for e in train]
    validation_rows = [asdict(e) for e in validation]
    payload = json.dumps({"train": train_rows, "validation": validation_rows, "suites": sorted(s.content_hash for s in suites)}, sort_keys=True)
    data_version = hashlib.sha256(payload.encode()).hexdigest()[:16]
    directory = datasets_dir / data_version
    paths = {name: directory / f"{name}.jsonl" for name in ("train", "validation", "quarantine", "duplicates", "near_duplicates", "contamination", "revoked")}
    write_jsonl(paths["train"], train_rows)
    write_jsonl(paths["validation"], validation_rows)
    write_jsonl(paths["quarantine"], quarantine)
    write_jsonl(paths["duplicates"], duplicates)
    write_jsonl(paths["near_duplicates"], audit.removed)
    write_jsonl(paths["contamination"], contaminated)
    write_jsonl(paths["revoked"], [asdict(e) for e in revoked])
    audit_markdown = audit.to_markdown()
    (directory / "dedup_audit.md").write_text(audit_markdown)
    over_long = sum(1 for q in quarantine if reason_kind(q["reason"]) == "over-long input")
    report = CurationReport(
        rows_read=rows_read,
        quarantined=dict(Counter(reason_kind(q["reason"]) for q in quarantine)),
        revoked_removed=dict(Counter(e.source for e in revoked)),
        pii_replacements=dict(pii_counts),
        duplicates_removed=len(duplicates),
        near_duplicates_removed=len(audit.removed),
        contamination_removed=dict(Counter(c["suite"] for c in contaminated)),
        train_rows=len(train),
        validation_rows=len(validation),
        per_label_train={label: sum(1 for e in train if e.label == label) for label in spec.labels},
        truncation_rate=over_long / rows_read if rows_read else 0.0,
        dedup_audit_markdown=audit_markdown,
    )
    (directory / "report.json").write_text(json.dumps(asdict(report), indent=2))
    return CuratedDataset(data_version, directory, paths["train"], paths["validation"], paths["quarantine"], paths["duplicates"], report)


def contamination_between(dataset: CuratedDataset, suites: Sequence[FrozenSuite], threshold: float) -> list[dict]:
    """Overlaps still present between the curated splits and the frozen suites (must be none)."""
    rows = read_examples(dataset.train_path) + read_examples(dataset.validation_path)
    return find_overlaps(rows, {suite.name: read_examples(suite.path) for suite in suites}, threshold)


def reason_kind(reason: str) -> str:
    """Every quarantine reason reads "<kind>: <detail>"; counts group by kind, the detail stays in
    the quarantine file."""
    return reason.partition(":")[0]
