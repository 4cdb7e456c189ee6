"""Frozen evaluation suites (holdout, regression): created once, afterwards only verified.

`freeze_suite` writes a suite and its manifest (content hash, source, seed, version) from the
task's designated file or from a seeded stratified split of the labelled rows after the same rules
as training data -- validation, the sources file (no revoked source), PII scrubbing, the length
limit (when given a token-length function) and exact de-duplication -- never overlapping the suites
frozen before it. Rows left out are counted per reason (`FrozenSuite.excluded`, also in the
manifest); no raw row is written anywhere else. Both files are written atomically (suite first,
manifest last). Later calls check the content hash and the rows against the current labels and
sources, and raise `SuiteChangedError` when either changed or the manifest is missing or broken.
`archive_suite` is the explicit way to replace one, also a broken one.
Separate from curation.py because suites outlive every curation run: each training set is curated
against the same frozen suites.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from finetune_loop.core.common.examples import (
    MISSING_SLICE_VALUE,
    Example,
    normalize_text,
)
from finetune_loop.core.common.files import sha256_file, write_jsonl, write_text_atomic
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.exact_dedup import deduplicate
from finetune_loop.core.data.pii import scrub_examples
from finetune_loop.core.data.readers import CurationError, read_examples
from finetune_loop.core.data.splits import stratified_split
from finetune_loop.core.data.validation import (
    load_sources,
    read_labeled_examples,
    reason_kind,
)


class SuiteChangedError(RuntimeError):
    """A frozen suite no longer matches what was frozen (content hash), no longer fits the task
    (a label or source it uses is gone or revoked), or its manifest is missing or broken."""


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
    # Rows of the suite's input left out of it, per reason ("revoked source", "over-long input",
    # a validation reason, "exact duplicate", "in an earlier suite", ...): counts only, never rows.
    excluded: dict[str, int] = field(default_factory=dict)


def suite_paths(suites_dir: Path, name: str) -> tuple[Path, Path]:
    return suites_dir / f"{name}.jsonl", suites_dir / f"{name}.manifest.json"


def _replace_hint(spec: TaskSpec, name: str) -> str:
    return (f"`finetune-loop replace-suite --task {spec.spec_path} --suite {name}` archives it, "
            "and the next run freezes a new version")


def freeze_suite(
    spec: TaskSpec, name: str, suites_dir: Path, exclude: Sequence[FrozenSuite] = (),
    *, token_length: Callable[[Example], int] | None = None,
) -> FrozenSuite:
    """Create a frozen evaluation suite once, then only verify it: a suite that changed under us
    would make every later comparison meaningless. Rows come from the task's designated file
    (data.holdout / data.regression) or else from a seeded stratified split of the labelled rows,
    never overlapping the suites in `exclude`. They obey the training data's rules: valid, of an
    active source, scrubbed, unique, and -- when `token_length` (a row's length after chat
    rendering) is given -- no longer than training.max_length."""
    if name not in SUITE_NAMES:
        raise ValueError(f"unknown suite {name!r}; suites are {SUITE_NAMES}")
    suite_path, manifest_path = suite_paths(suites_dir, name)
    if suite_path.exists() or manifest_path.exists():
        return _verify_suite(spec, name, suite_path, manifest_path)

    designated = {"holdout": spec.holdout_path, "regression": spec.regression_path}[name]
    examples, quarantine = read_labeled_examples(spec, designated)
    candidates, excluded = suite_candidates(spec, examples, quarantine, exclude, token_length=token_length)
    if designated is not None:
        rows, fraction = candidates, None
    else:
        # The regression share is of all rows; the holdout has already taken its share of them.
        fraction = spec.split.holdout_fraction if name == "holdout" else spec.split.regression_fraction / (1 - spec.split.holdout_fraction)
        _, rows = stratified_split(candidates, fraction, spec.split.seed, kind_of(spec).stratum)
    if name == "holdout" and not rows:
        raise CurationError(f"no valid rows to freeze a holdout from {designated or spec.labeled_examples_location}")
    # Suite first, manifest last, each atomically: an interrupted freeze leaves no manifest, which
    # the next run reports (with the way out) instead of trusting a half-written suite.
    write_jsonl(suite_path, [asdict(e) for e in rows])
    content_hash = sha256_file(suite_path)
    source = designated or spec.labeled_examples_path
    manifest = {
        "suite": name, "version": _archived_versions(suites_dir, name) + 1, "content_hash": content_hash, "size": len(rows),
        "source": str(source) if source else spec.labeled_examples_location,
        "source_sha256": sha256_file(source) if source and source.is_file() else None,
        "seed": spec.split.seed, "fraction": fraction, "excluded": excluded,
    }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
    return FrozenSuite(name, suite_path, content_hash, len(rows), *suite_counts(rows, spec), created=True, excluded=excluded)


def suite_candidates(
    spec: TaskSpec, examples: Sequence[Example], quarantine: Sequence[dict], exclude: Sequence[FrozenSuite] = (),
    *, token_length: Callable[[Example], int] | None = None,
) -> tuple[list[Example], dict[str, int]]:
    """The validated rows of a suite's input that obey the training data's rules (of an active
    source, scrubbed, within training.max_length when `token_length` is given, unique, not in an
    earlier suite), and the count of rows left out per reason (`quarantine`: validation's)."""
    excluded = Counter(reason_kind(q["reason"]) for q in quarantine)
    sources = load_sources(spec.sources_path)
    if sources is not None:
        excluded["revoked source"] += sum(1 for e in examples if sources[e.source].status == "revoked")
        examples = [e for e in examples if sources[e.source].status == "active"]
    # Lengths are measured on the scrubbed text, as curation does: that is what is rendered.
    examples, _ = scrub_examples(list(examples), spec)
    if token_length is not None:
        limit = spec.training.max_length
        within = [e for e in examples if token_length(e) <= limit]
        excluded["over-long input"] += len(examples) - len(within)
        examples = within
    unique, duplicates, conflicts = deduplicate(examples)
    excluded["exact duplicate"] += len(duplicates)
    excluded.update(reason_kind(c["reason"]) for c in conflicts)
    taken = {normalize_text(e.text) for suite in exclude for e in read_examples(suite.path)}
    candidates = [e for e in unique if normalize_text(e.text) not in taken]
    excluded["in an earlier suite"] += len(unique) - len(candidates)
    return candidates, {reason: count for reason, count in sorted(excluded.items()) if count}


def _verify_suite(spec: TaskSpec, name: str, suite_path: Path, manifest_path: Path) -> FrozenSuite:
    hint = _replace_hint(spec, name)
    if not suite_path.exists():
        raise SuiteChangedError(
            f"frozen {name} suite is incomplete in {suite_path.parent}: {manifest_path.name} exists but {suite_path.name} "
            f"is missing; restore the suite file, or replace the suite explicitly: {hint}"
        )
    if not manifest_path.exists():
        raise SuiteChangedError(
            f"frozen {name} suite {suite_path} has no manifest ({manifest_path.name} is missing, e.g. an interrupted "
            f"freeze), so its content hash cannot be checked; restore the manifest, or replace the suite explicitly: {hint}"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiteChangedError(
            f"manifest {manifest_path} of the frozen {name} suite is not valid JSON ({exc}), so the suite's content "
            f"hash cannot be checked; restore the manifest, or replace the suite explicitly: {hint}"
        ) from None
    expected = manifest.get("content_hash") if isinstance(manifest, dict) else None
    if not isinstance(expected, str) or not expected:
        raise SuiteChangedError(
            f"manifest {manifest_path} of the frozen {name} suite lacks the content hash ('content_hash'), so the "
            f"suite cannot be checked; restore the manifest, or replace the suite explicitly: {hint}"
        )
    found = sha256_file(suite_path)
    if found != expected:
        raise SuiteChangedError(
            f"frozen {name} suite {suite_path} changed: expected content hash {expected}, found {found}. "
            f"Restore the file, or replace the suite explicitly: {hint}."
        )
    examples = read_examples(suite_path)
    _check_rows_still_fit(spec, name, suite_path, examples, hint)
    excluded = manifest.get("excluded")
    excluded = {str(k): v for k, v in excluded.items() if isinstance(v, int)} if isinstance(excluded, dict) else {}
    return FrozenSuite(name, suite_path, found, len(examples), *suite_counts(examples, spec), excluded=excluded)


_SHOWN_IDS = 10


def _check_rows_still_fit(spec: TaskSpec, name: str, suite_path: Path, rows: Sequence[Example], hint: str) -> None:
    """A suite frozen under older rules can outlive them: a label removed from the task, or a source
    revoked since. Scoring such a suite would measure against rows training may no longer use."""
    problems = []
    stale = kind_of(spec).stale_suite_rows(rows)
    if stale:
        ids, why = stale
        problems.append(f"{why}: {_ids(ids)}")
    sources = load_sources(spec.sources_path)
    if sources is not None:
        revoked = [e for e in rows if e.source in sources and sources[e.source].status == "revoked"]
        if revoked:
            names = sorted({e.source for e in revoked})
            problems.append(f"{len(revoked)} row(s) of a source now revoked in {spec.sources_path.name} {names}: {_ids([e.id for e in revoked])}")
    if problems:
        raise SuiteChangedError(
            f"frozen {name} suite {suite_path} no longer fits the task: " + "; ".join(problems)
            + f". Replace the suite explicitly: {hint}."
        )


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS])
    return f"ids {shown}" + (f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else "")


