"""The gate's operating characteristic on synthetic paired outcomes (no model): the analytic power
matches the real gate's pass rate, a design that rows_needed says meets the goals meets them, and
the recent-traffic sub-gate applies the rule its trigger asks for."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finetune_loop.core.common.spec import GateSettings
from finetune_loop.core.evaluate import gate_power
from finetune_loop.core.evaluate.gate import GateEvidence, decide_release, paired_test
from finetune_loop.core.evaluate.gate_power import PowerGoals, Unreachable, pass_probability, rows_needed, simulate_pass_rate
from finetune_loop.core.evaluate.metrics import Scores
from finetune_loop.core.monitor import triggers

TRIALS = 2000


def _gate_pass_rate(settings: GateSettings, rule: str, margin: float, *, rows: int, disagreement: float, delta: float, trials: int = TRIALS) -> float:
    """The real gate's paired test (its bootstrap included) on synthetic suites."""
    return simulate_pass_rate(
        lambda candidate, reference: paired_test(candidate, reference, rule, margin=margin, settings=settings).passed,
        rows=rows, disagreement=disagreement, delta=delta, trials=trials, seed=7,
    )


@pytest.mark.parametrize(
    ("rule", "margin", "rows", "disagreement", "delta"),
    [
        ("non_inferior", 0.02, 182, 0.12, 0.0),  # the example task's holdout: an equal candidate
        ("non_inferior", 0.02, 182, 0.12, -0.02),  # exactly at the margin: passes 1 − c of the time
        ("non_inferior", 0.03, 825, 0.12, 0.0),
        ("superior", 0.0, 400, 0.15, 0.05),
    ],
)
def test_analytic_operating_characteristic_matches_the_real_gate(rule, margin, rows, disagreement, delta):
    simulated = _gate_pass_rate(GateSettings(), rule, margin, rows=rows, disagreement=disagreement, delta=delta)
    analytic = pass_probability(delta, rows=rows, disagreement=disagreement, margin=margin, confidence=0.95)
    # Monte Carlo error is about 0.01 at 2000 trials; the rest is the normal approximation.
    assert simulated == pytest.approx(analytic, abs=0.04)


def test_the_old_two_sided_rule_passed_an_equal_candidate_about_one_time_in_nine():
    # A two-sided 95 % interval's lower bound is a one-sided 97.5 % test: the measured problem.
    settings = GateSettings(bootstrap_confidence=0.975)
    simulated = _gate_pass_rate(settings, "non_inferior", 0.02, rows=182, disagreement=0.12, delta=0.0)
    assert pass_probability(0.0, rows=182, disagreement=0.12, margin=0.02, confidence=0.975) == pytest.approx(1 / 9, abs=0.01)
    assert 0.08 <= simulated <= 0.16


def test_a_design_that_rows_needed_returns_meets_both_goals_in_simulation():
    goals = PowerGoals(equal_pass=0.80, worse_delta=0.05, worse_pass=0.05)
    rows = rows_needed("non_inferior", margin=0.03, disagreement=0.12, confidence=0.95, goals=goals)
    assert rows == 825  # 0.12 · ((z.95 + z.80) / 0.03)², rounded up
    settings = GateSettings(champion_margin=0.03)
    trials = 4000
    equal = _gate_pass_rate(settings, "non_inferior", 0.03, rows=rows, disagreement=0.12, delta=0.0, trials=trials)
    worse = _gate_pass_rate(settings, "non_inferior", 0.03, rows=rows, disagreement=0.12, delta=-0.05, trials=trials)
    # The design sits exactly on the equal-pass goal, so allow three Monte Carlo standard errors below it.
    assert equal >= goals.equal_pass - 3 * math.sqrt(0.8 * 0.2 / trials)
    assert worse <= goals.worse_pass
    # One row fewer misses the goal by the same formula.
    assert pass_probability(0.0, rows=rows - 1, disagreement=0.12, margin=0.03, confidence=0.95) < 0.80


