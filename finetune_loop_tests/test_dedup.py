import csv
import random
import time
from pathlib import Path

import pytest

from finetune_loop.core.common.examples import Example
from finetune_loop.core.data.dedup import (
    DedupAudit,
    NearDuplicateSettings,
    find_overlaps,
    jaccard,
    remove_near_duplicates,
    shingle_text,
    shingles,
)

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"

BASE = "My new debit card still has not arrived and it has been more than two weeks since I ordered it"
PUNCTUATION_CASE = "my new debit card still has NOT arrived, and it has been more than two weeks since i ordered it!!"
ONE_WORD = "My new debit card still has not arrived and it has been more than six weeks since I ordered it"
RICHER = "My new debit card still has not arrived and it has been more than two weeks since I ordered it online"

# Different tickets: none is anywhere near another one.
DISTINCT = [
    "I was charged twice for the same coffee subscription this month",
    "How do I change the phone number linked to my account?",
    "The app crashes every time I open the statements page",
    "Can I get a refund for a flight that the airline cancelled?",
    "Why is there a foreign transaction fee on my purchase in euros?",
    "Please close my savings account and move the balance to checking",
    "My password reset email never arrives in my inbox",
    "Is it possible to raise the daily ATM withdrawal limit?",
]

NO_FLOOR = NearDuplicateSettings(min_rows_per_label=0)


def ex(id: str, text: str, label: str = "card") -> Example:
    return Example(id=id, text=text, label=label)


def sim(a: str, b: str) -> float:
    return jaccard(shingles(shingle_text(a)), shingles(shingle_text(b)))


def test_near_duplicate_variants_are_removed_and_recorded():
    rows = [ex("1", BASE), ex("2", PUNCTUATION_CASE), ex("3", ONE_WORD)] + [ex(f"d{i}", t) for i, t in enumerate(DISTINCT)]
    kept, audit = remove_near_duplicates(rows, NO_FLOOR)

    assert [e.id for e in kept] == ["1"] + [f"d{i}" for i in range(len(DISTINCT))]
    by_id = {r["id"]: r for r in audit.removed}
    assert set(by_id) == {"2", "3"}
    assert by_id["2"] == {"id": "2", "text": PUNCTUATION_CASE, "label": "card", "kept_id": "1", "kept_text": BASE, "similarity": 1.0}
    assert by_id["3"]["kept_id"] == "1"
    assert 0.8 <= by_id["3"]["similarity"] < 1.0
    # The recorded similarity is the exact Jaccard, not the MinHash estimate.
    assert by_id["3"]["similarity"] == round(sim(BASE, ONE_WORD), 4)
    assert audit.clusters == 1
    assert audit.per_label == {"card": {"before": 11, "after": 9, "removed": 2, "kept_by_floor": 0}}


def test_distinct_texts_are_all_kept():
    rows = [ex(f"d{i}", t, label=("a", "b")[i % 2]) for i, t in enumerate(DISTINCT)]
    kept, audit = remove_near_duplicates(rows, NO_FLOOR)
    assert kept == rows
    assert audit.removed == [] and audit.clusters == 0 and audit.cross_label_pairs == 0


def test_the_richer_variant_is_kept_even_when_it_comes_later():
    rows = [ex("1", BASE), *(ex(f"d{i}", t) for i, t in enumerate(DISTINCT)), ex("2", RICHER)]
    kept, audit = remove_near_duplicates(rows, NO_FLOOR)
    assert "2" in {e.id for e in kept} and "1" not in {e.id for e in kept}
    assert audit.removed[0]["id"] == "1" and audit.removed[0]["kept_id"] == "2"
    # Output keeps the input order of the kept rows.
    assert [e.id for e in kept] == [f"d{i}" for i in range(len(DISTINCT))] + ["2"]


