"""The loop's clock: the wall clock, or a simulated one.

Every decision that depends on "now" (how long the champion has served, which requests are in the
future, when a promotion or rollback happened, which feedback is new) reads `utc_now()`. Setting
`FINETUNE_LOOP_NOW` to an ISO 8601 time with a zone (`2026-03-02T06:00:00+00:00`) runs the loop
at that instant instead: a replay of past production traffic, or a benchmark that lives through
24 weeks in an hour (`benchmarks/production_weeks.py`), takes the same code paths as the daemon.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

CLOCK_ENV_VAR = "FINETUNE_LOOP_NOW"


class ClockError(ValueError):
    """FINETUNE_LOOP_NOW holds something that is not an ISO 8601 time with a zone."""


def utc_now() -> datetime:
    """Now, in UTC: `FINETUNE_LOOP_NOW` when set, else the wall clock."""
    value = os.environ.get(CLOCK_ENV_VAR, "").strip()
    if not value:
        return datetime.now(timezone.utc)
    try:
        simulated = datetime.fromisoformat(value)
    except ValueError:
        raise ClockError(f"{CLOCK_ENV_VAR}={value!r} is not an ISO 8601 time (e.g. 2026-03-02T06:00:00+00:00)") from None
    if simulated.tzinfo is None:
        raise ClockError(f"{CLOCK_ENV_VAR}={value!r} carries no time zone; add one (e.g. +00:00)")
    return simulated.astimezone(timezone.utc)
