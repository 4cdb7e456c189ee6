"""Seeded stratified splits: what curation and suite freezing stratify on, and the split itself.

What to stratify on is the task kind's (`kinds.TaskKind.stratum`: the label for classification,
the first slice value for generation); `stratified_split` picks a fraction of every stratum, at least one row of each stratum with two
or more rows, so every stratum shows up on both sides. Shared by curation.py (train/validation)
and suites.py (holdout/regression), hence its own module.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable

from finetune_loop.core.common.examples import (
    Example,
)


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
