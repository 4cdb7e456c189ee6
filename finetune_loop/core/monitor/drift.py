"""Drift of a window of production traffic against the training reference, measured by Evidently.

Four signals, each with its own threshold in the task's `drift` section:

* `input_drift`: the inputs drifted. Evidently tests four columns: the text itself (text-content
  drift: a domain classifier's ROC AUC at telling reference from current) and three descriptors
  that move when the writing moves (length, out-of-vocabulary word share, non-letter share; a K-S
  test by default). It fires when at least `drift_share` of those columns drift.
* `prediction_drift`: the distribution of the model's answers moved away from the training label
  distribution (Jensen-Shannon distance), judged once `min_signal_rows` requests carry a prediction.
* `label_drift`: the human feedback labels moved away from the training labels (Jensen-Shannon),
  judged once `min_signal_rows` requests carry feedback.
* `feedback_accuracy`: the served model's accuracy on the requests with feedback fell more than
  `max_accuracy_drop` below its accuracy at evaluation.

A signal without enough rows is reported as not evaluated, never as "no drift".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.spec import DriftSettings
from finetune_loop.core.data.production_log import ProductionRecord

INPUT_COLUMNS = ("text", "length_chars", "oov_share", "non_letter_share")
_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class Signal:
    name: str
    # None when the window holds too few rows to judge it
    fired: bool | None
    value: float | None
    threshold: float
    detail: str


@dataclass(frozen=True)
class DriftResult:
    drift_detected: bool
    # share of the input columns that drifted
    drift_share: float
    drift_share_threshold: float
    # column -> Evidently's score, method, threshold and verdict
    columns: dict[str, dict]
    signals: dict[str, Signal]
    feedback_accuracy: float | None
    report_path: Path
    reference_rows: int
    current_rows: int
    feedback_rows: int

    @property
    def signals_fired(self) -> list[str]:
        return [name for name, signal in self.signals.items() if signal.fired]

    def signals_markdown(self) -> str:
        lines = ["| signal | fired | value | threshold | detail |", "|---|---|---:|---:|---|"]
        for s in self.signals.values():
            fired = "n/a" if s.fired is None else ("**yes**" if s.fired else "no")
            value = "n/a" if s.value is None else f"{s.value:.3f}"
            lines.append(f"| {s.name} | {fired} | {value} | {s.threshold:.3f} | {s.detail} |")
        return "\n".join(lines)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _non_letter_share(text: str) -> float:
    visible = [c for c in text if not c.isspace()]
    return sum(1 for c in visible if not c.isalpha()) / len(visible) if visible else 0.0


def _descriptor_frame(texts: Sequence[str], document_frequency: Counter, leave_one_out: bool):
    """Text plus descriptors. A word is out of vocabulary when no reference row holds it; for a
    reference row itself, when no *other* reference row holds it (leave-one-out), so the reference
    is not trivially 0% OOV and a stable stream does not read as drift."""
    import pandas as pd

    own = 1 if leave_one_out else 0
    oov = []
    for text in texts:
        words = _words(text)
        oov.append(sum(1 for w in words if document_frequency[w] <= own) / len(words) if words else 0.0)
    return pd.DataFrame(
        {
            "text": list(texts),
            "length_chars": [float(len(t)) for t in texts],
            "oov_share": oov,
            "non_letter_share": [_non_letter_share(t) for t in texts],
        }
    )


def build_drift_report(
    reference_texts: Sequence[str],
    reference_labels: Sequence[str],
    current: Sequence[ProductionRecord],
    report_path: Path,
    settings: DriftSettings,
    reference_accuracy: float | None = None,
) -> DriftResult:
    """One Evidently report (saved as HTML) over the window `current`, and the four signals.

    `reference_labels` are the training labels (the distribution predictions and feedback are
    compared with); `reference_accuracy` is the served model's accuracy at evaluation."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    if not reference_texts or not current:
        raise ValueError(f"drift needs rows on both sides: {len(reference_texts)} reference, {len(current)} current")
    document_frequency = Counter(w for text in reference_texts for w in set(_words(text)))
    reference = _descriptor_frame(reference_texts, document_frequency, leave_one_out=True)
    production = _descriptor_frame([r.text for r in current], document_frequency, leave_one_out=False)
    # Predictions and feedback are categorical columns beside the inputs; a request without one
    # is a missing value, which Evidently leaves out of that column's test.
    reference["prediction"] = list(reference_labels)
    reference["feedback_label"] = list(reference_labels)
    production["prediction"] = [r.prediction for r in current]
    production["feedback_label"] = [r.feedback_label for r in current]

    predicted = sum(1 for r in current if r.prediction is not None)
    labelled = [r for r in current if r.feedback_label is not None]
    metrics = [ValueDrift(column="text", method="abs_text_content_drift", threshold=settings.text_threshold)]
    metrics += [ValueDrift(column=c, method=settings.descriptor_method, threshold=settings.descriptor_threshold) for c in INPUT_COLUMNS[1:]]
    if predicted >= settings.min_signal_rows:
        metrics.append(ValueDrift(column="prediction", method="jensenshannon", threshold=settings.prediction_threshold))
    if len(labelled) >= settings.min_signal_rows:
        metrics.append(ValueDrift(column="feedback_label", method="jensenshannon", threshold=settings.label_threshold))

    definition = DataDefinition(
        text_columns=["text"], numerical_columns=list(INPUT_COLUMNS[1:]), categorical_columns=["prediction", "feedback_label"]
    )
    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(production, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    report_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(report_path))
    columns = _column_verdicts(snapshot.dict())

    drifted_inputs = sum(1 for c in INPUT_COLUMNS if columns[c]["drifted"])
    drift_share = drifted_inputs / len(INPUT_COLUMNS)
    signals = {
        "input_drift": Signal(
            "input_drift", drift_share >= settings.drift_share, drift_share, settings.drift_share,
            f"{drifted_inputs}/{len(INPUT_COLUMNS)} input columns drifted: "
            + (", ".join(c for c in INPUT_COLUMNS if columns[c]["drifted"]) or "none"),
        ),
        "prediction_drift": _categorical_signal("prediction_drift", columns.get("prediction"), settings.prediction_threshold, predicted, settings.min_signal_rows, "predictions"),
        "label_drift": _categorical_signal("label_drift", columns.get("feedback_label"), settings.label_threshold, len(labelled), settings.min_signal_rows, "feedback labels"),
    }
    scored = [r for r in labelled if r.prediction is not None]
    feedback_accuracy = sum(r.prediction == r.feedback_label for r in scored) / len(scored) if scored else None
    signals["feedback_accuracy"] = _accuracy_signal(feedback_accuracy, len(scored), reference_accuracy, settings)
    return DriftResult(
        drift_detected=any(s.fired for s in signals.values()),
        drift_share=drift_share,
        drift_share_threshold=settings.drift_share,
        columns=columns,
        signals=signals,
        feedback_accuracy=feedback_accuracy,
        report_path=report_path,
        reference_rows=len(reference_texts),
        current_rows=len(current),
        feedback_rows=len(labelled),
    )


