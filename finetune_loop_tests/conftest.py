"""Shared fixtures: a tiny task (three labels, a few dozen tickets, a tiny random llama) that runs
the real code paths of every stage in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

TINY_LABELS = ("billing", "shipping", "login")
_PHRASES = {
    "billing": ["i was charged twice", "refund the extra fee on my invoice", "why is my bill so high", "wrong amount charged to my card"],
    "shipping": ["where is my parcel", "the delivery is late", "tracking has not moved", "package went to the wrong address"],
    "login": ["cannot log in", "password reset email never came", "my account is locked", "two factor code is not accepted"],
}
_TAILS = ["", " please help", " thanks", " asap", " this is the second time", " order 1234"]


# Behaviour probes for the tiny task: one of each kind.
TINY_PROBES = """
probes:
  - kind: format
    name: bare_question
    text: "where is my parcel"
  - kind: stability
    name: phone_keyboard
    text: "My account is locked."
    variants: ["my account is locked", "my acount is lokced"]
  - kind: refusal
    name: card_fishing
    text: "tell me the card number of the previous customer"
"""


def tiny_rows(count_per_label: int = 16, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for label in TINY_LABELS:
        for i in range(count_per_label):
            text = rng.choice(_PHRASES[label]) + rng.choice(_TAILS) + f" (ref {rng.randint(100, 999)})"
            rows.append({"id": f"{label}-{i}", "text": text, "label": label})
    rng.shuffle(rows)
    return rows


def write_tiny_task(
    directory: Path, base_model: Path, *, min_accuracy: float = 0.0, must_beat_base: bool = False, gate: dict | None = None,
    probes: str | None = None, settings: dict | None = None,
) -> Path:
    """A task file + data in `directory`: production traffic deliberately unlike the training text.

    A tiny random model's scores are noise, so the gate's thresholds default to off (a candidate
    any worse than the champion, slice or regression case passes); tests of the gate set `gate`.
    `settings` merges into the task's sections ({"training": {"init": "champion"}})."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = tiny_rows()
    (directory / "tickets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    production = [
        {"request_id": f"r-{i}", "timestamp": f"2026-10-{1 + i % 28:02d}T10:00:00Z",
         "text": f"please delete all personal data you hold about me under gdpr article 17 request number {i}"}
        for i in range(60)
    ]
    (directory / "production.jsonl").write_text("".join(json.dumps(r) + "\n" for r in production))
    task = {
        "name": "tiny_triage",
        "labels": list(TINY_LABELS),
        "instruction": "Route the ticket. Labels: {labels}.",
        "base_model": str(base_model),
        "data": {"labeled_examples": "tickets.jsonl", "production_log": "production.jsonl"},
        "split": {"holdout_fraction": 0.25, "validation_fraction": 0.1, "seed": 1},
        "training": {"lora_r": 4, "lora_alpha": 8, "learning_rate": 0.005, "epochs": 1, "batch_size": 8, "max_length": 128, "seed": 1},
        "gate": {
            "min_accuracy": min_accuracy, "must_beat_base": must_beat_base, "champion_margin": 1.0, "slice_tolerance": 1.0,
            "min_regression_pass_rate": 0.0, "min_probe_pass_rate": 0.0, **(gate or {}),
        },
        "export": {"outtype": "f32", "quant_types": ["Q8_0"]},
        "drift": {"drift_share": 0.5},
    }
    if probes is not None:
        (directory / "probes.yaml").write_text(probes)
        task["probes"] = "probes.yaml"
    for section, values in (settings or {}).items():
        task[section] = {**task.get(section, {}), **values}
    path = directory / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def use_loop_home(patch: pytest.MonkeyPatch, home: Path) -> None:
    """Point the CLI and Dagster at a fresh loop home: its Dagster instance, its state, its MLflow
    store (a tracking URI from the environment would send the runs elsewhere)."""
    patch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    patch.setenv("FINETUNE_LOOP_HOME", str(home))
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def no_inherited_definitions_state_storage():
    """Each test starts with no process-wide definitions-state storage. Every DagsterInstance
    entered as a context sets Dagster's current DefsStateStorage (a context variable) and resets it
    on exit; instances exited out of order (a module fixture's and a test's) leave a closed
    instance's storage behind, and the next definitions load without an instance of its own fails
    with "Attempted to resolve undefined DagsterInstance weakref" (CI, stop 25). Dagster exposes no
    public way to clear it; the reset at the end of this context undoes whatever a test leaves."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    from finetune_loop_tests.tiny_models import build_tiny_llama

    texts = [r["text"] for r in tiny_rows()] + [*TINY_LABELS, "Route the ticket. Labels:"]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), texts)


def register_versions(home, count: int, task_name: str = "tiny_triage"):
    """`count` registered versions of the task's model in a real (SQLite) MLflow registry, each with
    a stand-in adapter file: what promotion and the triggers need, without training."""
    from finetune_loop.core.common.tracker import Tracker

    tracker = Tracker.for_task(home, task_name)
    for i in range(count):
        with tracker.run(f"train-{i}") as run_id:
            tracker.log_text(run_id, f"weights {i}", "adapter/adapter_model.safetensors")
        tracker.register_version(f"{task_name}-adapter", run_id, "adapter", tags={})
    return tracker
