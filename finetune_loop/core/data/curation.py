"""Curation: read labelled rows, quarantine the bad ones with a reason, de-duplicate, split.

Nothing is dropped silently: every input row ends up in exactly one of the curated splits, the
frozen holdout, the quarantine file (with its reason), or the duplicates file (with the id it
duplicates). The counts in `CurationReport` add up to the rows read.

No evidence file holds raw PII. Quarantined and revoked rows never reach `scrub_examples` (they are
set aside before or instead of it) and the quarantine file is logged to MLflow by every training
run, so every row written to `quarantine.jsonl`, `revoked.jsonl` and `duplicates.jsonl` is reduced
to what a reviewer needs -- reason, file, line, id, source and a `scrub_pii`-ed excerpt of the input
and of the label (`EXCERPT_CHARS`) -- and the text fields of the near-duplicate, contamination and
suite-overlap files are passed through `scrub_pii` too. These are scrubbed whatever
`curation.scrub_pii` says: that setting decides what training sees, not what the evidence keeps.
The full row is still in the source file, at the file and line given.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from finetune_loop.core.common.examples import (
    MISSING_SLICE_VALUE,
    Example,
)
from finetune_loop.core.common.files import write_jsonl
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.contamination import evaluation_rows
from finetune_loop.core.data.dedup import (
    NearDuplicateSettings,
    find_overlaps,
    remove_near_duplicates,
)
from finetune_loop.core.data.erasure import ERASED_REASON
from finetune_loop.core.data.exact_dedup import deduplicate
from finetune_loop.core.data.pii import (
    scrub_examples,
    scrub_pii,
    scrubbed_excerpt,
)
from finetune_loop.core.data.readers import CurationError, read_examples
from finetune_loop.core.data.splits import stratified_split
from finetune_loop.core.data.suites import FrozenSuite
from finetune_loop.core.data.validation import (
    load_sources,
    read_labeled_examples,
    reason_kind,
)


@dataclass
class CurationReport:
    rows_read: int
    quarantined: dict[str, int]
    revoked_removed: dict[str, int]
    # Rows of records erased on request (core/data/erasure.py): counted, kept nowhere.
    erased_removed: int
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


# Characters of input and label kept (after scrubbing) in each row of an evidence file.


@dataclass
class CuratedDataset:
    data_version: str
    directory: Path
    train_path: Path
    validation_path: Path
    quarantine_path: Path
    duplicates_path: Path
    report: CurationReport


def _for_review(entry: dict, spec: TaskSpec) -> dict:
    """A quarantine/revoked/duplicate entry as it is persisted: the reason, where the row is (file,
    line, id), its source, and scrubbed excerpts of its input and label -- never the raw row.

    `entry["row"]` is either an `Example` as a dict (already mapped: text, label, id, source) or a
    raw row as read from the file, mapped through the task's field names here."""
    row = entry.get("row")
    fields = spec.fields
    if isinstance(row, dict) and set(row) >= {"text", "label", "id", "source", "licence", "slices"}:
        row_id, source, text, label = row["id"], row["source"], row["text"], row["label"]
    elif isinstance(row, dict) and "raw" in row and len(row) == 1:  # a line that did not parse
        row_id, source, text, label = None, None, row["raw"], None
    elif isinstance(row, dict):
        row_id = row.get(fields.id) if fields.id else None
        source = row.get(fields.source) if fields.source else None
        text, label = row.get(fields.input), row.get(fields.label)
    else:
        row_id, source, text, label = None, None, row, None
    row_id = entry.get("id", row_id)
    reviewed = {
        "file": entry.get("file"),
        "line": entry.get("line"),
        # Ids stay as they are (train.jsonl holds them too); an id field of another type is no id.
        "id": str(row_id) if isinstance(row_id, (str, int)) and not isinstance(row_id, bool) else None,
        "source": scrubbed_excerpt(source),
        "input": scrubbed_excerpt(text),
        "label": scrubbed_excerpt(label),
    }
    if "reason" in entry:  # a reason can quote a value ("unknown label: '...'")
        reviewed["reason"] = scrub_pii(str(entry["reason"])).text
    if "duplicate_of" in entry:
        reviewed["duplicate_of"] = str(entry["duplicate_of"])
    return reviewed


