"""Exact de-duplication: rows whose normalised text is the same are one row, or a label conflict.

`deduplicate` keeps the first row of each group, reports the others with the id they duplicate,
and quarantines a whole group whose rows disagree on the label. Both curation and freezing a
suite run it, which is why it stands apart from curation.py; the near-duplicate (MinHash) pass is
dedup.py.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict

from finetune_loop.core.common.examples import (
    Example,
    normalize_text,
)


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