def test_a_chain_never_removes_a_row_without_a_close_kept_row():
    # a~b and b~c make one cluster, but c is not a near duplicate of a (the representative, the
    # richest row): c must stay rather than be removed "as a duplicate of a" through b.
    a = "please send me a replacement card because my old card was stolen yesterday at the train station"
    b = "please send me a replacement card because my old card was stolen yesterday at the station"
    c = "please send me a replacement because my old card was stolen yesterday at the station"
    assert sim(a, b) >= 0.8 and sim(b, c) >= 0.8 and sim(a, c) < 0.8
    kept, audit = remove_near_duplicates([ex("c", c), ex("b", b), ex("a", a)], NO_FLOOR)
    assert audit.clusters == 1
    assert [e.id for e in kept] == ["c", "a"]
    # b is reported against the kept row most similar to it.
    assert [(r["id"], r["kept_id"], r["similarity"]) for r in audit.removed] == [("b", "c", round(sim(b, c), 4))]


def test_cross_label_near_duplicates_are_counted_not_merged():
    rows = [ex("1", BASE, "card_arrival"), ex("2", PUNCTUATION_CASE, "card_delivery_estimate"), ex("3", DISTINCT[0], "card_arrival")]
    kept, audit = remove_near_duplicates(rows, NO_FLOOR)
    assert kept == rows
    assert audit.removed == [] and audit.clusters == 0
    assert audit.cross_label_pairs == 1
    (pair,) = audit.cross_label_examples
    assert {pair["id"], pair["other_id"]} == {"1", "2"} and pair["similarity"] == 1.0
    assert {pair["label"], pair["other_label"]} == {"card_arrival", "card_delivery_estimate"}


def test_floor_keeps_a_label_at_min_rows_and_reports_kept_by_floor():
    variants = [BASE, PUNCTUATION_CASE, ONE_WORD, RICHER, BASE.upper(), BASE + "."]
    rows = [ex(f"r{i}", t, "rare") for i, t in enumerate(variants)] + [ex("r-other", DISTINCT[0], "rare")]
    rows += [ex(f"c{i}", t, "common") for i, t in enumerate(DISTINCT[1:])]
    kept, audit = remove_near_duplicates(rows, NearDuplicateSettings(min_rows_per_label=5))

    # 7 rare rows, 5 of them near duplicates of the richest one: without the floor only 2 would stay.
    assert audit.per_label["rare"] == {"before": 7, "after": 5, "removed": 2, "kept_by_floor": 3}
    assert audit.per_label["common"] == {"before": 7, "after": 7, "removed": 0, "kept_by_floor": 0}
    kept_rare = {e.id for e in kept if e.label == "rare"}
    assert "r3" in kept_rare and "r-other" in kept_rare  # the representative and the distinct row
    # Floor-kept rows are the most informative of the would-be-removed; these tie on tokens and
    # length, so the smallest ids stay.
    assert kept_rare == {"r3", "r-other", "r0", "r1", "r2"}
    assert sorted(r["id"] for r in audit.removed) == ["r4", "r5"]
    assert all(r["kept_id"] in kept_rare for r in audit.removed)

    # A label already at or below the floor loses nothing.
    small = [ex("s1", BASE, "tiny"), ex("s2", PUNCTUATION_CASE, "tiny"), ex("s3", ONE_WORD, "tiny")]
    kept, audit = remove_near_duplicates(small, NearDuplicateSettings(min_rows_per_label=5))
    assert kept == small
    assert audit.per_label["tiny"] == {"before": 3, "after": 3, "removed": 0, "kept_by_floor": 2}


def test_per_slice_counts():
    rows = [ex("1", BASE), ex("2", PUNCTUATION_CASE), ex("3", ONE_WORD), ex("4", DISTINCT[0]), ex("5", DISTINCT[1])]
    slices = {"1": {"channel": "email"}, "2": {"channel": "chat"}, "3": {"channel": "chat", "region": "eu"}, "4": {"channel": "email"}}
    _, audit = remove_near_duplicates(rows, NO_FLOOR, slices=slices)
    assert audit.per_slice == {
        "channel": {
            "(missing)": {"before": 1, "after": 1, "removed": 0, "kept_by_floor": 0},
            "chat": {"before": 2, "after": 0, "removed": 2, "kept_by_floor": 0},
            "email": {"before": 2, "after": 2, "removed": 0, "kept_by_floor": 0},
        },
        "region": {
            "(missing)": {"before": 4, "after": 3, "removed": 1, "kept_by_floor": 0},
            "eu": {"before": 1, "after": 0, "removed": 1, "kept_by_floor": 0},
        },
    }
    _, no_slices = remove_near_duplicates(rows, NO_FLOOR)
    assert no_slices.per_slice == {}


