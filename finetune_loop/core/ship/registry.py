"""Promotion and rollback: moving the `champion` alias so that the registry is always consistent.

Consistent means: `champion` names one version, and `previous-champion` names the version it
replaced (or nothing before the second promotion). Both operations

* hold an exclusive file lock per registered model under the loop's state directory, so two
  promotions (two retrains finishing together) or a promotion and a rollback never interleave;
  the lock lives beside the embedded registry and on the shared state volume of the Docker and
  Kubernetes setups;
* re-read the aliases under the lock: a candidate evaluated against champion v1 that finds v2
  in place is promoted only when its holdout metric (same frozen holdout, by content hash) is at
  least v2's, else refused;
* remember both aliases before the first write and restore them when any write fails, so a
  crash between "previous-champion moved" and "champion moved" never leaves the two pointing at
  the same version.

Version tags carry the record: what each version scored, whom it replaced, who rolled it back
and why, and since when it serves. `champion_record` reads that record back: it is the one answer
to "which model serves, since when, and what did it score", for drift, the cadence schedule,
export, shadow evaluation and the CLI alike; nothing reads it from a Dagster materialization.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from finetune_loop.core.common.clock import utc_now
from finetune_loop.core.common.tracker import (
    CHAMPION_ALIAS,
    PREVIOUS_CHAMPION_ALIAS,
    Tracker,
)
from finetune_loop.core.train.trainer import REBUILD_MANIFEST_FILE

LOCK_TIMEOUT_S = 300
TAG_PREFIX = "finetune_loop."
# Version tags written at promotion and read by a later concurrent promotion's re-check.
HOLDOUT_METRIC_TAG = TAG_PREFIX + "holdout_primary"
HOLDOUT_HASH_TAG = TAG_PREFIX + "holdout_hash"
REPLACED_TAG = TAG_PREFIX + "replaced_version"
PROMOTED_AT_TAG = TAG_PREFIX + "promoted_at"
# When the version last became champion, by promotion or by rollback: the cadence counts from here.
CHAMPION_SINCE_TAG = TAG_PREFIX + "champion_since"
# Stamped by a rollback on both versions it moves between; the restored one also names the other.
ROLLED_BACK_AT_TAG = TAG_PREFIX + "rolled_back_at"
# The task's labels the version was trained with (a JSON list): the feedback sensor's labels_admitted
# trigger retrains once a label no version trained on has rows to train on.
TRAINED_LABELS_TAG = TAG_PREFIX + "labels"
# MLflow keeps at most 8000 characters of a tag value and truncates longer ones.
MAX_TAG_VALUE_CHARS = 8000
RESTORED_FROM_TAG = TAG_PREFIX + "restored_from"
# Set by `finetune-loop erase` on every version whose training rows held an erased record: the
# request ids. Such a version is never promoted or rolled back to again.
ERASED_BY_TAG = TAG_PREFIX + "erased_by"
# ChampionEvent kinds: how the champion alias moved.
PROMOTION = "promotion"
ROLLBACK = "rollback"
# Written by gguf_export on the candidate it verified; champion_model promotes only a version whose
# shipped GGUF passed every check.
GGUF_CHECKS_PASSED_TAG = "gguf_checks_passed"


def trained_labels_tag(labels) -> dict[str, str]:
    """TRAINED_LABELS_TAG for `labels`; empty where the JSON would not fit a tag (the sensor then
    skips labels_admitted for that version, as for versions made before the tag existed)."""
    value = json.dumps(list(labels), ensure_ascii=False)
    return {TRAINED_LABELS_TAG: value} if len(value) <= MAX_TAG_VALUE_CHARS else {}


def trained_label_sets(version_tags: Iterable[Mapping[str, str]]) -> list[list[str]]:
    """Each registered version's trained labels (TRAINED_LABELS_TAG), for the versions that record them."""
    return [json.loads(tags[TRAINED_LABELS_TAG]) for tags in version_tags if TRAINED_LABELS_TAG in tags]


