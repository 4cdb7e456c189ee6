"""One hostile production-log line never stops, blinds or moves the loop: every rejected line is a
quarantine entry with its file, line and a specific reason; the good rows around it are kept."""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data.production_log import (
    MAX_CLOCK_SKEW,
    MAX_JSON_DEPTH,
    log_data_version,
    log_files,
    read_production_log,
)
from finetune_loop.core.monitor.triggers import feedback_decision
from finetune_loop_tests.conftest import TINY_LABELS, write_tiny_task

NOW = datetime(2026, 10, 10, 12, 0, tzinfo=timezone.utc)


def _row(i: int, **extra) -> dict:
    return {"request_id": f"g{i}", "timestamp": (NOW - timedelta(hours=100 - i)).isoformat(), "text": f"where is my parcel {i}",
            "prediction": "shipping", **extra}


def _line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def _write(path: Path, lines: list[bytes], *, prefix: bytes = b"") -> int:
    """Write `lines` joined by b"\\n" with a final newline; returns the number of lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(prefix + b"\n".join(lines) + b"\n")
    return len(lines)


def _read(log: Path, now: datetime = NOW):
    return read_production_log(log, labels=TINY_LABELS, now=now)


def _reasons(read) -> list[tuple[str, int | None, str]]:
    return [(q["file"], q["line"], q["reason"]) for q in read.quarantine]


def _assert_accounted(read, written: int) -> None:
    """Records + quarantined lines = the non-blank lines written; nothing silently dropped."""
    lines = [q for q in read.quarantine if q["line"] is not None]
    assert len(read.records) + len(lines) == written


def test_deeply_nested_and_unconvertible_lines_are_quarantined_not_raised(tmp_path):
    log = tmp_path / "log"
    deep_array = b"[" * 100_000 + b"]" * 100_000  # far past the interpreter's recursion limit
    deep_value = json.dumps(_row(90, extra=json.loads("[" * (MAX_JSON_DEPTH + 5) + "]" * (MAX_JSON_DEPTH + 5)))).encode()
    shallow = _row(3, extra=json.loads("[" * 10 + "]" * 10))
    deep_object = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    huge_int = json.dumps(_row(91)).encode()[:-1] + b', "latency_ms": ' + b"9" * 5000 + b"}"  # over int's digit limit
    nan = json.dumps(_row(92, latency_ms=float("nan"))).encode()
    overflow = json.dumps(_row(93)).encode()[:-1] + b', "latency_ms": 1e999}'  # a float that reads as inf
    written = _write(log / "a.jsonl", [_line(_row(1)), deep_array, _line(_row(2)), deep_value, deep_object, _line(shallow),
                                       huge_int, nan, overflow])
    read = _read(log)
    assert [r.request_id for r in read.records] == ["g1", "g2", "g3"]
    assert [(f, n, r.partition(" (")[0]) for f, n, r in _reasons(read)] == [
        ("a.jsonl", 2, "malformed JSON: nested too deep"),
        ("a.jsonl", 4, "malformed JSON: nested too deep"),
        ("a.jsonl", 5, "malformed JSON: nested too deep"),
        ("a.jsonl", 7, "malformed JSON: Exceeds the limit"),
        ("a.jsonl", 8, "malformed JSON: NaN is not a JSON value"),
        ("a.jsonl", 9, "bad latency_ms: inf is not a finite number >= 0"),
    ]
    _assert_accounted(read, written)
    assert [r.request_id for r in read.window(30).records] == ["g1", "g2", "g3"]


def test_unicode_line_separators_inside_a_string_keep_the_row_whole(tmp_path):
    log = tmp_path / "log"
    texts = ["line\u2028separator", "paragraph\u2029separator", "next\u0085line", "all three \u2028\u2029\u0085 at once"]
    rows = [_row(i, text=t) for i, t in enumerate(texts, start=1)]
    lines = [_line(r) for r in rows] + [b"{not json", _line(_row(9))]
    assert all(b"\n" not in line for line in lines) and "\u2028".encode() in lines[0]
    written = _write(log / "a.jsonl", lines)
    # CRLF line ends are read as before.
    crlf = _write(log / "b.jsonl", [_line(_row(20)) + b"\r", b"oops\r", _line(_row(21)) + b"\r"])
    read = _read(log)
    assert [r.text for r in read.records[:4]] == texts
    assert [r.request_id for r in read.records] == ["g1", "g2", "g3", "g4", "g9", "g20", "g21"]
    assert [(f, n, r.partition(":")[0]) for f, n, r in _reasons(read)] == [("a.jsonl", 5, "malformed JSON"), ("b.jsonl", 2, "malformed JSON")]
    _assert_accounted(read, written + crlf)


def test_a_line_that_is_not_utf8_is_quarantined_and_a_bom_is_tolerated(tmp_path):
    log = tmp_path / "log"
    latin1 = json.dumps(_row(2, text="caf\u00e9"), ensure_ascii=False).encode("latin-1")  # é as the single byte 0xe9
    raw_surrogate = _line(_row(3, text="x")).replace(b'"x"', b'"\xed\xa0\x80"')  # UTF-8 bytes of U+D800
    written = _write(log / "a.jsonl", [_line(_row(1, text="caf\u00e9")), latin1, raw_surrogate, b"\xff\xfe", _line(_row(4))],
                     prefix=b"\xef\xbb\xbf")
    # A byte-order mark anywhere but at the start of a file is not tolerated.
    mid_bom = _write(log / "b.jsonl", [_line(_row(5)), b"\xef\xbb\xbf" + _line(_row(6))])
    read = _read(log)
    assert [(r.request_id, r.text) for r in read.records] == [("g1", "caf\u00e9"), ("g4", "where is my parcel 4"), ("g5", "where is my parcel 5")]
    reasons = _reasons(read)
    assert [(f, n, r.partition(":")[0]) for f, n, r in reasons] == [
        ("a.jsonl", 2, "not UTF-8"), ("a.jsonl", 3, "not UTF-8"), ("a.jsonl", 4, "not UTF-8"), ("b.jsonl", 2, "malformed JSON"),
    ]
    assert "byte 0xe9" in reasons[0][2]
    assert "\\xe9" in read.quarantine[0]["row"]  # the bad byte kept visibly, not replaced
    _assert_accounted(read, written + mid_bom)


def test_duplicate_keys_and_lone_surrogates_are_quarantined(tmp_path):
    log = tmp_path / "log"
    good = _row(1)
    duplicate_ts = _line(good)[:-1].replace(b'"g1"', b'"g2"') + b', "timestamp": "2099-01-01T00:00:00Z"}'
    duplicate_nested = _line(_row(3, feedback={"label": "shipping"}))[:-2] + b', "label": "billing"}}'
    lone_value = json.dumps(_row(4, text="x")).replace('"x"', '"bad \\ud800 text"').encode()
    lone_key = json.dumps(_row(5)).replace('"prediction"', '"\\udfffprediction"').encode()
    pair = json.dumps(_row(6, text="x")).replace('"x"', '"smile \\ud83d\\ude00"').encode()  # a valid pair is fine
    written = _write(log / "a.jsonl", [_line(good), duplicate_ts, duplicate_nested, lone_value, lone_key, pair])
    read = _read(log)
    assert [(r.request_id, r.text) for r in read.records] == [("g1", "where is my parcel 1"), ("g6", "smile \U0001f600")]
    assert _reasons(read) == [
        ("a.jsonl", 2, "malformed JSON: duplicate key 'timestamp'"),
        ("a.jsonl", 3, "malformed JSON: duplicate key 'label'"),
        ("a.jsonl", 4, "malformed JSON: lone surrogate in a string"),
        ("a.jsonl", 5, "malformed JSON: lone surrogate in key '\\udfffprediction'"),
    ]
    assert read.quarantine[0]["row"] == duplicate_ts.decode()  # the raw line, both keys visible
    _assert_accounted(read, written)


def test_other_entries_of_the_log_directory_are_reported_and_versioned(tmp_path):
    log = tmp_path / "log"
    written = _write(log / "a.jsonl", [_line(_row(1))])
    version = log_data_version(log)
    written += _write(log / "B.JSONL", [_line(_row(2))])
    assert [p.name for p in log_files(log)] == ["B.JSONL", "a.jsonl"]
    assert log_data_version(log) != version
    version = log_data_version(log)

    _write(log / "c.json", [_line(_row(3))])
    assert log_data_version(log) != version
    version = log_data_version(log)
    _write(log / "c.json", [_line(_row(4))])  # a skipped file changes
    assert log_data_version(log) != version
    version = log_data_version(log)
    (log / "older").mkdir()
    assert log_data_version(log) != version
    version = log_data_version(log)
    _write(log / "older" / "d.jsonl", [_line(_row(5))])  # something lands in a skipped directory
    assert log_data_version(log) != version
    (log / "e.jsonl").mkdir()  # a directory named like a log file is not read either
    assert log_data_version(log) == log_data_version(log)

    read = _read(log)
    assert sorted(r.request_id for r in read.records) == ["g1", "g2"]
    assert _reasons(read) == [
        ("c.json", None, "not a .jsonl file: 'c.json' is a .json file, only *.jsonl files are read"),
        ("e.jsonl", None, "not a .jsonl file: 'e.jsonl' is a directory"),
        ("older", None, "not a .jsonl file: 'older' is a directory"),
    ]
    assert read.skipped == read.quarantine
    assert read.window(30).skipped == read.skipped
    _assert_accounted(read, written)


def test_future_and_naive_timestamps_are_quarantined_and_do_not_move_the_window(tmp_path):
    log = tmp_path / "log"
    near = NOW + MAX_CLOCK_SKEW - timedelta(minutes=1)  # inside the allowed clock skew
    lines = [
        _line(_row(1)),
        _line(_row(2, timestamp="2099-01-01T00:00:00Z")),
        _line(_row(3, timestamp=(NOW + MAX_CLOCK_SKEW + timedelta(minutes=1)).isoformat())),
        _line(_row(4, timestamp=near.isoformat())),
        _line(_row(5, timestamp="2026-10-10T11:00:00")),  # naive: rejected, never assumed UTC
        _line(_row(6, timestamp="9999-12-31T23:59:59-14:00")),
        _line(_row(7, timestamp="0001-01-01T00:00:00+14:00")),  # ancient is not a threat to the window
    ]
    written = _write(log / "a.jsonl", lines)
    read = _read(log)
    assert [r.request_id for r in read.records] == ["g1", "g4", "g7"]
    assert [(f, n, r.partition(":")[0]) for f, n, r in _reasons(read)] == [
        ("a.jsonl", 2, "timestamp in the future"),
        ("a.jsonl", 3, "timestamp in the future"),
        ("a.jsonl", 5, "bad timestamp"),
        ("a.jsonl", 6, "timestamp in the future"),
    ]
    assert "has no time zone" in read.quarantine[2]["reason"]
    _assert_accounted(read, written)
    assert read.last_timestamp == near.isoformat()
    assert [r.request_id for r in read.window(7).records] == ["g1", "g4"]
    # The rows from the future are accepted once the clock has caught up with them.
    later = _read(log, now=datetime(2100, 1, 1, tzinfo=timezone.utc))
    assert [r.request_id for r in later.records] == ["g1", "g2", "g3", "g4", "g7"]
    with pytest.raises(ValueError, match="time zone"):
        read_production_log(log, now=datetime(2026, 10, 10))
    # The default is the wall clock: a row of now is kept, 2099 is not.
    wall = read_production_log(log)
    assert "g2" not in {r.request_id for r in wall.records}
    # Only a window of ancient rows: no overflow.
    _write(tmp_path / "ancient.jsonl", [lines[-1]])
    assert len(_read(tmp_path / "ancient.jsonl").window(7).records) == 1


def test_a_2099_row_moves_neither_the_window_nor_the_feedback_decision(tmp_path):
    task = write_tiny_task(tmp_path / "task", tmp_path / "no-model")
    task.write_text(task.read_text() + "feedback: {min_new_labels: 5, rolling_window: 4}\n")
    spec = load_task_spec(task)
    feedback = {"label": "shipping", "source": "agent"}
    good = [_line(_row(i, feedback=feedback)) for i in range(1, 4)]
    clean, hostile = tmp_path / "clean", tmp_path / "hostile"
    _write(clean / "a.jsonl", good)
    _write(hostile / "a.jsonl", good[:2] + [_line(_row(99, timestamp="2099-01-01T00:00:00Z", feedback=feedback))] + good[2:])
    before, after = _read(clean), _read(hostile)
    assert [r.request_id for r in after.window(7).records] == [r.request_id for r in before.window(7).records] == ["g1", "g2", "g3"]
    assert after.window(7).last_timestamp == before.window(7).last_timestamp
    assert _reasons(after)[0][:2] == ("a.jsonl", 3)
    consumed = datetime.fromisoformat(_row(1)["timestamp"])
    clean_decision = feedback_decision(spec, before.labelled(), consumed)
    hostile_decision = feedback_decision(spec, after.labelled(), consumed)
    assert hostile_decision == clean_decision
    assert hostile_decision.newest == datetime.fromisoformat(_row(3)["timestamp"]) and not hostile_decision.retrain
    assert "2 new labelled requests" in hostile_decision.evidence
    # The sensor's cursor is the decision's newest: once enough labels arrive it moves to the newest
    # real request, not to 2099.
    _write(hostile / "b.jsonl", [_line(_row(i, feedback=feedback)) for i in range(10, 13)])
    volume = feedback_decision(spec, _read(hostile).labelled(), consumed)
    assert volume.retrain and volume.newest == datetime.fromisoformat(_row(12)["timestamp"])


def test_rejected_lines_are_persisted_only_as_scrubbed_excerpts(tmp_path):
    from finetune_loop.core.data.production_log import read_production_log

    log_dir = tmp_path / "log"
    log_dir.mkdir()
    good = {"request_id": "r1", "timestamp": "2026-10-01T10:00:00+00:00", "text": "where is my parcel"}
    (log_dir / "week.jsonl").write_text(
        json.dumps(good) + "\n"
        + '{"request_id": "r2", "text": "mail me at jane.doe@example.com or call +44 20 7946 0958"\n'  # no timestamp, unclosed
    )
    log = read_production_log(log_dir, now=datetime(2026, 10, 2, tzinfo=timezone.utc))
    [rejected] = log.reviewable_quarantine()
    assert rejected["line"] == 2 and rejected["reason"].startswith("malformed JSON")
    assert "jane.doe@example.com" not in rejected["row"] and "7946" not in rejected["row"]
    assert "mail me at [EMAIL] or call [PHONE]" in rejected["row"]
    # In memory the raw line is still there for the reader; only what is written is scrubbed.
    assert "jane.doe@example.com" in log.quarantine[0]["row"]
