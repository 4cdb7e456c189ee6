"""The recent suite: trusted labelled production feedback split by time, frozen per evaluation,
never trained on (core rules), and end to end through a real `finetune-loop run`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow import MlflowClient

from finetune_loop.cli import main
from finetune_loop.core.common.examples import normalize_text
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data import curation, recent
from finetune_loop.core.data.production_log import append_log_file, read_task_log
from finetune_loop.core.data.readers import read_examples
from finetune_loop.core.data.suites import freeze_suite
from finetune_loop.defs import metadata as contract
from finetune_loop_tests.conftest import use_loop_home, write_tiny_task

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=30)
PHRASES = {
    "billing": "my invoice shows a fee i never agreed to",
    "shipping": "the courier left my box at the wrong door",
    "login": "the sign in page keeps rejecting my code",
}


def _request(i: int, day: float, label: str, *, source: str = "agent", text: str | None = None, request_id: str | None = None) -> dict:
    return {
        "request_id": request_id or f"q-{i}", "timestamp": (T0 + timedelta(days=day)).isoformat(),
        "text": text or f"{PHRASES[label]} case {i}", "prediction": label, "feedback": {"label": label, "source": source},
    }


def _task(tmp_path: Path, tiny_base_model: Path, rows: list[dict], **sections) -> Path:
    task = write_tiny_task(tmp_path / "task", tiny_base_model)
    raw = yaml.safe_load(task.read_text())
    raw["data"]["production_log"] = "log"
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    task.write_text(yaml.safe_dump(raw))
    append_log_file(task.parent / "log", "week.jsonl", rows)
    return task


def _freeze(task: Path, tmp_path: Path, champion_until: datetime | None = None, untrained: tuple[str, ...] = ()):
    spec = load_task_spec(task)
    suites_dir = tmp_path / "suites"
    holdout = freeze_suite(spec, "holdout", suites_dir)
    regression = freeze_suite(spec, "regression", suites_dir, exclude=[holdout])
    log = read_task_log(spec, now=NOW, check_labels=False)
    value = recent.freeze_recent_suite(
        spec, log, suites_dir, champion_feedback_until=champion_until, untrained_labels=untrained, exclude=[holdout, regression],
    )
    return spec, log, value, [holdout, regression]


def test_the_last_days_are_judged_and_only_older_feedback_may_train(tmp_path, tiny_base_model):
    labels = list(PHRASES)
    rows = [_request(i, day=i * 0.5, label=labels[i % 3]) for i in range(40)]  # days 0 .. 19.5
    task = _task(tmp_path, tiny_base_model, rows, recent_suite={"days": 5})
    spec, log, value, _ = _freeze(task, tmp_path)
    suite_rows = read_examples(value.suite.path)
    newest = T0 + timedelta(days=19.5)
    assert value.window_end == newest and value.training_cutoff == newest - timedelta(days=5)
    # Days 14.5 .. 19.5 exclusive of the start: rows 30..39.
    assert sorted(e.id for e in suite_rows) == sorted(f"feedback-q-{i}" for i in range(30, 40))
    assert value.suite.per_label == {"billing": 4, "login": 3, "shipping": 3}
    training = recent.write_training_feedback(spec, log, value, tmp_path / "feedback.jsonl")
    trained_ids = {json.loads(line)["id"] for line in training.read_text().splitlines()}
    assert trained_ids == {f"feedback-q-{i}" for i in range(30)}
    # Frozen per evaluation under its content hash; the same rows give the same file.
    again = _freeze(task, tmp_path)[2]
    assert again.suite.path == value.suite.path and again.suite.content_hash == value.suite.content_hash
    manifest = json.loads(value.suite.path.with_suffix(".manifest.json").read_text())
    assert manifest["window_start"] == value.training_cutoff.isoformat() and manifest["size"] == 10


def test_the_window_never_reaches_back_into_the_champions_training_feedback(tmp_path, tiny_base_model):
    rows = [_request(i, day=i, label="billing" if i % 2 else "shipping") for i in range(20)]
    task = _task(tmp_path, tiny_base_model, rows, recent_suite={"days": 10})
    champion_until = T0 + timedelta(days=15)
    _, _, value, _ = _freeze(task, tmp_path, champion_until=champion_until)
    assert value.training_cutoff == champion_until
    assert sorted(e.id for e in read_examples(value.suite.path)) == sorted(f"feedback-q-{i}" for i in range(16, 20))
    assert "the champion trained on feedback until then" in value.note
    # A champion that trained on everything leaves nothing to judge: no suite, said so.
    nothing = _freeze(task, tmp_path, champion_until=T0 + timedelta(days=30))[2]
    assert nothing.suite is None and nothing.size == 0 and "none usable" in nothing.note


def test_untrusted_and_conflicting_feedback_never_becomes_a_label(tmp_path, tiny_base_model):
    rows = [_request(i, day=i, label="billing") for i in range(6)]
    rows.append(_request(6, day=6, label="login", source="customer_self_report"))
    # The same request labelled twice, differently: its truth is unknown.
    rows.append(_request(7, day=7, label="shipping"))
    rows.append({**_request(7, day=7.1, label="billing"), "text": "the courier left my box at the wrong door case 7"})
    task = _task(tmp_path, tiny_base_model, rows, recent_suite={"days": 3})
    spec, log, value, _ = _freeze(task, tmp_path)
    reasons = {q["request_id"]: q["reason"] for q in value.feedback_quarantine}
    assert reasons == {
        "q-6": "untrusted feedback source: 'customer_self_report' is not in feedback.trusted_sources ['agent', 'reviewer', 'simulated_agent']",
        "q-7": "conflicting feedback labels: 'shipping' and 'billing'",
    }
    judged = {e.id for e in read_examples(value.suite.path)}
    trained = recent.write_training_feedback(spec, log, value, tmp_path / "feedback.jsonl").read_text()
    for request_id in ("q-6", "q-7"):
        assert f"feedback-{request_id}" not in judged and f"feedback-{request_id}" not in trained


def test_a_recent_row_sneaked_into_older_feedback_is_removed_from_training(tmp_path, tiny_base_model):
    rows = [_request(i, day=i, label="billing" if i % 2 else "login") for i in range(20)]
    # An old request carrying (nearly) the text of one the recent suite judges.
    rows.append(_request(99, day=1, label="login", text=rows[18]["text"].upper() + "!!"))
    task = _task(tmp_path, tiny_base_model, rows, recent_suite={"days": 4})
    spec, log, value, frozen = _freeze(task, tmp_path)
    assert "feedback-q-18" in {e.id for e in read_examples(value.suite.path)}
    feedback = recent.write_training_feedback(spec, log, value, tmp_path / "feedback.jsonl")
    assert "feedback-q-99" in feedback.read_text()
    dataset = curation.curate_dataset(spec, [*frozen, value.suite], tmp_path / "datasets", extra_inputs=[feedback])
    judged = {normalize_text(e.text) for e in read_examples(value.suite.path)}
    trained = read_examples(dataset.train_path) + read_examples(dataset.validation_path)
    assert not judged & {normalize_text(e.text) for e in trained}
    assert "feedback-q-99" not in {e.id for e in trained}
    assert curation.contamination_between(spec, dataset, [*frozen, value.suite]) == []


def test_a_new_label_is_counted_until_the_task_admits_it(tmp_path, tiny_base_model):
    rows = [_request(i, day=i, label="billing") for i in range(10)]
    rows += [{**_request(10 + i, day=8 + i * 0.1, label="billing"), "feedback": {"label": "refund", "source": "agent"}} for i in range(4)]
    task = _task(tmp_path, tiny_base_model, rows, recent_suite={"days": 3})
    _, _, value, _ = _freeze(task, tmp_path)
    assert value.excluded == {"label not in the task yet: refund": 4}
    assert set(value.suite.per_label) == {"billing"}
    # Admitting the label is one edit of the task YAML; the frozen holdout stays as it is.
    raw = yaml.safe_load(task.read_text())
    holdout_before = (tmp_path / "suites" / "holdout.jsonl").read_bytes()
    raw["labels"].append("refund")
    task.write_text(yaml.safe_dump(raw))
    _, _, admitted, _ = _freeze(task, tmp_path)
    assert admitted.excluded == {} and admitted.suite.per_label == {"billing": 3, "refund": 4}
    assert (tmp_path / "suites" / "holdout.jsonl").read_bytes() == holdout_before


def test_an_admitted_label_the_champion_never_trained_on_trains_on_its_oldest_window_rows(tmp_path, tiny_base_model):
    rows = [_request(i, day=i, label="billing") for i in range(10)]
    # Nine refunds, all inside the 3-day window: without a share of them no retrain could learn refund.
    rows += [{**_request(10 + i, day=7 + i * 0.25, label="billing"), "feedback": {"label": "refund", "source": "agent"}} for i in range(9)]
    task = _task(tmp_path, tiny_base_model, rows, recent_suite={"days": 3})
    raw = yaml.safe_load(task.read_text())
    raw["labels"].append("refund")
    task.write_text(yaml.safe_dump(raw))
    spec, log, value, frozen = _freeze(task, tmp_path, untrained=("refund",))
    # The oldest half (4 of 9, rounded down) trains, the newer 5 are judged; billing keeps the common cutoff.
    assert value.admitted_cutoffs == {"refund": T0 + timedelta(days=7.75)}
    assert value.excluded == {"trains the admitted label refund": 4}
    assert value.suite.per_label == {"billing": 3, "refund": 5}
    training = recent.write_training_feedback(spec, log, value, tmp_path / "feedback.jsonl")
    trained_ids = {json.loads(line)["id"] for line in training.read_text().splitlines()}
    assert trained_ids == {f"feedback-q-{i}" for i in range(7)} | {f"feedback-q-{i}" for i in range(10, 14)}
    assert not trained_ids & {e.id for e in read_examples(value.suite.path)}
    # The version trained on this split may have seen requests up to the refund cutoff: its
    # FEEDBACK_UNTIL_TAG, and so the next window's start.
    assert value.trained_until == T0 + timedelta(days=7.75) > value.training_cutoff
    assert "refund until" in value.note
    # Once the champion trained on refund (it is no longer untrained) the window is split by time alone.
    assert _freeze(task, tmp_path)[2].admitted_cutoffs == {}
    # A share of 0 keeps every window row judged.
    raw["recent_suite"]["admitted_label_train_share"] = 0
    task.write_text(yaml.safe_dump(raw))
    assert _freeze(task, tmp_path, untrained=("refund",))[2].suite.per_label == {"billing": 3, "refund": 9}


def test_max_rows_keeps_the_newest_and_trains_on_none_of_the_window(tmp_path, tiny_base_model):
    rows = [_request(i, day=i * 0.1, label="shipping" if i % 2 else "billing") for i in range(30)]
    task = _task(tmp_path, tiny_base_model, rows, recent_suite={"days": 30, "max_rows": 5})
    spec, log, value, _ = _freeze(task, tmp_path)
    assert sorted(e.id for e in read_examples(value.suite.path)) == sorted(f"feedback-q-{i}" for i in range(25, 30))
    # The whole log is in the 30-day window: the 25 older rows are neither judged nor trained on.
    assert value.excluded == {"beyond recent_suite.max_rows": 25}
    assert recent.write_training_feedback(spec, log, value, tmp_path / "feedback.jsonl") is None


def test_a_run_judges_the_candidate_on_recent_traffic_and_records_the_suite(tmp_path, tiny_base_model, monkeypatch, capsys):
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    labels = list(PHRASES)
    now = datetime.now(timezone.utc)
    rows = [{**_request(i, day=0, label=labels[i % 3]), "timestamp": (now - timedelta(hours=60 - i)).isoformat()} for i in range(60)]
    task = _task(tmp_path, tiny_base_model, rows, recent_suite={"days": 1}, gate={"min_recent_rows": 10})
    assert main(["run", "--task", str(task)]) == 0
    # The summary prints both comparisons: the frozen holdout and the recent traffic.
    summary = capsys.readouterr().out
    assert "frozen holdout rows" in summary
    assert "recent      candidate " in summary and " vs no champion yet on 24 recent labelled requests (labelled requests after " in summary
    with dg.instance_for_test(temp_dir=str(home / "dagster_home")) as instance:
        def latest(key):
            event = instance.get_latest_materialization_event(dg.AssetKey(key))
            return getattr(contract, {"recent_suite": "RecentSuiteMetadata", "eval_report": "EvalReportMetadata",
                                      "curated_dataset": "CuratedDatasetMetadata"}[key]).from_dagster(event.asset_materialization.metadata)

        suite, report, dataset = latest("recent_suite"), latest("eval_report"), latest("curated_dataset")
    # The last 24 h of 60 hourly labelled requests: 24 judged, the 36 older ones may train.
    assert suite.size == 24 and suite.window_rows == 24
    assert report.recent_rows == 24 and report.recent_suite_hash == suite.content_hash
    assert report.recent_candidate_accuracy is not None and report.trigger == "manual"
    assert "**follows_recent_traffic**" in report.gate_lines and "recent" in report.table
    # No champion yet: the recent-traffic rule compares with the base, and reports its power.
    assert set(report.gate_power) == {"follows_recent_traffic"} and report.gate_power["follows_recent_traffic"]["rows"] == 24
    assert dataset.feedback_rows_in == 36
    judged = {normalize_text(e.text) for e in read_examples(Path(suite.suite_path))}
    trained = [e for path in Path(dataset.directory).glob("*.jsonl") if path.stem in ("train", "validation") for e in read_examples(path)]
    assert trained
    assert not judged & {normalize_text(e.text) for e in trained}
    # The registry version records what it was judged on and how far its training feedback reaches.
    tracking = LoopHome(home)
    client = MlflowClient(tracking_uri=tracking.mlflow_tracking_uri)
    tags = client.get_model_version("tiny_triage-adapter", "1").tags
    assert tags["recent_suite_sha256"] == suite.content_hash
    assert tags[recent.FEEDBACK_UNTIL_TAG] == suite.training_cutoff
    assert tags["task_spec_sha256"] == load_task_spec(task).spec_sha256


@pytest.mark.parametrize("change", ["removed", "renamed"])
def test_removing_or_renaming_a_label_is_refused_until_the_holdout_is_replaced(tmp_path, tiny_base_model, change):
    from finetune_loop.core.data.suites import SuiteChangedError, archive_suite

    task = _task(tmp_path, tiny_base_model, [_request(0, day=0, label="billing")])
    _freeze(task, tmp_path)
    raw = yaml.safe_load(task.read_text())
    raw["labels"] = [label for label in raw["labels"] if label != "login"] + (["sign_in"] if change == "renamed" else [])
    task.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteChangedError, match=r"no longer fits the task: \d+ row\(s\) with a label no longer in the task's labels \['login'\]: ids") as refused:
        _freeze(task, tmp_path)
    assert "finetune-loop replace-suite --task" in str(refused.value) and "--suite holdout" in str(refused.value)
    # Replacing it is the explicit act: the old version is archived and a new holdout is frozen.
    archive_suite(tmp_path / "suites", "holdout")
    archive_suite(tmp_path / "suites", "regression")
    _, _, _, (holdout, _) = _freeze(task, tmp_path)
    assert "login" not in holdout.per_label
