"""What a user sees when their input is wrong or incomplete: one message per failed step and a
non-zero exit, never a stack trace on the terminal; a task without a production log yet runs the
loop and says monitoring is not configured."""

from __future__ import annotations

import pytest

from finetune_loop.cli import EXIT_FAILED, EXIT_OK, main
from finetune_loop_tests.conftest import use_loop_home, write_tiny_task


@pytest.fixture
def state(tmp_path, monkeypatch):
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    return home


def test_a_curation_error_reaches_the_user_as_its_message(tmp_path, tiny_base_model, state, capfd):
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    (tmp_path / "task" / "sources.yaml").write_text("sources: []\n")
    task.write_text(task.read_text().replace("production_log: production.jsonl", "production_log: production.jsonl\n  sources: sources.yaml"))
    assert main(["curate", "--task", str(task)]) == EXIT_FAILED
    out, err = capfd.readouterr()
    # The first step that reads the rows (freezing the holdout) names the broken file.
    assert "error: step holdout_suite failed: CurationError: " in err and "sources.yaml: expected a non-empty mapping under 'sources'" in err
    assert "Traceback" not in out + err
    # The whole trace is kept, where the message says.
    log = next((state / "logs").glob("*-curate.log"))
    assert f"trace in {log}" in err and "in load_sources\n    raise CurationError" in log.read_text()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("labeled_examples: tickets.jsonl", "labeled_examples: tickts.jsonl", "data.labeled_examples: no such file or directory: "),
        ("production_log: production.jsonl", "production_log: production.jsonl\n  sources: sources.yaml", "data.sources: no such file or directory: "),
        ("name: tiny_triage", "name: tiny_triage\nprobes: probes.yaml", "probes: no such file or directory: "),
    ],
)
def test_a_missing_file_the_task_names_is_an_error_naming_the_task_file_and_key(tmp_path, state, capfd, old, new, expected):
    task = write_tiny_task(tmp_path / "task", tmp_path / "model")
    task.write_text(task.read_text().replace(old, new))
    assert main(["run", "--task", str(task)]) == EXIT_FAILED
    out, err = capfd.readouterr()
    assert err.startswith(f"error: {task}: {expected}") and "Traceback" not in out + err


def test_a_base_model_directory_that_does_not_exist_names_the_task_file_and_key(tmp_path, state, capfd):
    task = write_tiny_task(tmp_path / "task", tmp_path / "no-such-model")
    assert main(["curate", "--task", str(task)]) == EXIT_FAILED
    out, err = capfd.readouterr()
    assert f"BaseModelError: {task}: base_model: base model directory not found: {tmp_path / 'no-such-model'}" in err
    assert "Traceback" not in out + err and "Repo id must be" not in err


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


def test_a_label_with_no_training_rows_says_how_it_gets_some(tmp_path, tiny_base_model, state, capfd):
    # The usual cause: a label just admitted from feedback, all of it still in the recent suite.
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    task.write_text(task.read_text().replace("- login\n", "- login\n- refunds\n"))
    assert main(["curate", "--task", str(task)]) == EXIT_FAILED
    out, err = capfd.readouterr()
    assert "labels with no training rows after curation: ['refunds']; add labelled examples of them to " in err
    assert "older than the recent suite's window (recent_suite.days = 7)" in err and "Traceback" not in out + err
