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

Those three are read on a sample, the window's requests, and a small sample moves on its own: 60
predictions drawn from the very distribution of 8 training labels sit a median 0.12 (Jensen-Shannon)
from it, above the default 0.1 threshold, and 30 feedback rows of a 0.9 model score 0.83 or less
one week in six. So each also has a noise
floor: the `noise_quantile` of its value when nothing changed, at the window's row count (JS: a
seeded Monte Carlo of samples drawn from the training labels; accuracy: the binomial quantile at the
evaluation accuracy). It fires only above both its threshold and its floor.
* `new_labels`: humans answered with labels the task does not know (the log reader quarantines
  those rows; `unknown_feedback` finds them again). It fires when one unknown label holds at least
  NEW_LABEL_MIN_ROWS rows and NEW_LABEL_MIN_SHARE of the labelled rows of the last
  `drift.new_label_days` (longer than the window: at a few rows a week a new label builds up its
  evidence over weeks; one that stopped arriving drops out). It does not set
  `drift_detected`: a retrain cannot learn a label the task does not admit, so it asks a person to
  add the label to the task YAML instead (the feedback sensor then retrains on the admitted rows).

A signal without enough rows is reported as not evaluated, never as "no drift".
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.spec import DriftSettings
from finetune_loop.core.data.pii import scrubbed_excerpt
from finetune_loop.core.data.production_log import ProductionRecord

INPUT_COLUMNS = ("text", "length_chars", "oov_share", "non_letter_share")
_WORD = re.compile(r"[^\W\d_]+")

# new_labels fires when one unknown feedback label holds at least NEW_LABEL_MIN_ROWS rows *and*
# NEW_LABEL_MIN_SHARE of the window's labelled rows: a single typo never fires, and neither do a
# handful of stray labels in a window of many thousands. Module constants, not task settings yet
# (candidates: drift.new_label_min_rows / drift.new_label_min_share).
NEW_LABEL_MIN_ROWS = 5
NEW_LABEL_MIN_SHARE = 0.01
# Per unknown label, this many example requests (newest first), request id and text PII-scrubbed.
NEW_LABEL_EXAMPLES = 3
# At most this many unknown labels are listed (most rows first); the rest are counted. A hostile
# log with a new label on every row cannot blow up the report.
NEW_LABEL_MAX_LISTED = 20
NEW_LABEL_ACTION = "add the label to the task YAML's labels to admit it (the holdout stays; the recent suite covers it)"
# Characters of text from the log (a feedback label) that could end a table cell or make a link,
# an image, HTML or code in the signals table are escaped there.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]()!|<>])")


@dataclass(frozen=True)
class Signal:
    name: str
    # None when the window holds too few rows to judge it
    fired: bool | None
    value: float | None
    threshold: float
    detail: str
    # False for a signal that needs a person, not a retrain (new_labels): it is reported and listed
    # in signals_fired, but does not make the report drift.
    triggers_retrain: bool = True
    # What sampling alone reaches at this window's size (see the module docstring); None where the
    # signal is not read on a sample or was not evaluated.
    noise_floor: float | None = None


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
    # The new_labels summary (see `new_labels_summary`): count, share, per label count and examples.
    new_labels: dict = field(default_factory=dict)

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
    unknown_feedback: Sequence[ProductionRecord] = (),
    known_labelled: int | None = None,
) -> DriftResult:
    """One Evidently report (saved as HTML) over the window `current`, and the five signals.

    `reference_labels` are the training labels (the distribution predictions and feedback are
    compared with); `reference_accuracy` is the served model's accuracy at evaluation.
    `unknown_feedback` are the window's requests whose feedback names a label the task does not
    know (`unknown_feedback`); they feed only the new_labels signal, never `current`'s signals.
    They may span more days than `current` (`drift.new_label_days`): `known_labelled` is then the
    count of known-label feedback over those same days (default: `current`'s)."""
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
        "prediction_drift": _categorical_signal(
            "prediction_drift", columns.get("prediction"), settings.prediction_threshold, predicted, settings, reference_labels, "predictions"
        ),
        "label_drift": _categorical_signal(
            "label_drift", columns.get("feedback_label"), settings.label_threshold, len(labelled), settings, reference_labels, "feedback labels"
        ),
    }
    scored = [r for r in labelled if r.prediction is not None]
    feedback_accuracy = sum(r.prediction == r.feedback_label for r in scored) / len(scored) if scored else None
    signals["feedback_accuracy"] = _accuracy_signal(feedback_accuracy, len(scored), reference_accuracy, settings)
    new_labels = new_labels_summary(unknown_feedback, len(labelled) if known_labelled is None else known_labelled)
    signals["new_labels"] = _new_labels_signal(new_labels)
    return DriftResult(
        drift_detected=any(s.fired and s.triggers_retrain for s in signals.values()),
        drift_share=drift_share,
        drift_share_threshold=settings.drift_share,
        columns=columns,
        signals=signals,
        feedback_accuracy=feedback_accuracy,
        report_path=report_path,
        reference_rows=len(reference_texts),
        current_rows=len(current),
        feedback_rows=len(labelled),
        new_labels=new_labels,
    )


