"""How long one drift report takes on a 10k-row production window (target: <= 10 s on 2 cores).

Reference: Banking77 train texts and intents (10,003 rows); current: 10,000 requests drawn from
Banking77 test texts, a third of them rewritten phone-keyboard style, each with a prediction and a
third with a feedback label, so every signal (text, three descriptors, predictions, labels,
feedback accuracy) is computed. Times the Evidently import once, then `build_drift_report` (the
Evidently run plus the HTML file) over --repeats runs, and prints one JSON line.

    python benchmarks/drift_report.py                      # reads ../shared/datasets/banking77
    python benchmarks/drift_report.py --rows 10000 --repeats 3 --data /path/to/banking77
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "banking77"


def _read(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return [(row["text"], row["category"]) for row in csv.DictReader(handle)]


def _phone_style(rng: random.Random, text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum() or c == " ").replace(" you ", " u ").replace(" please", " pls")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with Banking77 train.csv and test.csv")
    parser.add_argument("--rows", type=int, default=10_000, help="production rows in the window")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.data / "train.csv").is_file():
        print(f"Banking77 not found under {args.data} (train.csv, test.csv); pass --data", file=sys.stderr)
        return 1

    started = time.perf_counter()
    import evidently  # noqa: F401  (timed apart: a one-off cost per process)

    from finetune_loop.core.common.spec import DriftSettings
    from finetune_loop.core.data.production_log import ProductionRecord
    from finetune_loop.core.monitor.drift import build_drift_report

    import_seconds = time.perf_counter() - started
    train, test = _read(args.data / "train.csv"), _read(args.data / "test.csv")
    labels = sorted({label for _, label in train})
    rng = random.Random(0)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    current = []
    for i in range(args.rows):
        text, label = rng.choice(test)
        if i % 3 == 0:
            text = _phone_style(rng, text)
        prediction = label if rng.random() < 0.8 else rng.choice(labels)
        current.append(
            ProductionRecord(
                request_id=f"r{i}", timestamp=start + timedelta(seconds=60 * i), text=text,
                prediction=prediction, feedback_label=label if i % 3 == 1 else None,
            )
        )
    settings = DriftSettings(descriptor_method="wasserstein", descriptor_threshold=0.1)
    seconds, result = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            t0 = time.perf_counter()
            result = build_drift_report(
                [t for t, _ in train], [label for _, label in train], current, Path(tmp) / f"report-{repeat}.html", settings, 0.85
            )
            seconds.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "benchmark": "drift_report",
                "reference_rows": len(train),
                "current_rows": len(current),
                "evidently_import_s": round(import_seconds, 2),
                "report_s": [round(s, 2) for s in seconds],
                "report_median_s": round(statistics.median(seconds), 2),
                "target_s": 10.0,
                "signals_fired": result.signals_fired,
                "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "python": platform.python_version(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
