"""The bundled order-extraction example: its task file, data, probes and data card agree with each
other and with the pipeline's own checks. No model, no training."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from finetune_loop.core.common.examples import normalize_text
from finetune_loop.core.common.spec import load_task_spec, task_spec_json_schema
from finetune_loop.core.data.dedup import (
    NearDuplicateSettings,
    find_overlaps,
    remove_near_duplicates,
)
from finetune_loop.core.data.pii import scrub_examples, scrub_pii
from finetune_loop.core.data.probe_set import load_probes
from finetune_loop.core.data.production_log import read_task_log
from finetune_loop.core.data.validation import read_labeled_examples

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "finetune_loop" / "tasks" / "order_extraction.yaml"
EXAMPLE = REPO / "finetune_loop" / "examples" / "order_extraction"
FILES = ("tickets.jsonl", "traffic_pool.jsonl", "production_traffic.jsonl")
ISSUES = {"damaged", "late", "wrong_item", "missing_part", "refund_request", "cancel_order"}
ORDER_ID = re.compile(r"^[A-Z]-\d{5}$")


def _generator():
    spec = importlib.util.spec_from_file_location("order_extraction_generate", EXAMPLE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLE / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def spec():
    return load_task_spec(TASK)


def test_task_loads_as_a_json_generation_task(spec):
    assert (spec.name, spec.kind, spec.target_format) == ("order_extraction", "generation", "json")
    assert (spec.fields.input, spec.fields.label, spec.fields.id) == ("text", "target", "id")
    assert spec.labeled_examples_path == EXAMPLE / "tickets.jsonl"
    assert spec.traffic_pool_path == EXAMPLE / "traffic_pool.jsonl"
    assert spec.production_log_path == EXAMPLE / "production_traffic.jsonl"
    prompt = spec.system_prompt()
    assert "JSON object only" in prompt
    for word in ("order_id", "product", "issue", *ISSUES):
        assert word in prompt


def test_task_file_satisfies_the_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(task_spec_json_schema()).validate(yaml.safe_load(TASK.read_text()))


@pytest.mark.parametrize("name", ["tickets.jsonl", "traffic_pool.jsonl"])
def test_labelled_rows_pass_the_pipelines_validation_and_scrubbing(spec, name):
    examples, quarantine = read_labeled_examples(spec, EXAMPLE / name)
    assert quarantine == []
    assert len(examples) == len(_rows(name))
    # Stored compactly, keys in the file's order: exact match compares this very string.
    assert all(e.label == json.dumps(json.loads(e.label), ensure_ascii=False, separators=(",", ":")) for e in examples)
    scrubbed, counts = scrub_examples(examples, spec)
    assert counts["email"] > 0 and counts["phone"] > 0  # the PII is there on purpose, and found
    for before, after in zip(examples, scrubbed):
        # No target holds PII, so scrubbing never changes one ...
        assert after.label == before.label
        target = json.loads(after.label)
        # ... and never removes what the target is read from.
        if target["order_id"]:
            assert target["order_id"] in GEN.order_ids_named(after.text), after.text
        if target["product"]:
            assert target["product"] in GEN.products_named(after.text), after.text
        assert "@" not in after.text
    for row in _rows(name):
        for value in row["target"].values():
            assert value is None or scrub_pii(value).text == value


@pytest.mark.parametrize("name", ["tickets.jsonl", "traffic_pool.jsonl"])
def test_targets_have_exactly_the_three_keys_and_match_the_text(name):
    rows = _rows(name)
    assert [r["id"] for r in rows] == sorted({r["id"] for r in rows})  # unique, in order
    assert [r["created_at"] for r in rows] == sorted(r["created_at"] for r in rows)
    for row in rows:
        target, text = row["target"], row["text"]
        assert list(target) == ["order_id", "product", "issue"], row["id"]
        assert target["issue"] in ISSUES
        assert target["order_id"] is None or ORDER_ID.match(target["order_id"]), row["id"]
        assert target["product"] is None or target["product"] in GEN.CATALOGUE
        assert row["source"] == "synthetic-v1" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["created_at"])
        assert 8 <= len(text.split()) <= 60, row["id"]
        # The order id the target names is the one the text names, whatever its written form;
        # a ticket without one names none.
        assert GEN.order_ids_named(text) == ([target["order_id"]] if target["order_id"] else []), row["id"]
        named = GEN.products_named(text)
        if target["product"] is None:
            assert named == [] or (target["issue"] == "wrong_item" and len(named) <= 1), row["id"]
        else:
            assert target["product"] in named and len(named) <= 2, row["id"]
    # Some tickets name two products, and the target is the one complained about.
    assert sum(len(GEN.products_named(r["text"])) == 2 for r in rows) >= 0.1 * len(rows)
    # The surface forms vary: not every ticket spells the product the way the target does.
    spelt_as_target = sum(r["target"]["product"].casefold() in r["text"].casefold() for r in rows if r["target"]["product"])
    assert spelt_as_target < 0.5 * sum(r["target"]["product"] is not None for r in rows)
    assert any("#" in r["text"] for r in rows) and any(re.search(r"\b[a-z]-\d{5}\b", r["text"]) for r in rows)


def test_production_traffic_reads_as_a_clean_log(spec):
    log = read_task_log(spec)
    assert log.quarantine == []
    assert len(log.records) == len(_rows("production_traffic.jsonl")) == 200
    assert all(set(r) == {"request_id", "timestamp", "text"} for r in _rows("production_traffic.jsonl"))


def test_no_text_repeats_within_or_across_files():
    texts = [r["text"] for name in FILES for r in _rows(name)]
    keys = [normalize_text(t) for t in texts]
    assert len(set(keys)) == len(keys)
    assert len({GEN.norm_key(t) for t in texts}) == len(texts)  # not even up to punctuation


def test_curation_would_drop_no_ticket_as_a_near_duplicate(spec):
    """Near duplicates of a generation task are clustered over all rows (one stratum): a template
    filled twice with different order ids would lose a row with a different target."""
    examples, _ = read_labeled_examples(spec)
    settings = NearDuplicateSettings(threshold=spec.curation.near_duplicate_threshold, seed=spec.split.seed)
    kept, audit = remove_near_duplicates([replace(e, label="all rows") for e in examples], settings)
    assert audit.removed == [] and len(kept) == len(examples)
    pool, _ = read_labeled_examples(spec, spec.traffic_pool_path)
    assert find_overlaps(pool, {"tickets": examples}, spec.curation.contamination_threshold) == []


def test_probes_load_and_repeat_no_ticket(spec):
    probes = load_probes(spec.probes_path, spec)
    assert {p.kind for p in probes.probes} == {"format", "stability"}
    examples, _ = read_labeled_examples(spec)
    texts = [t for p in probes.probes for t in (p.text, *p.variants)]
    probe_rows = [replace(examples[0], id=f"probe-{i}", text=t) for i, t in enumerate(texts)]
    assert find_overlaps(probe_rows, {"tickets": examples}, spec.curation.contamination_threshold) == []
    # A stability probe's variants name the same order id and product as its clean text.
    for probe in probes.probes:
        if probe.kind == "stability":
            for variant in probe.variants:
                assert GEN.order_ids_named(variant) == GEN.order_ids_named(probe.text), variant
                assert GEN.products_named(variant) == GEN.products_named(probe.text), variant


def test_generator_reproduces_the_committed_files(tmp_path):
    assert GEN.main([str(tmp_path), "--quiet"]) == 0
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (EXAMPLE / name).read_bytes(), name


def _card_table(header: str) -> dict[str, list[int]]:
    """The DATA_CARD table whose header row starts with `header`: first cell -> the number cells."""
    lines = (EXAMPLE / "DATA_CARD.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.replace("`", "").strip().strip("*") for c in line.strip().strip("|").split("|")]
        table[cells[0]] = [int(re.match(r"\d+", c).group()) for c in cells[1:] if re.match(r"\d+", c)]
    return table


def test_data_card_counts_match_the_files():
    tickets, pool = _rows("tickets.jsonl"), _rows("traffic_pool.jsonl")
    table = _card_table("| Issue |")
    for issue in ISSUES:
        expected = [sum(r["target"]["issue"] == issue for r in rows) for rows in (tickets, pool)]
        assert table[issue] == expected, issue
    assert table["total"] == [len(tickets), len(pool)]
    for key in ("order_id", "product"):
        assert table[f"{key} null"] == [sum(r["target"][key] is None for r in rows) for rows in (tickets, pool)]
    files = _card_table("| File |")
    assert {name: files[name][0] for name in FILES} == {name: len(_rows(name)) for name in FILES}
    assert set(Counter(r["target"]["issue"] for r in tickets)) == ISSUES
