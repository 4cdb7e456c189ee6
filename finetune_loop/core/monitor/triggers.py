"""When the loop retrains: the decisions behind the schedule and the sensors, as pure functions.

Each takes what the registry, the production log or the drift reports say and returns a
`Decision`: retrain or not, which trigger, and the evidence in words (the run's tags and the
sensor's skip reason carry it). The Dagster sensors only gather the inputs and check that no
retrain of the task is already queued or running.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.erasure import ErasureRequest
from finetune_loop.core.data.production_log import ProductionRecord
from finetune_loop.core.data.recent import trainable_admitted_rows
from finetune_loop.core.ship.registry import ChampionRecord, untrained_labels

CADENCE, DRIFT, FEEDBACK_VOLUME, FEEDBACK_ACCURACY = "cadence", "drift", "feedback_volume", "feedback_accuracy"
LABELS_ADMITTED = "labels_admitted"
ERASURE = "erasure"
# Trusted feedback rows an admitted label needs that a retrain would train on (older than the recent
# suite's window, or its carved share of the window) before labels_admitted retrains: the
# new_labels signal's own minimum.
MIN_ADMITTED_LABEL_ROWS = 5


@dataclass(frozen=True)
class Decision:
    retrain: bool
    trigger: str
    evidence: str


def cadence_decision(
    champion: ChampionRecord | None, now: datetime, cadence_days: float, last_attempt: datetime | None = None
) -> Decision:
    """Retrain when the champion has served longer than the cadence, counted from when it last
    became champion (a promotion or a rollback), or when there is no champion yet. A cadence
    retrain that did not replace the champion (`last_attempt`, when it was requested) starts the
    count again: without that, a refused cadence retrain would be retried at every weekly tick,
    spending a training a week on a champion the gate has just confirmed."""
    if champion is None:
        return Decision(True, CADENCE, "no champion yet")
    age = now - champion.since
    cadence = timedelta(days=cadence_days)
    evidence = f"champion v{champion.version} serving since {champion.since:%Y-%m-%d}, {age.days} days (cadence {cadence_days:g} days)"
    if last_attempt is not None and last_attempt > champion.since and now - last_attempt < cadence:
        return Decision(False, CADENCE, f"{evidence}; a cadence retrain was requested {last_attempt:%Y-%m-%d} and did not replace it: next one {cadence_days:g} days after that")
    return Decision(age >= cadence, CADENCE, evidence)


@dataclass
class DriftHysteresis:
    """One retrain per drifting episode: after a request, drifting reports request nothing until a
    report comes back clean (re-arms); two requests are at least `cooldown_seconds` apart, measured
    between the reports' times on the loop's clock (`clock.utc_now()` when each was made), so a flapping signal retrains once per cooldown."""

    armed: bool = True
    last_request_at: float | None = None

    def observe(self, drifting: bool, timestamp: float, cooldown_seconds: float) -> str:
        """What a report means: "request", "cooldown", "already_requested" or "clean". The caller
        calls `requested(timestamp)` once it has actually requested the retrain."""
        if not drifting:
            self.armed = True
            return "clean"
        if not self.armed:
            return "already_requested"
        if self.last_request_at is not None and timestamp - self.last_request_at < cooldown_seconds:
            return "cooldown"
        return "request"

    def requested(self, timestamp: float) -> None:
        self.armed, self.last_request_at = False, timestamp


@dataclass(frozen=True)
class FeedbackDecision(Decision):
    newest: datetime | None = None


def feedback_cursor(spec: TaskSpec, cursor: str | None, labelled: Sequence[ProductionRecord], now: datetime) -> tuple[datetime | None, str | None]:
    """The feedback time already consumed, from the sensor's cursor, and a note when it had to be
    repaired. A cursor later than `now` + `drift.max_clock_skew_hours` cannot have come from an
    accepted request (a future-dated row, before such rows were quarantined, or a hand edit); kept,
    it would hide every new label until that date. It is moved back to the newest accepted labelled
    request: no retrain on old feedback, and counting resumes with the next label."""
    if not cursor:
        return None, None
    consumed = datetime.fromisoformat(cursor)
    latest = now + timedelta(hours=spec.drift.max_clock_skew_hours)
    if consumed <= latest:
        return consumed, None
    newest = max((r.timestamp for r in labelled), default=None)
    return newest, (
        f"feedback cursor {consumed.isoformat()} was beyond now + {spec.drift.max_clock_skew_hours:g} h of clock skew; "
        f"reset to the newest accepted labelled request ({newest.isoformat() if newest else 'none'})"
    )


def newest_consumed(cursor: datetime | None, seen_by_retrain: datetime | None) -> datetime | None:
    """Feedback counts as consumed up to the later of the sensor's cursor (what it last requested
    a retrain on) and the newest label any retrain saw (`FEEDBACK_SEEN_TAG`, whatever started it)."""
    return max((t for t in (cursor, seen_by_retrain) if t is not None), default=None)


def feedback_decision(
    spec: TaskSpec, labelled: Sequence[ProductionRecord], consumed: datetime | None, champion_version: str | None = None
) -> FeedbackDecision:
    """Retrain on `feedback.min_new_labels` labelled requests newer than `consumed`, or when
    accuracy over the last `feedback.rolling_window` labelled requests the serving champion
    answered is below `gate.min_accuracy` (then at most once per `drift.cooldown_hours` of
    feedback time). Requests logged without a model version count as the champion's."""
    if not labelled:
        return FeedbackDecision(False, FEEDBACK_VOLUME, "no labelled feedback in the production log")
    labelled = sorted(labelled, key=lambda r: r.timestamp)
    new = [r for r in labelled if consumed is None or r.timestamp > consumed]
    newest = labelled[-1].timestamp
    # A champion promoted yesterday is not judged on its predecessor's mistakes: with sensors
    # ticking daily those would ask for a retrain of the new champion every day until the window
    # had turned over.
    answered = [r for r in labelled if r.prediction is not None and (champion_version is None or r.model_version in (None, champion_version))]
    rolling = answered[-spec.feedback.rolling_window :]
    accuracy = sum(r.prediction == r.feedback_label for r in rolling) / len(rolling) if rolling else None
    if len(new) >= spec.feedback.min_new_labels:
        evidence = f"{len(new)} new labelled requests (min_new_labels {spec.feedback.min_new_labels}), newest {newest.isoformat()}"
        return FeedbackDecision(True, FEEDBACK_VOLUME, evidence, newest)
    if (
        accuracy is not None
        and len(rolling) >= spec.feedback.rolling_window
        and accuracy < spec.gate.min_accuracy
        and (consumed is None or newest - consumed >= timedelta(hours=spec.drift.cooldown_hours))
    ):
        answered_by = f" champion v{champion_version} answered" if champion_version else ""
        evidence = f"accuracy {accuracy:.3f} on the last {len(rolling)} labelled requests{answered_by} < gate {spec.gate.min_accuracy:.3f}"
        return FeedbackDecision(True, FEEDBACK_ACCURACY, evidence, newest)
    accuracy_text = f"{accuracy:.3f} on {len(rolling)}" if accuracy is not None else "n/a"
    evidence = f"{len(new)} new labelled requests (need {spec.feedback.min_new_labels}); rolling accuracy {accuracy_text}"
    return FeedbackDecision(False, FEEDBACK_VOLUME, evidence, newest)


