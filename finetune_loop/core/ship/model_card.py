"""The Hugging Face model card (README.md) shipped beside the GGUF files: what the model does, what
it was trained on and under which licences, how it scored, what quantization cost, where it fails."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from finetune_loop.core.common.files import write_text_atomic
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import EMBEDDED_BASE_MODEL, TaskSpec
from finetune_loop.core.ship.export_result import GgufExport
from finetune_loop.core.train.base_model import BaseModel
from finetune_loop.core.train.trainer import REBUILD_MANIFEST_FILE

# What the bundled base is on the Hugging Face hub, and its licence.
_EMBEDDED_BASE = ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
# Labels listed under "known failure modes": the weakest ones of the shipped file.
WEAKEST_LABELS = 3


def write_model_card(
    path: Path, spec: TaskSpec, base: "BaseModel", adapter_dir: Path, export: "GgufExport", eval_accuracies: dict[str, float]
) -> Path:
    card = kind_of(spec).card()
    manifest_path = Path(adapter_dir) / REBUILD_MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    base_id, base_licence = _EMBEDDED_BASE if spec.base_model == EMBEDDED_BASE_MODEL else (spec.base_model, "other")
    front_matter = {
        "base_model": base_id,
        # The weights are a derivative of the base: its licence applies ("other" = see the base).
        "license": base_licence,
        "library_name": "gguf",
        "pipeline_tag": card.pipeline_tag,
        "tags": ["gguf", "llama.cpp", "ollama", "lora", "finetune_loop", spec.name],
    }
    shipped = next(v for v in export.variants if v.name == export.quant_type)
    weakest = sorted(shipped.per_label_accuracy.items(), key=lambda item: item[1])[:WEAKEST_LABELS]
    rows = manifest.get("training_rows", [])
    provenance = Counter((row.get("source") or "unspecified", row.get("licence") or "unspecified") for row in rows)
    training = manifest.get("training", {})

    sections = [
        f"# {spec.name}\n\n{spec.description or 'Fine-tuned model.'}",
        "## Task\n\n"
        f"{card.task_sentence}\n\n"
        f"System prompt (also the Modelfile's SYSTEM):\n\n```\n{spec.system_prompt()}\n```",
        "## Base model\n\n"
        f"`{base_id}` (configured as `{spec.base_model}`, weights sha256 `{base.source_sha256}`), LoRA adapter merged in fp32"
        + (" (trained as QLoRA; merged into the unquantized base)" if export.adapter_was_qlora else "")
        + f"; largest logit difference merged vs base + adapter: {export.merge_max_abs_logit_diff:.2e}.",
        "## Data provenance and licences\n\n"
        f"Curated data version `{manifest.get('data_version', 'unknown')}`, {len(rows)} training rows, frozen holdout sha256 "
        f"`{manifest.get('holdout_sha256', 'unknown')}`.\n\n| source | licence | rows |\n|---|---|---:|\n"
        + "\n".join(f"| {source} | {licence} | {count} |" for (source, licence), count in provenance.most_common()),
        "## Training settings\n\n```yaml\n" + yaml.safe_dump(training, sort_keys=True).strip() + "\n```\n\n"
        f"Steps: {manifest.get('steps', 'unknown')}; git commit: `{manifest.get('git_commit') or 'unknown'}`.",
        f"## Evaluation (frozen holdout)\n\n| model | {card.metric_name} |\n|---|---:|\n"
        + "\n".join(
            [f"| {name} (HF, evaluation) | {value:.3f} |" for name, value in eval_accuracies.items()]
            + [f"| merged (HF, export reference) | {export.merged_accuracy:.3f} |"]
        ),
        "## GGUF files and quantization deltas\n\n"
        f"Unquantized file: {export.outtype} ({export.outtype_reason}). Shipped: `{shipped.path.name}`. "
        "Each file ran the frozen holdout under llama.cpp on the exporting machine; deltas are against the merged model.\n\n"
        + export.variants_markdown(),
        "## Verification\n\n| check | passed | result |\n|---|---|---|\n"
        + "\n".join(f"| {c.name} | {'yes' if c.passed else '**no**'} | {c.description} |" for c in export.checks),
        "## Known failure modes\n\n"
        + (f"Lowest per-label holdout accuracy of `{shipped.path.name}`: " + ", ".join(f"`{label}` {accuracy:.3f}" for label, accuracy in weakest) + ". "
           if weakest else "")
        + "Inputs unlike the training tickets (other languages, several issues in one message) are not covered by the holdout.",
        "## Use\n\n```bash\n"
        f"ollama create {spec.name} -f {shipped.modelfile_path.name}\n"
        f"llama-cli -m {shipped.path.name} -cnv   # the chat template is embedded\n```\n\n"
        "Untrusted text: training, evaluation and the verification above tokenize the user's message as text, so "
        "a ticket that types `<|im_end|>` or `<|im_start|>system` cannot forge a turn. A server that tokenizes the "
        "whole rendered prompt with its control tokens parsed (Ollama, llama.cpp's `/completion` with a rendered "
        "prompt) does not: tokenize the template's pieces and the message apart (llama.cpp `special=false` for the "
        "message), or strip control-token strings from user text before it reaches such a server.",
    ]
    text = "---\n" + yaml.safe_dump(front_matter, sort_keys=False) + "---\n\n" + "\n\n".join(sections) + "\n"
    write_text_atomic(path, text)
    return path
