"""Curation: read labelled rows, quarantine the bad ones with a reason, de-duplicate, split.

Nothing is dropped silently: every input row ends up in exactly one of the curated splits, the
frozen holdout, the quarantine file (with its reason), or the duplicates file (with the id it
duplicates). The counts in `CurationReport` add up to the rows read.
"""

from __future__ import annotations

import csv
import difflib
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
from finetune_loop.core.examples import MISSING_SLICE_VALUE, Example, normalize_text
from finetune_loop.core.files import sha256_file, write_jsonl
from finetune_loop.core.pii import scrub_pii
from finetune_loop.core.probes import load_probes
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
    # suite name -> labelled rows that are the suite's own rows (a seeded split of the same file)
    suite_rows_reserved: dict[str, int]
    train_rows: int
    validation_rows: int
    # Training rows per stratum (the label; for generation the first slice value) and per slice.
    per_label_train: dict[str, int]
    per_slice_train: dict[str, dict[str, int]]
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
    # Rows per stratum (the label, or for generation the first slice value) and per slice value.
    per_label: dict[str, int]
    per_slice: dict[str, dict[str, int]] = field(default_factory=dict)
    created: bool = field(default=False)


def read_labeled_examples(spec: TaskSpec, path: Path | None = None) -> tuple[list[Example], list[dict]]:
    """Valid examples in file order, plus one quarantine entry per rejected row, whose reason reads
    "<kind>: <detail>". `path` defaults to the task's labeled examples; designated suite files are
    read through the same checks."""
    if path is None and spec.labeled_examples_hub_id:
        raw_rows = _read_hub_dataset(spec.labeled_examples_hub_id)
        origin = spec.labeled_examples_hub_id
    else:
        path = path or spec.labeled_examples_path
        if not path.exists():
            raise CurationError(f"labeled examples file not found: {path} (named in {spec.spec_path})")
        raw_rows = _read_rows(path)
        origin = path.name
    sources = load_sources(spec.sources_path)
    examples: list[Example] = []
    quarantine: list[dict] = []
    seen_ids: set[str] = set()
    for line_no, row, problem in raw_rows:
        example = None
        if problem is None:
            # Without an id column a row is named by its file and row number, so ids from a
            # designated suite file never collide with the training file's.
            example, problem = _validate_row(spec, row, f"{origin}:{line_no}", sources)
        if problem is None and example.id in seen_ids:
            problem = f"duplicate id: {example.id!r} already used by an earlier row"
        if problem is not None:
            quarantine.append({"line": line_no, "reason": problem, "row": row})
            continue
        seen_ids.add(example.id)
        examples.append(example)
    return examples, quarantine


def _validate_row(spec: TaskSpec, row: dict, default_id: str, sources: dict[str, Source] | None) -> tuple[Example | None, str | None]:
    """(example, None) for a usable row, (None, "<kind>: <detail>") for a rejected one."""
    fields = spec.fields
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
    answer, problem = _validate_answer(spec, row)
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


def _validate_answer(spec: TaskSpec, row: dict) -> tuple[str | None, str | None]:
    """The answer a row trains on: a known label, or a non-empty target (valid JSON for JSON tasks,
    re-serialised compactly so formatting differences never make two targets differ)."""
    column = spec.fields.label
    value = row.get(column)
    if spec.is_classification:
        if value in (None, ""):
            return None, f"missing label: field {column!r} is absent or empty"
        if not isinstance(value, str):
            return None, f"label not a string: got {type(value).__name__}"
        if value.strip() not in spec.labels:
            close = difflib.get_close_matches(value.strip().casefold(), [l.casefold() for l in spec.labels], n=1)
            hint = f" (did you mean {spec.labels[[l.casefold() for l in spec.labels].index(close[0])]!r}?)" if close else ""
            return None, f"unknown label: {value!r} is not in the task's label set{hint}"
        return value.strip(), None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"missing target: field {column!r} is absent or empty"
    if spec.target_format == "text":
        if not isinstance(value, str):
            return None, f"target not a string: field {column!r} is {type(value).__name__}"
        if _has_control_chars(value):
            return None, "control characters in target"
        return value.strip(), None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return None, f"malformed JSON target: {exc.msg} at column {exc.colno}"
    if not isinstance(value, (dict, list)):
        return None, f"JSON target not an object or array: got {type(value).__name__}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), None


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


