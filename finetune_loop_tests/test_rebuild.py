"""`finetune-loop rebuild`: a registered version retrained from its record alone, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_loop.cli import EXIT_FAILED, EXIT_OK, main
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.row_store import RowStore
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.ship import rebuild
from finetune_loop_tests.conftest import tiny_rows, use_loop_home, write_tiny_task


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base_model):
    """One real `finetune-loop run` of the tiny task: v1 trained, evaluated, exported, promoted."""
    root = tmp_path_factory.mktemp("rebuild")
    task = write_tiny_task(root / "task", tiny_base_model)
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        use_loop_home(patch, home)
        assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    return task, home


def _rebuild(task: Path, home: Path, patch: pytest.MonkeyPatch) -> tuple[int, dict]:
    use_loop_home(patch, home)
    code = main(["rebuild", "--task", str(task), "--home", str(home), "--version", "1"])
    report = home / "artifacts" / "rebuilds" / "tiny_triage" / "v1" / "rebuild_report.json"
    return code, json.loads(report.read_text()) if report.is_file() else {}


def _manifest(home: Path) -> dict:
    tracker = Tracker.for_task(LoopHome(home), "tiny_triage")
    bundle = tracker.download_version(tracker.version_ref("tiny_triage-adapter", "1"))
    return json.loads((bundle / "rebuild_manifest.json").read_text())


def test_a_version_rebuilds_bit_identically_from_its_record_alone(trained, monkeypatch, capsys):
    task, home = trained
    # Today's source file is not the record: the rebuild reads the rows the manifest names by hash.
    (task.parent / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(count_per_label=16, seed=99)))
    code, report = _rebuild(task, home, monkeypatch)
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert "MATCHES: bit-identical weights" in out
    assert report["bit_identity_promised"] and report["weights"]["bit_identical"] and report["environment"] == []
    assert report["weights"]["tensors"] > 0 and report["weights"]["max_abs_diff"] == 0.0
    scopes = {m["scope"] for m in report["metrics"]}
    assert "holdout" in scopes and any(s.startswith("label ") for s in scopes)
    assert all(m["delta_points"] == 0 and m["within"] for m in report["metrics"])
    manifest = _manifest(home)
    assert f"training rows sha256 {manifest['train_rows_sha256']}" in " ".join(report["inputs"])
    tracker = Tracker.for_task(LoopHome(home), "tiny_triage")
    assert tracker.version_tags("tiny_triage-adapter", "1")[rebuild.REBUILD_TAG].split(" ", 1)[1].startswith("MATCHES")
    run = tracker.latest_run(rebuild.REBUILD_STAGE)
    assert run.data.metrics["bit_identical"] == 1.0 and run.data.tags["rebuilt_version"] == "1"


def test_a_changed_package_set_is_named_and_the_metrics_decide(trained, monkeypatch, capsys):
    task, home = trained
    installed = rebuild.installed_packages()
    monkeypatch.setattr(rebuild, "installed_packages", lambda: {**installed, "torch": "9.9.9", "left-pad": "1.0"})
    code, report = _rebuild(task, home, monkeypatch)
    assert code == EXIT_OK, capsys.readouterr().out
    assert not report["bit_identity_promised"]
    assert any(line.startswith("torch:") and "9.9.9" in line for line in report["environment"])
    assert any("left-pad" in line for line in report["environment"])
    assert "the environment differs" in report["bit_identity_reason"]


def test_a_changed_stored_row_stops_the_rebuild_naming_the_file(trained, monkeypatch, capsys):
    task, home = trained
    manifest = _manifest(home)
    stored = RowStore.for_home(LoopHome(home)).path(manifest["train_rows_sha256"])
    original = stored.read_bytes()
    try:
        stored.write_bytes(original.replace(b"}", b', "x": 1}', 1))
        code, _ = _rebuild(task, home, monkeypatch)
        err = capsys.readouterr().err
        assert code == EXIT_FAILED
        assert err.startswith("error: training rows of tiny_triage-adapter v1:") and str(stored) in err and "was changed" in err
    finally:
        stored.write_bytes(original)


def test_weights_that_differ_are_a_mismatch_with_the_largest_difference(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    a = {"lora_A": np.zeros((2, 3), dtype=np.float32), "lora_B": np.ones((3, 2), dtype=np.float32)}
    b = {"lora_A": np.zeros((2, 3), dtype=np.float32), "lora_B": np.full((3, 2), 1.25, dtype=np.float32), "extra": np.zeros(1, dtype=np.float32)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    comparison = rebuild.compare_weights(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert (comparison.tensors, comparison.identical, comparison.worst_tensor, comparison.unmatched) == (2, 1, "lora_B", ("extra",))
    assert comparison.max_abs_diff == pytest.approx(0.25) and not comparison.bit_identical


def test_a_label_may_move_by_one_of_its_rows_and_the_holdout_by_the_tolerance():
    from finetune_loop.core.evaluate.metrics import LabelStats, Scores

    recorded = {
        "holdout": {"primary": "accuracy", "accuracy": 0.80, "macro_f1": 0.78},
        "per_label": {"billing": {"precision": 1.0, "recall": 0.75, "f1": 0.857, "support": 8}},
        "per_slice": {"channel": {"email": [0.8, 40]}},
    }
    rebuilt = Scores("accuracy", 0.79, [], [1.0] * 79 + [0.0] * 21, {"macro_f1": 0.76},
                     {"billing": LabelStats(1.0, 0.625, 0.769, 8)}, per_slice={"channel": {"email": (0.775, 40)}})
    deltas = {(d.scope, d.metric): d for d in rebuild.metric_deltas(recorded, rebuilt, tolerance_points=1.0)}
    assert deltas["holdout", "accuracy"].within and not deltas["holdout", "macro_f1"].within  # -1.0 pt, -2.0 pt
    # One of 8 rows is 12.5 pt: an F1 drop of 8.8 pt is within; a slice of 40 rows allows 2.5 pt.
    assert deltas["label billing", "f1"].allowed_points == pytest.approx(12.5) and deltas["label billing", "f1"].within
    assert deltas["slice channel=email", "accuracy"].allowed_points == pytest.approx(2.5)


def test_a_warm_started_version_rebuilds_from_its_parent_to_the_byte(tmp_path, tiny_base_model, monkeypatch, capsys):
    task = write_tiny_task(tmp_path / "task", tiny_base_model, settings={"training": {"init": "champion"}})
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    with (task.parent / "tickets.jsonl").open("a") as handle:
        handle.write("".join(json.dumps({**r, "id": f"more-{r['id']}"}) + "\n" for r in tiny_rows(count_per_label=4, seed=5)))
    assert main(["run", "--task", str(task), "--home", str(home)]) == EXIT_OK
    code = main(["rebuild", "--task", str(task), "--home", str(home), "--version", "2"])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    report = json.loads((home / "artifacts" / "rebuilds" / "tiny_triage" / "v2" / "rebuild_report.json").read_text())
    assert report["weights"]["bit_identical"]
    assert any(line.startswith("warm start from tiny_triage-adapter/v1, weights sha256 ") for line in report["inputs"])
