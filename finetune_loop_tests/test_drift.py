import json
from datetime import datetime, timedelta, timezone

import pytest

from finetune_loop.core.common.spec import DriftSettings, FieldMapping
from finetune_loop.core.data.production_log import (
    ProductionRecord,
    append_log_file,
    feedback_rows,
    log_data_version,
    read_production_log,
)
from finetune_loop.core.monitor.drift import accuracy_drop_noise_floor, build_drift_report, js_noise_floor
from finetune_loop_tests.conftest import TINY_LABELS, tiny_rows

GDPR = "please delete all personal data you hold about me under gdpr article 17, request number {}"
START = datetime(2026, 10, 1, tzinfo=timezone.utc)


def _records(rows, *, prediction=None, feedback=None, start=START):
    return [
        ProductionRecord(
            request_id=f"r{i}", timestamp=start + timedelta(minutes=i), text=r["text"],
            prediction=prediction(r) if prediction else None, feedback_label=feedback(r) if feedback else None,
        )
        for i, r in enumerate(rows)
    ]


def test_production_rows_are_read_from_every_file_and_bad_rows_quarantined(tmp_path):
    log = tmp_path / "log"
    good = {"request_id": "r1", "timestamp": "2026-10-02T00:00:00Z", "text": "where is my parcel", "model_version": "3",
            "prediction": "shipping", "latency_ms": 41.5, "feedback": {"label": "shipping", "source": "agent"}, "flags": []}
    append_log_file(log, "2026-10-02.jsonl", [good, {"request_id": "r2", "timestamp": "2026-10-01T00:00:00Z", "text": "  "}])
    (log / "2026-10-03.jsonl").write_text(
        "\n".join(
            [
                "{not json",
                json.dumps({**good, "request_id": "r3", "timestamp": "yesterday"}),
                json.dumps({**good, "request_id": "r4", "timestamp": "2026-10-03T00:00:00"}),
                json.dumps({**good, "request_id": "r5", "prediction": "gdpr"}),
                json.dumps({**good, "request_id": "r6", "feedback": {"label": "gdpr"}}),
                json.dumps({**good, "request_id": "r7", "latency_ms": -1}),
                json.dumps({**good, "request_id": "r8", "flags": "thumbs_down"}),
                json.dumps({**good}),
                json.dumps({**good, "request_id": "r9", "timestamp": "2026-10-03T09:00:00+00:00", "feedback": None, "flags": ["thumbs_down"]}),
            ]
        )
    )
    read = read_production_log(log, labels=TINY_LABELS)
    assert [r.request_id for r in read.records] == ["r1", "r9"]
    assert read.records[0].feedback_label == "shipping" and read.records[0].latency_ms == 41.5
    assert read.records[1].flags == ("thumbs_down",) and read.records[1].feedback_label is None
    reasons = [(q["file"], q["line"], q["reason"].partition(":")[0]) for q in read.quarantine]
    assert reasons == [
        ("2026-10-02.jsonl", 2, "missing input"),
        ("2026-10-03.jsonl", 1, "malformed JSON"),
        ("2026-10-03.jsonl", 2, "bad timestamp"),
        ("2026-10-03.jsonl", 3, "bad timestamp"),
        ("2026-10-03.jsonl", 4, "unknown prediction"),
        ("2026-10-03.jsonl", 5, "unknown feedback label"),
        ("2026-10-03.jsonl", 6, "bad latency_ms"),
        ("2026-10-03.jsonl", 7, "bad flags"),
        ("2026-10-03.jsonl", 8, "duplicate request_id"),
    ]
    assert "first seen at 2026-10-02.jsonl:1" in read.quarantine[-1]["reason"]
    assert (read.first_timestamp, read.last_timestamp) == ("2026-10-02T00:00:00+00:00", "2026-10-03T09:00:00+00:00")
    # Only a human's feedback label becomes a training row; the thumbs-down on r9 does not.
    assert feedback_rows(read.records, FieldMapping()) == [
        {"id": "feedback-r1", "text": "where is my parcel", "label": "shipping", "source": "production_feedback"}
    ]
    with pytest.raises(FileNotFoundError, match="production log not found"):
        read_production_log(tmp_path / "missing")


def test_the_log_is_append_only_and_its_version_changes_when_a_file_arrives(tmp_path):
    log = tmp_path / "log"
    row = {"request_id": "r1", "timestamp": "2026-10-02T00:00:00Z", "text": "hi"}
    append_log_file(log, "week-01.jsonl", [row])
    first = log_data_version(log)
    assert log_data_version(log) == first
    with pytest.raises(FileExistsError):
        append_log_file(log, "week-01.jsonl", [row])
    append_log_file(log, "week-02.jsonl", [{**row, "request_id": "r2"}])
    assert log_data_version(log) != first


