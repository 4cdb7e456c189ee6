"""Near-duplicate removal with an audit: which rows went, which row they were kept as, and why.

Exact de-duplication (`curate.deduplicate`) only catches tickets that are identical after
`normalize_text`. Labelled support data is also full of *near* duplicates: the same ticket pasted
twice with a typo fixed, a template with one word changed, "card not arrived!!" next to "Card not
arrived". They inflate the weight of a few tickets in training and leak between train and
validation, so validation accuracy looks better than it is.

What counts as a near duplicate
    Two rows with the SAME label whose texts have an exact Jaccard similarity >= `threshold`
    (default 0.8) over their sets of character 5-gram shingles. Texts are compared after
    `normalize_text` (NFKC, casefold, whitespace collapse) with punctuation also removed, because
    "?" vs "." or an apostrophe does not change what a ticket asks for.

Why character 5-grams and 0.8
    Character shingles are robust to typos and inflections, which word shingles are not (a one
    letter typo changes every word shingle containing the word). 5 characters is long enough that
    unrelated English texts rarely share many shingles by chance (3-grams like "the" or "ing" are
    shared by almost everything), and short enough that a one-character edit only touches 5
    shingles. At 0.8 an edit of one short word is a near duplicate in a ticket of about 15 words
    (~90 characters) or more, a punctuation/case change in any ticket, while two different
    questions about the same topic ("my card has not arrived" / "my card was declined") stay well
    below (typically 0.3-0.5). Lower the threshold (0.7) to also catch one-word edits in short
    tickets, at the price of merging some short, genuinely different phrasings.

How pairs are found
    MinHash signatures (numpy, `num_perm` multiply-shift hash functions seeded by `seed`) go into
    LSH bands to produce CANDIDATE pairs; every candidate is then VERIFIED with the exact Jaccard of
    the shingle sets, so the threshold is applied exactly, never on the MinHash estimate. The band
    shape is chosen so that a pair exactly at the threshold is missed with probability < 0.5%
    (and pairs above it even less); false candidates only cost verification time. Verified
    same-label pairs are clustered with union-find. Union-find is single linkage (a chain A~B~C
    is one cluster even when A and C are below the threshold), so a cluster is not collapsed
    wholesale: see the representative rule below.

Cross-label near duplicates
    Are never merged: near-identical tickets with different labels are a labelling-conflict
    question, not a dedup one. The audit counts them (`cross_label_pairs`) with a few examples.

Which row of a cluster is kept (the representative)
    The most informative one, not the first seen: most distinct word tokens after normalisation,
    then the longer text (punctuation aside), then the lexicographically smallest id (so it does not
    depend on input order). "...since I ordered it" loses to its near duplicate "...since I
    ordered it online" even if it came first: the extra word may be the detail that matters.
    The cluster's members are then walked in that order: a row within the threshold of an already
    kept row is removed (and reported against the most similar kept row, with that exact
    similarity), any other row is kept as a further representative. So every removed row has a
    kept row at >= threshold, never only a chain of them.

The floor
    No label is ever taken below `min_rows_per_label` rows (counted over the whole input): if the
    removals would go below it, enough of the would-be-removed rows are kept back, most
    informative first, and counted as `kept_by_floor`. A label that already has fewer rows than the
    floor loses nothing. Rare labels matter more than duplicate-free ones. The same floor then
    holds for every slice value when `slices` are given (a channel or a language is a cohort the
    model must still see).

The output keeps the input order of the kept rows and is deterministic for a given input and seed;
which rows are kept does not depend on the input order either (signatures are per text, ties are
broken by id). Limits: an LSH bucket's pairs are enumerated, so thousands of distinct texts that
share a band (heavily templated tickets) cost quadratic time; character shingles see surface form
only, so paraphrases ("card not here yet" / "still waiting on my card") are not near duplicates.
This module is plain Python + numpy (no dagster import) so it can be used and tested anywhere.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np

# From `examples`, not `curate`: curate imports this module.
from finetune_loop.core.common.examples import (
    MISSING_SLICE_VALUE,
    Example,
    normalize_text,
)

SHINGLE_SIZE = 5
# Probability that a pair exactly at the threshold never shares an LSH band. Lower means more
# candidate pairs to verify, which is cheap; a missed pair is a duplicate silently left in.
_MAX_MISS_AT_THRESHOLD = 0.005
_WORD = re.compile(r"\w+")
_PUNCTUATION = re.compile(r"[^\w\s]")
_APOSTROPHES = re.compile(r"['\u2019\u2018`]")


@dataclass(frozen=True)
class NearDuplicateSettings:
    threshold: float = 0.8  # exact Jaccard of character 5-gram shingle sets; see the module docstring
    min_rows_per_label: int = 5  # never drop a label (or a slice value) below this many rows
    num_perm: int = 128  # MinHash hash functions: more = fewer missed candidate pairs, slower
    seed: int = 13  # seeds the MinHash hash functions; same seed + same input = same result

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_rows_per_label < 0:
            raise ValueError(f"min_rows_per_label must be >= 0, got {self.min_rows_per_label}")
        if self.num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {self.num_perm}")


def _zero_counts() -> dict[str, int]:
    return {"before": 0, "after": 0, "removed": 0, "kept_by_floor": 0}


@dataclass
class DedupAudit:
    per_label: dict[str, dict[str, int]]  # label -> {"before", "after", "removed", "kept_by_floor"}
    per_slice: dict[str, dict[str, dict[str, int]]]  # slice field -> value -> same counts
    clusters: int  # same-label near-duplicate clusters with more than one member
    removed: list[dict]  # {"id", "text", "label", "kept_id", "kept_text", "similarity"} per removed row
    cross_label_pairs: int = 0  # pairs of rows >= threshold with DIFFERENT labels (not removed)
    cross_label_examples: list[dict] = field(default_factory=list)  # the most similar few of them
    threshold: float = 0.8
    candidate_pairs: int = 0  # distinct-text pairs proposed by LSH and verified exactly

    @property
    def rows_before(self) -> int:
        return sum(c["before"] for c in self.per_label.values())

    @property
    def rows_after(self) -> int:
        return sum(c["after"] for c in self.per_label.values())

    @property
    def kept_by_floor(self) -> int:
        return sum(c["kept_by_floor"] for c in self.per_label.values())

    def examples(self, per_label: int = 3) -> dict[str, list[dict]]:
        """A few removed rows per label, least similar first: the borderline pairs are the ones
        that tell a reviewer whether the threshold is right (identical pairs tell nothing)."""
        by_label: dict[str, list[dict]] = defaultdict(list)
        for row in self.removed:
            by_label[row["label"]].append(row)
        return {
            label: sorted(rows, key=lambda r: (r["similarity"], r["id"]))[:per_label]
            for label, rows in sorted(by_label.items())
        }

    def to_dict(self) -> dict:
        """JSON-serialisable form (for a metadata entry or an MLflow artifact)."""
        return {**asdict(self), "rows_before": self.rows_before, "rows_after": self.rows_after}

    def to_markdown(self, max_examples_per_label: int = 2) -> str:
        lines = [
            "### Near-duplicate removal",
            "",
            f"Rows with the same label and exact Jaccard similarity >= {self.threshold:.2f} over character "
            f"{SHINGLE_SIZE}-gram shingles are near duplicates; the most informative row of each cluster is kept.",
            "",
            f"- rows: {self.rows_before} -> {self.rows_after} ({len(self.removed)} removed, "
            f"{self.clusters} clusters, {self.kept_by_floor} kept by the per-label floor)",
            f"- cross-label near-duplicate pairs (not removed, check the labels): {self.cross_label_pairs}",
            "",
            _counts_table("label", self.per_label),
        ]
        for slice_field, values in self.per_slice.items():
            lines += ["", f"#### Per slice: {_md(slice_field)}", "", _counts_table(slice_field, values)]
        examples = self.examples(max_examples_per_label)
        if examples and max_examples_per_label > 0:
            lines += ["", "#### Removed examples (least similar first)", ""]
            for label, rows in examples.items():
                lines.append(f"**{_md(label)}**")
                lines.append("")
                for r in rows:
                    lines.append(
                        f"- removed `{_md(r['id'])}` \"{_md(r['text'])}\" — kept `{_md(r['kept_id'])}` "
                        f"\"{_md(r['kept_text'])}\" (similarity {r['similarity']:.2f})"
                    )
                lines.append("")
        if self.cross_label_examples:
            lines += ([] if lines[-1] == "" else [""]) + ["#### Cross-label near duplicates (kept; labelling conflict?)", ""]
            for r in self.cross_label_examples:
                lines.append(
                    f"- `{_md(r['id'])}` [{_md(r['label'])}] \"{_md(r['text'])}\" vs `{_md(r['other_id'])}` "
                    f"[{_md(r['other_label'])}] \"{_md(r['other_text'])}\" (similarity {r['similarity']:.2f})"
                )
        return "\n".join(lines).rstrip() + "\n"


def _md(value: object, limit: int = 160) -> str:
    """One table/list cell: no newlines, no pipes or backticks that would break the markdown."""
    text = " ".join(str(value).split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _counts_table(key: str, rows: Mapping[str, Mapping[str, int]]) -> str:
    out = [f"| {_md(key)} | before | after | removed | kept by floor |", "|---|---:|---:|---:|---:|"]
    for name, c in rows.items():
        out.append(f"| {_md(name)} | {c['before']} | {c['after']} | {c['removed']} | {c['kept_by_floor']} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Shingling and MinHash LSH


def shingle_text(text: str) -> str:
    """The text the shingles are taken from: `normalize_text`, apostrophes dropped ("can't" ->
    "cant"), other punctuation turned into spaces. Falls back to the normalised text when nothing
    but punctuation is left, so such rows still compare equal only to themselves."""
    normalized = normalize_text(text)
    stripped = " ".join(_PUNCTUATION.sub(" ", _APOSTROPHES.sub("", normalized)).split())
    return stripped or normalized


def shingles(text: str, size: int = SHINGLE_SIZE) -> set[str]:
    """Character `size`-grams of the already prepared text; a shorter text is its own shingle."""
    if len(text) <= size:
        return {text}
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _band_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band (fewest false candidates) for which a pair
    exactly at the threshold still shares at least one band with probability >= 1 - 0.5%."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if (1.0 - threshold**rows) ** bands <= _MAX_MISS_AT_THRESHOLD:
            return bands, rows
    return num_perm, 1


def _minhash_signatures(token_sets: list[list[int]], token_hashes: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(documents, num_perm) uint32 MinHash signatures.

    Hash function k is multiply-add-shift on the 32-bit shingle hash x:
    h_k(x) = ((a_k * x + b_k) mod 2**64) >> 32 with random a_k (odd), b_k — a universal family that
    numpy evaluates with plain wrapping uint64 arithmetic. The minimum per document is taken with
    `np.minimum.reduceat` over all documents' shingles laid end to end, in chunks of hash functions
    to bound memory."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2)
    lengths = np.fromiter((len(t) for t in token_sets), dtype=np.int64, count=len(token_sets))
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    flat = token_hashes[np.fromiter((tok for t in token_sets for tok in t), dtype=np.int64, count=int(lengths.sum()))]
    signatures = np.empty((len(token_sets), num_perm), dtype=np.uint32)
    chunk = max(1, min(num_perm, 8_000_000 // max(1, flat.size)))  # ~64 MB of uint64 per chunk
    with np.errstate(over="ignore"):
        for start in range(0, num_perm, chunk):
            stop = min(num_perm, start + chunk)
            values = (a[start:stop, None] * flat[None, :] + b[start:stop, None]) >> np.uint64(32)
            signatures[:, start:stop] = np.minimum.reduceat(values, offsets, axis=1).T
    return signatures


def _candidate_pairs(signatures: np.ndarray, threshold: float, seed: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of documents that agree on every row of at least one LSH band."""
    n, num_perm = signatures.shape
    bands, rows = _band_shape(threshold, num_perm)
    rng = np.random.default_rng(seed + 1)
    # A band's key folds its `rows` values into one uint64 with random odd multipliers; a key
    # collision between different bands only adds a candidate that the exact check then rejects.
    multipliers = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    pairs: set[tuple[int, int]] = set()
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
            keys = (block * multipliers[None, :]).sum(axis=1, dtype=np.uint64)
            order = np.argsort(keys, kind="stable")
            sorted_keys = keys[order]
            starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
            ends = np.concatenate((starts[1:], [n]))
            for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                members = sorted(order[s:e].tolist())
                pairs.update(combinations(members, 2))
    return pairs


