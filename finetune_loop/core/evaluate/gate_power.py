"""How often the gate's paired tests pass: their operating characteristic, analytic and simulated.

The gate compares two models on the same rows, each row right (1) or wrong (0) for each model, so
a row's difference D = candidate − reference is −1, 0 or +1. With n rows, a true mean difference δ
and a disagreement rate d (the share of rows where exactly one of the two is right), the mean of D
has variance (d − δ²)/n. A one-sided test at confidence c ("pass when the c lower bound of δ is at
least −margin"; superiority is margin 0) therefore passes, in the normal approximation, with

    P(pass | δ) = Φ((δ + margin) / SE(δ) − z_c),   SE(δ) = sqrt((d − δ²) / n).

Two conventions keep that honest at the edges: a candidate |δ| better or worse than its reference
disagrees with it on at least |δ| of the rows, so d is taken as at least |δ|; and a suite with no
observed disagreement is taken as having one disagreeing row, since zero would claim certainty
that a finite suite cannot give. The approximation wants a few dozen disagreeing rows: with only a
handful the bootstrap's bound is coarse and passes more often than the formula says.

`simulate_pass_rate` checks the approximation against the gate itself: it draws synthetic paired
outcomes with a known δ and d and runs the gate's own decision (bootstrap included) on each draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

from finetune_loop.core.common.spec import GateSettings

NON_INFERIOR, SUPERIOR = "non_inferior", "superior"
DEFAULT_DELTAS = (-0.05, -0.02, 0.0, 0.02, 0.05)
# Far beyond any suite the loop freezes: rows_needed searches below it.
_MAX_ROWS = 10**9
# Pass probabilities are compared with the goals this loosely, so a goal met exactly (an equal
# candidate passing a superiority test at 1 − c) is not refused by rounding.
_GOAL_TOLERANCE = 1e-9
_NORMAL = NormalDist()


@dataclass(frozen=True)
class PowerGoals:
    """What a paired test should tell apart. Non-inferiority: an equally good candidate passes at
    least `equal_pass` of the time, one `worse_delta` worse at most `worse_pass`. Superiority: the
    same, moved up by `worse_delta` (that much better ≥ equal_pass, equal ≤ worse_pass)."""

    equal_pass: float = 0.80
    worse_delta: float = 0.05
    worse_pass: float = 0.05

    @classmethod
    def from_settings(cls, settings: GateSettings) -> PowerGoals:
        return cls(settings.power_goal_equal_pass, settings.power_goal_worse_delta, settings.power_goal_worse_pass)

    def accept_and_refuse(self, rule: str) -> tuple[float, float]:
        """The true differences the test should pass and refuse under `rule`."""
        if rule == NON_INFERIOR:
            return 0.0, -self.worse_delta
        if rule == SUPERIOR:
            return self.worse_delta, 0.0
        raise ValueError(f"unknown paired-test rule {rule!r}; expected {NON_INFERIOR!r} or {SUPERIOR!r}")


def pass_probability(delta: float, *, rows: int, disagreement: float, margin: float, confidence: float) -> float:
    """P(the lower `confidence` bound of the mean difference is at least −margin | true difference `delta`)."""
    if rows < 1 or not 0 <= disagreement <= 1 or not -1 < delta < 1:
        raise ValueError(f"pass_probability needs rows ≥ 1, disagreement in [0, 1] and |delta| < 1, got {rows}, {disagreement}, {delta}")
    spread = max(disagreement, abs(delta), 1 / rows)
    standard_error = math.sqrt((spread - delta**2) / rows)
    return _NORMAL.cdf((delta + margin) / standard_error - _NORMAL.inv_cdf(confidence))


def points(delta: float) -> str:
    """A difference in percentage points as the gate's lines write it: −5pt, 0, +2pt."""
    if delta == 0:
        return "0"
    return f"{'+' if delta > 0 else '−'}{abs(delta) * 100:g}pt"


