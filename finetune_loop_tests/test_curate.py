import json
from dataclasses import replace
from pathlib import Path

import pytest

from finetune_loop.core.common import examples
from finetune_loop.core.common.files import sha256_file
from finetune_loop.core.common.spec import TaskSpec, load_task_spec
from finetune_loop.core.data import (
    contamination,
    curation,
    exact_dedup,
    readers,
    suites,
    validation,
)
from finetune_loop_tests.conftest import tiny_rows, write_tiny_task


@pytest.fixture
def spec(tmp_path):
    return load_task_spec(write_tiny_task(tmp_path / "task", Path("unused-base")))


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_bad_rows_are_quarantined_with_their_reason(spec):
    good = [json.dumps(r).encode() for r in tiny_rows(count_per_label=4)]
    bad = [
        b'{"id": "b1", "text": "unterminated',
        b'["not", "an", "object"]',
        b'{"id": "b3", "label": "billing"}',
        b'{"id": "b4", "text": "   ", "label": "billing"}',
        b'{"id": "b5", "text": "hello", "label": "refunds"}',
        b'{"id": "b6", "text": 42, "label": "billing"}',
        b'{"id": "b7", "text": "bell \\u0007 char", "label": "billing"}',
        b'{"id": "b8", "text": "caf\xe9", "label": "billing"}',
        b'{"id": "billing-0", "text": "second row with a taken id", "label": "billing"}',
        b'{"id": "b10", "text": "no label at all"}',
    ]
    _write_lines(spec.labeled_examples_path, good + bad)
    examples, quarantine = validation.read_labeled_examples(spec)
    assert len(examples) == len(good)
    reasons = [q["reason"] for q in quarantine]
    assert reasons[0].startswith("malformed JSON")
    assert reasons[1] == "not a JSON object: got list"
    assert reasons[2] == "missing input: field 'text' is absent"
    assert reasons[3] == "empty input"
    assert reasons[4] == "unknown label: 'refunds' is not in the task's label set"
    assert reasons[5] == "input not a string: field 'text' is int"
    assert reasons[6] == "control characters in input"
    assert reasons[7].startswith("not valid UTF-8: invalid continuation byte")
    assert reasons[8] == "duplicate id: 'billing-0' already used by an earlier row"
    assert reasons[9] == "missing label: field 'label' is absent or empty"
    assert [q["line"] for q in quarantine] == list(range(len(good) + 1, len(good) + len(bad) + 1))
    assert [validation.reason_kind(r) for r in reasons] == [
        "malformed JSON", "not a JSON object", "missing input", "empty input", "unknown label",
        "input not a string", "control characters in input", "not valid UTF-8", "duplicate id", "missing label",
    ]