def stratum_key(spec: TaskSpec) -> Callable[[Example], str]:
    """What splits and floors stratify on: the label for classification; for generation, where
    every target is its own answer, the first slice field's value (or one stratum for all rows)."""
    if spec.is_classification:
        return lambda example: example.label
    slice_field = spec.fields.slices[0] if spec.fields.slices else None
    return lambda example: example.slices.get(slice_field, MISSING_SLICE_VALUE) if slice_field else "all rows"


def stratified_split(
    examples: list[Example], fraction: float, seed: int, key: Callable[[Example], str] = lambda e: e.label
) -> tuple[list[Example], list[Example]]:
    """(rest, picked): `fraction` of every stratum (`key`, the label by default) picked at random,
    at least one per stratum that has two or more rows, so every stratum is represented on both
    sides."""
    by_stratum: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_stratum[key(example)].append(example)
    rng = random.Random(seed)
    picked_ids: set[str] = set()
    for stratum in sorted(by_stratum):
        rows = sorted(by_stratum[stratum], key=lambda e: e.id)
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


def _scrub(examples: list[Example], spec: TaskSpec) -> tuple[list[Example], Counter]:
    """PII placeholders replace e-mails, phones, cards, IBANs and IPs before anything is compared
    or written, so no later file (suite, split, quarantine of duplicates) holds them. Generation
    targets are scrubbed too (a label from a fixed set cannot hold PII)."""
    counts: Counter = Counter()
    if not spec.curation.scrub_pii:
        return examples, counts
    scrubbed = []
    for example in examples:
        text = scrub_pii(example.text)
        counts.update(text.counts)
        label = example.label
        if not spec.is_classification:
            label = _scrub_target(label, spec.target_format, counts)
        changed = text.counts or label != example.label
        scrubbed.append(replace(example, text=text.text, label=label) if changed else example)
    return scrubbed, counts


