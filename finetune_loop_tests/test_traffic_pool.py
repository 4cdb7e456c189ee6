"""Simulated traffic draws only from `data.traffic_pool`, labelled rows set aside for it: never
from the labelled examples the model trained on, and never a pool row that repeats one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from finetune_loop.core.common.examples import normalize_text
from finetune_loop.core.common.spec import TaskSpecError, load_task_spec
from finetune_loop.core.data.validation import read_labeled_examples
from finetune_loop.core.monitor.simulate import (
    SimulationError,
    SimulationWarning,
    TrafficSettings,
    draw_requests,
    read_traffic_pool,
)
from finetune_loop.defs.resources import EXAMPLE_TASK
from finetune_loop_tests.conftest import TINY_LABELS, tiny_rows, write_tiny_task

# Phrasings the tiny task's labelled rows (conftest._PHRASES) never use.
POOL_PHRASES = {
    "billing": ["my statement shows a subscription fee i never agreed to", "the invoice lists a seat we removed last spring",
                "you billed the old card even after i switched to paypal"],
    "shipping": ["the courier left my box with a neighbour i do not know", "can the parcel go to my office instead of home",
                 "the van came at midnight and nobody answered"],
    "login": ["the sign in page reloads forever on my tablet", "i forgot which email address i registered under",
              "my session ends every minute and asks me to start over"],
}


def traffic_pool_rows(count_per_label: int = 6) -> list[dict]:
    return [
        {"id": f"pool-{label}-{i}", "text": f"{phrases[i % len(phrases)]}, case {1000 + 7 * i}", "label": label}
        for label, phrases in POOL_PHRASES.items()
        for i in range(count_per_label)
    ]


def add_traffic_pool(task: Path, rows: list[dict] | None = None, name: str = "traffic_pool.jsonl") -> Path:
    """Write a pool beside the tiny task and name it under `data:` (what conftest.write_tiny_task
    does not do yet); returns the task file."""
    rows = traffic_pool_rows() if rows is None else rows
    (task.parent / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = yaml.safe_load(task.read_text())
    raw["data"]["traffic_pool"] = name
    task.write_text(yaml.safe_dump(raw))
    return task


@pytest.fixture
def tiny_task(tmp_path) -> Path:
    # Nothing here loads the model: drawing requests happens before any model sees them.
    return write_tiny_task(tmp_path / "task", tmp_path / "no_model_needed")


@pytest.mark.parametrize("shift", ["none", "mix", "phone_keyboard"])
def test_drawn_requests_all_come_from_the_pool_and_none_from_the_labelled_examples(tiny_task, shift):
    spec = load_task_spec(add_traffic_pool(tiny_task))
    draw = draw_requests(spec, TrafficSettings(rows=120, shift=shift, strength=0.5, surge_label="login", seed=4))
    pool = {r["id"]: r for r in traffic_pool_rows()}
    labelled = {normalize_text(e.text) for e in read_labeled_examples(spec)[0]}
    assert len(draw.requests) == 120 and draw.skipped_overlap == 0 and draw.pool.rows_read == len(pool)
    for request in draw.requests:
        assert request.id in pool and request.label == pool[request.id]["label"]
        if shift != "phone_keyboard":
            assert request.text == pool[request.id]["text"]
        assert normalize_text(request.text) not in labelled
    assert {r.label for r in draw.requests} == set(TINY_LABELS)


def test_a_task_without_a_traffic_pool_is_refused_with_the_reason(tiny_task):
    spec = load_task_spec(tiny_task)
    assert spec.traffic_pool_path is None
    with pytest.raises(SimulationError, match="names no data.traffic_pool") as refused:
        draw_requests(spec, TrafficSettings(rows=10))
    assert "drawing traffic from the labelled examples would replay rows the model trained on" in str(refused.value)


def test_pool_rows_that_repeat_labelled_examples_are_left_out_and_counted(tiny_task):
    labelled = tiny_rows()
    repeats = [
        # The same ticket up to case and spacing, and up to punctuation under another label: both are
        # rows the model trained on, whatever the pool says their label is.
        {"id": "copy-exact", "text": "  " + labelled[0]["text"].upper() + " ", "label": labelled[0]["label"]},
        {"id": "copy-near", "text": labelled[1]["text"] + "!", "label": next(l for l in TINY_LABELS if l != labelled[1]["label"])},
    ]
    spec = load_task_spec(add_traffic_pool(tiny_task, traffic_pool_rows() + repeats))
    with pytest.warns(SimulationWarning, match=r"left out 2 of 20 data.traffic_pool rows that repeat a labelled example"):
        draw = draw_requests(spec, TrafficSettings(rows=300, seed=2))
    assert draw.skipped_overlap == 2 and draw.pool.rows_read == 20 and len(draw.pool.rows) == 18
    assert {o["id"]: o["suite_id"] for o in draw.pool.overlaps} == {"copy-exact": labelled[0]["id"], "copy-near": labelled[1]["id"]}
    assert {o["id"]: o["similarity"] for o in draw.pool.overlaps}["copy-exact"] == 1.0
    assert not {r.id for r in draw.requests} & {"copy-exact", "copy-near"}


def test_a_pool_that_only_repeats_labelled_examples_is_refused(tiny_task):
    spec = load_task_spec(add_traffic_pool(tiny_task, [{**r, "id": f"again-{r['id']}"} for r in tiny_rows()[:10]]))
    with pytest.raises(SimulationError, match="every one of the 10 rows of data.traffic_pool .* repeats a labelled example"):
        read_traffic_pool(spec)


def test_an_invalid_pool_row_is_refused_not_dropped(tiny_task):
    spec = load_task_spec(add_traffic_pool(tiny_task, [*traffic_pool_rows(), {"id": "odd", "text": "where is my refund", "label": "refunds"}]))
    with pytest.raises(SimulationError, match=r"data.traffic_pool .*: 1 invalid rows, first \(line 19\)"):
        draw_requests(spec, TrafficSettings(rows=10))


def test_a_missing_pool_file_or_the_labelled_file_itself_is_refused_at_load(tiny_task):
    raw = yaml.safe_load(tiny_task.read_text())
    raw["data"]["traffic_pool"] = "no_such_pool.jsonl"
    tiny_task.write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskSpecError, match=r"task.yaml: data.traffic_pool: no such file or directory: .*no_such_pool.jsonl"):
        load_task_spec(tiny_task)
    raw["data"]["traffic_pool"] = raw["data"]["labeled_examples"]
    tiny_task.write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskSpecError, match="data.traffic_pool names the same file as data.labeled_examples"):
        load_task_spec(tiny_task)


def test_the_example_pool_is_regenerated_byte_for_byte_and_shares_no_row_with_the_tickets():
    spec = load_task_spec(EXAMPLE_TASK)
    generator_path = spec.traffic_pool_path.parent / "generate.py"
    module_spec = importlib.util.spec_from_file_location("support_triage_generate", generator_path)
    generator = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(generator)
    tickets_text, traffic_text, _, pool_text = generator.render()
    assert spec.traffic_pool_path.read_text(encoding="utf-8") == pool_text
    assert spec.labeled_examples_path.read_text(encoding="utf-8") == tickets_text
    assert spec.production_log_path.read_text(encoding="utf-8") == traffic_text

    pool = read_traffic_pool(spec)
    assert pool.rows_read == len(pool.rows) == sum(generator.POOL_COUNTS.values()) and pool.skipped_overlap == 0
    counts = {label: sum(e.label == label for e in pool.rows) for label in spec.labels}
    assert counts == generator.POOL_COUNTS and min(counts.values()) < max(counts.values())