def test_csv_rows_with_wrong_cell_counts_are_quarantined(spec, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('id,text,label\n1,"where is my parcel",shipping\n2,too,many,cells,billing\n3,short\n')
    examples, quarantine = validation.read_labeled_examples(replace(spec, labeled_examples_path=path))
    assert [e.id for e in examples] == ["1"]
    assert [q["reason"] for q in quarantine] == [
        "malformed CSV: more cells than header columns",
        "malformed CSV: fewer cells than header columns",
    ]


def test_missing_or_unsupported_files_fail_clearly(spec, tmp_path):
    with pytest.raises(readers.CurationError, match="labeled examples file not found"):
        validation.read_labeled_examples(replace(spec, labeled_examples_path=tmp_path / "gone.jsonl"))
    excel = tmp_path / "rows.xlsx"
    excel.write_bytes(b"PK")
    with pytest.raises(readers.CurationError, match="unsupported labeled examples format '.xlsx'"):
        validation.read_labeled_examples(replace(spec, labeled_examples_path=excel))
    damaged = tmp_path / "rows.parquet"
    damaged.write_bytes(b"PAR1")
    with pytest.raises(readers.CurationError, match="rows.parquet is not a readable Parquet file"):
        validation.read_labeled_examples(replace(spec, labeled_examples_path=damaged))


def test_dedup_keeps_one_per_normalised_text_and_quarantines_conflicts():
    rows = [
        examples.Example("a", "Where is my parcel?", "shipping"),
        examples.Example("b", "  where IS my   parcel?", "shipping"),
        examples.Example("c", "I was charged twice", "billing"),
        examples.Example("d", "i was charged twice", "shipping"),
        examples.Example("e", "cannot log in", "login"),
    ]
    kept, duplicates, conflicts = exact_dedup.deduplicate(rows)
    assert [e.id for e in kept] == ["a", "e"]
    assert duplicates == [{"id": "b", "duplicate_of": "a", "row": {"id": "b", "text": "  where IS my   parcel?", "label": "shipping", "source": "unspecified", "licence": "unspecified", "slices": {}}}]
    assert sorted(c["id"] for c in conflicts) == ["c", "d"]
    assert conflicts[0]["reason"] == "conflicting labels: same text as 1 other row(s), labelled ['billing', 'shipping']"


def test_every_row_is_accounted_for(spec, tmp_path):
    rows = tiny_rows(count_per_label=10)
    rows.append({**rows[0], "id": "copy-of-first"})
    lines = [json.dumps(r).encode() for r in rows] + [b"{broken"]
    _write_lines(spec.labeled_examples_path, lines)
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    regression = suites.freeze_suite(spec, "regression", tmp_path / "suites", exclude=[holdout])
    dataset = curation.curate_dataset(spec, [holdout, regression], tmp_path / "datasets")
    report = dataset.report
    assert report.rows_read == len(lines)
    assert report.duplicates_removed == 1
    assert report.quarantined == {"malformed JSON": 1}
    removed_for_suites = sum(report.contamination_removed.values()) + sum(report.suite_rows_reserved.values())
    accounted = report.train_rows + report.validation_rows + removed_for_suites + report.duplicates_removed + report.near_duplicates_removed + 1
    assert accounted == report.rows_read
    # The suites' own rows are reserved, not counted as contamination (a suite row that near-dedup
    # already folded into another row shows up as that row's overlap instead).
    assert 0 < report.suite_rows_reserved["holdout"] <= holdout.size
    assert 0 < report.suite_rows_reserved["regression"] <= regression.size
    assert curation.contamination_between(spec, dataset, [holdout, regression]) == []
    assert set(report.per_label_train) == set(spec.labels) and all(report.per_label_train.values())
    train_texts = {examples.normalize_text(e.text) for e in readers.read_examples(dataset.train_path)}
    holdout_texts = {examples.normalize_text(e.text) for e in readers.read_examples(holdout.path)}
    assert not train_texts & holdout_texts
    assert json.loads(dataset.duplicates_path.read_text())["duplicate_of"] == rows[0]["id"]


def test_training_rows_that_repeat_a_behaviour_probe_are_removed_as_contamination(tmp_path):
    rows = tiny_rows()
    clean, variant = rows[0]["text"], rows[1]["text"]
    probes = f"""
probes:
  - kind: stability
    name: copied_from_training
    text: "{clean}"
    variants: ["{variant.upper()}  "]
"""
    spec = load_task_spec(write_tiny_task(tmp_path / "task", Path("unused-base"), probes=probes))
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    regression = suites.freeze_suite(spec, "regression", tmp_path / "suites", exclude=[holdout])
    dataset = curation.curate_dataset(spec, [holdout, regression], tmp_path / "datasets")

    suite_texts = {examples.normalize_text(e.text) for suite in (holdout, regression) for e in readers.read_examples(suite.path)}
    leaked = {examples.normalize_text(t) for t in (clean, variant)} - suite_texts
    assert leaked, "the probe texts must come from rows no frozen suite already reserves"
    removed = [json.loads(line) for line in (dataset.directory / "contamination.jsonl").read_text().splitlines()]
    # A leaked row may have been folded into a near-duplicate first; then that representative is
    # the row removed, still naming the probe it repeats.
    by_probe = [r for r in removed if r["suite"] == contamination.PROBES_SUITE]
    assert by_probe and all(r["suite_id"].startswith("probe:copied_from_training:") for r in by_probe)
    assert dataset.report.contamination_removed[contamination.PROBES_SUITE] == len(by_probe)
    curated = readers.read_examples(dataset.train_path) + readers.read_examples(dataset.validation_path)
    assert not leaked & {examples.normalize_text(e.text) for e in curated}
    assert curation.contamination_between(spec, dataset, [holdout, regression]) == []


def test_holdout_is_frozen_and_a_changed_file_is_an_error(spec, tmp_path):
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in tiny_rows()])
    suites_dir = tmp_path / "suites"
    first = suites.freeze_suite(spec, "holdout", suites_dir)
    assert first.created and first.size > 0 and set(first.per_label) == set(spec.labels)
    # New data does not regenerate the holdout.
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in tiny_rows(seed=7)])
    again = suites.freeze_suite(spec, "holdout", suites_dir)
    assert not again.created and again.content_hash == first.content_hash
    with first.path.open("a") as handle:
        handle.write(json.dumps({"id": "x", "text": "sneaked in", "label": "billing"}) + "\n")
    with pytest.raises(suites.SuiteChangedError) as error:
        suites.freeze_suite(spec, "holdout", suites_dir)
    assert f"expected content hash {first.content_hash}" in str(error.value)
    assert sha256_file(first.path) in str(error.value)

    # Replacing is explicit and versioned: the old suite is archived, the next freeze is version 2.
    archived = suites.archive_suite(suites_dir, "holdout")
    assert archived.name == "holdout.v1.jsonl"
    replaced = suites.freeze_suite(spec, "holdout", suites_dir)
    assert replaced.created
    assert json.loads((suites_dir / "holdout.manifest.json").read_text())["version"] == 2