def labels_admitted_decision(
    spec: TaskSpec, trained_labels: Sequence[Sequence[str]], labelled: Sequence[ProductionRecord]
) -> Decision:
    """Retrain once labels admitted to the task (in `spec.labels`, trained on by no registered
    version: `trained_labels` holds each version's label set) have MIN_ADMITTED_LABEL_ROWS trusted
    labelled requests a retrain would train on (`recent.trainable_admitted_rows`: older than the
    recent suite's window, plus the label's carved share of it). A label some version trained on,
    promoted or refused, asks nothing more: the other triggers take over."""
    if not trained_labels:
        return Decision(False, LABELS_ADMITTED, "no registered version records its labels yet")
    untrained = untrained_labels(spec.labels, trained_labels)
    if not untrained:
        return Decision(False, LABELS_ADMITTED, "every task label was trained on by a registered version")
    trusted = set(spec.feedback.trusted_sources)
    records = [r for r in labelled if r.feedback_source in trusted]
    trainable = {label: trainable_admitted_rows(spec, records, label) for label in untrained}
    counts = ", ".join(f"{label} {n}" for label, n in trainable.items())
    ready = [label for label, n in trainable.items() if n >= MIN_ADMITTED_LABEL_ROWS]
    if not ready:
        return Decision(
            False, LABELS_ADMITTED,
            f"admitted labels not trained on yet wait for {MIN_ADMITTED_LABEL_ROWS} trusted labelled requests to train on "
            f"(older than the recent window of {spec.recent_suite.days:g} days, or the oldest "
            f"{spec.recent_suite.admitted_label_train_share:.0%} of the label's rows in it): {counts}",
        )
    return Decision(True, LABELS_ADMITTED, f"labels admitted since the latest training, with trainable feedback: {counts}")


def erasure_decision(open_requests: Sequence[ErasureRequest], champion_version: str | None) -> tuple[Decision, ErasureRequest | None]:
    """Retrain when the serving champion trained on records an open erasure request names, once
    per request (the request is the run key). No cooldown or volume threshold holds it back: the
    champion keeps serving what a data subject asked to be forgotten until a retrain without it
    ships."""
    for request in open_requests:
        if champion_version is not None and champion_version in request.affected_versions:
            return Decision(True, ERASURE, f"erasure request {request.request} ({request.at}): champion v{champion_version} trained on its records"), request
    waiting = ", ".join(r.request for r in open_requests)
    evidence = f"open erasure requests {waiting}: the champion did not train on their records" if waiting else "no open erasure request"
    return Decision(False, ERASURE, evidence), None
