"""The release gate: a candidate ships only when every sub-gate passes, each with its numbers.

Sub-gates, in the order a reader checks them:

* `min_accuracy`: the primary holdout metric reaches the task's absolute threshold;
* `beats_base`: it is higher than the base model's (fine-tuning must have earned its keep);
* `non_inferior_to_champion`: paired bootstrap over the same holdout rows; the lower bound of the
  confidence interval of (candidate − champion) is at least −champion_margin. A candidate a few
  rows worse by chance passes; one clearly worse does not. Skipped (and said) without a champion;
* `slices_hold`: no slice value with enough rows falls more than slice_tolerance below the champion
  (the base without one);
* `regression_suite`: share of the frozen regression cases answered right;
* `behaviour_probes`: share of probe cases passed (skipped, and said, when the task has no probes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from finetune_loop.core.common.spec import GateSettings
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

    def summary(self) -> str:
        failed = [g for g in self.sub_gates if not g.passed]
        if not failed:
            return "PASSED: " + "; ".join(g.detail for g in self.sub_gates if not g.skipped)
        return "FAILED: " + "; ".join(f"{g.name}: {g.detail}" for g in failed)


@dataclass(frozen=True)
class BootstrapInterval:
    mean_difference: float
    lower: float
    upper: float
    resamples: int
    confidence: float


def paired_bootstrap(candidate: Sequence[float], reference: Sequence[float], *, resamples: int, confidence: float, seed: int) -> BootstrapInterval:
    """Percentile interval of mean(candidate − reference) over rows resampled with replacement;
    pairing (the same rows for both models in every resample) removes the between-row variance
    that two independent samples would add."""
    import numpy as np

    if len(candidate) != len(reference) or not candidate:
        raise ValueError(f"paired bootstrap needs one score per row for both models: {len(candidate)} vs {len(reference)}")
    differences = np.asarray(candidate, dtype=float) - np.asarray(reference, dtype=float)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[rows].mean(axis=1)
    tail = (1 - confidence) / 2
    return BootstrapInterval(float(differences.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)), resamples, confidence)


@dataclass(frozen=True)
class GateEvidence:
    """What the gate decides on: holdout scores of the three models on the same rows, and the
    candidate's regression and probe results."""

    candidate: Scores
    base: Scores
    champion: Scores | None
    champion_version: str | None
    regression_pass_rate: float | None
    regression_cases: int
    newly_failing: int
    probe_pass_rate: float | None
    probe_cases: int


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
    gates.append(_champion_gate(settings, evidence))
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
    return GateVerdict(all(g.passed for g in gates), tuple(gates))


def _champion_gate(settings: GateSettings, evidence: GateEvidence) -> SubGate:
    name = "non_inferior_to_champion"
    if evidence.champion is None:
        return SubGate(name, True, "no champion yet: nothing to be non-inferior to", skipped=True)
    interval = paired_bootstrap(
        evidence.candidate.correct, evidence.champion.correct,
        resamples=settings.bootstrap_resamples, confidence=settings.bootstrap_confidence, seed=settings.bootstrap_seed,
    )
    passed = interval.lower >= -settings.champion_margin
    return SubGate(
        name,
        passed,
        f"candidate − champion v{evidence.champion_version} {interval.mean_difference:+.3f}, "
        f"{interval.confidence:.0%} CI [{interval.lower:+.3f}, {interval.upper:+.3f}] "
        f"({interval.resamples} paired resamples) vs margin −{settings.champion_margin:.3f}",
    )


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


def _threshold_gate(name: str, rate: float | None, threshold: float, what: str, extra: str | None, skipped_reason: str) -> SubGate:
    if rate is None:
        return SubGate(name, True, skipped_reason, skipped=True)
    detail = f"{what} {rate:.3f} vs threshold {threshold:.3f}" + (f" ({extra})" if extra else "")
    return SubGate(name, rate >= threshold, detail)
