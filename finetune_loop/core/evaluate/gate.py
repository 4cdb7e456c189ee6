"""The release gate: a candidate ships only when every sub-gate passes, each with its numbers.

The decision rule
=================

A candidate ships when every sub-gate passes. A sub-gate that cannot be judged in this run is
SKIP: it passes, says why, and says which rule decides instead; the summary names it.

* `min_accuracy`: the primary holdout metric reaches the task's absolute threshold;
* `beats_base`: it is higher than the base model's (fine-tuning must have earned its keep);
* `non_inferior_to_champion`, on the frozen holdout (what must not be forgotten): the paired test
  below with rule non_inferior and margin gate.champion_margin, the holdout completed by the recent
  suite's rows of labels admitted since any version trained (see "How the evidence is weighed").
  Skipped without a champion;
* `follows_recent_traffic`, on the recent suite (labelled production traffic: whether the retrain
  follows the world): the paired test with the rule gate.recent_policy names for the run's trigger,
  superior (a drift- or feedback-triggered retrain must be better) or non_inferior with margin
  gate.recent_margin (a cadence or manual retrain must not be worse); against the champion, or
  the base while there is none. With fewer than gate.min_recent_rows rows it is not evaluated and
  the holdout rule alone decides;
* `slices_hold`: no slice value with enough rows falls more than slice_tolerance below the champion
  (the base without one);
* `regression_suite`: share of the frozen regression cases answered right;
* `behaviour_probes`: share of probe cases passed (skipped, and said, when the task has no probes);
* `memorisation`, only when gate.max_memorised_share is set: the share of sampled training rows the
  candidate writes back verbatim and the base does not (core/evaluate/memorisation.py) stays at or
  below it. Not evaluated, and said, when no training row was long enough to probe.

The paired test. Both models answer the same rows, so each row gives D = candidate − reference in
{−1, 0, +1}, and the question is the true mean difference δ. The paired bootstrap resamples rows
(the same rows for both models) to estimate how mean(D) varies from suite to suite; its (1 − c)
quantile is L, a one-sided lower confidence bound of δ at c = gate.bootstrap_confidence (0.95).
non_inferior passes when L ≥ −margin: it tests "δ ≤ −margin" at level 1 − c, so a candidate exactly
margin worse passes 5 % of the time and a worse one less often. superior passes when L > 0: an
equally good candidate passes 5 % of the time. One-sided, because only one direction is a risk; 95 %
one-sided rather than the 97.5 % that the lower end of a two-sided 95 % interval is, because the goal
is "5 pt worse passes ≤ 5 %", which a 5 % test with a narrower margin meets at any size, while
97.5 % would need about 27 % more rows for the same power.

Power. With n rows and a disagreement rate d (rows where exactly one model is right), mean(D) has a
standard error near sqrt((d − δ²)/n), so the test passes a candidate δ better with probability
Φ((δ + margin)/SE − z_c) (core/evaluate/gate_power.py). Each paired sub-gate reports that at
δ ∈ {−5, −2, 0, +2, +5} pt, from its n and the disagreement it observed, against the goals
gate.power_goal_*: non_inferior should pass an equal candidate ≥ 80 % and one 5 pt worse ≤ 5 %,
superior one 5 pt better ≥ 80 % and an equal one ≤ 5 %. A sub-gate that misses them says
"underpowered" and the rows it would need; that informs, it does not fail the candidate.

How the evidence is weighed. The holdout and the recent suite are not pooled: each paired test
must pass on its own. They judge different things, the frozen holdout what the task has always
asked and the recent suite what the world asks now, so a gain on one cannot pay for a loss on the
other, and pooling would weigh them by how many rows each happened to have rather than by what they
guard. Requiring both costs power: the chance to pass is about the product of the two chances.

One completion, not a pooling: a label admitted to the task after the holdout was frozen is a
question the task now asks and the holdout cannot. The recent suite's judged rows of such labels
(`RecentSuite.admitted_cutoffs`: admitted, and the champion never trained on them) join the
holdout rows of the champion comparison. Without them the test sees only what learning a new label
may cost on the old ones, never what it gains. Once a champion has trained on the label, its rows
train too and the holdout alone decides again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from finetune_loop.core.common.spec import GateSettings
from finetune_loop.core.evaluate.gate_power import (
    NON_INFERIOR,
    SUPERIOR,
    PowerCheck,
    power_check,
)
from finetune_loop.core.evaluate.metrics import Scores


@dataclass(frozen=True)
class SubGate:
    name: str
    passed: bool
    detail: str
    # Not applicable in this run (no champion, no slices, no probes): passes, and says why.
    skipped: bool = False

    def line(self) -> str:
        return ("SKIP " if self.skipped else "PASS " if self.passed else "FAIL ") + self.detail


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    sub_gates: tuple[SubGate, ...]
    # Sub-gate name -> its power check as plain JSON values (gate_power.PowerCheck.record), for the
    # paired sub-gates that ran.
    power: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> str:
        failed = [g for g in self.sub_gates if not g.passed]
        if failed:
            return "FAILED: " + "; ".join(f"{g.name}: {g.detail}" for g in failed)
        skipped = [g.name for g in self.sub_gates if g.skipped]
        return "PASSED: " + "; ".join(g.detail for g in self.sub_gates if not g.skipped) + (
            f"; not evaluated: {', '.join(skipped)}" if skipped else ""
        )


@dataclass(frozen=True)
class BootstrapInterval:
    """`lower` and `upper` are one-sided bounds at `confidence` each (the mean difference is above
    `lower` with that confidence); together they span a two-sided 2·confidence − 1 interval."""

    mean_difference: float
    lower: float
    upper: float
    resamples: int
    confidence: float


def paired_bootstrap(candidate: Sequence[float], reference: Sequence[float], *, resamples: int, confidence: float, seed: int) -> BootstrapInterval:
    """Percentile bounds of mean(candidate − reference) over rows resampled with replacement;
    pairing (the same rows for both models in every resample) removes the between-row variance
    that two independent samples would add.

    A resample's mean depends only on how often each distinct difference is drawn, so the counts
    are drawn from the multinomial over the distinct values: the same distribution as drawing rows,
    at a cost that does not grow with the suite (right/wrong differences take three values)."""
    if len(candidate) != len(reference) or len(candidate) == 0:
        raise ValueError(f"paired bootstrap needs one score per row for both models: {len(candidate)} vs {len(reference)}")
    differences = np.asarray(candidate, dtype=float) - np.asarray(reference, dtype=float)
    values, counts = np.unique(differences, return_counts=True)
    rng = np.random.default_rng(seed)
    means = rng.multinomial(len(differences), counts / len(differences), size=resamples) @ values / len(differences)
    return BootstrapInterval(
        float(differences.mean()), float(np.quantile(means, 1 - confidence)), float(np.quantile(means, confidence)), resamples, confidence
    )


@dataclass(frozen=True)
class PairedTest:
    """One paired test of the decision rule (module docstring) and what it found."""

    rule: str
    margin: float
    interval: BootstrapInterval
    rows: int
    # Share of rows where exactly one of the two models is right.
    disagreement: float
    passed: bool

    def line(self, versus: str) -> str:
        interval = self.interval
        threshold = "> 0" if self.rule == SUPERIOR else f"≥ margin −{self.margin:.3f}"
        return (
            f"{versus} {interval.mean_difference:+.3f}, one-sided {interval.confidence:.0%} lower bound {interval.lower:+.3f} "
            f"{'' if self.passed else 'not '}{threshold} ({interval.resamples} paired resamples, n={self.rows})"
        )


def paired_test(candidate: Sequence[float], reference: Sequence[float], rule: str, *, margin: float, settings: GateSettings) -> PairedTest:
    """The gate's paired test on per-row right/wrong outcomes: `non_inferior` passes when the one-sided
    lower bound of mean(candidate − reference) is at least −margin, `superior` when it is above 0."""
    if rule not in (NON_INFERIOR, SUPERIOR):
        raise ValueError(f"unknown paired-test rule {rule!r}; expected {NON_INFERIOR!r} or {SUPERIOR!r}")
    interval = paired_bootstrap(
        candidate, reference, resamples=settings.bootstrap_resamples, confidence=settings.bootstrap_confidence, seed=settings.bootstrap_seed
    )
    passed = interval.lower > 0 if rule == SUPERIOR else interval.lower >= -margin
    disagreement = float(np.mean(np.asarray(candidate) != np.asarray(reference)))
    return PairedTest(rule, margin, interval, len(candidate), disagreement, passed)


def _power(settings: GateSettings, test: PairedTest) -> PowerCheck:
    return power_check(settings, test.rule, rows=test.rows, margin=test.margin, disagreement=test.disagreement)


@dataclass(frozen=True)
class GateEvidence:
    """What the gate decides on: holdout scores of the three models on the same rows, the
    candidate's regression and probe results, and, where there is a recent suite, the models' scores
    on it and the trigger of the retrain (None: launched by hand)."""

    candidate: Scores
    base: Scores
    champion: Scores | None
    champion_version: str | None
    regression_pass_rate: float | None
    regression_cases: int
    newly_failing: int
    probe_pass_rate: float | None
    probe_cases: int
    recent_candidate: Scores | None = None
    recent_champion: Scores | None = None
    recent_base: Scores | None = None
    trigger: str | None = None
    # Right/wrong per recent-suite row of a label admitted since any version trained (candidate,
    # champion, same rows): they complete the holdout of the champion comparison.
    admitted_candidate: Sequence[float] = ()
    admitted_champion: Sequence[float] = ()
    # The memorisation check: sampled training rows, and those only the candidate writes back verbatim
    # (0 sampled: not checked, or no row long enough).
    memorisation_rows: int = 0
    newly_memorised_rows: int = 0


def decide_release(settings: GateSettings, evidence: GateEvidence) -> GateVerdict:
    candidate, base = evidence.candidate, evidence.base
    metric = candidate.primary_name
    gates = [
        SubGate(
            "min_accuracy",
            candidate.primary >= settings.min_accuracy,
            f"candidate {metric} {candidate.primary:.3f} vs threshold {settings.min_accuracy:.3f}",
        )
    ]
    if settings.must_beat_base:
        gates.append(SubGate("beats_base", candidate.primary > base.primary, f"candidate {metric} {candidate.primary:.3f} vs base {base.primary:.3f}"))
    power: dict[str, dict] = {}
    for paired_gate in (_champion_gate, _recent_traffic_gate):
        gate, check = paired_gate(settings, evidence)
        gates.append(gate)
        if check is not None:
            power[gate.name] = check.record()
    gates.append(_slice_gate(settings, evidence))
    gates.append(_threshold_gate(
        "regression_suite", evidence.regression_pass_rate, settings.min_regression_pass_rate,
        f"pass rate on {evidence.regression_cases} regression cases", f"{evidence.newly_failing} newly failing",
        "no regression suite rows",
    ))
    gates.append(_threshold_gate(
        "behaviour_probes", evidence.probe_pass_rate, settings.min_probe_pass_rate,
        f"pass rate on {evidence.probe_cases} probe cases", None, "no probe cases (the task names no probes file, or none applied)",
    ))
    if settings.max_memorised_share is not None:
        gates.append(_memorisation_gate(settings.max_memorised_share, evidence))
    return GateVerdict(all(g.passed for g in gates), tuple(gates), power)


def _champion_gate(settings: GateSettings, evidence: GateEvidence) -> tuple[SubGate, PowerCheck | None]:
    name = "non_inferior_to_champion"
    if evidence.champion is None:
        return SubGate(name, True, "no champion yet: nothing to be non-inferior to", skipped=True), None
    if len(evidence.admitted_candidate) != len(evidence.admitted_champion):
        raise ValueError(f"{name}: {len(evidence.admitted_candidate)} admitted-label rows for the candidate, {len(evidence.admitted_champion)} for the champion")
    candidate = [*evidence.candidate.correct, *evidence.admitted_candidate]
    champion = [*evidence.champion.correct, *evidence.admitted_champion]
    test = paired_test(candidate, champion, NON_INFERIOR, margin=settings.champion_margin, settings=settings)
    check = _power(settings, test)
    rows = len(evidence.admitted_candidate)
    admitted = (f" (holdout + {rows} recent rows of admitted labels: candidate {sum(evidence.admitted_candidate):g}, "
                f"champion {sum(evidence.admitted_champion):g} right)") if rows else ""
    return SubGate(name, test.passed, f"{test.line(f'candidate − champion v{evidence.champion_version}')}{admitted} · {check.line()}"), check


def _recent_traffic_gate(settings: GateSettings, evidence: GateEvidence) -> tuple[SubGate, PowerCheck | None]:
    name = "follows_recent_traffic"
    trigger = "manual" if evidence.trigger is None else evidence.trigger
    rule = settings.recent_rule(trigger)
    wanted = f"a {trigger} retrain must be {'superior' if rule == SUPERIOR else 'non-inferior'} on recent traffic"
    rows = len(evidence.recent_candidate.correct) if evidence.recent_candidate is not None else 0
    if rows < settings.min_recent_rows:
        return SubGate(
            name, True, f"not evaluated: n={rows} < min {settings.min_recent_rows} recent labelled rows; "
            f"the holdout rule alone decides ({wanted})", skipped=True,
        ), None
    if evidence.champion is not None:
        reference, who, versus = evidence.recent_champion, "champion", f"candidate − champion v{evidence.champion_version}"
    else:
        reference, who, versus = evidence.recent_base, "base", "candidate − base (no champion yet)"
    if reference is None:
        raise ValueError(f"{name}: the candidate's recent-suite scores need the {who}'s on the same rows")
    margin = 0.0 if rule == SUPERIOR else settings.recent_margin
    test = paired_test(evidence.recent_candidate.correct, reference.correct, rule, margin=margin, settings=settings)
    check = _power(settings, test)
    return SubGate(name, test.passed, f"{wanted}: {test.line(versus)} · {check.line()}"), check


def _slice_gate(settings: GateSettings, evidence: GateEvidence) -> SubGate:
    name = "slices_hold"
    candidate = evidence.candidate
    reference, who = (evidence.champion, "champion") if evidence.champion is not None else (evidence.base, "base")
    if not candidate.per_slice:
        return SubGate(name, True, "no slice fields on the holdout rows", skipped=True)
    regressed, checked = [], 0
    for slice_field, values in candidate.per_slice.items():
        for value, (score, rows) in values.items():
            if rows < settings.min_slice_rows:
                continue
            checked += 1
            reference_score = reference.per_slice[slice_field][value][0]
            if score < reference_score - settings.slice_tolerance:
                regressed.append(f"{slice_field}={value} {score:.3f} vs {who} {reference_score:.3f} (n={rows})")
    if not checked:
        return SubGate(name, True, f"no slice value has {settings.min_slice_rows}+ holdout rows", skipped=True)
    if regressed:
        return SubGate(name, False, f"{len(regressed)} of {checked} slices fell more than {settings.slice_tolerance:.3f} below {who}: " + "; ".join(regressed))
    return SubGate(name, True, f"{checked} slices within {settings.slice_tolerance:.3f} of {who}")


def _memorisation_gate(limit: float, evidence: GateEvidence) -> SubGate:
    name = "memorisation"
    if not evidence.memorisation_rows:
        return SubGate(name, True, "not evaluated: no training row sampled (see the memorisation report)", skipped=True)
    share = evidence.newly_memorised_rows / evidence.memorisation_rows
    detail = (f"candidate alone writes back {evidence.newly_memorised_rows} of {evidence.memorisation_rows} sampled training rows "
              f"verbatim ({share:.3f}) vs max {limit:.3f}")
    return SubGate(name, share <= limit, detail)


def _threshold_gate(name: str, rate: float | None, threshold: float, what: str, extra: str | None, skipped_reason: str) -> SubGate:
    if rate is None:
        return SubGate(name, True, skipped_reason, skipped=True)
    detail = f"{what} {rate:.3f} vs threshold {threshold:.3f}" + (f" ({extra})" if extra else "")
    return SubGate(name, rate >= threshold, detail)
