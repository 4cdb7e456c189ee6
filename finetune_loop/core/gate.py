"""The release gate: a candidate ships only when every sub-gate passes, each with its numbers."""

from __future__ import annotations

from dataclasses import dataclass

from finetune_loop.core.specs import GateSettings


@dataclass(frozen=True)
class SubGate:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    sub_gates: tuple[SubGate, ...]

    def summary(self) -> str:
        failed = [g for g in self.sub_gates if not g.passed]
        if not failed:
            return "PASSED: " + "; ".join(g.detail for g in self.sub_gates)
        return "FAILED: " + "; ".join(f"{g.name}: {g.detail}" for g in failed)


def decide_release(settings: GateSettings, *, candidate_accuracy: float, base_accuracy: float) -> GateVerdict:
    gates = [
        SubGate(
            "min_accuracy",
            candidate_accuracy >= settings.min_accuracy,
            f"candidate accuracy {candidate_accuracy:.3f} vs threshold {settings.min_accuracy:.3f}",
        )
    ]
    if settings.must_beat_base:
        gates.append(
            SubGate(
                "beats_base",
                candidate_accuracy > base_accuracy,
                f"candidate accuracy {candidate_accuracy:.3f} vs base {base_accuracy:.3f}",
            )
        )
    return GateVerdict(all(g.passed for g in gates), tuple(gates))
