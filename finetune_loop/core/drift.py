"""Drift of production inputs against the training inputs, measured by Evidently.

The inputs are compared as text (Evidently's text-content drift: a domain classifier that tells
reference from current) and through two descriptors that move when the writing style moves
(length in characters, words per message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class ProductionLog:
    texts: list[str]
    quarantine: list[dict]
    first_timestamp: str | None
    last_timestamp: str | None


@dataclass(frozen=True)
class DriftResult:
    drift_detected: bool
    drift_share: float
    drift_share_threshold: float
    # column -> Evidently's drift score, method and threshold; the per-method meaning of the
    # threshold stays Evidently's (a p-value bound for K-S, a percentile for text content drift).
    columns: dict[str, dict]
    report_path: Path
    reference_rows: int
    current_rows: int


def read_production_log(path: Path, input_field: str = "text") -> ProductionLog:
    """Production requests in file order; rows without a usable input are quarantined with a reason."""
    if not path.is_file():
        raise FileNotFoundError(f"production log not found: {path}")
    texts: list[str] = []
    quarantine: list[dict] = []
    timestamps: list[str] = []
    for line_no, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            quarantine.append({"line": line_no, "reason": f"malformed JSON: {exc.msg}", "row": raw})
            continue
        text = row.get(input_field) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            quarantine.append({"line": line_no, "reason": f"missing input: field {input_field!r} is absent, empty or not a string", "row": row})
            continue
        texts.append(text)
        if isinstance(row.get("timestamp"), str):
            timestamps.append(row["timestamp"])
    return ProductionLog(texts, quarantine, min(timestamps, default=None), max(timestamps, default=None))


def _frame(texts: Sequence[str]):
    import pandas as pd

    return pd.DataFrame(
        {"text": list(texts), "length_chars": [len(t) for t in texts], "word_count": [len(t.split()) for t in texts]}
    )


def build_drift_report(
    reference_texts: Sequence[str], current_texts: Sequence[str], report_path: Path, drift_share_threshold: float
) -> DriftResult:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if not reference_texts or not current_texts:
        raise ValueError(
            f"drift needs rows on both sides: {len(reference_texts)} reference, {len(current_texts)} current"
        )
    definition = DataDefinition(text_columns=["text"], numerical_columns=["length_chars", "word_count"])
    reference = Dataset.from_pandas(_frame(reference_texts), data_definition=definition)
    current = Dataset.from_pandas(_frame(current_texts), data_definition=definition)
    snapshot = Report([DataDriftPreset(drift_share=drift_share_threshold)]).run(current_data=current, reference_data=reference)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(report_path))

    drifted_share = None
    columns: dict[str, dict] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            drifted_share = float(metric["value"]["share"])
        elif config["type"].endswith("ValueDrift"):
            columns[config["column"]] = {
                "score": float(metric["value"]),
                "method": config.get("method"),
                "threshold": config.get("threshold"),
            }
    if drifted_share is None:
        raise RuntimeError("Evidently's report has no DriftedColumnsCount metric; the preset changed shape")
    return DriftResult(
        drift_detected=drifted_share >= drift_share_threshold,
        drift_share=drifted_share,
        drift_share_threshold=drift_share_threshold,
        columns=columns,
        report_path=report_path,
        reference_rows=len(reference_texts),
        current_rows=len(current_texts),
    )