def _similar_pairs(texts: list[str], settings: NearDuplicateSettings) -> tuple[list[set[int]], dict[tuple[int, int], float], int]:
    """For distinct prepared texts: (shingle sets, {(i, j): exact Jaccard} for every pair i < j at
    or above the threshold that LSH proposed, number of candidate pairs checked)."""
    vocabulary: dict[str, int] = {}
    token_lists = [sorted({vocabulary.setdefault(s, len(vocabulary)) for s in shingles(t)}) for t in texts]
    token_sets = [set(t) for t in token_lists]
    if len(texts) < 2:
        return token_sets, {}, 0
    # crc32 of the shingle itself (not its vocabulary position) so a text's signature does not
    # depend on which other texts are in the input: the same pair is found in any company.
    token_hashes = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in vocabulary), dtype=np.uint64, count=len(vocabulary))
    signatures = _minhash_signatures(token_lists, token_hashes, settings.num_perm, settings.seed)
    candidates = _candidate_pairs(signatures, settings.threshold, settings.seed)
    verified = {}
    for u, v in sorted(candidates):
        similarity = jaccard(token_sets[u], token_sets[v])
        if similarity >= settings.threshold:
            verified[(u, v)] = similarity
    return token_sets, verified, len(candidates)


# ---------------------------------------------------------------------------------------------
# Clustering, representative, floor


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            # The smaller index becomes the root so the structure does not depend on pair order.
            self.parent[max(rx, ry)] = min(rx, ry)