def test_window_keeps_the_last_days_ending_at_the_newest_request():
    rows = [{"text": f"t{i}"} for i in range(10)]
    records = [ProductionRecord(f"r{i}", START + timedelta(days=i), r["text"]) for i, r in enumerate(rows)]
    from finetune_loop.core.data.production_log import ProductionLog

    window = ProductionLog(records, []).window(3)
    assert [r.request_id for r in window.records] == ["r7", "r8", "r9"]


def test_no_drift_on_the_same_traffic_and_every_input_signal_on_shifted_traffic(tmp_path):
    settings = DriftSettings()
    reference = tiny_rows(count_per_label=40, seed=1)
    ref_texts, ref_labels = [r["text"] for r in reference], [r["label"] for r in reference]
    same = _records(tiny_rows(count_per_label=40, seed=2))
    shifted = _records([{"text": GDPR.format(i)} for i in range(120)])
    stable = build_drift_report(ref_texts, ref_labels, same, tmp_path / "same.html", settings)
    drifted = build_drift_report(ref_texts, ref_labels, shifted, tmp_path / "shifted.html", settings)
    assert stable.drift_detected is False and stable.signals_fired == [] and stable.drift_share < 0.5
    assert drifted.drift_detected is True and drifted.signals_fired == ["input_drift"]
    assert set(drifted.columns) == {"text", "length_chars", "oov_share", "non_letter_share"}
    assert drifted.columns["oov_share"]["drifted"] and drifted.columns["oov_share"]["method"] == "ks"
    # Without predictions or feedback those signals are "not evaluated", not "no drift".
    assert drifted.signals["prediction_drift"].fired is None and "not evaluated" in drifted.signals["prediction_drift"].detail
    assert drifted.signals["feedback_accuracy"].fired is None
    assert drifted.report_path.read_text().lstrip().lower().startswith("<!doctype html")
    assert "| input_drift | **yes** |" in drifted.signals_markdown()
    with pytest.raises(ValueError, match="drift needs rows on both sides: 120 reference, 0 current"):
        build_drift_report(ref_texts, ref_labels, [], tmp_path / "empty.html", settings)


def test_prediction_label_and_feedback_accuracy_signals(tmp_path):
    settings = DriftSettings(min_signal_rows=30, max_accuracy_drop=0.05)
    reference = tiny_rows(count_per_label=40, seed=1)
    ref_texts, ref_labels = [r["text"] for r in reference], [r["label"] for r in reference]
    window = tiny_rows(count_per_label=40, seed=2)
    # The served model answers "billing" to everything; humans label every request correctly.
    collapsed = _records(window, prediction=lambda r: "billing", feedback=lambda r: r["label"])
    result = build_drift_report(ref_texts, ref_labels, collapsed, tmp_path / "collapsed.html", settings, reference_accuracy=0.9)
    assert result.signals["prediction_drift"].fired is True
    assert result.signals["label_drift"].fired is False
    assert result.feedback_accuracy == pytest.approx(1 / 3)
    assert result.signals["feedback_accuracy"].fired is True
    assert result.signals["feedback_accuracy"].value == pytest.approx(0.9 - 1 / 3)
    assert result.signals_fired == ["prediction_drift", "feedback_accuracy"] and result.feedback_rows == 120
    # A healthy model: answers and labels follow the training distribution, accuracy holds.
    healthy = _records(window, prediction=lambda r: r["label"], feedback=lambda r: r["label"])
    fine = build_drift_report(ref_texts, ref_labels, healthy, tmp_path / "healthy.html", settings, reference_accuracy=0.9)
    assert fine.signals_fired == [] and fine.feedback_accuracy == 1.0
    assert fine.signals["label_drift"].fired is False and fine.signals["feedback_accuracy"].fired is False


def test_noise_floors_follow_the_window_size():
    uniform_8 = [f"intent-{i}" for i in range(8)] * 40
    # 60 answers drawn from the training distribution itself sit above the 0.1 threshold half the time.
    assert js_noise_floor(uniform_8, 60, 0.5) > 0.1
    assert js_noise_floor(uniform_8, 60, 0.95) > js_noise_floor(uniform_8, 300, 0.95) > js_noise_floor(uniform_8, 1000, 0.95)
    assert 0.15 < js_noise_floor(uniform_8, 60, 0.95) < 0.2
    assert js_noise_floor(uniform_8, 1000, 0.95) < 0.05  # at volume the threshold decides
    assert js_noise_floor(uniform_8, 60, 0.95) == js_noise_floor(uniform_8, 60, 0.95)  # seeded
    # 30 rows of a 0.9 model: 24/30 right is the binomial's 5 % quantile, so a drop fires below it.
    assert accuracy_drop_noise_floor(0.9, 30, 0.95) == pytest.approx(0.9 - 24 / 30)
    assert accuracy_drop_noise_floor(0.9, 1000, 0.95) < 0.05


