"""Hostile labelled-example files (issue 14): the readers never crash, and never lose or alter a
row silently. Every file mixes good rows with one kind of bad row and goes through the reader the
loop uses; good rows come back unchanged, bad ones are quarantined with a specific reason, and the
rows read plus quarantined add up to the records written."""

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from finetune_loop.core.common.files import write_jsonl
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data.readers import CurationError
from finetune_loop.core.data.validation import read_labeled_examples
from finetune_loop_tests.conftest import tiny_rows, write_tiny_task


@pytest.fixture
def spec(tmp_path):
    return load_task_spec(write_tiny_task(tmp_path / "task", Path("unused-base")))


def _good(n_per_label: int = 2) -> list[dict]:
    return tiny_rows(count_per_label=n_per_label)


def _read(spec, path: Path, good: list[dict], bad_reasons: list[str], records: int, tmp_path: Path, prefix=False):
    examples, quarantine = read_labeled_examples(replace(spec, labeled_examples_path=path), path)
    assert [(e.id, e.text, e.label) for e in examples] == [(r["id"], r["text"], r["label"]) for r in good]
    reasons = [q["reason"] for q in quarantine]
    if prefix:
        assert len(reasons) == len(bad_reasons) and all(r.startswith(b) for r, b in zip(reasons, bad_reasons)), reasons
    else:
        assert reasons == bad_reasons
    assert len(examples) + len(quarantine) == records
    write_jsonl(tmp_path / "quarantine.jsonl", quarantine)  # the quarantine file can always be written
    return examples, quarantine


def _jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _lines(rows: list[dict]) -> list[bytes]:
    return [json.dumps(r).encode() for r in rows]


# 1. nesting
def test_deeply_nested_json_lines_are_quarantined_not_a_recursion_error(spec, tmp_path):
    good = _good()
    bad = [
        b'{"id": "n1", "text": "deep", "label": "billing", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 50_000,
        b'{"id": "n3", "text": "deep", "label": "billing", "x": ' + b"[" * 150 + b"]" * 150 + b"}",
        b'{"id": "n4", "text": "huge int", "label": "billing", "n": ' + b"9" * 5000 + b"}",
    ]
    path = _jsonl(tmp_path / "rows.jsonl", _lines(good[:3]) + bad[:2] + _lines(good[3:]) + bad[2:])
    _, quarantine = _read(spec, path, good, [
        "malformed JSON: nested too deep", "malformed JSON: nested too deep",
        "malformed JSON: nested too deep", "malformed JSON: Exceeds the limit",
    ], len(good) + len(bad), tmp_path, prefix=True)
    assert [q["line"] for q in quarantine] == [4, 5, len(good) + 3, len(good) + 4]


# 2. duplicate keys
def test_duplicate_keys_in_a_json_row_are_quarantined_naming_the_key(spec, tmp_path):
    good = _good()
    bad = [b'{"id": "d1", "text": "a", "text": "b", "label": "billing"}', b'{"id": "d2", "text": "ok text", "label": "billing", "meta": {"k": 1, "k": 2}}']
    path = _jsonl(tmp_path / "rows.jsonl", bad[:1] + _lines(good) + bad[1:])
    _read(spec, path, good, ["malformed JSON: duplicate key 'text'", "malformed JSON: duplicate key 'k'"], len(good) + 2, tmp_path)


# 3. lone surrogates
def test_escaped_lone_surrogates_are_quarantined(spec, tmp_path):
    good = _good()
    bad = [
        b'{"id": "s1", "text": "broken \\ud800 text", "label": "billing"}',
        b'{"id": "s2", "text": "fine text", "label": "billing", "note": "\\udfff"}',
        b'{"id": "s3\\udc00", "text": "fine text", "label": "billing"}',
    ]
    path = _jsonl(tmp_path / "rows.jsonl", _lines(good[:2]) + bad + _lines(good[2:]))
    _read(spec, path, good, [
        "invalid Unicode: lone surrogate U+D800 in field 'text'",
        "invalid Unicode: lone surrogate U+DFFF in field 'note'",
        "invalid Unicode: lone surrogate U+DC00 in field 'id'",
    ], len(good) + 3, tmp_path)
    # A surrogate pair is a real character, not a lone surrogate.
    pair = {"id": "emoji", "text": "thanks \U0001f600 for the refund", "label": "billing"}
    path = _jsonl(tmp_path / "pair.jsonl", [json.dumps(pair).encode()])
    examples, quarantine = read_labeled_examples(spec, path)
    assert [e.text for e in examples] == [pair["text"]] and quarantine == []


# 4. JSONL encodings
def test_jsonl_with_a_bom_keeps_its_first_row_and_bad_bytes_lose_only_their_line(spec, tmp_path):
    good = _good()
    bad = [b'{"id": "u1", "text": "caf\xe9 closed", "label": "billing"}', b"\xff\xfe garbage"]
    lines = _lines(good[:3]) + bad[:1] + _lines(good[3:]) + bad[1:]
    path = _jsonl(tmp_path / "rows.jsonl", lines)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _, quarantine = _read(spec, path, good, ["not valid UTF-8: invalid continuation byte", "not valid UTF-8: invalid start byte"], len(good) + 2, tmp_path, prefix=True)
    assert [q["line"] for q in quarantine] == [4, len(good) + 2]


# 5. CSV
def _csv_text(rows: list[dict], delimiter: str = ",") -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["id", "text", "label"], delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def test_csv_with_a_bom_reads_its_id_column(spec, tmp_path):
    good = _good()
    path = tmp_path / "rows.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _csv_text(good).encode() + b"4x,,billing\n")
    _read(spec, path, good, ["empty input"], len(good) + 1, tmp_path)


