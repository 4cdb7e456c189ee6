"""Serving quality: how the model in production did, week by week, against the gate line.

The holdout says how a model scored before it shipped; the production log says how the models that
served did afterwards. Per ISO week (Monday 00:00 UTC) this counts the requests, the labelled ones
(trusted feedback on a request that has a prediction: `recent.labelled_feedback` decides trust) and
their feedback accuracy, and which registry versions answered; the registry's promotions and
rollbacks (`registry.champion_events`) mark when the champion changed. A week with fewer than
`drift.min_signal_rows` labelled requests is "not evaluated": neither below the gate nor fine.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.production_log import ProductionLog
from finetune_loop.core.data.recent import labelled_feedback
from finetune_loop.core.ship.registry import PROMOTION, ROLLBACK, ChampionEvent

BELOW_GATE = "below gate"
AT_OR_ABOVE_GATE = "at or above gate"
UNKNOWN_VERSION = "unknown"


def week_start(moment: datetime) -> date:
    """The Monday (UTC) of the ISO week `moment` falls in; a naive time is refused, never assumed UTC."""
    if moment.tzinfo is None:
        raise ValueError(f"time without a time zone: {moment.isoformat()} (serving quality buckets weeks in UTC)")
    day = moment.astimezone(timezone.utc).date()
    return day - timedelta(days=day.weekday())


@dataclass(frozen=True)
class WeekQuality:
    week_start: date
    requests: int
    # Trusted feedback on a request with a prediction: the rows feedback accuracy is measured on.
    labelled: int
    correct: int
    # Registry version -> requests it answered this week (UNKNOWN_VERSION: the log did not say).
    served_by: dict[str, int]
    events: list[ChampionEvent] = field(default_factory=list)

    @property
    def feedback_accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def starts_at(self) -> datetime:
        return datetime.combine(self.week_start, time(0), timezone.utc)

    def metrics(self) -> dict[str, float]:
        """The week's numbers for MLflow (feedback accuracy only where there is feedback)."""
        measured = {"requests": float(self.requests), "labelled": float(self.labelled)}
        if self.feedback_accuracy is not None:
            measured["feedback_accuracy"] = self.feedback_accuracy
        return measured

    def status(self, gate_line: float, min_rows: int) -> str:
        if self.labelled < min_rows:
            return f"not evaluated (n={self.labelled} < {min_rows})"
        return BELOW_GATE if self.feedback_accuracy < gate_line else AT_OR_ABOVE_GATE


@dataclass(frozen=True)
class ServingQuality:
    task: str
    weeks: list[WeekQuality]
    events: list[ChampionEvent]
    gate_line: float
    min_rows: int
    # Feedback left out of every week's accuracy (untrusted source, conflicting labels), per reason kind.
    feedback_left_out: dict[str, int]

    @property
    def weeks_below_gate(self) -> list[WeekQuality]:
        return [w for w in self.weeks if w.status(self.gate_line, self.min_rows) == BELOW_GATE]

    @property
    def promotions(self) -> int:
        return sum(e.kind == PROMOTION for e in self.events)

    @property
    def rollbacks(self) -> int:
        return sum(e.kind == ROLLBACK for e in self.events)

    @property
    def latest_measured(self) -> WeekQuality | None:
        """The newest week with any labelled request (evaluated or not: its status says which)."""
        return next((w for w in reversed(self.weeks) if w.labelled), None)

    def table_markdown(self) -> str:
        lines = [
            "| week | requests | labelled | feedback accuracy | status | served by | events that week |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for w in self.weeks:
            accuracy = "—" if w.feedback_accuracy is None else f"{w.feedback_accuracy:.3f}"
            served = ", ".join(f"{v if v == UNKNOWN_VERSION else 'v' + v}: {n}" for v, n in w.served_by.items()) or "—"
            events = ", ".join(f"{e.kind} {e.label} ({e.at:%Y-%m-%d})" for e in w.events) or "—"
            lines.append(
                f"| {w.week_start.isoformat()} | {w.requests} | {w.labelled} | {accuracy} | "
                f"{w.status(self.gate_line, self.min_rows)} | {served} | {events} |"
            )
        return "\n".join(lines)

    def summary_markdown(self) -> str:
        below = self.weeks_below_gate
        latest = self.latest_measured
        evaluated = sum(1 for w in self.weeks if w.labelled >= self.min_rows)
        lines = [
            f"- gate line: feedback accuracy {self.gate_line:.3f} (gate.min_accuracy); a week needs "
            f"{self.min_rows} labelled requests (drift.min_signal_rows) to be evaluated",
            f"- weeks: {len(self.weeks)}, evaluated {evaluated}, below the gate {len(below)}"
            + (f" ({', '.join(w.week_start.isoformat() for w in below)})" if below else ""),
            "- latest week with feedback: "
            + ("none" if latest is None else
               f"{latest.week_start.isoformat()}, accuracy {latest.feedback_accuracy:.3f} on {latest.labelled} rows, "
               f"{latest.status(self.gate_line, self.min_rows)}"),
            f"- champion moves: promotions {self.promotions}, rollbacks {self.rollbacks}",
        ]
        if self.feedback_left_out:
            left_out = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.feedback_left_out.items()))
            lines.append(f"- feedback not counted: {left_out}")
        return "\n".join(lines)