@pytest.mark.parametrize(
    ("rule", "margin", "confidence", "reason"),
    [
        ("non_inferior", 0.05, 0.95, "margin 0.050 is not narrower than the −5pt regression it must refuse"),
        ("non_inferior", 0.10, 0.95, "margin 0.100 is not narrower than the −5pt regression it must refuse"),
        ("non_inferior", 0.0, 0.95, "at margin 0 an equally good candidate passes at most 0.05 of the time"),
        ("superior", 0.0, 0.90, "a one-sided 90% superiority test passes an equal candidate 0.10 of the time"),
    ],
)
def test_rows_needed_says_when_no_number_of_rows_meets_the_goals(rule, margin, confidence, reason):
    needed = rows_needed(rule, margin=margin, disagreement=0.12, confidence=confidence, goals=PowerGoals())
    assert isinstance(needed, Unreachable) and needed.reason.startswith(reason)


def test_superiority_rows_needed_meets_its_goals_exactly():
    rows = rows_needed("superior", margin=0.0, disagreement=0.12, confidence=0.95, goals=PowerGoals())
    assert pass_probability(0.05, rows=rows, disagreement=0.12, margin=0.0, confidence=0.95) >= 0.80
    assert pass_probability(0.05, rows=rows - 1, disagreement=0.12, margin=0.0, confidence=0.95) < 0.80
    assert pass_probability(0.0, rows=rows, disagreement=0.12, margin=0.0, confidence=0.95) == pytest.approx(0.05)


def test_operating_characteristic_line_and_prior():
    line = gate_power.operating_characteristic(182, 0.12, margin=0.02, confidence=0.95).line()
    assert line == "P(pass) δ−5pt 0.00 · δ−2pt 0.05 · δ0 0.19 · δ+2pt 0.47 · δ+5pt 0.87 (n=182, disagreement 0.12)"
    planned = gate_power.power_check(GateSettings(), "non_inferior", rows=182, margin=0.02)
    assert planned.characteristic.disagreement_is_prior and planned.characteristic.disagreement == 0.10
    assert planned.line().endswith("(n=182, disagreement 0.10, a prior) · underpowered: needs ≥ 1546 rows at disagreement 0.10")


# --- the sub-gates' lines ----------------------------------------------------------------------


def _scores(correct) -> Scores:
    correct = [float(c) for c in correct]
    return Scores("accuracy", sum(correct) / len(correct), ["x"] * len(correct), correct)


def _pairs(rows: int, disagreement: float, delta: float, seed: int = 3) -> tuple[Scores, Scores]:
    candidate, reference = gate_power.synthetic_pairs(np.random.default_rng(seed), rows=rows, disagreement=disagreement, delta=delta)
    return _scores(candidate), _scores(reference)


def _evidence(holdout_candidate, holdout_champion, *, recent=None, recent_base=None, trigger=None, champion=True) -> GateEvidence:
    recent_candidate, recent_champion = recent or (None, None)
    return GateEvidence(
        candidate=holdout_candidate, base=_scores([0] * len(holdout_candidate.correct)),
        champion=holdout_champion if champion else None, champion_version="4" if champion else None,
        regression_pass_rate=None, regression_cases=0, newly_failing=0, probe_pass_rate=None, probe_cases=0,
        recent_candidate=recent_candidate, recent_champion=recent_champion if champion else None, recent_base=recent_base, trigger=trigger,
    )


SETTINGS = GateSettings(min_accuracy=0.0)


def _gates(verdict):
    return {g.name: g for g in verdict.sub_gates}


def test_holdout_gate_shows_its_power_and_says_when_it_is_underpowered():
    holdout = _pairs(182, 0.12, 0.0)
    verdict = decide_release(SETTINGS, _evidence(*holdout))
    detail = _gates(verdict)["non_inferior_to_champion"].detail
    observed = float(np.mean(np.asarray(holdout[0].correct) != np.asarray(holdout[1].correct)))
    check = gate_power.power_check(SETTINGS, "non_inferior", rows=182, margin=0.02, disagreement=observed)
    assert detail.startswith("candidate − champion v4 ") and f"· {check.line()}" in detail
    assert "underpowered: needs ≥ " in detail and f"(n=182, disagreement {observed:.2f})" in detail
    record = verdict.power["non_inferior_to_champion"]
    assert record["rows"] == 182 and record["rows_needed"] == check.needed and not record["meets_goals"]
    assert set(record["pass_probability"]) == {"−5pt", "−2pt", "0", "+2pt", "+5pt"}


