"""new_labels: feedback naming a label the task does not know is a signal of the drift report (count,
share, per label its count and scrubbed examples), in the core report and in drift_report's metadata."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from finetune_loop.core.common.spec import DriftSettings, load_task_spec
from finetune_loop.core.data import curation, suites
from finetune_loop.core.data.production_log import ProductionRecord, append_log_file, read_task_log
from finetune_loop.core.monitor import drift
from finetune_loop.defs import metadata as contract
from finetune_loop.defs.monitor import drift_report
from finetune_loop.defs.resources import LoopResource
from finetune_loop_tests.conftest import TINY_LABELS, tiny_rows, write_tiny_task

START = datetime(2026, 10, 1, tzinfo=timezone.utc)
EMAIL = "jane.doe@example.com"
ACTION = "add the label to the task YAML's labels to admit it (the holdout stays; the recent suite covers it)"


def _reference():
    rows = tiny_rows(count_per_label=40, seed=1)
    return [r["text"] for r in rows], [r["label"] for r in rows]


def _known(count_per_label=10):
    rows = tiny_rows(count_per_label=count_per_label, seed=2)
    return [
        ProductionRecord(f"k{i}", START + timedelta(minutes=i), r["text"], prediction=r["label"], feedback_label=r["label"])
        for i, r in enumerate(rows)
    ]


def _refunds(count=12, start=START):
    return [
        ProductionRecord(
            f"refund-{i}", start + timedelta(minutes=100 + i),
            f"I want my money back for order {i}" + (f", write to {EMAIL}" if i == count - 1 else ""),
            prediction="billing", feedback_label="refund_request",
        )
        for i in range(count)
    ]


def test_unknown_feedback_labels_fire_new_labels_with_count_share_and_scrubbed_examples(tmp_path):
    texts, labels = _reference()
    known = _known()  # 30 labelled rows of known labels
    unknown = _refunds() + [ProductionRecord("typo-1", START + timedelta(minutes=300), "where is my parcel", feedback_label="shipingg")]
    result = drift.build_drift_report(texts, labels, known, tmp_path / "r.html", DriftSettings(), unknown_feedback=unknown)

    summary = result.new_labels
    assert summary["count"] == 13 and summary["labelled_rows"] == 43 and summary["distinct_labels"] == 2
    assert summary["share"] == pytest.approx(13 / 43)
    refund, typo = summary["labels"]
    assert (refund["label"], refund["count"], refund["fired"]) == ("refund_request", 12, True)
    assert refund["share"] == pytest.approx(12 / 43)
    # One row is a typo: listed, but below NEW_LABEL_MIN_ROWS, so it does not fire on its own.
    assert (typo["label"], typo["count"], typo["fired"]) == ("shipingg", 1, False)
    # The newest three, the e-mail scrubbed out of the newest one.
    assert [e["request_id"] for e in refund["examples"]] == ["refund-11", "refund-10", "refund-9"]
    assert refund["examples"][1]["text"] == "I want my money back for order 10"
    assert "money back for order 11" in refund["examples"][0]["text"]
    assert EMAIL not in str(summary) and EMAIL not in result.signals_markdown()

    signal = result.signals["new_labels"]
    assert signal.fired is True and signal.value == pytest.approx(13 / 43) and signal.threshold == drift.NEW_LABEL_MIN_SHARE
    assert "13 of 43 labelled requests (30.2%)" in signal.detail and "refund_request (12)" in signal.detail
    assert signal.detail.endswith(ACTION)
    assert "new_labels" in result.signals_fired
    assert "| new_labels | **yes** | 0.302 | 0.010 | 13 of 43" in result.signals_markdown()
    # The known-label signals are computed on the known rows only, exactly as without the unknown ones.
    assert result.feedback_rows == 30 and result.current_rows == 30
    without = drift.build_drift_report(texts, labels, known, tmp_path / "w.html", DriftSettings())
    for name in ("input_drift", "prediction_drift", "label_drift", "feedback_accuracy"):
        assert result.signals[name] == without.signals[name]
    # A retrain cannot learn a label the task does not admit: new_labels alone does not drift the report.
    assert result.drift_detected is any(s.fired for n, s in result.signals.items() if n != "new_labels")


def test_no_unknown_labels_is_none_and_no_feedback_is_not_evaluated(tmp_path):
    texts, labels = _reference()
    known = _known()
    clean = drift.build_drift_report(texts, labels, known, tmp_path / "clean.html", DriftSettings())
    assert clean.new_labels["count"] == 0 and clean.new_labels["share"] == 0.0 and clean.new_labels["labels"] == []
    signal = clean.signals["new_labels"]
    assert (signal.fired, signal.value) == (False, 0.0)
    assert signal.detail == "none: all 30 feedback labels are task labels"
    assert "new_labels" not in clean.signals_fired
    assert "| new_labels | no | 0.000 |" in clean.signals_markdown()

    unlabelled = [ProductionRecord(r.request_id, r.timestamp, r.text) for r in known]
    silent = drift.build_drift_report(texts, labels, unlabelled, tmp_path / "silent.html", DriftSettings())
    assert silent.signals["new_labels"].fired is None and "not evaluated" in silent.signals["new_labels"].detail
    assert silent.new_labels["share"] is None


def test_a_few_stray_labels_in_a_large_window_do_not_fire(tmp_path):
    texts, labels = _reference()
    # 5 rows of one unknown label among 600 labelled rows: 0.8%, below NEW_LABEL_MIN_SHARE.
    known = _known(count_per_label=199)
    result = drift.build_drift_report(texts, labels, known, tmp_path / "r.html", DriftSettings(), unknown_feedback=_refunds(5))
    signal = result.signals["new_labels"]
    assert result.new_labels["count"] == 5 and result.new_labels["labelled_rows"] == 602
    assert signal.fired is False and "below the rule" in signal.detail and signal.detail.endswith(ACTION)


def test_hostile_labels_are_scrubbed_escaped_and_capped(tmp_path):
    texts, labels = _reference()
    hostile = [
        ProductionRecord(f"h{i}", START + timedelta(minutes=i), "text", feedback_label=f"![x](http://evil/{i}) | {EMAIL}")
        for i in range(drift.NEW_LABEL_MAX_LISTED + 5)
    ]
    result = drift.build_drift_report(texts, labels, _known(), tmp_path / "r.html", DriftSettings(), unknown_feedback=hostile)
    assert len(result.new_labels["labels"]) == drift.NEW_LABEL_MAX_LISTED and result.new_labels["unlisted_labels"] == 5
    markdown = result.signals_markdown()
    row = next(line for line in markdown.splitlines() if line.startswith("| new_labels"))
    assert EMAIL not in markdown and "](http" not in row and row.count(" | ") == 4 and "and 5 more" in row


def test_unknown_feedback_keeps_unknown_predictions_out():
    records = [
        ProductionRecord("a", START, "t", prediction="billing", feedback_label="refund_request"),
        ProductionRecord("b", START, "t", prediction="refund_request", feedback_label="refund_request"),
        ProductionRecord("c", START, "t", feedback_label="refund_request"),
        ProductionRecord("d", START, "t", feedback_label="billing"),
        ProductionRecord("e", START, "t", prediction="gdpr"),
    ]
    assert [r.request_id for r in drift.unknown_feedback(records, TINY_LABELS)] == ["a", "c"]


def _task_with_log(tmp_path, rows):
    task = write_tiny_task(tmp_path / "task", tmp_path / "no-model")
    task.write_text(task.read_text().replace("production.jsonl", "production_log"))
    spec = load_task_spec(task)
    append_log_file(spec.production_log_path, "week-1.jsonl", rows)
    return task, spec


def _materialize(tmp_path, task, spec):
    suites_dir = tmp_path / "suites"
    holdout = suites.freeze_suite(spec, "holdout", suites_dir)
    regression = suites.freeze_suite(spec, "regression", suites_dir, exclude=[holdout])
    dataset = curation.curate_dataset(spec, [holdout, regression], tmp_path / "datasets")

    @dg.asset(name="curated_dataset")
    def curated_stub():
        return dataset

    # An instance of its own: an ephemeral one would resolve Dagster's process-wide definitions-load
    # context, which an earlier test's (closed) instance may still occupy.
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [curated_stub, drift_report], resources={"loop": LoopResource(task_path=str(task), home=str(tmp_path / "home"))},
            instance=instance,
        )
        assert result.success
        return result.asset_materializations_for_node("drift_report")[0].metadata


def _log_rows(refunds: int):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    texts = tiny_rows(count_per_label=10, seed=3)
    rows = [
        {"request_id": f"k{i}", "timestamp": (now - timedelta(hours=40 - i * 0.5)).isoformat(), "text": r["text"],
         "prediction": r["label"], "feedback": {"label": r["label"], "source": "agent"}}
        for i, r in enumerate(texts)
    ]
    rows += [
        {"request_id": f"refund-{i}", "timestamp": (now - timedelta(hours=10 - i * 0.5)).isoformat(),
         "text": f"I want my money back for order {i}" + (f", write to {EMAIL}" if i == refunds - 1 else ""),
         "prediction": "billing", "feedback": {"label": "refund_request", "source": "agent"}}
        for i in range(refunds)
    ]
    # An unknown prediction stays an unknown prediction (quarantined), whatever its feedback says.
    rows.append({"request_id": "bad-pred", "timestamp": now.isoformat(), "text": "x", "prediction": "gdpr",
                 "feedback": {"label": "refund_request"}})
    return rows


def test_drift_report_metadata_carries_new_labels(tmp_path):
    task, spec = _task_with_log(tmp_path, _log_rows(12))
    meta = _materialize(tmp_path, task, spec)
    report = contract.DriftReportMetadata.from_dagster(meta)
    assert report.new_label_rows == 12
    summary = report.new_labels
    assert summary["count"] == 12 and summary["labelled_rows"] == 42 and summary["share"] == pytest.approx(12 / 42)
    (refund,) = summary["labels"]
    assert (refund["label"], refund["count"], refund["fired"]) == ("refund_request", 12, True)
    assert [e["request_id"] for e in refund["examples"]] == ["refund-11", "refund-10", "refund-9"]
    assert refund["examples"][0]["text"].startswith("I want my money back for order 11") and EMAIL not in str(meta)
    assert "| new_labels | **yes** | 0.286 |" in report.signals and ACTION in report.signals
    assert "new_labels" in report.signals_fired.split(", ")
    # Known-label rows only in the rest of the report; quarantine as before (12 refunds + the bad prediction).
    assert report.current_rows == 30 and report.feedback_rows == 30 and report.quarantined_rows == 13
    assert meta["new_labels"].__class__.__name__ == "JsonMetadataValue"
    assert len(read_task_log(spec).quarantine) == 13


def test_drift_report_metadata_without_unknown_labels_says_none(tmp_path):
    task, spec = _task_with_log(tmp_path, _log_rows(0)[:-1])
    report = contract.DriftReportMetadata.from_dagster(_materialize(tmp_path, task, spec))
    assert report.new_label_rows == 0 and report.new_labels["count"] == 0 and report.new_labels["labels"] == []
    assert "| new_labels | no | 0.000 | 0.010 | none: all 30 feedback labels are task labels |" in report.signals
    assert "new_labels" not in report.signals_fired


def test_a_new_label_arriving_a_few_times_a_week_builds_up_over_new_label_days(tmp_path):
    """Two refund requests a week never make five in one 7-day window; over drift.new_label_days
    (28) the six of the last three weeks fire, and three from six weeks ago no longer count."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    rows = _log_rows(0)[:-1]  # 30 known-label rows in the last 40 hours
    rows += [
        {"request_id": f"refund-{days}", "timestamp": (now - timedelta(days=days)).isoformat(), "text": f"money back for order {days}",
         "prediction": "billing", "feedback": {"label": "refund_request", "source": "agent"}}
        for days in (2, 3, 9, 10, 16, 17, 40, 41, 42)
    ]
    task, spec = _task_with_log(tmp_path, rows)
    report = contract.DriftReportMetadata.from_dagster(_materialize(tmp_path, task, spec))
    (refund,) = report.new_labels["labels"]
    assert (refund["label"], refund["count"], refund["fired"]) == ("refund_request", 6, True)
    assert report.new_labels["labelled_rows"] == 36
    assert "new_labels" in report.signals_fired.split(", ")
    # The rest of the report stays on the 7-day window.
    assert report.current_rows == 30