def test_markdown_and_examples_for_the_ui():
    rows = [ex("1", BASE, "card"), ex("2", PUNCTUATION_CASE, "card"), ex("3", ONE_WORD, "card"), ex("4", "pipe | in text", "other")]
    _, audit = remove_near_duplicates(rows, NO_FLOOR, slices={"1": {"channel": "email"}})
    markdown = audit.to_markdown(max_examples_per_label=1)
    assert "| label | before | after | removed | kept by floor |" in markdown
    assert "| card | 3 | 1 | 2 | 0 |" in markdown
    assert "| other | 1 | 1 | 0 | 0 |" in markdown
    assert "#### Per slice: channel" in markdown
    # Least similar example first (the informative, borderline one), one per label as asked.
    assert "removed `3`" in markdown and "removed `2`" not in markdown
    assert f"{sim(BASE, ONE_WORD):.2f}" in markdown
    examples = audit.examples(per_label=3)
    assert [r["id"] for r in examples["card"]] == ["3", "2"]
    assert audit.to_dict()["rows_after"] == 2


def test_deterministic_and_independent_of_input_order():
    rows = [ex("1", BASE), ex("2", PUNCTUATION_CASE), ex("3", ONE_WORD), ex("4", RICHER)]
    rows += [ex(f"d{i}", t) for i, t in enumerate(DISTINCT)]
    first = remove_near_duplicates(rows, NO_FLOOR)
    second = remove_near_duplicates(rows, NO_FLOOR)
    assert first == second
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    kept, audit = remove_near_duplicates(shuffled, NO_FLOOR)
    assert {e.id for e in kept} == {e.id for e in first[0]}
    assert sorted(audit.removed, key=lambda r: r["id"]) == sorted(first[1].removed, key=lambda r: r["id"])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateSettings(threshold=0)
    with pytest.raises(ValueError, match="unique"):
        remove_near_duplicates([ex("1", BASE), ex("1", DISTINCT[0])], NO_FLOOR)
    kept, audit = remove_near_duplicates([], NO_FLOOR)
    assert kept == [] and isinstance(audit, DedupAudit) and audit.per_label == {}


def test_find_overlaps_reports_rows_repeating_a_suite_row_whatever_the_label():
    rows = [ex("t1", PUNCTUATION_CASE, "card"), ex("t2", ONE_WORD, "other"), ex("t3", DISTINCT[0], "card")]
    suites = {"holdout": [ex("h1", BASE, "card")], "regression": [ex("g1", DISTINCT[5], "card")]}
    overlaps = find_overlaps(rows, suites, threshold=0.8)
    assert [(o["id"], o["suite"], o["suite_id"]) for o in overlaps] == [("t1", "holdout", "h1"), ("t2", "holdout", "h1")]
    assert overlaps[0]["similarity"] == 1.0 and overlaps[1]["suite_label"] == "card"
    assert find_overlaps(rows, {}, threshold=0.8) == []


def test_banking77_audit_covers_every_label_and_respects_the_floor():
    train = BANKING77 / "train.csv"
    if not train.is_file():
        pytest.skip(f"../shared/datasets/banking77 not found: expected {train} (Banking77 train split, columns text,category)")
    with train.open(newline="", encoding="utf-8") as handle:
        rows = [Example(id=str(i), text=r["text"], label=r["category"]) for i, r in enumerate(csv.DictReader(handle))]
    settings = NearDuplicateSettings(threshold=0.8, min_rows_per_label=5)
    started = time.perf_counter()
    kept, audit = remove_near_duplicates(rows, settings)
    elapsed = time.perf_counter() - started

    assert len(audit.per_label) == 77
    assert sum(c["before"] for c in audit.per_label.values()) == len(rows)
    assert all(c["after"] >= min(settings.min_rows_per_label, c["before"]) for c in audit.per_label.values())
    assert len(kept) + len(audit.removed) == len(rows)
    assert audit.removed and all(r["similarity"] >= settings.threshold for r in audit.removed)
    assert all(r["label"] == next(e.label for e in kept if e.id == r["kept_id"]) for r in audit.removed[:20])
    assert elapsed < 30, f"near-duplicate removal on Banking77 took {elapsed:.1f}s"
