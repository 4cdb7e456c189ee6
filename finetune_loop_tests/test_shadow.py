from datetime import datetime, timedelta, timezone

import pytest

from finetune_loop.core.common.spec import ShadowSettings
from finetune_loop.core.data.production_log import ProductionRecord
from finetune_loop.core.evaluate.shadow import compare_on_traffic, shadow_inputs

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _served(i: int, version: str, prediction: str | None, feedback: str | None = None, days: float = 0) -> ProductionRecord:
    return ProductionRecord(f"r{i}", T0 + timedelta(days=days, minutes=i), f"text {i}", model_version=version, prediction=prediction, feedback_label=feedback)


def test_shadow_inputs_are_the_champions_recent_answered_requests():
    records = [
        _served(0, "1", "billing", days=-10),  # outside the 7-day window
        _served(1, "2", "billing"),            # another model answered it
        _served(2, "1", None),                 # no answer logged
        *[_served(i, "1", "shipping") for i in range(3, 8)],
    ]
    chosen = shadow_inputs(records, "1", ShadowSettings(window_days=7, max_rows=3))
    assert [r.request_id for r in chosen] == ["r5", "r6", "r7"]


def test_disagreement_and_both_accuracies_on_feedback():
    records = [
        _served(0, "1", "billing", feedback="billing"),
        _served(1, "1", "billing", feedback="shipping"),
        _served(2, "1", "login"),
        _served(3, "1", "login"),
    ]
    result = compare_on_traffic(records, ["billing", "shipping", "billing", "login"], "1", max_disagreement=0.4)
    assert result.disagreement_rate == 0.5 and result.passed is False
    assert (result.feedback_rows, result.champion_accuracy, result.challenger_accuracy) == (2, 0.5, 1.0)
    assert "disagrees with champion v1 on 50.0% of 4 recent requests" in result.summary()
    assert compare_on_traffic(records, ["billing"] * 2 + ["login"] * 2, "1", 1.0).passed is True
    with pytest.raises(ValueError, match="one challenger answer per request: 1 for 4"):
        compare_on_traffic(records, ["billing"], "1", 1.0)