def unknown_feedback(records: Sequence[ProductionRecord], labels: Sequence[str]) -> list[ProductionRecord]:
    """The records (read without the label check) that the label check quarantines for their
    feedback alone: feedback naming a label outside `labels`, with no prediction or a known one. A
    record with an unknown prediction stays what the reader makes it, an unknown prediction."""
    known = set(labels)
    return [
        r for r in records
        if r.feedback_label is not None and r.feedback_label not in known and (r.prediction is None or r.prediction in known)
    ]


def in_window(records: Sequence[ProductionRecord], days: float, end: datetime) -> list[ProductionRecord]:
    """The records of the `days` up to `end`, the bounds of `ProductionLog.window`."""
    try:
        start: datetime | None = end - timedelta(days=days)
    except OverflowError:
        start = None
    return [r for r in records if (start is None or start < r.timestamp) and r.timestamp <= end]


def new_labels_summary(unknown: Sequence[ProductionRecord], known_labelled: int) -> dict:
    """count and share (of all labelled rows: `known_labelled` + the unknown ones) of the requests
    whose feedback names an unknown label; per label (most rows first, at most NEW_LABEL_MAX_LISTED)
    its count, share and NEW_LABEL_EXAMPLES newest examples. Labels, request ids and texts come from
    the log, so each is PII-scrubbed and cut (`scrubbed_excerpt`)."""
    labelled = known_labelled + len(unknown)
    by_label: dict[str, list[ProductionRecord]] = {}
    for r in unknown:
        by_label.setdefault(r.feedback_label, []).append(r)
    ranked = sorted(by_label.items(), key=lambda item: (-len(item[1]), item[0]))
    listed = []
    for label, rows in ranked[:NEW_LABEL_MAX_LISTED]:
        newest = sorted(rows, key=lambda r: r.timestamp, reverse=True)[:NEW_LABEL_EXAMPLES]
        listed.append({
            "label": scrubbed_excerpt(label),
            "count": len(rows),
            "share": len(rows) / labelled,
            "fired": _label_fires(len(rows), labelled),
            "examples": [{"request_id": scrubbed_excerpt(r.request_id), "text": scrubbed_excerpt(r.text)} for r in newest],
        })
    return {
        "count": len(unknown),
        "share": len(unknown) / labelled if labelled else None,
        "labelled_rows": labelled,
        "distinct_labels": len(by_label),
        "unlisted_labels": max(0, len(by_label) - NEW_LABEL_MAX_LISTED),
        "min_rows": NEW_LABEL_MIN_ROWS,
        "min_share": NEW_LABEL_MIN_SHARE,
        "fired": any(_label_fires(len(rows), labelled) for rows in by_label.values()),
        "labels": listed,
    }


def _label_fires(rows: int, labelled: int) -> bool:
    return rows >= NEW_LABEL_MIN_ROWS and rows / labelled >= NEW_LABEL_MIN_SHARE


