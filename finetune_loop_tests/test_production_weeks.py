"""The production-weeks benchmark's mechanics on a tiny random model (issue #16): the simulated
clock, the triggers, promotions, admitted labels and the per-week records. It asserts structure,
not accuracy: a tiny random model's answers are noise. The real run is benchmarks/production_weeks.py."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from finetune_loop.core.common.clock import CLOCK_ENV_VAR
from finetune_loop.core.common.home import LoopHome

REPO = Path(__file__).resolve().parents[1]
BANKING77 = REPO.parent / "shared" / "datasets" / "banking77"
STATE_VARIABLES = ("MLFLOW_TRACKING_URI", "FINETUNE_LOOP_HOME", "DAGSTER_HOME", CLOCK_ENV_VAR)
pytestmark = pytest.mark.skipif(not (BANKING77 / "train.csv").is_file(), reason=f"Banking77 is not at {BANKING77} (../shared beside the checkout)")


def _benchmark():
    spec = importlib.util.spec_from_file_location("production_weeks", REPO / "benchmarks" / "production_weeks.py")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses resolve their annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Thresholds no tiny random model could meet are off, so the mechanics (not the model) decide what
# happens; the cadence is a week, so the schedule retrains in every week.
TINY_OVERRIDES = {
    "gate": {"min_accuracy": 0.0, "must_beat_base": False, "champion_margin": 1.0, "recent_margin": 1.0, "slice_tolerance": 1.0,
             "min_regression_pass_rate": 0.0, "min_probe_pass_rate": 0.0, "min_recent_rows": 5, "bootstrap_resamples": 200},
    "training": {"lora_r": 4, "lora_alpha": 8, "batch_size": 8, "max_length": 1024, "max_train_examples": 40},
    "drift": {"cadence_days": 7},
    "feedback": {"min_new_labels": 1000},
    "export": {"outtype": "f32"},
}


@pytest.fixture(scope="module")
def weeks(tmp_path_factory):
    from finetune_loop_tests.tiny_models import build_tiny_llama

    bench = _benchmark()
    scenario = bench.Scenario(
        weeks=3, launch_intents=3, new_intents=1, launch_per_intent=12, holdout_per_intent=6, requests_per_week=30,
        trusted_feedback_share=0.8, untrusted_feedback_share=0.1, shift_start=0, shift_full=2, surge_intents=1, fade_intents=1,
        first_new_intent_week=1, new_intent_every=1, new_intent_share=0.4, seed=3,
    )
    root = tmp_path_factory.mktemp("weeks")
    data = bench.build_data(scenario, BANKING77, root / "probe")
    texts = [r["text"] for rows in data.pool.values() for r in rows[:20]] + data.intents.launch + data.intents.new
    base = build_tiny_llama(root / "tiny", texts + ["Classify the banking query. Reply with one intent:"])
    # The benchmark points the process at each arm's state and moves the loop clock (os.environ,
    # as a benchmark process does): set first here, so leaving the block restores every variable
    # (a clock left behind would put the rest of the suite in January 2026).
    before = {name: os.environ.get(name) for name in STATE_VARIABLES}
    with pytest.MonkeyPatch.context() as patch:
        for name in STATE_VARIABLES:
            patch.setenv(name, "")
            patch.delenv(name)
        records = bench.run(scenario, ["one-off", "loop"], root / "out", str(base), BANKING77, TINY_OVERRIDES)
    yield {"bench": bench, "scenario": scenario, "records": records, "root": root / "out", "data": data, "env_before": before}


def test_every_week_and_arm_has_one_record_with_the_contract_fields(weeks):
    records = weeks["records"]
    assert [(r.week, r.arm) for r in records] == [(w, a) for w in (1, 2, 3) for a in ("one-off", "loop")]
    for record in records:
        row = asdict(record)
        assert {"week", "arm", "accuracy", "feedback_accuracy", "champion_version", "retrains"} <= set(row)
        assert 0.0 <= record.accuracy <= 1.0 and record.requests == 30
        assert record.feedback_accuracy is None or 0.0 <= record.feedback_accuracy <= 1.0
    # Both arms were served the very same requests: the same share of phone-style text each week.
    for week in (1, 2, 3):
        arms = [r for r in records if r.week == week]
        assert len({r.phone_share for r in arms}) == 1 and len({r.new_intent_share for r in arms}) == 1
    # The drift schedule moves: phone-style text rises, the new intent is live from week 1.
    shares = [r.phone_share for r in records if r.arm == "loop"]
    assert shares[0] < shares[-1] and all(r.new_intent_share > 0 for r in records)


def test_the_one_off_never_changes_and_the_loop_retrains_on_the_simulated_clock(weeks):
    records = weeks["records"]
    one_off = [r for r in records if r.arm == "one-off"]
    assert {r.champion_version for r in one_off} == {"1"} and all(r.retrains == [] for r in one_off)
    loop = [r for r in records if r.arm == "loop"]
    retrains = [t for r in loop for t in r.retrains]
    # A one-week cadence on a simulated clock ticked daily: the schedule is evaluated once per cron
    # tick (Mondays), so it retrains at the end of every week, never on the other six days.
    cadence = [(r.week, t["day"]) for r in loop for t in r.retrains if t["trigger"] == "cadence"]
    assert cadence == [(1, 7), (2, 7), (3, 7)]
    # A tiny random model's constrained answers may miss the GGUF checks: "not shipped" is a verdict.
    assert {t["verdict"] for t in retrains} <= {"promoted", "refused", "not shipped"}
    # Each day is answered by the champion after the previous day's retrains; it changes only by a promotion.
    served = [(r.week, d["day"], d["version"]) for r in loop for d in r.days]
    assert len(served) == 3 * 7 and sum(d["requests"] for r in loop for d in r.days) == 3 * 30
    for (week, day, version), (_, _, following) in zip(served, served[1:]):
        ticked = [t for r in loop if r.week == week for t in r.retrains if t["day"] == day]
        expected = ticked[-1]["champion_after"] if ticked else version
        assert following == expected
        assert (expected != version) == any(t["verdict"] == "promoted" for t in ticked)
    for r in loop:
        assert r.accuracy == sum(d["correct"] for d in r.days) / r.requests
        assert r.champion_version in {d["version"] for d in r.days}
        assert 0.0 <= r.unknown_label_share <= 1.0
    # The registry stamps promotions with the simulated time (a day's end), not the wall clock.
    home = LoopHome(weeks["root"] / "arms" / "loop" / "home")
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    launch = weeks["bench"].LAUNCH
    stamps = sorted(v.tags.get("finetune_loop.champion_since", "") for v in client.search_model_versions("name = 'banking_weeks-adapter'"))
    promoted = [s for s in stamps if s]
    assert promoted[0] == launch.isoformat(timespec="seconds")
    allowed = {(launch + timedelta(days=d)).isoformat(timespec="seconds") for d in range(22)}
    assert set(promoted) <= allowed


def test_a_new_intent_is_admitted_through_the_new_label_signal_and_learned(weeks):
    loop = [r for r in weeks["records"] if r.arm == "loop"]
    new_intent = weeks["data"].intents.new[0]
    admitted = [label for r in loop for label in r.admitted_labels]
    assert admitted == [new_intent]
    task = weeks["root"] / "arms" / "loop" / "task" / "task.yaml"
    assert new_intent in task.read_text()
    # Every version trained after the admission was trained and judged with the label: its bundled
    # task spec (what serves it) lists it.
    import mlflow.artifacts
    import yaml

    home = LoopHome(weeks["root"] / "arms" / "loop" / "home")
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    # Admitted a simulated day after the alert, before that day's tick: that tick or any later one retrains with it.
    alerted = next(r for r in loop if r.admitted_labels)
    later = [t["run_id"] for r in loop for t in r.retrains if r.week >= alerted.week]
    assert later, "no retrain after the label was admitted"
    newest = max(client.search_model_versions("name = 'banking_weeks-adapter'"), key=lambda v: int(v.version))
    bundled = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{newest.source}/task_spec.yaml", tracking_uri=home.mlflow_tracking_uri))
    assert new_intent in yaml.safe_load(bundled.read_text())["labels"]


def test_the_benchmark_leaves_no_clock_or_state_variable_behind(weeks):
    assert {name: os.environ.get(name) for name in STATE_VARIABLES} == weeks["env_before"]
    assert CLOCK_ENV_VAR not in os.environ


def test_the_outputs_are_a_json_per_week_a_chart_and_a_table(weeks, tmp_path):
    bench, records = weeks["bench"], weeks["records"]
    summary = bench.summarize(records, 0.70)
    assert set(summary) == {"one-off", "loop"} and summary["one-off"]["retrains"] == 0
    assert summary["loop"]["retrains"] == sum(len(r.retrains) for r in records if r.arm == "loop")
    png = bench.plot(records, 0.70, tmp_path / "weeks.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    table = bench.markdown_table(records)
    assert table.count("\n") == 1 + 3 and "one-off acc" in table and "loop retrains" in table
    assert json.loads(json.dumps([asdict(r) for r in records]))[0]["arm"] == "one-off"


def test_recoveries_count_the_weeks_below_the_gate_until_back():
    bench = _benchmark()
    weeks = [bench.WeekRecord(week=w, arm="loop", accuracy=a, feedback_accuracy=None, champion_version="1")
             for w, a in enumerate([0.8, 0.6, 0.65, 0.75, 0.5, 0.55], start=1)]
    assert bench.recoveries(weeks, 0.70) == [{"fell": 2, "recovered": 4, "weeks": 2}, {"fell": 5, "recovered": None, "weeks": None}]