def _scrub_target(target: str, target_format: str, counts: Counter) -> str:
    if target_format == "text":
        result = scrub_pii(target)
        counts.update(result.counts)
        return result.text

    # JSON: scrub the string values, never the serialised text, so a placeholder can never break
    # the JSON (a phone number written as a JSON number is left alone: it is not text).
    def walk(value):
        if isinstance(value, str):
            result = scrub_pii(value)
            counts.update(result.counts)
            return result.text
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    return json.dumps(walk(json.loads(target)), ensure_ascii=False, separators=(",", ":"))


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
        return _verify_suite(spec, name, suite_path, manifest_path)

    designated = {"holdout": spec.holdout_path, "regression": spec.regression_path}[name]
    examples, _ = read_labeled_examples(spec, designated)
    examples, _ = _scrub(examples, spec)
    unique, _, _ = deduplicate(examples)
    taken = {normalize_text(e.text) for suite in exclude for e in read_examples(suite.path)}
    candidates = [e for e in unique if normalize_text(e.text) not in taken]
    if designated is not None:
        rows, fraction = candidates, None
    else:
        # The regression share is of all rows; the holdout has already taken its share of them.
        fraction = spec.split.holdout_fraction if name == "holdout" else spec.split.regression_fraction / (1 - spec.split.holdout_fraction)
        _, rows = stratified_split(candidates, fraction, spec.split.seed, stratum_key(spec))
    if name == "holdout" and not rows:
        raise CurationError(f"no valid rows to freeze a holdout from {designated or spec.labeled_examples_location}")
    write_jsonl(suite_path, [asdict(e) for e in rows])
    content_hash = sha256_file(suite_path)
    source = designated or spec.labeled_examples_path
    manifest = {
        "suite": name, "version": _archived_versions(suites_dir, name) + 1, "content_hash": content_hash, "size": len(rows),
        "source": str(source) if source else spec.labeled_examples_location,
        "source_sha256": sha256_file(source) if source and source.is_file() else None,
        "seed": spec.split.seed, "fraction": fraction,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return FrozenSuite(name, suite_path, content_hash, len(rows), *_suite_counts(rows, spec), created=True)


def _verify_suite(spec: TaskSpec, name: str, suite_path: Path, manifest_path: Path) -> FrozenSuite:
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
    return FrozenSuite(name, suite_path, found, len(examples), *_suite_counts(examples, spec))


def _suite_counts(rows: Sequence[Example], spec: TaskSpec) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    key = stratum_key(spec)
    per_slice = {
        slice_field: dict(sorted(Counter(e.slices.get(slice_field, MISSING_SLICE_VALUE) for e in rows).items()))
        for slice_field in spec.fields.slices
    }
    return dict(sorted(Counter(key(e) for e in rows).items())), per_slice


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
    extra_inputs: Sequence[Path] = (),
) -> CuratedDataset:
    """Validate, exclude revoked sources, scrub PII, de-duplicate (exact, then near), remove rows
    that overlap the frozen suites, and split. `token_length` measures a row after chat rendering;
    rows beyond the task's max_length are quarantined rather than silently truncated. `extra_inputs`
    (labelled production feedback) go through the very same checks as the labelled examples."""
    settings = spec.curation
    examples, quarantine = read_labeled_examples(spec)
    for extra in extra_inputs:
        more, rejected = read_labeled_examples(spec, extra)
        examples += more
        quarantine += [{**q, "file": extra.name} for q in rejected]
    rows_read = len(examples) + len(quarantine)
    stratum = stratum_key(spec)

    sources = load_sources(spec.sources_path)
    revoked = [e for e in examples if sources is not None and sources[e.source].status == "revoked"]
    examples = [e for e in examples if sources is None or sources[e.source].status == "active"]
    # Lengths are measured on the scrubbed text: that is what training renders.
    examples, pii_counts = _scrub(examples, spec)
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
    valid = examples

    after_exact, duplicates, conflicts = deduplicate(valid)
    quarantine.extend({"line": None, **c} for c in conflicts)
    near_settings = NearDuplicateSettings(threshold=settings.near_duplicate_threshold, min_rows_per_label=settings.min_rows_per_label, seed=spec.split.seed)
    # Near duplicates are clustered and floored per stratum: per label for classification, per
    # slice (or all rows) for generation, where two targets are rarely identical.
    by_id = {e.id: e for e in after_exact}
    kept_proxies, audit = remove_near_duplicates(
        [replace(e, label=stratum(e)) for e in after_exact], near_settings, slices={e.id: e.slices for e in after_exact}
    )
    after_near = [by_id[e.id] for e in kept_proxies]

    overlaps = find_overlaps(after_near, evaluation_rows(spec, suites), settings.contamination_threshold)
    # A suite split off the labelled file overlaps its own rows (same id, same text): those rows are
    # reserved for evaluation, not leaks. Everything else is a training row repeating a suite row.
    reserved = [o for o in overlaps if o["id"] == o["suite_id"] and o["similarity"] == 1.0]
    contaminated = [o for o in overlaps if not (o["id"] == o["suite_id"] and o["similarity"] == 1.0)]
    overlapping_ids = {o["id"] for o in overlaps}
    candidates = [e for e in after_near if e.id not in overlapping_ids]

    share = len(quarantine) / rows_read if rows_read else 1.0
    directory_for_errors = datasets_dir / "rejected"
    if share > settings.max_quarantine_share:
        write_jsonl(directory_for_errors / "quarantine.jsonl", quarantine)
        top = Counter(reason_kind(q["reason"]) for q in quarantine).most_common(3)
        raise CurationError(
            f"{share:.1%} of {rows_read} rows quarantined, above curation.max_quarantine_share "
            f"{settings.max_quarantine_share:.1%}; top reasons: " + ", ".join(f"{kind} ({n})" for kind, n in top)
            + f"; every row and its reason: {directory_for_errors / 'quarantine.jsonl'}"
        )

    train, validation = stratified_split(candidates, spec.split.validation_fraction, spec.split.seed, stratum)
    if not train:
        raise CurationError(f"no training rows left after curation of {spec.labeled_examples_location}")
    missing_labels = sorted(set(spec.labels) - {e.label for e in train})
    if missing_labels:
        raise CurationError(f"labels with no training rows after curation: {missing_labels}")

    train_rows = [asdict(e) for e in train]
    validation_rows = [asdict(e) for e in validation]
    payload = json.dumps({"train": train_rows, "validation": validation_rows, "suites": sorted(s.content_hash for s in suites)}, sort_keys=True)
    data_version = hashlib.sha256(payload.encode()).hexdigest()[:16]
    directory = datasets_dir / data_version
    paths = {name: directory / f"{name}.jsonl" for name in ("train", "validation", "quarantine", "duplicates", "near_duplicates", "contamination", "suite_rows", "revoked")}
    write_jsonl(paths["train"], train_rows)
    write_jsonl(paths["validation"], validation_rows)
    write_jsonl(paths["quarantine"], quarantine)
    write_jsonl(paths["duplicates"], duplicates)
    write_jsonl(paths["near_duplicates"], audit.removed)
    write_jsonl(paths["contamination"], contaminated)
    write_jsonl(paths["suite_rows"], reserved)
    write_jsonl(paths["revoked"], [asdict(e) for e in revoked])
    stages = [("valid", valid), ("after exact dedup", after_exact), ("after near dedup", after_near),
              ("after suite overlap", candidates), ("train", train), ("validation", validation)]
    flow = [_flow_table("label" if spec.is_classification else "stratum", stratum, stages)]
    flow += [_flow_table(f, lambda e, f=f: e.slices.get(f, MISSING_SLICE_VALUE), stages) for f in spec.fields.slices]
    audit_markdown = "### Rows per stage\n\n" + "\n\n".join(flow) + "\n\n" + audit.to_markdown()
    (directory / "dedup_audit.md").write_text(audit_markdown)
    (directory / "dedup_audit.json").write_text(json.dumps(audit.to_dict(), indent=2))
    over_long = sum(1 for q in quarantine if reason_kind(q["reason"]) == "over-long input")
    report = CurationReport(
        rows_read=rows_read,
        quarantined=dict(Counter(reason_kind(q["reason"]) for q in quarantine)),
        revoked_removed=dict(Counter(e.source for e in revoked)),
        pii_replacements=dict(pii_counts),
        duplicates_removed=len(duplicates),
        near_duplicates_removed=len(audit.removed),
        contamination_removed=dict(Counter(c["suite"] for c in contaminated)),
        suite_rows_reserved=dict(Counter(r["suite"] for r in reserved)),
        train_rows=len(train),
        validation_rows=len(validation),
        per_label_train=dict(sorted(Counter(stratum(e) for e in train).items())),
        per_slice_train={f: dict(sorted(Counter(e.slices.get(f, MISSING_SLICE_VALUE) for e in train).items())) for f in spec.fields.slices},
        truncation_rate=over_long / rows_read if rows_read else 0.0,
        dedup_audit_markdown=audit_markdown,
    )
    (directory / "report.json").write_text(json.dumps(asdict(report), indent=2))
    return CuratedDataset(data_version, directory, paths["train"], paths["validation"], paths["quarantine"], paths["duplicates"], report)


