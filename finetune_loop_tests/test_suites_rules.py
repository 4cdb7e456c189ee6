"""Frozen suites obey the training data's rules (sources, length), are re-checked against the current
task on every run, and are written atomically; a broken suite fails with the way out."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from finetune_loop.core.common.files import write_jsonl, write_text_atomic
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data import readers, suites
from finetune_loop_tests.conftest import tiny_rows, write_tiny_task


@pytest.fixture
def spec(tmp_path):
    return load_task_spec(write_tiny_task(tmp_path / "task", Path("unused-base")))


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _words(example) -> int:
    return len(example.text.split())


def _suite_ids(*frozen: suites.FrozenSuite) -> set[str]:
    return {e.id for suite in frozen for e in readers.read_examples(suite.path)}


def _freeze_both(spec, suites_dir: Path, **kwargs) -> tuple[suites.FrozenSuite, suites.FrozenSuite]:
    holdout = suites.freeze_suite(spec, "holdout", suites_dir, **kwargs)
    regression = suites.freeze_suite(spec, "regression", suites_dir, exclude=[holdout], **kwargs)
    return holdout, regression


def test_over_long_and_revoked_rows_never_enter_a_frozen_suite_and_are_counted(spec, tmp_path):
    rows = tiny_rows(count_per_label=20)
    for index, row in enumerate(rows):
        row["source"] = "vendor-a" if index % 4 == 0 else "in-house"
    long_rows = [{"id": f"long-{i}", "text": f"case {i} " + "word " * 200, "label": "billing", "source": "in-house"} for i in range(8)]
    _write_rows(spec.labeled_examples_path, rows + long_rows)
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  vendor-a: {licence: CC-BY-4.0, status: revoked}\n  in-house: {licence: proprietary, status: active}\n")
    spec = replace(spec, sources_path=sources)
    revoked_ids = {r["id"] for r in rows if r["source"] == "vendor-a"}
    long_ids = {r["id"] for r in long_rows}

    holdout, regression = _freeze_both(spec, tmp_path / "suites", token_length=_words)
    frozen_ids = _suite_ids(holdout, regression)
    assert holdout.size > 0 and regression.size > 0
    assert not frozen_ids & revoked_ids
    assert not frozen_ids & long_ids
    for suite in (holdout, regression):
        assert suite.excluded["revoked source"] == len(revoked_ids)
        assert suite.excluded["over-long input"] == len(long_ids)
    assert regression.excluded["in an earlier suite"] == holdout.size
    # The counts are recorded with the suite and come back on later runs; no raw row is in them.
    manifest = json.loads((tmp_path / "suites" / "holdout.manifest.json").read_text())
    assert manifest["excluded"] == holdout.excluded
    again = suites.freeze_suite(spec, "holdout", tmp_path / "suites", token_length=_words)
    assert not again.created and again.excluded == holdout.excluded


def test_without_token_length_only_the_source_rule_applies(spec, tmp_path):
    rows = tiny_rows(count_per_label=4)
    _write_rows(spec.labeled_examples_path, rows)
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    assert "over-long input" not in holdout.excluded and "revoked source" not in holdout.excluded


def test_a_designated_suite_file_obeys_the_same_rules(spec, tmp_path):
    designated = tmp_path / "holdout.jsonl"
    rows = tiny_rows(count_per_label=3, seed=5)
    rows.append({"id": "long", "text": "word " * 300, "label": "login"})
    _write_rows(designated, rows)
    _write_rows(spec.labeled_examples_path, tiny_rows())
    suite = suites.freeze_suite(replace(spec, holdout_path=designated), "holdout", tmp_path / "suites", token_length=_words)
    assert "long" not in _suite_ids(suite)
    assert suite.excluded["over-long input"] == 1


def test_a_suite_whose_label_was_removed_from_the_task_fails_naming_the_rows(spec, tmp_path):
    _write_rows(spec.labeled_examples_path, tiny_rows())
    holdout = suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    login_ids = sorted(e.id for e in readers.read_examples(holdout.path) if e.label == "login")
    assert login_ids
    narrowed = replace(spec, labels=("billing", "shipping"))
    with pytest.raises(suites.SuiteChangedError) as error:
        suites.freeze_suite(narrowed, "holdout", tmp_path / "suites")
    message = str(error.value)
    assert "frozen holdout suite" in message and "['login']" in message
    assert all(repr(i) in message for i in login_ids[:10])
    assert f"finetune-loop replace-suite --task {spec.spec_path} --suite holdout" in message


def test_a_suite_whose_source_became_revoked_fails_naming_the_rows(spec, tmp_path):
    rows = tiny_rows(count_per_label=30)
    for index, row in enumerate(rows):
        row["source"] = "vendor-a" if index % 2 == 0 else "in-house"
    _write_rows(spec.labeled_examples_path, rows)
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  vendor-a: {licence: CC-BY-4.0, status: active}\n  in-house: {licence: proprietary, status: active}\n")
    spec = replace(spec, sources_path=sources)
    holdout, regression = _freeze_both(spec, tmp_path / "suites")
    vendor_ids = [e.id for e in readers.read_examples(holdout.path) if e.source == "vendor-a"]
    assert len(vendor_ids) > 10

    sources.write_text("sources:\n  vendor-a: {licence: CC-BY-4.0, status: revoked}\n  in-house: {licence: proprietary, status: active}\n")
    with pytest.raises(suites.SuiteChangedError) as error:
        suites.freeze_suite(spec, "holdout", tmp_path / "suites")
    message = str(error.value)
    assert "frozen holdout suite" in message and "revoked" in message and "'vendor-a'" in message
    assert all(repr(i) in message for i in vendor_ids[:10])
    assert repr(vendor_ids[10]) not in message and f"and {len(vendor_ids) - 10} more" in message
    assert f"finetune-loop replace-suite --task {spec.spec_path} --suite holdout" in message
    # The regression suite is checked the same way (it has vendor-a rows too, or it passes).
    if any(e.source == "vendor-a" for e in readers.read_examples(regression.path)):
        with pytest.raises(suites.SuiteChangedError, match="--suite regression"):
            suites.freeze_suite(spec, "regression", tmp_path / "suites", exclude=[holdout])


@pytest.mark.parametrize("breakage", ["missing", "truncated", "no hash"])
def test_a_broken_manifest_fails_with_the_replace_hint_and_archiving_lets_a_new_freeze_succeed(spec, tmp_path, breakage):
    _write_rows(spec.labeled_examples_path, tiny_rows())
    suites_dir = tmp_path / "suites"
    first = suites.freeze_suite(spec, "holdout", suites_dir)
    manifest_path = suites_dir / "holdout.manifest.json"
    if breakage == "missing":
        manifest_path.unlink()
    elif breakage == "truncated":
        text = manifest_path.read_text()
        manifest_path.write_text(text[: len(text) // 2])
    else:
        manifest = json.loads(manifest_path.read_text())
        del manifest["content_hash"]
        manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(suites.SuiteChangedError) as error:
        suites.freeze_suite(spec, "holdout", suites_dir)
    message = str(error.value)
    expected = {"missing": "has no manifest", "truncated": "is not valid JSON", "no hash": "lacks the content hash"}[breakage]
    assert expected in message
    assert f"finetune-loop replace-suite --task {spec.spec_path} --suite holdout` archives it" in message
    assert "the next run freezes a new version" in message

    frozen_text = first.path.read_text()
    archived = suites.archive_suite(suites_dir, "holdout")
    assert archived == suites_dir / "archive" / "holdout.v1.jsonl" and archived.read_text() == frozen_text
    replaced = suites.freeze_suite(spec, "holdout", suites_dir)
    assert replaced.created
    assert json.loads(manifest_path.read_text())["version"] == 2
    again = suites.freeze_suite(spec, "holdout", suites_dir)
    assert not again.created and again.content_hash == replaced.content_hash


def test_archive_numbers_versions_after_a_suite_archived_without_manifest(spec, tmp_path):
    _write_rows(spec.labeled_examples_path, tiny_rows())
    suites_dir = tmp_path / "suites"
    suites.freeze_suite(spec, "holdout", suites_dir)
    (suites_dir / "holdout.manifest.json").unlink()
    assert suites.archive_suite(suites_dir, "holdout").name == "holdout.v1.jsonl"
    suites.freeze_suite(spec, "holdout", suites_dir)
    assert suites.archive_suite(suites_dir, "holdout").name == "holdout.v2.jsonl"
    assert suites.freeze_suite(spec, "holdout", suites_dir).created
    assert json.loads((suites_dir / "holdout.manifest.json").read_text())["version"] == 3
    with pytest.raises(readers.CurationError):
        suites.archive_suite(suites_dir, "regression")


def test_write_jsonl_leaves_the_old_file_when_the_writer_fails_midway(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"id": "a"}, {"id": "b"}])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl(path, [{"id": "c"}, {"id": "d", "oops": object()}, {"id": "e"}])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    # A first write that fails leaves no file at all.
    with pytest.raises(TypeError):
        write_jsonl(tmp_path / "new.jsonl", [{"id": "x"}, {"bad": {1, 2}}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_write_text_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "manifest.json"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new content")
    assert path.read_text() == "new content"
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json"]