def _column_verdicts(snapshot: dict) -> dict[str, dict]:
    """column -> score, method, threshold and Evidently's own drift verdict (its test status)."""
    verdicts = {
        test["metric_config"]["params"]["column"]: test["status"] == "FAIL"
        for test in snapshot.get("tests", [])
        if test["metric_config"]["params"]["type"].endswith("ValueDrift")
    }
    columns = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            column = config["column"]
            columns[column] = {
                "score": float(metric["value"]),
                "method": config["method"],
                "threshold": config["threshold"],
                "drifted": verdicts[column],
            }
    return columns


def _categorical_signal(name: str, column: dict | None, threshold: float, rows: int, minimum: int, what: str) -> Signal:
    if column is None:
        return Signal(name, None, None, threshold, f"not evaluated: {rows} {what} in the window, fewer than min_signal_rows {minimum}")
    return Signal(name, column["drifted"], column["score"], threshold, f"Jensen-Shannon distance over {rows} {what} vs the training labels")


def _accuracy_signal(accuracy: float | None, rows: int, reference: float | None, settings: DriftSettings) -> Signal:
    threshold = settings.max_accuracy_drop
    if reference is None:
        return Signal("feedback_accuracy", None, accuracy, threshold, "not evaluated: no evaluation accuracy of the served model to compare with")
    if accuracy is None or rows < settings.min_signal_rows:
        return Signal("feedback_accuracy", None, accuracy, threshold, f"not evaluated: {rows} predictions with feedback, fewer than min_signal_rows {settings.min_signal_rows}")
    drop = reference - accuracy
    return Signal(
        "feedback_accuracy", drop > threshold, drop, threshold,
        f"accuracy on {rows} requests with feedback {accuracy:.3f} vs {reference:.3f} at evaluation (drop {drop:+.3f})",
    )