def _markdown_text(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _new_labels_signal(summary: dict) -> Signal:
    threshold = NEW_LABEL_MIN_SHARE
    if summary["labelled_rows"] == 0:
        return Signal("new_labels", None, None, threshold, "not evaluated: no feedback in the window", triggers_retrain=False)
    if summary["count"] == 0:
        return Signal(
            "new_labels", False, 0.0, threshold, f"none: all {summary['labelled_rows']} feedback labels are task labels",
            triggers_retrain=False,
        )
    named = ", ".join(f"{_markdown_text(entry['label'])} ({entry['count']})" for entry in summary["labels"])
    if summary["unlisted_labels"]:
        named += f" and {summary['unlisted_labels']} more"
    rule = f"a label fires at >= {NEW_LABEL_MIN_ROWS} rows and >= {NEW_LABEL_MIN_SHARE:.0%} of labelled rows"
    detail = (
        f"{summary['count']} of {summary['labelled_rows']} labelled requests ({summary['share']:.1%}) name "
        f"{summary['distinct_labels']} label(s) the task does not know: {named}; "
        + (NEW_LABEL_ACTION if summary["fired"] else f"below the rule ({rule}); if one is real, {NEW_LABEL_ACTION}")
    )
    return Signal("new_labels", summary["fired"], summary["share"], threshold, detail, triggers_retrain=False)


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


def _categorical_signal(
    name: str, column: dict | None, threshold: float, rows: int, settings: DriftSettings, reference_labels: Sequence[str], what: str
) -> Signal:
    if column is None:
        return Signal(name, None, None, threshold, f"not evaluated: {rows} {what} in the window, fewer than min_signal_rows {settings.min_signal_rows}")
    floor = js_noise_floor(reference_labels, rows, settings.noise_quantile)
    fired = bool(column["drifted"]) and column["score"] > floor
    return Signal(
        name, fired, column["score"], threshold,
        f"Jensen-Shannon distance over {rows} {what} vs the training labels; noise floor {floor:.3f} at {rows} rows",
        noise_floor=floor,
    )


def _accuracy_signal(accuracy: float | None, rows: int, reference: float | None, settings: DriftSettings) -> Signal:
    threshold = settings.max_accuracy_drop
    if reference is None:
        return Signal("feedback_accuracy", None, accuracy, threshold, "not evaluated: no evaluation accuracy of the served model to compare with")
    if accuracy is None or rows < settings.min_signal_rows:
        return Signal("feedback_accuracy", None, accuracy, threshold, f"not evaluated: {rows} predictions with feedback, fewer than min_signal_rows {settings.min_signal_rows}")
    drop = reference - accuracy
    floor = accuracy_drop_noise_floor(reference, rows, settings.noise_quantile)
    return Signal(
        "feedback_accuracy", drop > threshold and drop > floor, drop, threshold,
        f"accuracy on {rows} requests with feedback {accuracy:.3f} vs {reference:.3f} at evaluation (drop {drop:+.3f}); "
        f"noise floor {floor:.3f} at {rows} rows",
        noise_floor=floor,
    )


# Samples per Monte Carlo noise floor: its quantile is stable to ~0.005 JS at the sizes that matter.
NOISE_DRAWS = 500


def js_noise_floor(reference_labels: Sequence[str], rows: int, quantile: float, seed: int = 0) -> float:
    """The `quantile` of the Jensen-Shannon distance between `rows` labels drawn from the reference
    label distribution and that distribution, computed as Evidently computes the drift score
    (category shares, scipy's distance in nats)."""
    import numpy as np
    from scipy.spatial import distance

    counts = np.array(list(Counter(reference_labels).values()), dtype=float)
    reference = counts / counts.sum()
    samples = np.random.default_rng(seed).multinomial(rows, reference, size=NOISE_DRAWS) / rows
    return float(np.quantile([distance.jensenshannon(reference, sample) for sample in samples], quantile))


def accuracy_drop_noise_floor(reference_accuracy: float, rows: int, quantile: float) -> float:
    """The accuracy drop that `rows` feedback rows of a model still at `reference_accuracy` exceed
    with probability 1 - `quantile` (binomial)."""
    from scipy.stats import binom

    return reference_accuracy - float(binom.ppf(1 - quantile, rows, reference_accuracy)) / rows
