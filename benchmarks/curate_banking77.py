"""Curation of Banking77 (10,003 labelled queries, 77 intents; the official test split as the
designated holdout) with the same core calls the `curated_dataset` asset makes, timed per stage.

    .venv/bin/python benchmarks/curate_banking77.py            # target: curation <= 60 s on 2 cores

The base model is prepared (and its tokenizer loaded) before the clock starts: that is a one-off
cost per base, shared with training, and reported on its own line. Every row's token count after
chat rendering is measured, as in the asset. Needs ../shared/datasets/banking77 beside the checkout.
The last line reads `curation_seconds: N.N`.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data import curation, suites
from finetune_loop.core.train import base_model, prompts

TASK = Path(__file__).with_name("banking77_task.yaml")
TARGET_SECONDS = 60.0


def main() -> int:
    spec = load_task_spec(TASK)
    if not spec.labeled_examples_path.is_file():
        print(f"Banking77 is not at {spec.labeled_examples_path}: nothing to measure", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        started = time.perf_counter()
        base = base_model.prepare_base_model(spec.base_model, home / "base_models")
        token_length = prompts.rendered_length(spec, base.directory)
        print(f"base model prepared + tokenizer loaded (not counted): {time.perf_counter() - started:.1f} s")

        timings = {}
        clock = time.perf_counter()
        holdout = suites.freeze_suite(spec, "holdout", home / "suites", token_length=token_length)
        timings["freeze holdout_suite"] = time.perf_counter() - clock
        clock = time.perf_counter()
        regression = suites.freeze_suite(spec, "regression", home / "suites", exclude=[holdout], token_length=token_length)
        timings["freeze regression_suite"] = time.perf_counter() - clock
        clock = time.perf_counter()
        dataset = curation.curate_dataset(spec, [holdout, regression], home / "datasets", token_length=token_length)
        timings["curate_dataset"] = time.perf_counter() - clock
        clock = time.perf_counter()
        remaining = curation.contamination_between(spec, dataset, [holdout, regression])
        timings["no_contamination check"] = time.perf_counter() - clock
        total = sum(timings.values())

        report = dataset.report
        print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
        for stage, seconds in timings.items():
            print(f"{stage:<26} {seconds:6.1f} s")
        print(f"holdout {holdout.size} rows ({len(holdout.per_label)} labels), regression {regression.size} rows")
        print(
            f"rows read {report.rows_read} -> train {report.train_rows} + validation {report.validation_rows}; "
            f"quarantined {json.dumps(report.quarantined)}; exact duplicates {report.duplicates_removed}; "
            f"near duplicates {report.near_duplicates_removed}; "
            f"rows reserved for suites {json.dumps(report.suite_rows_reserved)}; near/exact repeats of suite rows removed "
            f"{json.dumps(report.contamination_removed)}"
        )
        print(f"labels in train: {len(report.per_label_train)} (min {min(report.per_label_train.values())}, max {max(report.per_label_train.values())} rows)")
        print(f"no_contamination: {'PASSED' if not remaining else f'FAILED ({len(remaining)} overlaps)'}; truncation rate {report.truncation_rate:.4f}")
        print(f"target <= {TARGET_SECONDS:.0f} s: {'met' if total <= TARGET_SECONDS else 'MISSED'}")
        print(f"curation_seconds: {total:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