@pytest.mark.parametrize(("trigger", "delta", "passed"), [("drift", 0.10, True), ("drift", 0.0, False), ("feedback_volume", 0.0, False)])
def test_drift_and_feedback_retrains_must_be_superior_on_recent_traffic(trigger, delta, passed):
    verdict = decide_release(SETTINGS, _evidence(*_pairs(182, 0.02, 0.0), recent=_pairs(400, 0.2, delta), trigger=trigger))
    gate = _gates(verdict)["follows_recent_traffic"]
    assert gate.passed is passed and not gate.skipped
    assert gate.detail.startswith(f"a {trigger} retrain must be superior on recent traffic: candidate − champion v4 ")
    assert (" > 0 (2000 paired resamples, n=400)" if passed else " not > 0 (2000 paired resamples, n=400)") in gate.detail
    assert "· power: P(pass|+5pt) " in gate.detail and ", P(pass|equal) 0.05 (n=400, disagreement " in gate.detail
    assert verdict.power["follows_recent_traffic"]["rule"] == "superior"


def test_cadence_and_manual_retrains_must_be_non_inferior_on_recent_traffic():
    recent = _pairs(400, 0.05, 0.0)
    for trigger in ("cadence", None):
        gate = _gates(decide_release(SETTINGS, _evidence(*_pairs(182, 0.02, 0.0), recent=recent, trigger=trigger)))["follows_recent_traffic"]
        assert gate.passed
        assert gate.detail.startswith(f"a {trigger or 'manual'} retrain must be non-inferior on recent traffic: candidate − champion v4 ")
        assert " ≥ margin −0.020 " in gate.detail and "· power: P(pass|equal) " in gate.detail
    worse = _pairs(400, 0.2, -0.1)
    gate = _gates(decide_release(SETTINGS, _evidence(*_pairs(182, 0.02, 0.0), recent=worse, trigger="cadence")))["follows_recent_traffic"]
    assert not gate.passed and " not ≥ margin −0.020 " in gate.detail


def test_too_few_recent_rows_is_not_evaluated_and_said():
    for recent, rows in ((_pairs(40, 0.2, 0.1), 40), (None, 0)):
        verdict = decide_release(SETTINGS, _evidence(*_pairs(182, 0.02, 0.0), recent=recent, trigger="drift"))
        gate = _gates(verdict)["follows_recent_traffic"]
        assert gate.skipped and gate.line() == (
            f"SKIP not evaluated: n={rows} < min 100 recent labelled rows; the holdout rule alone decides "
            "(a drift retrain must be superior on recent traffic)"
        )
        assert verdict.passed and "not evaluated: non_inferior_to_champion" not in verdict.summary()
        assert verdict.summary().endswith("; not evaluated: follows_recent_traffic, slices_hold, regression_suite, behaviour_probes")


def test_without_a_champion_recent_traffic_is_compared_with_the_base():
    recent_candidate, recent_base = _pairs(300, 0.3, 0.2)
    verdict = decide_release(SETTINGS, _evidence(*_pairs(182, 0.02, 0.0), recent=(recent_candidate, None), recent_base=recent_base,
                                                 trigger="drift", champion=False))
    gate = _gates(verdict)["follows_recent_traffic"]
    assert gate.passed and gate.detail.startswith("a drift retrain must be superior on recent traffic: candidate − base (no champion yet) +0.")
    assert _gates(verdict)["non_inferior_to_champion"].skipped


def test_an_unknown_trigger_is_an_error_not_a_default_rule():
    with pytest.raises(ValueError, match=r"unknown retrain trigger 'feedback'; gate.recent_policy has a rule for \['cadence', 'drift'"):
        decide_release(SETTINGS, _evidence(*_pairs(182, 0.02, 0.0), recent=_pairs(400, 0.2, 0.1), trigger="feedback"))


def test_recent_policy_names_every_trigger_the_monitor_uses():
    monitor_triggers = {triggers.CADENCE, triggers.DRIFT, triggers.FEEDBACK_VOLUME, triggers.FEEDBACK_ACCURACY, triggers.LABELS_ADMITTED, triggers.ERASURE}
    assert set(GateSettings().recent_policy) == monitor_triggers | {"manual"}
    partial = GateSettings(recent_policy={"drift": "non_inferior"})
    assert partial.recent_rule("drift") == "non_inferior" and partial.recent_rule("feedback_accuracy") == "superior"
