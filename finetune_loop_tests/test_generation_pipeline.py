"""A generation task through the whole graph on a tiny random llama, through the CLI and Dagster:
curation, TRL training, evaluation on greedy answers (exact match), the gate, a GGUF verified on
its greedy answers under llama.cpp, promotion, drift. Issue #17: generation used to stop at export."""

from __future__ import annotations

import json

import dagster as dg
import pytest
import yaml

from finetune_loop.cli import EXIT_OK, main
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.ship.registry import champion_record
from finetune_loop.defs import metadata as contract
from finetune_loop_tests.conftest import use_loop_home

PROBLEMS = ("broken", "late", "missing", "wrong")


def _write_task(directory, base_model, target_format: str):
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(48):
        problem = PROBLEMS[i % len(PROBLEMS)]
        target = {"order": i, "problem": problem} if target_format == "json" else f"order {i} {problem}"
        rows.append({"id": f"g{i}", "email": f"hello, order {i} arrived {problem}, please help", "target": target})
    (directory / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    production = [
        {"request_id": f"r-{i}", "timestamp": f"2026-10-{1 + i % 28:02d}T10:00:00Z", "email": f"where is order {100 + i}"}
        for i in range(40)
    ]
    (directory / "production.jsonl").write_text("".join(json.dumps(r) + "\n" for r in production))
    task = {
        "name": f"tiny_extract_{target_format}", "kind": "generation", "target_format": target_format,
        "instruction": "Write the order number and the problem.", "base_model": str(base_model),
        "data": {"labeled_examples": "rows.jsonl", "production_log": "production.jsonl"},
        "fields": {"input": "email", "label": "target", "id": "id"},
        "split": {"holdout_fraction": 0.25, "validation_fraction": 0.1, "seed": 1},
        "training": {"lora_r": 4, "lora_alpha": 8, "learning_rate": 0.005, "epochs": 1, "batch_size": 8, "max_length": 128, "seed": 1},
        # A tiny random model's answers are noise: the gate's floors are off, its machinery is not.
        "gate": {"min_accuracy": 0.0, "must_beat_base": False, "champion_margin": 1.0, "slice_tolerance": 1.0, "min_regression_pass_rate": 0.0, "min_probe_pass_rate": 0.0},
        "export": {"outtype": "f32", "quant_types": ["Q8_0"], "quant_budget_points": {"Q8_0": 100.0}},
    }
    path = directory / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


@pytest.fixture(scope="module")
def generation_run(tmp_path_factory, tiny_base_model):
    root = tmp_path_factory.mktemp("generation")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        use_loop_home(patch, home)
        task = _write_task(root / "task", tiny_base_model, "text")
        exit_code = main(["run", "--task", str(task)])
        with dg.instance_for_test(temp_dir=str(home / "dagster_home")) as instance:
            yield {"exit": exit_code, "instance": instance, "home": LoopHome(home), "task": task}


def _latest(instance, key: str, contract_type):
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    assert event is not None, f"{key} was never materialized"
    return contract_type.from_dagster(event.asset_materialization.metadata)


def test_a_generation_task_runs_the_whole_loop_and_ships_a_verified_gguf(generation_run):
    instance = generation_run["instance"]
    assert generation_run["exit"] == EXIT_OK
    evaluation = _latest(instance, "eval_report", contract.EvalReportMetadata)
    assert evaluation.gate_passed is True and "exact_match" in evaluation.table
    export = _latest(instance, "gguf_export", contract.GgufExportMetadata)
    assert export.quant_type == "Q8_0" and export.shipped is True, export.failed_checks
    champion = _latest(instance, "champion_model", contract.ChampionModelMetadata)
    tracker = Tracker.for_task(generation_run["home"], "tiny_extract_text")
    record = champion_record(tracker, "tiny_extract_text-adapter")
    assert record is not None and str(record.version) == str(champion.version)
    drift = _latest(instance, "drift_report", contract.DriftReportMetadata)
    assert drift.current_rows > 0
