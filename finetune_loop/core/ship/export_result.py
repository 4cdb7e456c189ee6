"""What a GGUF export produced: the shipped file, every variant measured under llama.cpp, the checks.

`GgufExport` (and its `GgufVariant`s) is the result export.py returns and the model card, the
Dagster assets and promotion read. It is a module of plain dataclasses on its own so that those
readers (model_card.py in particular, which export.py itself calls) can name the result without
importing the export pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune_loop.core.ship.gguf_checks import CheckOutcome


@dataclass(frozen=True)
class GgufVariant:
    """One GGUF file of the export, measured under llama.cpp on the frozen holdout."""

    name: str  # the quant type, or the unquantized outtype
    path: Path
    size_bytes: int
    accuracy: float
    accuracy_delta: float  # against the merged HF model on the same holdout
    per_label_accuracy: dict[str, float]  # recall of each label on the holdout
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    modelfile_path: Path


@dataclass(frozen=True)
class GgufExport:
    gguf_path: Path  # the shipped (first configured) quantized file
    quant_type: str
    file_size_bytes: int
    unquantized_path: Path
    outtype: str
    outtype_reason: str
    accuracy_gguf: float
    accuracy_delta: float
    merged_accuracy: float
    merge_max_abs_logit_diff: float
    adapter_was_qlora: bool
    variants: list[GgufVariant]  # unquantized first, then every quant type in task order
    checks: list["CheckOutcome"]  # matches_merged_model, quant_within_budget, chat_template_roundtrip
    model_card_path: Path
    mlflow_run_id: str
    seconds: float

    def shipped_files(self) -> tuple[Path, Path, Path]:
        """What serves this version without anything else: the shipped GGUF, its Ollama Modelfile
        (FROM names the GGUF beside it) and the model card."""
        return self.gguf_path, self.variants[1].modelfile_path, self.model_card_path

    def variants_markdown(self) -> str:
        lines = [
            "| file | size MB | holdout accuracy | delta vs merged (pt) | prompt tok/s | generation tok/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {v.path.name} | {v.size_bytes / 2**20:.1f} | {v.accuracy:.3f} | {100 * v.accuracy_delta:+.2f} | "
            f"{v.prompt_tokens_per_second:.0f} | {v.generation_tokens_per_second:.1f} |"
            for v in self.variants
        ]
        lines.append(f"| merged HF model (reference) | | {self.merged_accuracy:.3f} | | | |")
        return "\n".join(lines)