@dataclass(frozen=True)
class OperatingCharacteristic:
    """The chance that a candidate δ better than its reference passes, for each δ in `pass_probability`."""

    rows: int
    disagreement: float
    # True when `disagreement` is gate.expected_disagreement, not measured on these rows.
    disagreement_is_prior: bool
    margin: float
    confidence: float
    pass_probability: dict[float, float]

    def conditions(self) -> str:
        prior = ", a prior" if self.disagreement_is_prior else ""
        return f"n={self.rows}, disagreement {self.disagreement:.2f}{prior}"

    def line(self) -> str:
        chances = " · ".join(f"δ{points(delta)} {p:.2f}" for delta, p in self.pass_probability.items())
        return f"P(pass) {chances} ({self.conditions()})"


def operating_characteristic(
    rows: int, disagreement: float, *, margin: float, confidence: float,
    deltas: Sequence[float] = DEFAULT_DELTAS, disagreement_is_prior: bool = False,
) -> OperatingCharacteristic:
    chances = {delta: pass_probability(delta, rows=rows, disagreement=disagreement, margin=margin, confidence=confidence) for delta in deltas}
    return OperatingCharacteristic(rows, disagreement, disagreement_is_prior, margin, confidence, chances)


@dataclass(frozen=True)
class Unreachable:
    """No number of rows meets the power goals with these settings, and why."""

    reason: str


def rows_needed(rule: str, *, margin: float, disagreement: float, confidence: float, goals: PowerGoals) -> int | Unreachable:
    """The fewest paired rows at which the test meets `goals` (by `pass_probability`), or why none do.

    More rows help only where the refused difference lies beyond the margin: a non-inferiority
    margin as wide as the regression to refuse lets such a candidate pass at least 1 − c of the time
    however many rows there are (more often the wider the margin), and a superiority test passes an
    equal candidate exactly 1 − c of the time, whatever the rows."""
    accept, refuse = goals.accept_and_refuse(rule)
    if rule == NON_INFERIOR and margin >= goals.worse_delta:
        return Unreachable(
            f"margin {margin:.3f} is not narrower than the {points(refuse)} regression it must refuse: "
            f"no number of rows keeps P(pass|{points(refuse)}) ≤ {goals.worse_pass:.2f}"
        )
    if rule == NON_INFERIOR and margin == 0:
        return Unreachable(f"at margin 0 an equally good candidate passes at most {1 - confidence:.2f} of the time")
    if rule == SUPERIOR and 1 - confidence > goals.worse_pass + _GOAL_TOLERANCE:
        return Unreachable(f"a one-sided {confidence:.0%} superiority test passes an equal candidate {1 - confidence:.2f} of the time")

    def meets(rows: int) -> bool:
        def chance(delta: float) -> float:
            return pass_probability(delta, rows=rows, disagreement=disagreement, margin=margin, confidence=confidence)

        return chance(accept) >= goals.equal_pass - _GOAL_TOLERANCE and chance(refuse) <= goals.worse_pass + _GOAL_TOLERANCE

    if not meets(_MAX_ROWS):
        return Unreachable(f"more than {_MAX_ROWS:.0e} rows")
    # Both chances move monotonically with the rows once the checks above hold: bisect.
    low, high = 0, _MAX_ROWS  # meets(high); not meets(low), by convention for 0 rows
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if meets(middle) else (middle, high)
    return high