def test_regression_suite_never_overlaps_the_holdout(spec, tmp_path):
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in tiny_rows(count_per_label=30)])
    suites_dir = tmp_path / "suites"
    holdout = suites.freeze_suite(spec, "holdout", suites_dir)
    regression = suites.freeze_suite(spec, "regression", suites_dir, exclude=[holdout])
    assert regression.size > 0
    holdout_texts = {examples.normalize_text(e.text) for e in readers.read_examples(holdout.path)}
    assert not holdout_texts & {examples.normalize_text(e.text) for e in readers.read_examples(regression.path)}


def test_designated_suite_file_is_validated_like_any_data(spec, tmp_path):
    designated = tmp_path / "holdout.jsonl"
    rows = tiny_rows(count_per_label=3, seed=5)
    _write_lines(designated, [json.dumps(r).encode() for r in rows] + [b'{"id": "bad", "text": "x", "label": "nope"}'])
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in tiny_rows()])
    suite = suites.freeze_suite(replace(spec, holdout_path=designated), "holdout", tmp_path / "suites")
    assert suite.size == len({examples.normalize_text(r["text"]) for r in rows})
    assert "bad" not in {e.id for e in readers.read_examples(suite.path)}


def test_revoked_sources_are_excluded_and_unknown_sources_quarantined(spec, tmp_path):
    rows = tiny_rows(count_per_label=12)
    for index, row in enumerate(rows):
        row["source"] = "vendor-a" if index % 3 == 0 else "in-house"
    rows[1]["source"] = "scraped-forum"
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in rows])
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  vendor-a: {licence: CC-BY-4.0, status: revoked}\n  in-house: {licence: proprietary, status: active}\n")
    spec = replace(spec, sources_path=sources)
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    dataset = curation.curate_dataset(spec, [holdout], tmp_path / "datasets")
    assert dataset.report.revoked_removed == {"vendor-a": sum(1 for r in rows if r["source"] == "vendor-a")}
    assert dataset.report.quarantined == {"unknown source": 1}
    assert {e.source for e in readers.read_examples(dataset.train_path)} == {"in-house"}


