"""Promotion and rollback against a real MLflow registry (SQLite): the lock, the re-check of a
promotion that lost a race, consistency under injected failures, and the rollback command."""

from __future__ import annotations

import threading

import pytest

from finetune_loop.cli import EXIT_FAILED, EXIT_OK, main
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.ship.registry import (
    AliasState,
    PromotionError,
    alias_state,
    promote,
    rollback,
)
from finetune_loop_tests.conftest import register_versions, write_tiny_task

MODEL = "tiny_triage-adapter"
HOLDOUT = "holdout-hash-1"


@pytest.fixture
def home(tmp_path) -> LoopHome:
    return LoopHome(tmp_path / "home")


def _promote(tracker, home, version, evaluated_against, score):
    return promote(tracker, home.task_dir("tiny_triage", "locks"), MODEL, version,
                   evaluated_against=evaluated_against, holdout_primary=score, holdout_hash=HOLDOUT)


def test_promotion_records_previous_champion_and_rollback_restores_it(home):
    tracker = register_versions(home, 3)
    assert _promote(tracker, home, "1", None, 0.70).previous_version is None
    assert _promote(tracker, home, "2", "1", 0.75).previous_version == "1"
    assert _promote(tracker, home, "3", "2", 0.80).previous_version == "2"
    assert alias_state(tracker, MODEL) == AliasState("3", "2")
    after = rollback(tracker, home.task_dir("tiny_triage", "locks"), MODEL, reason="refunds misrouted", user="oncall")
    # v2 replaced v1 when it was promoted, so v1 is the next rollback target.
    assert after == alias_state(tracker, MODEL) == AliasState("2", "1")
    tags = tracker.version_tags(MODEL, "3")
    assert tags["finetune_loop.rolled_back_by"] == "oncall" and tags["finetune_loop.rolled_back_reason"] == "refunds misrouted"
    assert tracker.version_tags(MODEL, "2")["finetune_loop.restored_from"] == "3"
    assert rollback(tracker, home.task_dir("tiny_triage", "locks"), MODEL, reason="again") == AliasState("1", None)
    with pytest.raises(PromotionError, match="nothing to roll back to"):
        rollback(tracker, home.task_dir("tiny_triage", "locks"), MODEL, reason="once more")


def test_concurrent_promotions_cannot_both_win(home):
    """Two candidates evaluated against champion v1 promote at once: whichever goes second is
    re-checked against the winner's recorded holdout score, so the better one ends as champion."""
    tracker = register_versions(home, 3)
    _promote(tracker, home, "1", None, 0.70)
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def attempt(version: str, score: float) -> None:
        barrier.wait()
        try:
            outcomes[version] = _promote(tracker, home, version, "1", score)
        except PromotionError as exc:
            outcomes[version] = exc

    threads = [threading.Thread(target=attempt, args=args) for args in (("2", 0.80), ("3", 0.75))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = alias_state(tracker, MODEL)
    assert state.champion == "2"
    if isinstance(outcomes["3"], PromotionError):  # v2 won the race; v3 (0.75 < 0.80) refused
        assert "below v2's 0.800" in str(outcomes["3"])
        assert state == AliasState("2", "1")
    else:  # v3 won the race; v2 re-checked against it (0.80 ≥ 0.75) and replaced it
        assert "champion moved to v3" in outcomes["2"].recheck
        assert state == AliasState("2", "3")


def test_stale_promotion_against_a_champion_without_comparable_scores_is_refused(home):
    tracker = register_versions(home, 2)
    promote(tracker, home.task_dir("tiny_triage", "locks"), MODEL, "1", evaluated_against=None, holdout_primary=0.7, holdout_hash="other-holdout")
    with pytest.raises(PromotionError, match="no holdout score on the same frozen holdout"):
        _promote(tracker, home, "2", None, 0.9)
    assert alias_state(tracker, MODEL) == AliasState("1", None)


class FailingTracker(Tracker):
    """A registry client whose n-th registry write raises, as a dropped connection would."""

    def __init__(self, *args, fail_at: int):
        super().__init__(*args)
        self.fail_at, self.writes = fail_at, 0

    def _write(self):
        self.writes += 1
        if self.writes == self.fail_at:
            raise ConnectionError(f"injected failure at registry write {self.writes}")

    def set_alias(self, *args):
        self._write()
        super().set_alias(*args)

    def delete_alias(self, *args):
        self._write()
        super().delete_alias(*args)

    def tag_version(self, *args):
        self._write()
        super().tag_version(*args)


@pytest.mark.parametrize("operation", ["promote", "rollback"])
def test_a_failure_at_any_registry_write_leaves_the_aliases_as_they_were(home, operation):
    tracker = register_versions(home, 3)
    _promote(tracker, home, "1", None, 0.70)
    _promote(tracker, home, "2", "1", 0.75)
    before = AliasState("2", "1")
    expected_after = AliasState("3", "2") if operation == "promote" else AliasState("1", None)
    lock_dir = home.task_dir("tiny_triage", "locks")
    failures = 0
    for fail_at in range(1, 10):
        failing = FailingTracker(home.mlflow_tracking_uri, home.artifacts / "mlflow", "tiny_triage", fail_at=fail_at)
        try:
            if operation == "promote":
                promote(failing, lock_dir, MODEL, "3", evaluated_against="2", holdout_primary=0.8, holdout_hash=HOLDOUT)
            else:
                rollback(failing, lock_dir, MODEL, reason="test")
        except ConnectionError:
            failures += 1
            assert alias_state(tracker, MODEL) == before, f"inconsistent after a failure at write {fail_at}"
            continue
        assert alias_state(tracker, MODEL) == expected_after
        break
    # Every write of the operation was made to fail once before it finally succeeded.
    assert failures >= 3


def test_rollback_command(tmp_path, tiny_base_model, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster_home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    home = LoopHome(tmp_path / "home")
    args = ["rollback", "--task", str(task), "--home", str(home.root), "--reason", "bad refunds"]
    tracker = register_versions(home, 2)
    _promote(tracker, home, "1", None, 0.70)
    assert main(args) == EXIT_FAILED
    assert "nothing to roll back to (champion 1, previous-champion none)" in capsys.readouterr().err
    _promote(tracker, home, "2", "1", 0.75)
    assert main(args) == EXIT_OK
    assert "champion v2 -> v1 (previous-champion now none); reason: bad refunds" in capsys.readouterr().out
    assert alias_state(tracker, MODEL) == AliasState("1", None)
    assert tracker.version_tags(MODEL, "2")["finetune_loop.rolled_back_reason"] == "bad refunds"