def _scrub_fields(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """`rows` with `scrub_pii` applied to the text fields `keys` (the rows are already built from
    scrubbed examples when curation.scrub_pii is on; this keeps the evidence clean when it is off,
    and covers suite texts however the suite was frozen)."""
    return [{**r, **{k: scrub_pii(r[k]).text for k in keys if isinstance(r.get(k), str)}} for r in rows]


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
    origin = spec.labeled_examples_hub_id or spec.labeled_examples_path.name
    examples, quarantine = read_labeled_examples(spec)
    quarantine = [{"file": origin, **q} for q in quarantine]
    for extra in extra_inputs:
        more, rejected = read_labeled_examples(spec, extra)
        examples += more
        quarantine += [{**q, "file": extra.name} for q in rejected]
    erased = [q for q in quarantine if q.get(ERASED_REASON)]
    quarantine = [q for q in quarantine if not q.get(ERASED_REASON)]
    rows_read = len(examples) + len(quarantine) + len(erased)
    stratum = kind_of(spec).stratum

    sources = load_sources(spec.sources_path)
    revoked = [e for e in examples if sources is not None and sources[e.source].status == "revoked"]
    examples = [e for e in examples if sources is None or sources[e.source].status == "active"]
    # Lengths are measured on the scrubbed text: that is what training renders.
    examples, pii_counts = scrub_examples(examples, spec)
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
        write_jsonl(directory_for_errors / "quarantine.jsonl", [_for_review(q, spec) for q in quarantine])
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
        # Most often a label just admitted to the task: all of its feedback is still in the recent
        # suite (judged, never trained on), so the retrain cannot learn it yet.
        raise CurationError(
            f"labels with no training rows after curation: {missing_labels}; add labelled examples of them to "
            f"{spec.labeled_examples_location}, or, for a label admitted from feedback, retrain once some of its feedback "
            f"is older than the recent suite's window (recent_suite.days = {spec.recent_suite.days:g}): newer feedback is judged, never trained on"
        )

    train_rows = [asdict(e) for e in train]
    validation_rows = [asdict(e) for e in validation]
    payload = json.dumps({"train": train_rows, "validation": validation_rows, "suites": sorted(s.content_hash for s in suites)}, sort_keys=True)
    data_version = hashlib.sha256(payload.encode()).hexdigest()[:16]
    directory = datasets_dir / data_version
    paths = {name: directory / f"{name}.jsonl" for name in ("train", "validation", "quarantine", "duplicates", "near_duplicates", "contamination", "suite_rows", "revoked")}
    write_jsonl(paths["train"], train_rows)
    write_jsonl(paths["validation"], validation_rows)
    # Evidence files: reviewable, never raw (see the module docstring).
    write_jsonl(paths["quarantine"], [_for_review(q, spec) for q in quarantine])
    write_jsonl(paths["duplicates"], [_for_review(d, spec) for d in duplicates])
    write_jsonl(paths["near_duplicates"], _scrub_fields(audit.removed, ("text", "kept_text", "label")))
    write_jsonl(paths["contamination"], _scrub_fields(contaminated, ("text", "suite_text", "label", "suite_label")))
    write_jsonl(paths["suite_rows"], _scrub_fields(reserved, ("text", "suite_text", "label", "suite_label")))
    write_jsonl(paths["revoked"], [_for_review({"id": e.id, "reason": f"revoked source: {e.source!r}", "row": asdict(e)}, spec) for e in revoked])
    stages = [("valid", valid), ("after exact dedup", after_exact), ("after near dedup", after_near),
              ("after suite overlap", candidates), ("train", train), ("validation", validation)]
    flow = [_flow_table(kind_of(spec).stratum_name, stratum, stages)]
    flow += [_flow_table(f, lambda e, f=f: e.slices.get(f, MISSING_SLICE_VALUE), stages) for f in spec.fields.slices]
    audit_markdown = "### Rows per stage\n\n" + "\n\n".join(flow) + "\n\n" + audit.to_markdown()
    (directory / "dedup_audit.md").write_text(audit_markdown)
    (directory / "dedup_audit.json").write_text(json.dumps(audit.to_dict(), indent=2))
    over_long = sum(1 for q in quarantine if reason_kind(q["reason"]) == "over-long input")
    report = CurationReport(
        rows_read=rows_read,
        quarantined=dict(Counter(reason_kind(q["reason"]) for q in quarantine)),
        revoked_removed=dict(Counter(e.source for e in revoked)),
        erased_removed=len(erased),
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


def contamination_between(spec: TaskSpec, dataset: CuratedDataset, suites: Sequence[FrozenSuite]) -> list[dict]:
    """Overlaps still present between the curated splits and the frozen suites or probes (must be none)."""
    rows = read_examples(dataset.train_path) + read_examples(dataset.validation_path)
    return find_overlaps(rows, evaluation_rows(spec, suites), spec.curation.contamination_threshold)