def test_pii_is_scrubbed_and_over_long_rows_are_quarantined(spec, tmp_path):
    rows = tiny_rows(count_per_label=12)
    rows[0]["text"] = "reach me at jane.doe@example.com or +1 202-555-0143 " + rows[0]["text"]
    rows[1]["text"] = "word " * 200
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in rows])
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    dataset = curation.curate_dataset(spec, [holdout], tmp_path / "datasets", token_length=lambda e: len(e.text.split()))
    report = dataset.report
    assert report.quarantined == {"over-long input": 1}
    assert report.truncation_rate == pytest.approx(1 / len(rows))
    assert report.pii_replacements.get("email") == 1
    every_text = dataset.train_path.read_text() + dataset.validation_path.read_text() + holdout.path.read_text()
    assert "jane.doe@example.com" not in every_text


def test_too_many_bad_rows_fail_the_curation_naming_the_top_reasons(spec, tmp_path):
    good = [json.dumps(r).encode() for r in tiny_rows(count_per_label=4)]
    bad = [json.dumps({"id": f"x{i}", "text": "hello", "label": "refunds"}).encode() for i in range(10)]
    _write_lines(spec.labeled_examples_path, good + bad)
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    with pytest.raises(readers.CurationError) as error:
        curation.curate_dataset(spec, [holdout], tmp_path / "datasets")
    assert "above curation.max_quarantine_share 20.0%" in str(error.value)
    assert "unknown label (10)" in str(error.value)


def test_parquet_and_saved_hf_datasets_are_read_like_jsonl(spec, tmp_path):
    import pandas as pd
    from datasets import Dataset, DatasetDict

    rows = tiny_rows(count_per_label=2)
    rows.append({"id": "no-label", "text": "where is it", "label": None})
    parquet = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    hf_dir = tmp_path / "hf"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(hf_dir))
    for path in (parquet, hf_dir):
        examples, quarantine = validation.read_labeled_examples(spec, path)
        assert [e.id for e in examples] == [r["id"] for r in rows[:-1]]
        assert [q["reason"] for q in quarantine] == ["missing label: field 'label' is absent or empty"]


def test_more_bad_rows_are_quarantined_with_their_reason(spec):
    good = [json.dumps(r).encode() for r in tiny_rows(count_per_label=4)]
    bad = [
        b'{"id": [1, 2], "text": "where is my parcel", "label": "shipping"}',
        b'{"id": "c2", "text": "?!? ...", "label": "shipping"}',
        b'{"id": "c3", "text": "caf\\ufffd closed my account", "label": "login"}',
        b'{"id": "c4", "text": "charged twice", "label": "Billing"}',
        b'{"id": "c5", "text": "charged twice", "label": 7}',
    ]
    _write_lines(spec.labeled_examples_path, good + bad)
    _, quarantine = validation.read_labeled_examples(spec)
    assert [q["reason"] for q in quarantine] == [
        "id not a string or integer: field 'id' is list",
        "no content: the input has no letters or digits ('?!? ...')",
        "replacement character in input: U+FFFD means the text was decoded lossily upstream",
        "unknown label: 'Billing' is not in the task's label set (did you mean 'billing'?)",
        "label not a string: got int",
    ]


def test_a_csv_row_with_undecodable_bytes_is_quarantined_alone(spec, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b'id,text,label\n1,where is my parcel,shipping\n2,caf\xe9 login broken,login\n3,charged twice,billing\n')
    examples, quarantine = validation.read_labeled_examples(replace(spec, labeled_examples_path=path))
    assert [e.id for e in examples] == ["1", "3"]
    assert [q["reason"] for q in quarantine] == ["not valid UTF-8: the input holds bytes that do not decode"]
    # The quarantine file keeps the row losslessly and stays valid UTF-8.
    from finetune_loop.core.common.files import write_jsonl

    write_jsonl(tmp_path / "q.jsonl", quarantine)
    assert json.loads((tmp_path / "q.jsonl").read_text(encoding="utf-8"))["row"]["text"] == "caf\udce9 login broken"


