"""Every task of a tasks directory on one page: each task's base and champion on its frozen holdout
against its gate line, the champion's version and age, the last gate verdict, drift and export status.

A platform team runs several fine-tunes; this is the overview the pitch deck's harness slide draws
(issue #17's `portfolio_report`; today `finetune-loop portfolio --tasks DIR`). It reads what the
loop already records, per task: the registry (champion, its holdout score, its export tags) and
the task's MLflow experiment (the latest evaluation and drift report). A task file that does not
load is a row with its error, never a crash of the page: one broken file must not hide the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from finetune_loop.core.common.catalog import TaskCatalog
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.ship.registry import (
    GGUF_CHECKS_PASSED_TAG,
    PromotionError,
    champion_record,
)


@dataclass(frozen=True)
class TaskStanding:
    task_file: Path
    name: str | None = None
    kind: str | None = None
    # The gate's metric: accuracy (classification) or exact match (generation).
    metric: str | None = None
    gate_line: float | None = None
    # Holdout scores: the base at the latest evaluation, the champion when it was promoted.
    base: float | None = None
    champion: float | None = None
    champion_version: str | None = None
    champion_age_days: float | None = None
    last_gate: str = "no evaluation yet"
    drift: str = "no drift report yet"
    export: str = "no champion"
    # Set when the task file does not load (the other fields stay empty).
    error: str | None = None

    @property
    def below_gate(self) -> bool:
        return self.champion is not None and self.gate_line is not None and self.champion < self.gate_line


def task_standing(spec: TaskSpec, home: LoopHome, now: datetime) -> TaskStanding:
    task_file = spec.spec_path
    metric = kind_of(spec).metric_name
    standing = {"name": spec.name, "kind": spec.kind, "metric": metric, "gate_line": spec.gate.min_accuracy}
    tracker = Tracker.for_task(home, spec.name)
    evaluation = tracker.latest_run("eval")
    if evaluation is not None:
        metrics, tags = evaluation.data.metrics, evaluation.data.tags
        standing["base"] = metrics.get(f"base_{metric}")
        when = datetime.fromtimestamp(evaluation.info.start_time / 1000, tz=now.tzinfo).strftime("%Y-%m-%d")
        verdict = "passed" if metrics.get("gate_passed") == 1.0 else "refused"
        standing["last_gate"] = f"{verdict} {when}: {tags.get('gate_verdict', '')}".strip()
    report = tracker.latest_run("drift")
    if report is not None:
        signals = report.data.tags.get("signals_fired", "")
        standing["drift"] = f"drifting: {signals}" if signals else "no drift"
    try:
        champion = champion_record(tracker, spec.registered_model_name)
    except PromotionError as exc:
        return TaskStanding(task_file, **standing, error=str(exc))
    if champion is not None:
        tags = tracker.version_tags(spec.registered_model_name, champion.version)
        standing |= {
            "champion": champion.holdout_primary, "champion_version": champion.version,
            "champion_age_days": (now - champion.since).total_seconds() / 86400,
        }
        if tags.get(GGUF_CHECKS_PASSED_TAG) == "True":
            standing["export"] = f"{tags.get('gguf_quant_type', 'GGUF')} shipped, llama.cpp {float(tags.get('gguf_accuracy', 'nan')):.3f}"
        else:
            standing["export"] = f"not shipped: {tags.get('gguf_failed_checks', 'no export recorded')}"
    return TaskStanding(task_file, **standing)


def portfolio(tasks_dir: Path, home: LoopHome, now: datetime) -> list[TaskStanding]:
    """One standing per task file, by file name; a file the catalog refused is its error."""
    catalog = TaskCatalog.load(tasks_dir)
    standings = [task_standing(spec, home, now) for spec in catalog.specs.values()]
    standings += [TaskStanding(path, error=error) for path, error in catalog.broken.items()]
    return sorted(standings, key=lambda s: s.task_file.name)


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def portfolio_markdown(standings: list[TaskStanding]) -> str:
    lines = [
        "| task | kind | metric | base | champion | gate | champion version | age (days) | last gate | drift | export |",
        "|---|---|---|---:|---:|---:|---|---:|---|---|---|",
    ]
    for s in standings:
        if s.error:
            lines.append(f"| {s.task_file.name} | **broken task file** | | | | | | | {_one_line(s.error)} | | |")
            continue
        champion = _score(s.champion) + (" **below gate**" if s.below_gate else "")
        age = "n/a" if s.champion_age_days is None else f"{s.champion_age_days:.0f}"
        lines.append(
            f"| {s.name} | {s.kind} | {s.metric} | {_score(s.base)} | {champion} | {_score(s.gate_line)} | "
            f"{'v' + s.champion_version if s.champion_version else 'none'} | {age} | {_one_line(s.last_gate)} | {s.drift} | {s.export} |"
        )
    return "\n".join(lines)


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.replace("|", "\\|").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def plot_portfolio(standings: list[TaskStanding], path: Path) -> Path:
    """Base vs champion per task on its frozen holdout, each task's gate line across its bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    loaded = [s for s in standings if not s.error]
    figure, axes = plt.subplots(figsize=(max(7.5, 1.8 * len(loaded) + 2), 4.5))
    width = 0.38
    for i, s in enumerate(loaded):
        for offset, value, colour, label in ((-width / 2, s.base, "0.65", "base"), (width / 2, s.champion, "tab:blue", "champion")):
            if value is not None:
                axes.bar(i + offset, value, width, color=colour, label=label if i == 0 else None)
                axes.text(i + offset, value + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
        if s.gate_line is not None:
            axes.hlines(s.gate_line, i - width, i + width, colors="red", linestyles="--", linewidth=1.2,
                        label="gate line" if i == 0 else None)
        if s.champion is None:
            axes.text(i + width / 2, 0.02, "no champion", rotation=90, ha="center", va="bottom", fontsize=8, color="gray")
    axes.set_xticks(range(len(loaded)), [f"{s.name}\n({s.metric})" for s in loaded], fontsize=9)
    axes.set_ylim(0, 1.08)
    axes.set_ylabel("frozen holdout score (primary metric)")
    broken = len(standings) - len(loaded)
    axes.set_title("Base vs champion on each task's frozen holdout, against its gate"
                   + (f"\n({broken} broken task file(s) not drawn: see the table)" if broken else ""), fontsize=11)
    if loaded:
        axes.legend(loc="upper right", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no task file loads", transform=axes.transAxes, ha="center", va="center", color="gray")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
