"""Erasure of a data subject's records: ledger, affected versions, retrain, purge, proof, refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_loop.cli import EXIT_FAILED, EXIT_OK, main
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.common.tracker import PREVIOUS_CHAMPION_ALIAS, Tracker
from finetune_loop.core.data.erasure import ErasureError, ErasureLedger
from finetune_loop.core.data.production_log import read_task_log
from finetune_loop.core.monitor import triggers
from finetune_loop.core.ship import registry
from finetune_loop_tests.conftest import use_loop_home, write_tiny_task

SUBJECT = "jane.doe@example.com"
# Her three tickets: long enough to be scanned for (SCAN_MIN_CHARS), one per label.
HER_ROWS = [
    {"id": "jane-1", "text": f"I was charged twice for my subscription, please refund it to {SUBJECT} today", "label": "billing"},
    {"id": "jane-2", "text": f"my account is locked since this morning and {SUBJECT} gets no reset mail", "label": "login"},
    {"id": "jane-3", "text": f"my parcel never arrived although tracking says delivered, write to {SUBJECT} please", "label": "shipping"},
]


def _task_with_her_rows(directory: Path, base_model: Path, settings: dict | None = None) -> Path:
    task = write_tiny_task(directory, base_model, settings=settings)
    with (directory / "tickets.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in HER_ROWS))
    return task


def _trained_ids(tracker: Tracker, version: str) -> set[str]:
    bundle = tracker.download_version(tracker.version_ref("tiny_triage-adapter", version))
    return {row["id"] for row in json.loads((bundle / "rebuild_manifest.json").read_text())["training_rows"]}


def test_erase_retrains_purges_proves_and_refuses_the_erased_version(tmp_path, tiny_base_model, monkeypatch, capsys):
    task = _task_with_her_rows(tmp_path / "task", tiny_base_model)
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    tracker = Tracker.for_task(LoopHome(home), "tiny_triage")
    trained_on_her = _trained_ids(tracker, "1") & {r["id"] for r in HER_ROWS}
    assert trained_on_her, "the seeded split put none of her rows in training: the scenario tests nothing"
    capsys.readouterr()

    assert main(["erase", "--task", str(task), "--home", str(home), "--contains", "JANE.DOE@example.com", "--reason", "DSR-1182"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "3 records (labelled examples 3)" in out and "trained on them: v1" in out and "champion    v1 trained on them: retraining now" in out
    assert "0 hold it" in out and "completed   request er-" in out and "champion v2" in out

    # The ledger holds hashes only: no id, no text, no part of the address.
    ledger_path = task.parent / "tiny_triage.erasures.jsonl"
    ledger_text = ledger_path.read_text()
    assert "jane" not in ledger_text.lower() and "example.com" not in ledger_text
    ledger = ErasureLedger.load(ledger_path)
    (request,) = ledger.requests
    assert request.reason == "DSR-1182" and request.affected_versions == ("1",) and len(request.record_hashes) == 3
    completed = ledger.completed[request.request]
    assert completed["champion"] == "2" and completed["scan"]["files_holding_text"] == [] and completed["scan"]["files"] > 10
    assert "mlflow:" + tracker.version_ref("tiny_triage-adapter", "1").run_id in completed["deleted"]

    # The new champion never saw her rows; v1's artifacts are gone; v1 can never serve again.
    assert not _trained_ids(tracker, "2") & {r["id"] for r in HER_ROWS}
    assert not (home / "artifacts" / "exports" / "tiny_triage" / "v1").exists()
    with pytest.raises(Exception):
        tracker.download_version(tracker.version_ref("tiny_triage-adapter", "1"), tmp_path / "gone")
    assert tracker.version_tags("tiny_triage-adapter", "1")[registry.ERASED_BY_TAG] == request.request
    assert tracker.version_by_alias("tiny_triage-adapter", PREVIOUS_CHAMPION_ALIAS) is None
    assert main(["rollback", "--task", str(task), "--home", str(home)]) == EXIT_FAILED
    tracker.set_alias("tiny_triage-adapter", PREVIOUS_CHAMPION_ALIAS, "1")  # even with the alias put back by hand
    with pytest.raises(registry.PromotionError, match="trained on records erased by request"):
        registry.rollback(tracker, home / "artifacts" / "locks" / "tiny_triage", "tiny_triage-adapter", reason="test")

    # Every later curation leaves the records out, and says how many.
    capsys.readouterr()
    assert main(["curate", "--task", str(task), "--home", str(home)]) == EXIT_OK
    assert "+ 3 erased" in capsys.readouterr().out
    # Nothing is left to erase for the same rule, and the sensor asks for nothing.
    assert main(["erase", "--task", str(task), "--home", str(home), "--contains", SUBJECT, "--reason", "again"]) == EXIT_FAILED
    decision, _ = triggers.erasure_decision(ErasureLedger.load(ledger_path).open_requests(), "2")
    assert not decision.retrain


def test_a_record_no_version_trained_on_completes_at_once(tmp_path, tiny_base_model, monkeypatch, capsys):
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    # A production request only: served, never trained on.
    assert main(["erase", "--task", str(task), "--home", str(home), "--id", "r-7", "--reason", "DSR-7"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "1 records (production log 1)" in out and "trained on them: none" in out and "completed   request" in out
    log = read_task_log(load_task_spec(task))
    assert log.erased == 1 and "r-7" not in {r.request_id for r in log.records}


def test_the_ledger_matches_by_id_or_text_and_refuses_a_damaged_line(tmp_path):
    ledger = ErasureLedger.load(tmp_path / "t.erasures.jsonl")
    assert ledger.erased("a", "anything") is None
    with pytest.raises(ErasureError, match="no record matched"):
        ledger.record_request([], "r", None, [])
    request = ledger.record_request([("row-9", "Refund  my ORDER 12")], "DSR-9", "customer 12", ["3"])
    again = ErasureLedger.load(tmp_path / "t.erasures.jsonl")
    assert again.erased("row-9", None) == request.request
    # The same text under another id (re-imported), whatever its case and spacing.
    assert again.erased("other-id", "refund my order 12") == request.request
    assert again.erased("row-10", "refund my order 13") is None
    assert again.open_requests()[0].affected_versions == ("3",)
    raw = (tmp_path / "t.erasures.jsonl").read_text()
    assert "row-9" not in raw and "order" not in raw.lower() and "customer 12" not in raw
    (tmp_path / "t.erasures.jsonl").write_text(raw + "{not json\n")
    with pytest.raises(ErasureError, match=r"t\.erasures\.jsonl:3: not a ledger entry"):
        ErasureLedger.load(tmp_path / "t.erasures.jsonl")


def test_a_revoked_source_takes_the_same_path(tmp_path, tiny_base_model, monkeypatch, capsys):
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    scraped = [{**row, "id": f"scraped-{i}", "source": "forum-scrape", "text": row["text"] + " (copied from a public forum thread)"}
               for i, row in enumerate(HER_ROWS)]
    with (task.parent / "tickets.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in scraped))
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    tracker = Tracker.for_task(LoopHome(home), "tiny_triage")
    assert _trained_ids(tracker, "1") & {r["id"] for r in scraped}
    capsys.readouterr()
    assert main(["erase", "--task", str(task), "--home", str(home), "--source", "forum-scrape", "--reason", "licence revoked 2026-12-01"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "3 records (labelled examples 3)" in out and "trained on them: v1" in out and "completed   request" in out
    assert tracker.version_tags("tiny_triage-adapter", "1")[registry.ERASED_BY_TAG].startswith("er-")
    assert not _trained_ids(tracker, "2") & {r["id"] for r in scraped}


def test_archive_weights_keeps_the_weights_and_deletes_the_rows(tmp_path, tiny_base_model, monkeypatch, capsys):
    task = _task_with_her_rows(tmp_path / "task", tiny_base_model, settings={"erasure": {"affected_artifacts": "archive_weights"}})
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    assert main(["erase", "--task", str(task), "--home", str(home), "--contains", SUBJECT, "--reason", "DSR-2"]) == EXIT_OK
    (request,) = ErasureLedger.load(task.parent / "tiny_triage.erasures.jsonl").completed.values()
    archive = home / "artifacts" / "erasure" / "tiny_triage" / "archive" / request["request"] / "v1"
    assert sorted(p.name for p in archive.iterdir()) == ["adapter_model.safetensors", "tiny_triage-Q8_0.gguf", "tiny_triage-f32.gguf"]
    assert all(name.startswith(f"artifacts/erasure/tiny_triage/archive/{request['request']}/v1/") for name in request["archived"])
    assert request["scan"]["files_holding_text"] == [] and not (home / "artifacts" / "exports" / "tiny_triage" / "v1").exists()


def test_a_record_of_the_frozen_holdout_leaves_the_suite_and_every_copy_of_it(tmp_path, tiny_base_model, monkeypatch, capsys):
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    suites = home / "artifacts" / "suites" / "tiny_triage"
    held_out = json.loads((suites / "holdout.jsonl").read_text().splitlines()[0])["id"]
    capsys.readouterr()
    assert main(["erase", "--task", str(task), "--home", str(home), "--id", held_out, "--reason", "DSR-3"]) == EXIT_OK
    out = capsys.readouterr().out
    # No version trained on it, so v1 keeps serving; the copies of the suite go (the row store's too).
    assert "trained on them: none" in out and "suites      deleted holdout.jsonl" in out and "0 hold it" in out
    (completed,) = ErasureLedger.load(task.parent / "tiny_triage.erasures.jsonl").completed.values()
    assert any(path.startswith("artifacts/rows/") for path in completed["deleted"])
    assert not (suites / "holdout.jsonl").exists()
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    assert held_out not in (suites / "holdout.jsonl").read_text()