def test_a_csv_field_over_the_csv_size_limit_is_not_a_traceback(spec, tmp_path):
    good = _good()
    huge = {"id": "huge", "text": "refund " * 40_000, "label": "billing"}  # 280k chars > csv's 131072
    path = tmp_path / "rows.csv"
    path.write_text(_csv_text(good[:2] + [huge] + good[2:]) + "bad,,\n")
    limit = csv.field_size_limit()
    examples, quarantine = read_labeled_examples(spec, path)
    assert csv.field_size_limit() == limit  # the process-wide limit is left as it was
    # The long row is read in full (the curation's length check quarantines it by token count).
    assert [e.id for e in examples] == [r["id"] for r in good[:2]] + ["huge"] + [r["id"] for r in good[2:]]
    assert examples[2].text == huge["text"].strip()
    assert [q["reason"] for q in quarantine] == ["empty input"]
    assert len(examples) + len(quarantine) == len(good) + 2


def test_an_unclosed_csv_quote_never_swallows_the_following_rows(spec, tmp_path):
    good = _good()
    body = _csv_text(good).splitlines(keepends=True)
    header, rows = body[0], body[1:]
    broken = '99,"where is my parcel,shipping\n'
    # The quote never closes: every row after it would vanish into one cell.
    path = tmp_path / "rows.csv"
    path.write_text(header + "".join(rows[:3]) + broken + "".join(rows[3:]))
    _, quarantine = _read(spec, path, good, ["malformed CSV: unclosed quote on line 5"], len(good) + 1, tmp_path, prefix=True)
    assert quarantine[0]["line"] == 5 and quarantine[0]["row"] == {"raw": broken}
    # The quote closes at a stray quote two rows on, giving a record with the right cell count.
    stray = '98,charged twice",billing\n'
    path.write_text(header + broken + "".join(rows[:2]) + stray + "".join(rows[2:]))
    examples, quarantine = read_labeled_examples(spec, path)
    assert [q["reason"].split(";")[0] for q in quarantine] == ["malformed CSV: unclosed quote on line 2 runs over 2 following line(s) that look like records"]
    assert [e.id for e in examples] == [r["id"] for r in good[:2]] + ["98"] + [r["id"] for r in good[2:]]
    assert len(examples) + len(quarantine) == len(good) + 2
    # A legitimate multi-line quoted cell is still one row.
    path.write_text(header + '7,"line one, still the ticket\nline two of it",billing\n' + "".join(rows))
    examples, quarantine = read_labeled_examples(spec, path)
    assert quarantine == [] and examples[0].text == "line one, still the ticket\nline two of it"


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_csv_with_the_wrong_delimiter_fails_naming_header_and_delimiter(spec, tmp_path, delimiter):
    path = tmp_path / "rows.csv"
    path.write_text(_csv_text(_good(), delimiter=delimiter))
    with pytest.raises(CurationError) as error:
        read_labeled_examples(spec, path)
    message = str(error.value)
    assert str(path) in message and "no 'text' column" in message
    assert repr([f"id{delimiter}text{delimiter}label"]) in message
    assert f"seems to use {delimiter!r} as its delimiter" in message


def test_a_csv_header_naming_a_column_twice_fails(spec, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("id,text,text,label\n1,a,b,billing\n")
    with pytest.raises(CurationError, match="names 'text' more than once"):
        read_labeled_examples(spec, path)


# 6. Parquet
def test_parquet_cells_of_any_type_quarantine_without_crashing(spec, tmp_path):
    import datetime as dt

    import pandas as pd

    good = _good()
    frame = pd.DataFrame(good)
    frame["blob"] = [b"\x00\xff" * 3] * len(good)
    frame["when"] = pd.Timestamp("2026-01-02T03:04:05")
    frame["tags"] = [["a", "b"]] * len(good)
    bad = pd.DataFrame([
        {"id": "p1", "text": None, "label": "billing", "blob": b"\x01", "when": pd.Timestamp("2026-01-01"), "tags": ["x"]},
        {"id": "p2", "text": "fine", "label": "refunds", "blob": b"\x02", "when": pd.Timestamp("2026-01-01"), "tags": []},
    ])
    path = tmp_path / "rows.parquet"
    pd.concat([frame, bad], ignore_index=True).to_parquet(path)
    _, quarantine = _read(spec, path, good, ["input not a string: field 'text' is NoneType", "unknown label: 'refunds' is not in the task's label set"], len(good) + 2, tmp_path, prefix=True)
    row = quarantine[1]["row"]
    assert row["blob"] == "<1 bytes: 02>" and row["when"] == dt.datetime(2026, 1, 1).isoformat() and row["tags"] == []
    json.dumps(quarantine)


def test_a_parquet_text_column_of_the_wrong_type_quarantines_every_row(spec, tmp_path):
    import pandas as pd

    rows = [{"id": f"i{i}", "text": i, "label": "billing"} for i in range(5)]
    path = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(path)
    examples, quarantine = read_labeled_examples(spec, path)
    assert examples == [] and len(quarantine) == 5
    assert {q["reason"] for q in quarantine} == {"input not a string: field 'text' is int"}
    json.dumps(quarantine)
    pd.DataFrame([{"id": "1", "body": "x", "label": "billing"}]).to_parquet(path)
    with pytest.raises(CurationError, match="no 'text' column"):
        read_labeled_examples(spec, path)
