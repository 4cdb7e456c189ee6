"""portfolio: every task of a tasks directory on one page (issue #17), read from the registry and
each task's MLflow experiment; a broken task file is a row with its error, not a crash."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml

from finetune_loop.cli import EXIT_FAILED, EXIT_OK, main
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.monitor import portfolio
from finetune_loop.core.ship.registry import GGUF_CHECKS_PASSED_TAG, promote
from finetune_loop_tests.conftest import register_versions, write_tiny_task

NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)


@pytest.fixture
def platform(tmp_path):
    """Three task files: one with a champion (evaluated, promoted 10 days ago, shipped, one drift
    report), one never run, one broken."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    served = write_tiny_task(tmp_path / "served", tmp_path / "no-model")
    (tasks / "served.yaml").write_text(served.read_text().replace("tickets.jsonl", str(served.parent / "tickets.jsonl"))
                                       .replace("production.jsonl", str(served.parent / "production.jsonl")))
    fresh = write_tiny_task(tmp_path / "fresh", tmp_path / "no-model")
    config = yaml.safe_load(fresh.read_text())
    config["name"] = "fresh_triage"
    config["data"] = {"labeled_examples": str(fresh.parent / "tickets.jsonl")}
    (tasks / "fresh.yaml").write_text(yaml.safe_dump(config))
    (tasks / "broken.yaml").write_text("name: broken\nkind: classification\nlabels: [a]\n")
    home = LoopHome(tmp_path / "home")
    tracker = register_versions(home, 1)
    with tracker.run("eval-tiny_triage", tags={"stage": "eval", "gate_verdict": "PASSED 7/7 sub-gates"}) as run_id:
        tracker.log_metrics(run_id, {"base_accuracy": 0.35, "candidate_accuracy": 0.82, "gate_passed": 1.0})
    with tracker.run("drift-tiny_triage", tags={"stage": "drift", "signals_fired": "input_drift"}):
        pass
    promote(tracker, tmp_path / "locks", "tiny_triage-adapter", "1", evaluated_against=None, holdout_primary=0.82,
            holdout_hash="h", now=NOW - timedelta(days=10))
    tracker.tag_version("tiny_triage-adapter", "1", {GGUF_CHECKS_PASSED_TAG: True, "gguf_quant_type": "Q8_0", "gguf_accuracy": "0.8100"})
    return tasks, home


def test_every_task_has_its_row_and_a_broken_file_is_reported_not_fatal(platform):
    tasks, home = platform
    standings = {s.task_file.name: s for s in portfolio.portfolio(tasks, home, NOW)}
    assert sorted(standings) == ["broken.yaml", "fresh.yaml", "served.yaml"]
    served = standings["served.yaml"]
    assert (served.name, served.kind, served.metric, served.gate_line) == ("tiny_triage", "classification", "accuracy", 0.0)
    assert (served.base, served.champion, served.champion_version) == (0.35, 0.82, "1")
    assert served.champion_age_days == pytest.approx(10.0)
    assert served.last_gate.startswith("passed ") and "PASSED 7/7 sub-gates" in served.last_gate
    assert served.drift == "drifting: input_drift" and served.export == "Q8_0 shipped, llama.cpp 0.810"
    fresh = standings["fresh.yaml"]
    assert fresh.error is None and fresh.champion is None and fresh.base is None
    assert (fresh.last_gate, fresh.drift, fresh.export) == ("no evaluation yet", "no drift report yet", "no champion")
    broken = standings["broken.yaml"]
    assert broken.error and "broken.yaml" in broken.error and broken.name is None
    table = portfolio.portfolio_markdown(list(standings.values()))
    assert "| tiny_triage | classification | accuracy | 0.350 | 0.820 | 0.000 | v1 | 10 |" in table
    assert "| broken.yaml | **broken task file** |" in table


def test_a_champion_below_its_gate_is_flagged_and_the_chart_is_drawn(platform, tmp_path):
    tasks, home = platform
    served = tasks / "served.yaml"
    served.write_text(served.read_text().replace("min_accuracy: 0.0", "min_accuracy: 0.9"))
    standings = portfolio.portfolio(tasks, home, NOW)
    [below] = [s for s in standings if s.name == "tiny_triage"]
    assert below.below_gate and "**below gate**" in portfolio.portfolio_markdown(standings)
    chart = portfolio.plot_portfolio(standings, tmp_path / "portfolio.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def test_the_cli_prints_the_page_and_fails_on_a_broken_file(platform, tmp_path, capsys, monkeypatch):
    tasks, home = platform
    monkeypatch.setenv("FINETUNE_LOOP_NOW", NOW.isoformat())
    assert main(["portfolio", "--tasks", str(tasks), "--home", str(home.root), "--chart", str(tmp_path / "p.png")]) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert "| tiny_triage |" in out and f"chart: {tmp_path / 'p.png'}" in out
    assert "broken.yaml" in err
    (tasks / "broken.yaml").unlink()
    assert main(["portfolio", "--tasks", str(tasks), "--home", str(home.root)]) == EXIT_OK
    assert main(["portfolio", "--tasks", str(tmp_path / "nowhere"), "--home", str(home.root)]) == EXIT_FAILED
    assert "tasks directory" in capsys.readouterr().err