def _generation_spec(tmp_path, rows: list[dict], target_format: str) -> "TaskSpec":
    import yaml

    from finetune_loop.core.common.spec import load_task_spec

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({
        "name": "extract", "kind": "generation", "target_format": target_format,
        "instruction": "Extract the order number and the problem as JSON.",
        "data": {"labeled_examples": "rows.jsonl"},
        "fields": {"input": "email", "label": "extracted", "id": "id", "slices": ["language"]},
        "split": {"holdout_fraction": 0.25, "validation_fraction": 0.1, "seed": 3},
        "curation": {"min_rows_per_label": 2},
    }))
    return load_task_spec(tmp_path / "task.yaml")


def _extraction_rows() -> list[dict]:
    import random

    rng = random.Random(7)
    openers = ["hello team", "hi", "dear support", "good morning", "hey there", "to whom it may concern"]
    items = ["kettle", "lamp", "chair", "phone case", "blender", "backpack", "monitor", "desk", "mug", "printer"]
    problems = ["cracked", "missing", "wrong"]
    rows = []
    for i in range(24):
        problem = problems[i % 3]
        text = (f"{rng.choice(openers)}, the {rng.choice(items)} from order {rng.randint(10000, 99999)} came {problem} "
                f"after {rng.randint(2, 30)} days of waiting; {rng.choice(['please advise', 'what now', 'not happy', 'need a fix'])}. "
                f"write to me at user{i}@example.com")
        rows.append({"id": f"e{i}", "language": "de" if i % 3 == 0 else "en", "email": text,
                     "extracted": {"order": i, "problem": problem, "contact": f"user{i}@example.com"}})
    return rows


def test_generation_targets_are_validated_canonicalised_and_scrubbed(tmp_path):
    rows = _extraction_rows()
    rows.append({"id": "bad-json", "language": "en", "email": "order 77 broken", "extracted": '{"order": 77, "problem": '})
    rows.append({"id": "scalar", "language": "en", "email": "order 78 broken", "extracted": "42"})
    rows.append({"id": "no-target", "language": "en", "email": "order 79 broken"})
    rows.append({"id": "as-string", "language": "en", "email": "order 80 has a dent", "extracted": '{ "order" : 80, "problem": "dent" }'})
    rows.append({"id": "bad-slice", "language": ["en"], "email": "order 81 has a dent", "extracted": {"order": 81}})
    spec = _generation_spec(tmp_path, rows, "json")
    examples, quarantine = validation.read_labeled_examples(spec)
    assert [(q["row"]["id"], q["reason"]) for q in quarantine] == [
        ("bad-json", "malformed JSON target: Expecting value at column 26"),
        ("scalar", "JSON target not an object or array: got int"),
        ("no-target", "missing target: field 'extracted' is absent or empty"),
        ("bad-slice", "slice not a scalar: field 'language' is list"),
    ]
    by_id = {e.id: e for e in examples}
    assert by_id["as-string"].label == '{"order":80,"problem":"dent"}'
    assert by_id["e3"].slices == {"language": "de"}

    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    # Stratified per language (every target is unique, so a per-target split would pick nothing).
    assert holdout.per_label == {"de": 2, "en": 4} and holdout.per_slice == {"language": {"de": 2, "en": 4}}
    dataset = curation.curate_dataset(spec, [holdout], tmp_path / "datasets")
    train = readers.read_examples(dataset.train_path)
    for example in train:
        target = json.loads(example.label)  # still valid JSON after scrubbing
        assert target.get("contact", "[EMAIL]") == "[EMAIL]" and "@" not in example.text
    # Every valid e-mail row had one address in its input and one in its target.
    assert dataset.report.pii_replacements["email"] == 2 * 24
    assert dataset.report.per_slice_train["language"].keys() == {"de", "en"}
    assert "| language | valid |" in dataset.report.dedup_audit_markdown