def suite_counts(rows: Sequence[Example], spec: TaskSpec) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    key = kind_of(spec).stratum
    per_slice = {
        slice_field: dict(sorted(Counter(e.slices.get(slice_field, MISSING_SLICE_VALUE) for e in rows).items()))
        for slice_field in spec.fields.slices
    }
    return dict(sorted(Counter(key(e) for e in rows).items())), per_slice


_ARCHIVED = re.compile(r"\.v(\d+)\.(?:jsonl|manifest\.json)")


def _archived_versions(suites_dir: Path, name: str) -> int:
    """The highest version archived so far (0 when none), from the archived files' names: a broken
    suite may have been archived without a manifest, or with one that does not parse."""
    versions = [
        int(match.group(1)) for path in (suites_dir / "archive").glob(f"{name}.v*")
        if (match := _ARCHIVED.fullmatch(path.name[len(name):]))
    ]
    return max(versions, default=0)


def archive_suite(suites_dir: Path, name: str) -> Path:
    """Replacing a suite is an explicit act: the current files move to archive/<name>.v<N>.*, and
    the next freeze writes version N+1. A broken suite (no manifest, a manifest that does not parse,
    or a manifest without its suite file) is archived the same way, under the next free version."""
    suite_path, manifest_path = suite_paths(suites_dir, name)
    if not suite_path.exists() and not manifest_path.exists():
        raise CurationError(f"no frozen {name} suite to replace in {suites_dir}")
    archived = _archived_versions(suites_dir, name)
    version = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            manifest = None
        if isinstance(manifest, dict):
            version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version <= archived:
        version = archived + 1
    archive = suites_dir / "archive"
    archive.mkdir(exist_ok=True)
    target = archive / f"{name}.v{version}.jsonl"
    archived_manifest = archive / f"{name}.v{version}.manifest.json"
    if manifest_path.exists():
        manifest_path.rename(archived_manifest)
    if not suite_path.exists():  # only a manifest was left
        return archived_manifest
    suite_path.rename(target)
    return target
