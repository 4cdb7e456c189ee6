import json

import pytest

from finetune_loop.core.drift import build_drift_report, read_production_log
from finetune_loop_tests.conftest import tiny_rows

GDPR = "please delete all personal data you hold about me under gdpr article 17, request number {}"


def test_production_rows_without_usable_input_are_quarantined(tmp_path):
    path = tmp_path / "traffic.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"request_id": "r1", "timestamp": "2026-10-02T00:00:00Z", "text": "where is my parcel"}),
                "{not json",
                json.dumps({"request_id": "r3", "timestamp": "2026-10-01T00:00:00Z", "text": "  "}),
                json.dumps({"request_id": "r4", "timestamp": "2026-10-03T00:00:00Z", "text": "login broken"}),
            ]
        )
    )
    log = read_production_log(path)
    assert log.texts == ["where is my parcel", "login broken"]
    assert [(q["line"], q["reason"].partition(":")[0]) for q in log.quarantine] == [(2, "malformed JSON"), (3, "missing input")]
    assert (log.first_timestamp, log.last_timestamp) == ("2026-10-02T00:00:00Z", "2026-10-03T00:00:00Z")
    with pytest.raises(FileNotFoundError, match="production log not found"):
        read_production_log(tmp_path / "missing.jsonl")


def test_drift_is_detected_on_shifted_traffic_and_not_on_the_same_traffic(tmp_path):
    reference = [r["text"] for r in tiny_rows(count_per_label=40, seed=1)]
    same = [r["text"] for r in tiny_rows(count_per_label=40, seed=2)]
    shifted = [GDPR.format(i) for i in range(120)]
    stable = build_drift_report(reference, same, tmp_path / "same.html", drift_share_threshold=0.5)
    drifted = build_drift_report(reference, shifted, tmp_path / "shifted.html", drift_share_threshold=0.5)
    assert stable.drift_detected is False and stable.drift_share < 0.5
    assert drifted.drift_detected is True and drifted.drift_share == pytest.approx(1.0)
    assert set(drifted.columns) == {"text", "length_chars", "word_count"}
    assert drifted.report_path.read_text().lstrip().lower().startswith("<!doctype html")
    with pytest.raises(ValueError, match="drift needs rows on both sides: 120 reference, 0 current"):
        build_drift_report(reference, [], tmp_path / "empty.html", drift_share_threshold=0.5)