def informativeness_key(example: Example) -> tuple:
    """Sort key, most informative first: most distinct word tokens after normalisation, then the
    longer text with punctuation aside ("hi!!!" does not beat "hi"), then the smaller id
    (deterministic whatever the input order)."""
    prepared = shingle_text(example.text)
    return (-len(set(_WORD.findall(prepared))), -len(prepared), example.id)


def remove_near_duplicates(
    examples: Sequence[Example],
    settings: NearDuplicateSettings = NearDuplicateSettings(),
    slices: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[list[Example], DedupAudit]:
    """(kept examples in input order, audit). See the module docstring for the rules.

    `slices` optionally maps example id -> {slice field: value} (e.g. {"channel": "email"}); the
    audit then also reports the counts per slice value (rows without the field: "(missing)")."""
    examples = list(examples)
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"example ids must be unique (the audit refers to rows by id); {dup!r} appears more than once")

    # Rows whose shingle text is identical become one node: they are near duplicates of each other
    # by definition (similarity 1.0), and collapsing them keeps LSH buckets small.
    node_of_text: dict[str, int] = {}
    node_members: list[list[int]] = []
    example_node: list[int] = []
    for index, example in enumerate(examples):
        node = node_of_text.setdefault(shingle_text(example.text), len(node_members))
        if node == len(node_members):
            node_members.append([])
        node_members[node].append(index)
        example_node.append(node)
    node_sets, verified, candidate_count = _similar_pairs(list(node_of_text), settings)

    # Verified pairs (and rows sharing a node): same-label ones are merged, cross-label ones only
    # counted, since which label is right is a question for a person, not for dedup.
    union_find = _UnionFind(len(examples))
    cross_label_pairs = 0
    cross_examples: list[tuple[float, int, int]] = []
    node_labels: list[dict[str, list[int]]] = []
    for members in node_members:
        by_label: dict[str, list[int]] = defaultdict(list)
        for index in members:
            by_label[examples[index].label].append(index)
        node_labels.append(by_label)
        for group in by_label.values():
            for index in group[1:]:
                union_find.union(group[0], index)
        groups = list(by_label.values())
        for g1, g2 in combinations(groups, 2):
            cross_label_pairs += len(g1) * len(g2)
            cross_examples.append((1.0, g1[0], g2[0]))

    for (u, v), similarity in verified.items():
        labels_u, labels_v = node_labels[u], node_labels[v]
        for label, group in labels_u.items():
            if label in labels_v:
                union_find.union(group[0], labels_v[label][0])
        same = sum(len(g) * len(labels_v.get(label, ())) for label, g in labels_u.items())
        cross = len(node_members[u]) * len(node_members[v]) - same
        if cross:
            cross_label_pairs += cross
            # One example pair per node pair is enough for the audit.
            first_u, first_v = next(
                (gu[0], gv[0]) for lu, gu in labels_u.items() for lv, gv in labels_v.items() if lu != lv
            )
            cross_examples.append((similarity, first_u, first_v))

    pair_cache: dict[tuple[int, int], float] = dict(verified)

    def similarity_of(i: int, j: int) -> float:
        """Exact Jaccard of two rows (node pairs not proposed by LSH are computed on demand)."""
        u, v = sorted((example_node[i], example_node[j]))
        if u == v:
            return 1.0
        if (u, v) not in pair_cache:
            pair_cache[(u, v)] = jaccard(node_sets[u], node_sets[v])
        return pair_cache[(u, v)]

    # Clusters, members most informative first. Single linkage can chain A~B~C with A and C far
    # apart, so a cluster is not removed wholesale: walking the members in that order, a row is a
    # removal candidate only if it is >= threshold similar to a row already kept; otherwise it
    # becomes a further representative. Every removed row thus has a kept row within the threshold
    # (the audit's `similarity` is never below it), and the first representative is the most
    # informative row of the cluster.
    keys = [informativeness_key(e) for e in examples]
    clusters: dict[int, list[int]] = defaultdict(list)
    for index in range(len(examples)):
        clusters[union_find.find(index)].append(index)
    multi = [sorted(members, key=keys.__getitem__) for members in clusters.values() if len(members) > 1]

    label_totals: dict[str, int] = defaultdict(int)
    for example in examples:
        label_totals[example.label] += 1
    candidates_by_label: dict[str, list[int]] = defaultdict(list)
    cluster_of: dict[int, list[int]] = {}
    for members in multi:
        representatives: list[int] = []
        for index in members:
            cluster_of[index] = members
            if any(similarity_of(index, r) >= settings.threshold for r in representatives):
                candidates_by_label[examples[index].label].append(index)
            else:
                representatives.append(index)

    # The floor: a label may lose at most (rows - floor); the most informative extras stay.
    removed_set: set[int] = set()
    floor_kept: set[int] = set()
    for label, extras in candidates_by_label.items():
        budget = max(0, label_totals[label] - settings.min_rows_per_label)
        extras = sorted(extras, key=keys.__getitem__)
        keep_back = max(0, len(extras) - budget)
        floor_kept.update(extras[:keep_back])
        removed_set.update(extras[keep_back:])

    # The same floor per slice value: a cohort (a channel, a language) is as easy to erase as a
    # label. Rows kept back here only raise label counts, so the label floor still holds.
    slice_fields = sorted({f for values in (slices or {}).values() for f in values})

    def slice_value(index: int, slice_field: str) -> str:
        return str((slices or {}).get(examples[index].id, {}).get(slice_field, MISSING_SLICE_VALUE))

    for slice_field in slice_fields:
        totals = Counter(slice_value(index, slice_field) for index in range(len(examples)))
        removed_by_value: dict[str, list[int]] = defaultdict(list)
        for index in removed_set:
            removed_by_value[slice_value(index, slice_field)].append(index)
        for value, removed in removed_by_value.items():
            keep_back = max(0, len(removed) - max(0, totals[value] - settings.min_rows_per_label))
            restored = sorted(removed, key=keys.__getitem__)[:keep_back]
            removed_set.difference_update(restored)
            floor_kept.update(restored)

    removed_rows: list[dict] = []
    for index in sorted(removed_set):
        # The kept row it is reported against: the most similar row of its cluster that stayed
        # (the representative or a floor-kept one); ties go to the more informative row.
        kept_members = [m for m in cluster_of[index] if m not in removed_set]
        # (max() returns the first of equal maxima and members are sorted most informative first.)
        best = max(kept_members, key=lambda m: similarity_of(index, m))
        best_similarity = similarity_of(index, best)
        example, kept = examples[index], examples[best]
        removed_rows.append(
            {"id": example.id, "text": example.text, "label": example.label, "kept_id": kept.id,
             "kept_text": kept.text, "similarity": round(best_similarity, 4)}
        )

    per_label = {label: _zero_counts() for label in sorted(label_totals)}
    per_slice: dict[str, dict[str, dict[str, int]]] = {f: {} for f in slice_fields}
    for index, example in enumerate(examples):
        buckets = [per_label[example.label]]
        for slice_field in slice_fields:
            value = slice_value(index, slice_field)
            buckets.append(per_slice[slice_field].setdefault(value, _zero_counts()))
        for counts in buckets:
            counts["before"] += 1
            if index in removed_set:
                counts["removed"] += 1
            else:
                counts["after"] += 1
            if index in floor_kept:
                counts["kept_by_floor"] += 1
    per_slice = {f: dict(sorted(values.items())) for f, values in per_slice.items()}

    cross_examples.sort(key=lambda t: (-t[0], examples[t[1]].id, examples[t[2]].id))
    audit = DedupAudit(
        per_label=per_label,
        per_slice=per_slice,
        clusters=len(multi),
        removed=removed_rows,
        cross_label_pairs=cross_label_pairs,
        cross_label_examples=[
            {"id": examples[i].id, "label": examples[i].label, "text": examples[i].text,
             "other_id": examples[j].id, "other_label": examples[j].label, "other_text": examples[j].text,
             "similarity": round(similarity, 4)}
            for similarity, i, j in cross_examples[:10]
        ],
        threshold=settings.threshold,
        candidate_pairs=candidate_count,
    )
    kept_examples = [e for index, e in enumerate(examples) if index not in removed_set]
    return kept_examples, audit


