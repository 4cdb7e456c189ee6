"""A base-model migration: the task file names a new base; the next retrain trains on it, starts
afresh (a LoRA belongs to its base) and is gated against the champion answering on its own base."""

from __future__ import annotations

import json

import yaml

from finetune_loop.cli import EXIT_OK, main
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.tracker import CHAMPION_ALIAS, Tracker
from finetune_loop_tests.conftest import TINY_LABELS, tiny_rows, use_loop_home, write_tiny_task
from finetune_loop_tests.tiny_models import build_tiny_model


def _bundle(tracker: Tracker, version: str, destination):
    bundle = tracker.download_version(tracker.version_ref("tiny_triage-adapter", version), destination)
    return json.loads((bundle / "rebuild_manifest.json").read_text()), json.loads((bundle / "eval_report.json").read_text())


def test_a_new_base_retrains_afresh_and_is_gated_against_the_champion_on_its_own_base(tmp_path, tiny_base_model, monkeypatch):
    # A wider model, as a migration usually is: the old LoRA matrices do not even fit its layers.
    texts = [r["text"] for r in tiny_rows()] + [*TINY_LABELS, "Route the ticket. Labels:"]
    new_base = build_tiny_model(tmp_path / "new_base", texts, seed=1, hidden_size=96)
    task = write_tiny_task(tmp_path / "task", tiny_base_model, settings={"training": {"init": "champion"}})
    raw = yaml.safe_load(task.read_text())
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK

    raw["base_model"] = str(new_base)
    task.write_text(yaml.safe_dump(raw))
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    tracker = Tracker.for_task(LoopHome(home), "tiny_triage")
    assert tracker.version_by_alias("tiny_triage-adapter", CHAMPION_ALIAS).version == "2"
    old_manifest, old_eval = _bundle(tracker, "1", tmp_path / "v1")
    new_manifest, new_eval = _bundle(tracker, "2", tmp_path / "v2")
    assert new_manifest["base_model"] == str(new_base) and new_manifest["base_model_sha256"] != old_manifest["base_model_sha256"]
    assert new_manifest["init"] == "base"  # not v1's LoRA matrices on weights they were not trained against
    # The champion answered on its own base: on the same frozen holdout it scores exactly what it
    # scored when it was the candidate, label by label.
    champion, recorded = new_eval["models"]["champion"], old_eval["models"]["candidate"]
    assert champion["version"] == "1"
    assert champion["holdout"] == recorded["holdout"] and champion["per_label"] == recorded["per_label"]
    log = "".join(p.read_text(errors="replace") for p in (home / "logs").glob("*-run.log"))
    assert "was trained on another base: this adapter starts from" in log and "each answers on its own base" in log