def serving_quality(spec: TaskSpec, log: ProductionLog, events: Sequence[ChampionEvent], now: datetime) -> ServingQuality:
    """Every ISO week from the first request or champion move through the week of `now` (weeks
    without traffic included: no traffic is something to see), with the events of each week."""
    naive = [e for e in events if e.at.tzinfo is None]
    if naive:
        raise ValueError(f"registry {naive[0].kind} {naive[0].label} is stamped {naive[0].at.isoformat()} without a time zone: "
                         "the week it falls in is unknowable; re-stamp it with a zone")
    feedback = labelled_feedback(spec, log)
    trusted = {r.request_id for r in feedback.records}
    requests: Counter = Counter()
    labelled: Counter = Counter()
    correct: Counter = Counter()
    served: dict[date, Counter] = {}
    for record in log.records:
        week = week_start(record.timestamp)
        requests[week] += 1
        served.setdefault(week, Counter())[record.model_version or UNKNOWN_VERSION] += 1
        # Feedback on a request without a prediction says nothing about what the model answered.
        if record.request_id in trusted and record.prediction is not None:
            labelled[week] += 1
            correct[week] += record.prediction == record.feedback_label
    moments = [r.timestamp for r in log.records] + [e.at for e in events]
    weeks = []
    if moments:
        week, last = week_start(min(moments)), max(week_start(now), *(week_start(m) for m in moments))
        while week <= last:
            weeks.append(WeekQuality(
                week, requests[week], labelled[week], correct[week], dict(served.get(week, Counter()).most_common()),
                [e for e in events if week_start(e.at) == week],
            ))
            week += timedelta(days=7)
    return ServingQuality(spec.name, weeks, list(events), spec.gate.min_accuracy, spec.drift.min_signal_rows, _reason_kinds(feedback.quarantine))


def _reason_kinds(quarantine: list[dict]) -> dict[str, int]:
    return dict(Counter(entry["reason"].split(":", 1)[0] for entry in quarantine))


def plot_serving_quality(quality: ServingQuality, path: Path) -> Path:
    """Feedback accuracy per week against the gate line, a marker per promotion and rollback.
    Weeks that are not evaluated (too few labelled rows) are drawn hollow, so a point on few rows
    does not read like a measurement."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt
    from matplotlib import dates

    figure, axes = plt.subplots(figsize=(10, 4.2))
    middle = [w.starts_at + timedelta(days=3, hours=12) for w in quality.weeks]
    # NaN for a week without feedback breaks the line there, instead of drawing through it.
    accuracy = [math.nan if w.feedback_accuracy is None else w.feedback_accuracy for w in quality.weeks]
    evaluated = [w.labelled >= quality.min_rows for w in quality.weeks]
    if any(w.labelled for w in quality.weeks):
        axes.plot(middle, accuracy, color="tab:blue", linewidth=1.5, label="feedback accuracy")
        axes.scatter([m for m, e in zip(middle, evaluated) if e], [a for a, e in zip(accuracy, evaluated) if e],
                     color="tab:blue", zorder=3, label="week evaluated")
        axes.scatter([m for m, e in zip(middle, evaluated) if not e], [a for a, e in zip(accuracy, evaluated) if not e],
                     facecolors="white", edgecolors="tab:blue", zorder=3, label=f"not evaluated (< {quality.min_rows} rows)")
    else:
        axes.text(0.5, 0.5, "no labelled feedback yet", transform=axes.transAxes, ha="center", va="center", color="gray")
    axes.axhline(quality.gate_line, color="red", linestyle="--", linewidth=1, label=f"gate {quality.gate_line:.2f}")
    for event in quality.events:
        promoted = event.kind == PROMOTION
        axes.axvline(event.at, color="tab:green" if promoted else "tab:orange", linestyle="-" if promoted else ":", linewidth=1.2)
        axes.annotate(event.label, (event.at, 1.0), xytext=(3, -2), textcoords="offset points", rotation=90, va="top",
                      fontsize=8, color="tab:green" if promoted else "tab:orange")
    # Legend entries for the two marker kinds, drawn once whatever the number of events.
    axes.plot([], [], color="tab:green", linewidth=1.2, label="promotion")
    axes.plot([], [], color="tab:orange", linestyle=":", linewidth=1.2, label="rollback")
    if quality.weeks:
        axes.set_xlim(quality.weeks[0].starts_at, quality.weeks[-1].starts_at + timedelta(days=7))
    axes.xaxis.set_major_locator(dates.WeekdayLocator(byweekday=dates.MO))
    axes.xaxis.set_major_formatter(dates.DateFormatter("%Y-%m-%d"))
    axes.set_ylim(-0.03, 1.05)
    axes.grid(axis="x", color="0.9")
    axes.set_xlabel("ISO week, starting Monday (UTC)")
    axes.set_ylabel("feedback accuracy")
    axes.set_title(f"{quality.task}: serving quality per week")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path

