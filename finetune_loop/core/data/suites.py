"""Frozen evaluation suites (holdout, regression): created once, afterwards only verified.

`freeze_suite` writes a suite and its manifest (content hash, source, seed, version) from the
task's designated file or from a seeded stratified split of the scrubbed, de-duplicated labelled
rows, never overlapping the suites frozen before it; later calls check the content hash and raise
`SuiteChangedError` when the file changed. `archive_suite` is the explicit way to replace one.
Separate from curation.py because suites outlive every curation run: each training set is curated
against the same frozen suites.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.examples import (
    MISSING_SLICE_VALUE,
    Example,
    normalize_text,
)
from finetune_loop.core.common.files import sha256_file, write_jsonl
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.exact_dedup import deduplicate
from finetune_loop.core.data.pii import scrub_examples
from finetune_loop.core.data.readers import CurationError, read_examples
from finetune_loop.core.data.splits import stratified_split, stratum_key
from finetune_loop.core.data.validation import read_labeled_examples


class SuiteChangedError(RuntimeError):
    """A frozen suite file no longer matches the content hash recorded when it was frozen."""


SUITE_NAMES = ("holdout", "regression")


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
    examples, _ = scrub_examples(examples, spec)
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