@dataclass(frozen=True)
class PowerCheck:
    """One paired sub-gate's power: its operating characteristic at the rows it had, and the rows its
    goals need at the same disagreement."""

    rule: str
    goals: PowerGoals
    characteristic: OperatingCharacteristic
    needed: int | Unreachable

    @property
    def meets_goals(self) -> bool:
        return isinstance(self.needed, int) and self.characteristic.rows >= self.needed

    def line(self) -> str:
        """'power: P(pass|equal) 0.82, P(pass|−5pt) 0.03 (n=182, disagreement 0.12)', and what is missing."""
        oc = self.characteristic
        accept, refuse = self.goals.accept_and_refuse(self.rule)

        def chance(delta: float) -> str:
            p = pass_probability(delta, rows=oc.rows, disagreement=oc.disagreement, margin=oc.margin, confidence=oc.confidence)
            return f"P(pass|{'equal' if delta == 0 else points(delta)}) {p:.2f}"

        text = f"power: {chance(accept)}, {chance(refuse)} ({oc.conditions()})"
        if isinstance(self.needed, Unreachable):
            return f"{text} · power goals unreachable: {self.needed.reason}"
        if not self.meets_goals:
            return f"{text} · underpowered: needs ≥ {self.needed} rows at disagreement {oc.disagreement:.2f}"
        return text

    def record(self) -> dict:
        """The check as plain JSON values, for run metadata."""
        oc = self.characteristic
        return {
            "rule": self.rule, "rows": oc.rows, "disagreement": oc.disagreement, "disagreement_is_prior": oc.disagreement_is_prior,
            "margin": oc.margin, "confidence": oc.confidence,
            "pass_probability": {points(delta): p for delta, p in oc.pass_probability.items()},
            "goals": {"equal_pass": self.goals.equal_pass, "worse_delta": self.goals.worse_delta, "worse_pass": self.goals.worse_pass},
            "rows_needed": self.needed if isinstance(self.needed, int) else None,
            "unreachable": self.needed.reason if isinstance(self.needed, Unreachable) else None,
            "meets_goals": self.meets_goals,
        }


def power_check(settings: GateSettings, rule: str, *, rows: int, margin: float, disagreement: float | None = None) -> PowerCheck:
    """The power of a `rule` test over `rows` paired rows under the task's settings; without a measured
    `disagreement` (before any evaluation) it is planned with gate.expected_disagreement."""
    is_prior = disagreement is None
    disagreement = settings.expected_disagreement if disagreement is None else disagreement
    goals = PowerGoals.from_settings(settings)
    confidence = settings.bootstrap_confidence
    characteristic = operating_characteristic(rows, disagreement, margin=margin, confidence=confidence, disagreement_is_prior=is_prior)
    needed = rows_needed(rule, margin=margin, disagreement=disagreement, confidence=confidence, goals=goals)
    return PowerCheck(rule, goals, characteristic, needed)


def synthetic_pairs(rng: np.random.Generator, *, rows: int, disagreement: float, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Right/wrong outcomes of a candidate and its reference on `rows` shared rows, each row drawn
    independently: the candidate alone is right with probability (d + δ)/2, the reference alone with
    (d − δ)/2, and the rows where they agree are right for both (which way they agree does not
    change the difference)."""
    if not abs(delta) <= disagreement <= 1:
        raise ValueError(f"two models {delta:+} apart disagree on at least |delta| of the rows, got disagreement {disagreement}")
    only_candidate, only_reference = (disagreement + delta) / 2, (disagreement - delta) / 2
    outcome = rng.choice(3, size=rows, p=[only_candidate, only_reference, 1 - disagreement])
    return (outcome != 1).astype(float), (outcome != 0).astype(float)


def simulate_pass_rate(
    decide: Callable[[np.ndarray, np.ndarray], bool], *, rows: int, disagreement: float, delta: float, trials: int, seed: int,
) -> float:
    """Share of `trials` synthetic suites (see `synthetic_pairs`) on which `decide(candidate, reference)`
    passes; `decide` is the gate's own test, e.g. `lambda c, r: gate.paired_test(c, r, ...).passed`."""
    rng = np.random.default_rng(seed)
    passes = sum(bool(decide(*synthetic_pairs(rng, rows=rows, disagreement=disagreement, delta=delta))) for _ in range(trials))
    return passes / trials
