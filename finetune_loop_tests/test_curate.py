import json
from dataclasses import replace
from pathlib import Path

import pytest

from finetune_loop.core import curate
from finetune_loop.core.files import sha256_file
from finetune_loop.core.specs import load_task_spec
from finetune_loop_tests.conftest import tiny_rows, write_tiny_task


@pytest.fixture
def spec(tmp_path):
    return load_task_spec(write_tiny_task(tmp_path / "task", Path("unused-base")))


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_bad_rows_are_quarantined_with_their_reason(spec):
    good = [json.dumps(r).encode() for r in tiny_rows(count_per_label=4)]
    bad = [
        b'{"id": "b1", "text": "unterminated',
        b'["not", "an", "object"]',
        b'{"id": "b3", "label": "billing"}',
        b'{"id": "b4", "text": "   ", "label": "billing"}',
        b'{"id": "b5", "text": "hello", "label": "refunds"}',
        b'{"id": "b6", "text": 42, "label": "billing"}',
        b'{"id": "b7", "text": "bell \\u0007 char", "label": "billing"}',
        b'{"id": "b8", "text": "caf\xe9", "label": "billing"}',
        b'{"id": "billing-0", "text": "second row with a taken id", "label": "billing"}',
        b'{"id": "b10", "text": "no label at all"}',
    ]
    _write_lines(spec.labeled_examples_path, good + bad)
    examples, quarantine = curate.read_labeled_examples(spec)
    assert len(examples) == len(good)
    reasons = [q["reason"] for q in quarantine]
    assert reasons[0].startswith("malformed JSON")
    assert reasons[1] == "not a JSON object: got list"
    assert reasons[2] == "missing input: field 'text' is absent"
    assert reasons[3] == "empty input"
    assert reasons[4] == "unknown label: 'refunds' is not in the task's label set"
    assert reasons[5] == "input not a string: field 'text' is int"
    assert reasons[6] == "control characters in input"
    assert reasons[7].startswith("not valid UTF-8: invalid continuation byte")
    assert reasons[8] == "duplicate id: 'billing-0' already used by an earlier row"
    assert reasons[9] == "missing label: field 'label' is absent or empty"
    assert [q["line"] for q in quarantine] == list(range(len(good) + 1, len(good) + len(bad) + 1))
    assert [curate.reason_kind(r) for r in reasons] == [
        "malformed JSON", "not a JSON object", "missing input", "empty input", "unknown label",
        "input not a string", "control characters in input", "not valid UTF-8", "duplicate id", "missing label",
    ]


def test_csv_rows_with_wrong_cell_counts_are_quarantined(spec, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('id,text,label\n1,"where is my parcel",shipping\n2,too,many,cells,billing\n3,short\n')
    examples, quarantine = curate.read_labeled_examples(replace(spec, labeled_examples_path=path))
    assert [e.id for e in examples] == ["1"]
    assert [q["reason"] for q in quarantine] == [
        "malformed CSV: more cells than header columns",
        "malformed CSV: fewer cells than header columns",
    ]


def test_missing_or_unsupported_files_fail_clearly(spec, tmp_path):
    with pytest.raises(curate.CurationError, match="labeled examples file not found"):
        curate.read_labeled_examples(replace(spec, labeled_examples_path=tmp_path / "gone.jsonl"))
    parquet = tmp_path / "rows.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(curate.CurationError, match="unsupported labeled examples format '.parquet'"):
        curate.read_labeled_examples(replace(spec, labeled_examples_path=parquet))


def test_dedup_keeps_one_per_normalised_text_and_quarantines_conflicts():
    rows = [
        curate.Example("a", "Where is my parcel?", "shipping"),
        curate.Example("b", "  where IS my   parcel?", "shipping"),
        curate.Example("c", "I was charged twice", "billing"),
        curate.Example("d", "i was charged twice", "shipping"),
        curate.Example("e", "cannot log in", "login"),
    ]
    kept, duplicates, conflicts = curate.deduplicate(rows)
    assert [e.id for e in kept] == ["a", "e"]
    assert duplicates == [{"id": "b", "duplicate_of": "a", "row": {"id": "b", "text": "  where IS my   parcel?", "label": "shipping"}}]
    assert sorted(c["id"] for c in conflicts) == ["c", "d"]
    assert conflicts[0]["reason"] == "conflicting labels: same text as 1 other row(s), labelled ['billing', 'shipping']"


def test_every_row_is_accounted_for(spec, tmp_path):
    rows = tiny_rows(count_per_label=10)
    rows.append({**rows[0], "id": "copy-of-first"})
    lines = [json.dumps(r).encode() for r in rows] + [b"{broken"]
    _write_lines(spec.labeled_examples_path, lines)
    holdout = curate.freeze_holdout(spec, tmp_path / "suites")
    dataset = curate.curate_dataset(spec, holdout, tmp_path / "datasets")
    report = dataset.report
    assert report.rows_read == len(lines)
    assert report.duplicates_removed == 1
    assert report.quarantined == {"malformed JSON": 1}
    accounted = report.train_rows + report.validation_rows + report.overlapping_holdout_removed + report.duplicates_removed + 1
    assert accounted == report.rows_read
    assert report.overlapping_holdout_removed == holdout.size
    assert set(report.per_label_train) == set(spec.labels) and all(report.per_label_train.values())
    train_texts = {curate.normalize_text(e.text) for e in curate.read_examples(dataset.train_path)}
    holdout_texts = {curate.normalize_text(e.text) for e in curate.read_examples(holdout.path)}
    assert not train_texts & holdout_texts
    assert json.loads(dataset.duplicates_path.read_text())["duplicate_of"] == rows[0]["id"]


def test_holdout_is_frozen_and_a_changed_file_is_an_error(spec, tmp_path):
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in tiny_rows()])
    suites = tmp_path / "suites"
    first = curate.freeze_holdout(spec, suites)
    assert first.created and first.size > 0 and set(first.per_label) == set(spec.labels)
    # New data does not regenerate the holdout.
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in tiny_rows(seed=7)])
    again = curate.freeze_holdout(spec, suites)
    assert not again.created and again.sha256 == first.sha256
    with first.path.open("a") as handle:
        handle.write(json.dumps({"id": "x", "text": "sneaked in", "label": "billing"}) + "\n")
    with pytest.raises(curate.HoldoutChangedError) as error:
        curate.freeze_holdout(spec, suites)
    assert f"expected sha256 {first.sha256}" in str(error.value)
    assert sha256_file(first.path) in str(error.value)
