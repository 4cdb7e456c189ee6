"""What a user sees when their input is wrong or incomplete: one message per failed step and a
non-zero exit, never a stack trace on the terminal; a task without a production log yet runs the
loop and says monitoring is not configured."""

from __future__ import annotations

import pytest

from finetune_loop.cli import EXIT_FAILED, EXIT_OK, main
from finetune_loop_tests.conftest import write_tiny_task


@pytest.fixture
def state(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    monkeypatch.setenv("FINETUNE_LOOP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def test_a_curation_error_reaches_the_user_as_its_message(tmp_path, tiny_base_model, state, capfd):
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    task.write_text(task.read_text().replace("production_log: production.jsonl", "production_log: production.jsonl\n  sources: missing_sources.yaml"))
    assert main(["curate", "--task", str(task)]) == EXIT_FAILED
    out, err = capfd.readouterr()
    # The first step that reads the rows (freezing the holdout) names the missing file.
    assert "error: step holdout_suite failed: CurationError: sources file not found: " in err
    assert "missing_sources.yaml" in err
    assert "Traceback" not in out + err
    # The whole trace is kept, where the message says.
    log = next((state / "logs").glob("*-curate.log"))
    assert f"trace in {log}" in err and "in load_sources\n    raise CurationError" in log.read_text()


def test_a_task_without_a_production_log_runs_and_says_monitoring_is_not_configured(tmp_path, tiny_base_model, state, capfd):
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    task.write_text(task.read_text().replace("  production_log: production.jsonl\n", ""))
    assert "production_log" not in task.read_text()
    assert main(["run", "--task", str(task)]) == EXIT_OK
    out, err = capfd.readouterr()
    assert "drift       not configured yet: the task names no data.production_log" in out
    assert "champion    tiny_triage-adapter v1" in out
    assert "Traceback" not in out + err and "error:" not in err
    assert main(["monitor", "--task", str(task)]) == EXIT_OK
    assert "monitor: not configured yet" in capfd.readouterr().out
