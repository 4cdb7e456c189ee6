"""Shadow evaluation: before promotion, the challenger re-labels recent production requests that
the champion answered. The frozen holdout says whether the challenger is good; this says how much
it would change what users see, and, on requests with human feedback, which of the two was right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.spec import ShadowSettings, TaskSpec
from finetune_loop.core.data.production_log import ProductionRecord, read_task_log
from finetune_loop.core.evaluate.scoring import predict_labels


@dataclass(frozen=True)
class ShadowResult:
    champion_version: str
    rows: int
    disagreement_rate: float
    feedback_rows: int
    champion_accuracy: float | None
    challenger_accuracy: float | None
    max_disagreement: float

    @property
    def passed(self) -> bool:
        return self.disagreement_rate <= self.max_disagreement

    def summary(self) -> str:
        text = (
            f"challenger disagrees with champion v{self.champion_version} on {self.disagreement_rate:.1%} of "
            f"{self.rows} recent requests (max {self.max_disagreement:.1%})"
        )
        if self.feedback_rows:
            text += f"; on {self.feedback_rows} with feedback: champion {self.champion_accuracy:.3f}, challenger {self.challenger_accuracy:.3f}"
        return text


def shadow_inputs(records: Sequence[ProductionRecord], champion_version: str, settings: ShadowSettings) -> list[ProductionRecord]:
    """The newest (at most `max_rows`) requests of the last `window_days` that the champion answered."""
    served = sorted((r for r in records if r.model_version == champion_version and r.prediction is not None), key=lambda r: r.timestamp)
    if not served:
        return []
    start = served[-1].timestamp.timestamp() - settings.window_days * 86400
    return [r for r in served if r.timestamp.timestamp() > start][-settings.max_rows :]


def compare_on_traffic(records: Sequence[ProductionRecord], challenger: Sequence[str], champion_version: str, max_disagreement: float) -> ShadowResult:
    if len(records) != len(challenger) or not records:
        raise ValueError(f"shadow comparison needs one challenger answer per request: {len(challenger)} for {len(records)}")
    disagreements = sum(r.prediction != c for r, c in zip(records, challenger))
    labelled = [(r, c) for r, c in zip(records, challenger) if r.feedback_label is not None]
    champion_accuracy = sum(r.prediction == r.feedback_label for r, _ in labelled) / len(labelled) if labelled else None
    challenger_accuracy = sum(c == r.feedback_label for r, c in labelled) / len(labelled) if labelled else None
    return ShadowResult(
        champion_version=champion_version,
        rows=len(records),
        disagreement_rate=disagreements / len(records),
        feedback_rows=len(labelled),
        champion_accuracy=champion_accuracy,
        challenger_accuracy=challenger_accuracy,
        max_disagreement=max_disagreement,
    )


def shadow_evaluate(spec: TaskSpec, base_dir: Path, adapter_dir: Path, champion_version: str) -> ShadowResult | None:
    """Run the challenger adapter on the champion's recent requests; None when there are none."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer


    if spec.production_log_path is None:
        return None
    log = read_task_log(spec)
    records = shadow_inputs(log.records, champion_version, spec.shadow)
    if not records:
        return None
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    challenger = predict_labels(model, tokenizer, spec, [r.text for r in records])
    return compare_on_traffic(records, challenger, champion_version, spec.shadow.max_disagreement)