def find_overlaps(
    rows: Sequence[Example],
    suites: Mapping[str, Sequence[Example]],
    threshold: float,
    settings: NearDuplicateSettings | None = None,
) -> list[dict]:
    """Rows that repeat a frozen suite row, exactly or nearly (same similarity measure as
    `remove_near_duplicates`, threshold applied exactly), WHATEVER the labels: a training row that
    nearly repeats an evaluation ticket leaks its answer either way.

    One entry per overlapping row, in input order, so counts add up to rows removed:
    {"id", "text", "label", "suite", "suite_id", "suite_text", "suite_label", "similarity"}, naming
    the most similar suite row (ties: suite name, then suite order). Signatures depend only on each
    text, so the same pair is found whether it is checked during curation or afterwards."""
    settings = replace(settings or NearDuplicateSettings(), threshold=threshold)
    rows = list(rows)
    suite_rows = [(name, example) for name in sorted(suites) for example in suites[name]]
    if not rows or not suite_rows:
        return []
    node_of_text: dict[str, int] = {}
    row_node = [node_of_text.setdefault(shingle_text(e.text), len(node_of_text)) for e in rows]
    suite_node = [node_of_text.setdefault(shingle_text(e.text), len(node_of_text)) for _, e in suite_rows]
    _, verified, _ = _similar_pairs(list(node_of_text), settings)

    # node -> suite rows on it (first one wins ties), then each node's best suite match.
    suite_at: dict[int, int] = {}
    for position, node in enumerate(suite_node):
        suite_at.setdefault(node, position)
    best: dict[int, tuple[float, int]] = {node: (1.0, position) for node, position in suite_at.items()}
    for (u, v), similarity in verified.items():
        for node, other in ((u, v), (v, u)):
            if other in suite_at:
                current = best.get(node)
                candidate = (similarity, suite_at[other])
                if current is None or (candidate[0], -candidate[1]) > (current[0], -current[1]):
                    best[node] = candidate
    overlaps = []
    for example, node in zip(rows, row_node):
        if node in best:
            similarity, position = best[node]
            name, suite_example = suite_rows[position]
            overlaps.append(
                {"id": example.id, "text": example.text, "label": example.label, "suite": name,
                 "suite_id": suite_example.id, "suite_text": suite_example.text, "suite_label": suite_example.label,
                 "similarity": round(similarity, 4)}
            )
    return overlaps