def test_licences_come_from_the_row_or_else_from_its_source(spec, tmp_path):
    rows = tiny_rows(count_per_label=8)
    for index, row in enumerate(rows):
        row["source"] = "vendor-a" if index % 2 else "in-house"
    rows[0]["licence"] = "CC0-1.0"
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in rows])
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  vendor-a: {licence: CC-BY-4.0, status: active}\n  in-house: {licence: proprietary, status: active}\n")
    spec = replace(spec, sources_path=sources, fields=replace(spec.fields, licence="licence"))
    examples, _ = validation.read_labeled_examples(spec)
    licences = {e.id: e.licence for e in examples}
    assert licences[rows[0]["id"]] == "CC0-1.0"
    assert licences[rows[1]["id"]] == "CC-BY-4.0" and licences[rows[2]["id"]] == "proprietary"


def test_curation_audit_shows_every_stage_per_label_and_keeps_slices_above_the_floor(spec, tmp_path):
    rows = tiny_rows(count_per_label=12)
    # Five near-identical "vip" rows: near-dedup alone would keep one; the slice floor keeps three.
    for i in range(5):
        rows.append({"id": f"vip-{i}", "text": f"my premium parcel is late again and again and again{'!' * i}", "label": "shipping", "tier": "vip"})
    for row in rows:
        row.setdefault("tier", "standard")
    _write_lines(spec.labeled_examples_path, [json.dumps(r).encode() for r in rows])
    spec = replace(spec, fields=replace(spec.fields, slices=("tier",)), curation=replace(spec.curation, min_rows_per_label=3))
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    dataset = curation.curate_dataset(spec, [holdout], tmp_path / "datasets")
    markdown = dataset.report.dedup_audit_markdown
    assert "| label | valid | after exact dedup | after near dedup | after suite overlap | train | validation |" in markdown
    assert "| tier | valid |" in markdown and "#### Per slice: tier" in markdown
    audit = json.loads((dataset.directory / "dedup_audit.json").read_text())
    vip = audit["per_slice"]["tier"]["vip"]
    assert vip["before"] - vip["removed"] == vip["after"] >= 3 and vip["kept_by_floor"] >= 1


def test_an_unreachable_hub_dataset_is_a_clear_error(spec, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_spec = replace(spec, labeled_examples_path=None, labeled_examples_hub_id="no-such-owner/no-such-dataset")
    with pytest.raises(readers.CurationError, match="cannot load Hugging Face dataset 'no-such-owner/no-such-dataset'"):
        validation.read_labeled_examples(hub_spec)


BANKING77_TASK = Path(__file__).parents[1] / "benchmarks" / "banking77_task.yaml"


def test_banking77_curates_every_intent_with_an_audit_and_no_contamination(tmp_path):
    spec = load_task_spec(BANKING77_TASK)
    if not spec.labeled_examples_path.is_file():
        pytest.skip(f"Banking77 is not at {spec.labeled_examples_path} (../shared/datasets/banking77 beside the checkout)")
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    regression = suites.freeze_suite(spec, "regression", tmp_path / "suites", exclude=[holdout])
    dataset = curation.curate_dataset(spec, [holdout, regression], tmp_path / "datasets")
    report = dataset.report
    assert report.rows_read == 10003 and holdout.size >= 3000 and len(holdout.per_label) == 77
    assert set(report.per_label_train) == set(spec.labels)
    assert min(report.per_label_train.values()) >= spec.curation.min_rows_per_label
    assert report.near_duplicates_removed > 0 and "#### Removed examples" in report.dedup_audit_markdown
    assert report.dedup_audit_markdown.count("| card_arrival |") == 2  # rows-per-stage table and near-dup table
    # Banking77's train split nearly repeats some of its test queries: those rows leave training.
    assert report.contamination_removed.get("holdout", 0) > 0
    assert curation.contamination_between(spec, dataset, [holdout, regression]) == []