def test_a_small_window_does_not_fire_on_sampling_noise(tmp_path):
    settings = DriftSettings(min_signal_rows=30, max_accuracy_drop=0.05)
    reference = tiny_rows(count_per_label=40, seed=1)
    ref_texts, ref_labels = [r["text"] for r in reference], [r["label"] for r in reference]
    window = tiny_rows(count_per_label=40, seed=2)[:30]
    # Right on 25 of 30: a drop of 0.067 from 0.9, past max_accuracy_drop, within the noise of 30 rows.
    wrong = {r["id"] for r in window[:5]}
    records = _records(window, prediction=lambda r: r["label"], feedback=lambda r: "wrong" if r["id"] in wrong else r["label"])
    result = build_drift_report(ref_texts, ref_labels, records, tmp_path / "small.html", settings, reference_accuracy=0.9)
    accuracy = result.signals["feedback_accuracy"]
    assert accuracy.value == pytest.approx(0.9 - 25 / 30) and accuracy.value > accuracy.threshold
    assert accuracy.fired is False and accuracy.noise_floor == pytest.approx(accuracy_drop_noise_floor(0.9, 30, 0.95))
    assert "noise floor 0.100 at 30 rows" in accuracy.detail
    prediction = result.signals["prediction_drift"]
    assert prediction.noise_floor == pytest.approx(js_noise_floor(ref_labels, 30, 0.95))
    assert prediction.fired is (prediction.value >= prediction.threshold and prediction.value > prediction.noise_floor)
    assert prediction.fired is False


def test_labelled_feedback_joins_curation_through_the_same_checks(tmp_path):
    from finetune_loop.core.common.spec import load_task_spec
    from finetune_loop.core.data import curation, readers, suites
    from finetune_loop.core.data import recent
    from finetune_loop.core.data.production_log import read_task_log
    from finetune_loop_tests.conftest import write_tiny_task

    task = write_tiny_task(tmp_path / "task", tmp_path / "no-model")
    task.write_text(task.read_text().replace("production.jsonl", "production_log"))
    spec = load_task_spec(task)
    base = {"timestamp": "2026-10-02T00:00:00Z", "model_version": "1", "prediction": "billing"}
    append_log_file(spec.production_log_path, "week-1.jsonl", [
        {**base, "request_id": "ok", "text": "my courier left the box at the wrong door", "feedback": {"label": "shipping", "source": "agent"}},
        {**base, "request_id": "retired", "text": "please close my loyalty card", "feedback": {"label": "loyalty", "source": "agent"}},
        {**base, "request_id": "flag-only", "text": "this answer was useless", "flags": ["thumbs_down"]},
        # Newer than the rest by more than recent_suite.days: the recent suite judges it, training never sees it.
        {**base, "timestamp": "2026-10-20T00:00:00Z", "request_id": "recent", "text": "the sign in code never arrives",
         "feedback": {"label": "login", "source": "agent"}},
    ])
    suites_dir = tmp_path / "suites"
    holdout = suites.freeze_suite(spec, "holdout", suites_dir)
    regression = suites.freeze_suite(spec, "regression", suites_dir, exclude=[holdout])
    log = read_task_log(spec, check_labels=False)
    recent_suite = recent.freeze_recent_suite(spec, log, suites_dir, champion_feedback_until=None, exclude=[holdout, regression])
    assert [e.id for e in readers.read_examples(recent_suite.suite.path)] == ["feedback-recent"]
    feedback = recent.write_training_feedback(spec, log, recent_suite, tmp_path / "feedback" / "feedback.jsonl")
    dataset = curation.curate_dataset(spec, [holdout, regression], tmp_path / "datasets", extra_inputs=[feedback])
    train = {e.id: e for e in readers.read_examples(dataset.train_path) + readers.read_examples(dataset.validation_path)}
    assert train["feedback-ok"].label == "shipping" and train["feedback-ok"].source == "production_feedback"
    assert "feedback-flag-only" not in train and "feedback-recent" not in train
    quarantined = [json.loads(line) for line in dataset.quarantine_path.read_text().splitlines()]
    assert [(q["file"], q["reason"].partition(":")[0]) for q in quarantined] == [(feedback.name, "unknown label")]
    assert dataset.report.rows_read == 48 + 2