def untrained_labels(labels: Sequence[str], trained_sets: Sequence[Sequence[str]]) -> list[str]:
    """The task labels no registered version trained on; none when no version records its labels
    (nothing to compare with: every label is then taken as known)."""
    trained = {label for labels_of_version in trained_sets for label in labels_of_version}
    return [label for label in labels if trained_sets and label not in trained]


# A registered version's source is its training run's `adapter/` directory. Together these files
# serve the version again after a rollback, with no access to the run that made it: weights,
# tokenizer and chat template, the task spec it answers, how to rebuild it, how it scored.
BUNDLE_ARTIFACT_PATH = "adapter"
ROLLBACK_BUNDLE_FILES = (
    "adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
    "task_spec.yaml", REBUILD_MANIFEST_FILE, "eval_report.json",
)
# gguf_export adds the shipped GGUF, its Modelfile and the model card (GgufExport.shipped_files);
# their names depend on the task and quant type, so callers pass them as `extra`.


def missing_bundle_files(directory: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """Files a rollback bundle lacks; the chat template may live in tokenizer_config.json or in
    its own chat_template.jinja (newer transformers)."""
    missing = [name for name in (*ROLLBACK_BUNDLE_FILES, *extra) if not (directory / name).is_file()]
    config = directory / "tokenizer_config.json"
    has_template = (directory / "chat_template.jinja").is_file() or (config.is_file() and "chat_template" in json.loads(config.read_text()))
    return missing + ([] if has_template else ["chat template (chat_template.jinja or tokenizer_config.json)"])


class PromotionError(RuntimeError):
    """Promotion or rollback was refused (stale evaluation, nothing to roll back to) or timed out."""


@dataclass(frozen=True)
class AliasState:
    champion: str | None
    previous_champion: str | None


@dataclass(frozen=True)
class ChampionRecord:
    """The serving champion as the registry records it."""

    model_name: str
    version: str
    since: datetime
    # The holdout score it was promoted on and the frozen holdout it was measured on.
    holdout_primary: float
    holdout_hash: str


def champion_record(tracker: Tracker, model_name: str) -> ChampionRecord | None:
    """Who serves now (alias `champion`), since when, and what it scored; None before the first promotion."""
    ref = tracker.version_by_alias(model_name, CHAMPION_ALIAS)
    if ref is None:
        return None
    tags = tracker.version_tags(model_name, ref.version)
    # Promotions before champion_since existed stamped only promoted_at (and never rolled back to).
    since = tags.get(CHAMPION_SINCE_TAG) or tags.get(PROMOTED_AT_TAG)
    missing = [tag for tag in (HOLDOUT_METRIC_TAG, HOLDOUT_HASH_TAG) if tag not in tags] + ([] if since else [CHAMPION_SINCE_TAG])
    if missing:
        raise PromotionError(
            f"{model_name} v{ref.version} holds alias {CHAMPION_ALIAS!r} without the promotion record {missing}: "
            "it was not promoted by finetune-loop; promote it again with `finetune-loop run` or roll back"
        )
    return ChampionRecord(
        model_name, ref.version, datetime.fromisoformat(since),
        float(tags[HOLDOUT_METRIC_TAG]), tags[HOLDOUT_HASH_TAG],
    )


@dataclass(frozen=True)
class ChampionEvent:
    """One move of the `champion` alias: `version` serves from `at` on, replacing `from_version`."""

    kind: str  # PROMOTION or ROLLBACK
    # None only for a rollback whose restored version the registry no longer records.
    version: str | None
    at: datetime
    from_version: str | None

    @property
    def label(self) -> str:
        if self.kind == PROMOTION:
            return f"v{self.version}"
        return f"v{self.from_version}→v{self.version}" if self.version else f"v{self.from_version} rolled back"


def champion_events(tracker: Tracker, model_name: str) -> list[ChampionEvent]:
    """Every promotion and rollback the registry's version tags record, oldest first.

    Tags keep each version's latest stamp only, so a rollback is read from both of its sides: the
    version rolled away from (its `rolled_back_at`; it restored the version it had replaced, which
    was `previous-champion`) and the restored version (`restored_from`, serving since the rollback:
    `champion_since`). A rollback is lost only when a later one overwrote both sides' stamps."""
    versions = tracker.all_version_tags(model_name)
    # Keyed by (kind, time, version promoted / version rolled away from): both sides of a rollback meet.
    found: dict[tuple[str, datetime, str], ChampionEvent] = {}
    for version, tags in versions.items():
        if PROMOTED_AT_TAG in tags:
            replaced = tags.get(REPLACED_TAG)
            at = datetime.fromisoformat(tags[PROMOTED_AT_TAG])
            found[(PROMOTION, at, version)] = ChampionEvent(PROMOTION, version, at, None if replaced in (None, "none") else replaced)
        restored_at = tags.get(CHAMPION_SINCE_TAG) if RESTORED_FROM_TAG in tags else None
        # A promotion stamps champion_since too; only one later than it is the restoration.
        if restored_at is not None and restored_at != tags.get(PROMOTED_AT_TAG):
            at, away = datetime.fromisoformat(restored_at), tags[RESTORED_FROM_TAG]
            found[(ROLLBACK, at, away)] = ChampionEvent(ROLLBACK, version, at, away)
    for version, tags in versions.items():
        rolled_at = tags.get(ROLLED_BACK_AT_TAG)
        # The restored side carries rolled_back_at too, equal to its champion_since.
        if rolled_at is None or (RESTORED_FROM_TAG in tags and rolled_at == tags.get(CHAMPION_SINCE_TAG)):
            continue
        at = datetime.fromisoformat(rolled_at)
        if (ROLLBACK, at, version) not in found:
            replaced = tags.get(REPLACED_TAG)
            found[(ROLLBACK, at, version)] = ChampionEvent(ROLLBACK, None if replaced in (None, "none") else replaced, at, version)
    return sorted(found.values(), key=lambda e: (e.at, e.kind != PROMOTION))


@dataclass(frozen=True)
class PromotionResult:
    model_name: str
    version: str
    previous_version: str | None
    # Set when another promotion won the race and this candidate was re-checked against it.
    recheck: str | None


@contextmanager
def registry_lock(lock_dir: Path, model_name: str) -> Iterator[None]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{model_name}.lock", "w") as handle:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PromotionError(f"registry lock {lock_dir / model_name}.lock held for over {LOCK_TIMEOUT_S} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def alias_state(tracker: Tracker, model_name: str) -> AliasState:
    champion = tracker.version_by_alias(model_name, CHAMPION_ALIAS)
    previous = tracker.version_by_alias(model_name, PREVIOUS_CHAMPION_ALIAS)
    return AliasState(champion.version if champion else None, previous.version if previous else None)


def _set_or_clear(tracker: Tracker, model_name: str, alias: str, version: str | None) -> None:
    if version is None:
        tracker.delete_alias(model_name, alias)
    else:
        tracker.set_alias(model_name, alias, version)


@contextmanager
def _restored_on_failure(tracker: Tracker, model_name: str, before: AliasState) -> Iterator[None]:
    try:
        yield
    except BaseException:
        _set_or_clear(tracker, model_name, PREVIOUS_CHAMPION_ALIAS, before.previous_champion)
        _set_or_clear(tracker, model_name, CHAMPION_ALIAS, before.champion)
        raise


def promote(
    tracker: Tracker,
    lock_dir: Path,
    model_name: str,
    version: str,
    *,
    evaluated_against: str | None,
    holdout_primary: float,
    holdout_hash: str,
    now: datetime | None = None,
) -> PromotionResult:
    """Make `version` the champion. `evaluated_against` is the champion version the candidate was
    evaluated against (None: there was none). `now` stamps the promotion (default: the loop clock,
    `clock.utc_now()`)."""
    stamp = _timestamp(now)
    with registry_lock(lock_dir, model_name):
        _refuse_erased(tracker, model_name, version, "promoted")
        before = alias_state(tracker, model_name)
        recheck = None
        if before.champion != evaluated_against:
            recheck = _recheck(tracker, model_name, before.champion, evaluated_against, holdout_primary, holdout_hash)
        with _restored_on_failure(tracker, model_name, before):
            tracker.tag_version(model_name, version, {
                HOLDOUT_METRIC_TAG: holdout_primary,
                HOLDOUT_HASH_TAG: holdout_hash,
                REPLACED_TAG: before.champion or "none",
                PROMOTED_AT_TAG: stamp,
                CHAMPION_SINCE_TAG: stamp,
                TAG_PREFIX + "promoted_by": getpass.getuser(),
            })
            if before.champion is not None and before.champion != version:
                tracker.set_alias(model_name, PREVIOUS_CHAMPION_ALIAS, before.champion)
            tracker.set_alias(model_name, CHAMPION_ALIAS, version)
    return PromotionResult(model_name, version, before.champion, recheck)


def _recheck(tracker, model_name, current: str | None, evaluated_against: str | None, holdout_primary: float, holdout_hash: str) -> str:
    """A promotion that lost the race is re-checked against the champion that won it, on the
    numbers both recorded for the same frozen holdout."""
    if current is None:
        return f"champion v{evaluated_against} was rolled away; promoting"
    tags = tracker.version_tags(model_name, current)
    if tags.get(HOLDOUT_HASH_TAG) != holdout_hash or HOLDOUT_METRIC_TAG not in tags:
        raise PromotionError(
            f"champion moved from v{evaluated_against} to v{current} during evaluation and v{current} has no holdout "
            f"score on the same frozen holdout: re-run the evaluation against v{current}"
        )
    champion_primary = float(tags[HOLDOUT_METRIC_TAG])
    if holdout_primary < champion_primary:
        raise PromotionError(
            f"champion moved from v{evaluated_against} to v{current} during evaluation; the candidate's holdout score "
            f"{holdout_primary:.3f} is below v{current}'s {champion_primary:.3f}: not promoting"
        )
    return f"champion moved to v{current} during evaluation; candidate {holdout_primary:.3f} ≥ v{current} {champion_primary:.3f}"


def rollback(
    tracker: Tracker, lock_dir: Path, model_name: str, *, reason: str, user: str | None = None, now: datetime | None = None
) -> AliasState:
    """Move `champion` back to `previous-champion` in one step; returns the new alias state. The
    restored version serves again from `now`: the cadence counts from the rollback."""
    user = user or getpass.getuser()
    with registry_lock(lock_dir, model_name):
        before = alias_state(tracker, model_name)
        if before.champion is None or before.previous_champion is None:
            raise PromotionError(
                f"{model_name}: nothing to roll back to (champion {before.champion or 'none'}, "
                f"previous-champion {before.previous_champion or 'none'})"
            )
        restored = before.previous_champion
        _refuse_erased(tracker, model_name, restored, "rolled back to")
        # The version the restored one had replaced becomes the next rollback target.
        replaced = tracker.version_tags(model_name, restored).get(REPLACED_TAG)
        after = AliasState(restored, replaced if replaced not in (None, "none", before.champion) else None)
        with _restored_on_failure(tracker, model_name, before):
            at = _timestamp(now)
            stamp = {ROLLED_BACK_AT_TAG: at, TAG_PREFIX + "rolled_back_by": user, TAG_PREFIX + "rolled_back_reason": reason}
            tracker.tag_version(model_name, before.champion, stamp)
            tracker.tag_version(model_name, restored, {RESTORED_FROM_TAG: before.champion, CHAMPION_SINCE_TAG: at, **stamp})
            _set_or_clear(tracker, model_name, PREVIOUS_CHAMPION_ALIAS, after.previous_champion)
            tracker.set_alias(model_name, CHAMPION_ALIAS, restored)
    return after


def _refuse_erased(tracker: Tracker, model_name: str, version: str, what: str) -> None:
    erased_by = tracker.version_tags(model_name, version).get(ERASED_BY_TAG)
    if erased_by:
        raise PromotionError(f"{model_name} v{version} cannot be {what}: it trained on records erased by request {erased_by}")


def _timestamp(now: datetime | None) -> str:
    return (now or utc_now()).isoformat(timespec="seconds")