def _flow_table(group_name: str, group_of: Callable[[Example], str], stages: Sequence[tuple[str, Sequence[Example]]]) -> str:
    """Rows of each group at each curation stage: where a label or slice lost its rows, at a glance."""
    counts = [Counter(group_of(e) for e in rows) for _, rows in stages]
    groups = sorted(set().union(*counts))
    lines = [f"| {group_name} | " + " | ".join(name for name, _ in stages) + " |", "|---|" + "---:|" * len(stages)]
    lines += [f"| {group} | " + " | ".join(str(c[group]) for c in counts) + " |" for group in groups]
    lines.append("| **total** | " + " | ".join(str(len(rows)) for _, rows in stages) + " |")
    return "\n".join(lines)


PROBES_SUITE = "probes"


def evaluation_rows(spec: TaskSpec, suites: Sequence[FrozenSuite]) -> dict[str, list[Example]]:
    """Every text the evaluation asks a model about, by suite: the frozen suites' rows and the
    behaviour probes' texts (each stability variant too). A training row repeating any of them
    would let the model memorise its own exam."""
    rows = {suite.name: read_examples(suite.path) for suite in suites}
    if spec.probes_path is not None:
        probe_set = load_probes(spec.probes_path, spec)
        rows[PROBES_SUITE] = [
            Example(id=f"probe:{probe.name}:{n}", text=text, label=probe.expect_label or "")
            for probe in probe_set.probes
            for n, text in enumerate((probe.text, *probe.variants))
        ]
    return rows


def contamination_between(spec: TaskSpec, dataset: CuratedDataset, suites: Sequence[FrozenSuite]) -> list[dict]:
    """Overlaps still present between the curated splits and the frozen suites or probes (must be none)."""
    rows = read_examples(dataset.train_path) + read_examples(dataset.validation_path)
    return find_overlaps(rows, evaluation_rows(spec, suites), spec.curation.contamination_threshold)


def reason_kind(reason: str) -> str:
    """Every quarantine reason reads "<kind>: <detail>"; counts group by kind, the detail stays in
    the quarantine file."""
    return reason.partition(":")[0]
