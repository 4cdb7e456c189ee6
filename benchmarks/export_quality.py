"""What GGUF export costs and keeps on the bundled SmolLM2-135M-Instruct base: file size, llama.cpp
speed, agreement with the merged HF model and holdout accuracy per file (f32, Q8_0, Q4_K_M), and the
three gguf_export checks.

The adapter is either a trained one (--adapter, e.g. the one `finetune-loop run` trained on the
example task, with --holdout its frozen holdout file) or a freshly initialised LoRA (r=16 on all
attention/MLP projections) whose B matrices get small random values (std --lora-std) instead of
PEFT's zeros, so the merge really changes every adapted weight; then accuracies are the base
model's near-chance zero-shot ones, whose near-tied answers any quantization flips.
Rows: --holdout, or a seeded sample of the support_triage tickets (--rows). Everything runs through
`export_and_verify`, the function the gguf_export asset calls; state goes to a temporary
FINETUNE_LOOP_HOME. Prints the variants table, the checks and one JSON line.

    python benchmarks/export_quality.py                 # 100 rows
    python benchmarks/export_quality.py --rows 182 --home /tmp/export_bench
    python benchmarks/export_quality.py --adapter ADAPTER_DIR --holdout HOLDOUT_JSONL
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100, help="tickets sampled as the holdout")
    parser.add_argument("--lora-std", type=float, default=0.002, help="std of the random LoRA B matrices")
    parser.add_argument("--home", type=Path, default=None, help="FINETUNE_LOOP_HOME (default: a new temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapter", type=Path, help="a trained LoRA adapter directory instead of the random one")
    parser.add_argument("--holdout", type=Path, help="holdout JSONL (id, text, label) instead of the ticket sample")
    args = parser.parse_args()

    home_dir = args.home or Path(tempfile.mkdtemp(prefix="export_quality_"))
    os.environ["FINETUNE_LOOP_HOME"] = str(home_dir)

    import torch

    from finetune_loop.core.common.home import LoopHome
    from finetune_loop.core.common.spec import load_task_spec
    from finetune_loop.core.common.tracker import Tracker
    from finetune_loop.core.data.readers import read_examples
    from finetune_loop.core.data.validation import read_labeled_examples
    from finetune_loop.core.ship.export import export_and_verify
    from finetune_loop.core.train.base_model import prepare_base_model
    from finetune_loop.defs.resources import EXAMPLE_TASK

    started = time.perf_counter()
    spec = load_task_spec(EXAMPLE_TASK)
    home = LoopHome.from_env()
    base = prepare_base_model(spec.base_model, home.artifacts / "base_models")

    if args.holdout:
        holdout = args.holdout
        rows = read_examples(holdout)
    else:
        examples, _ = read_labeled_examples(spec)
        rows = random.Random(args.seed).sample(examples, min(args.rows, len(examples)))
        holdout = home_dir / "holdout.jsonl"
        holdout.write_text("".join(json.dumps({"id": e.id, "text": e.text, "label": e.label}) + "\n" for e in rows))
    if args.adapter:
        adapter_dir, adapter_name = args.adapter, f"trained adapter {args.adapter}"
    else:
        adapter_dir, adapter_name = random_adapter(base.directory, home_dir / "adapter", args.lora_std, args.seed), f"random LoRA (B std {args.lora_std})"

    tracker = Tracker.for_task(home, spec.name)
    export_started = time.perf_counter()
    result = export_and_verify(spec, base, adapter_dir, holdout, home_dir / "export", tracker, eval_accuracies={})
    export_seconds = time.perf_counter() - export_started

    print(f"\n{len(rows)} support_triage tickets ({holdout}), SmolLM2-135M-Instruct + {adapter_name}, {os.cpu_count()} CPUs")
    print(f"merge: max |logit diff| merged vs base + adapter = {result.merge_max_abs_logit_diff:.2e}")
    print(result.variants_markdown())
    for check in result.checks:
        print(f"{check.name}: {'PASSED' if check.passed else 'FAILED'} - {check.description}")
    print(json.dumps({
        "rows": len(rows),
        "adapter": adapter_name,
        "merge_max_abs_logit_diff": result.merge_max_abs_logit_diff,
        "merged_accuracy": result.merged_accuracy,
        "variants": {
            v.name: {"size_mb": round(v.size_bytes / 2**20, 1), "accuracy": v.accuracy, "delta_points": round(100 * v.accuracy_delta, 2),
                     "prompt_tokens_per_second": round(v.prompt_tokens_per_second), "generation_tokens_per_second": round(v.generation_tokens_per_second, 1)}
            for v in result.variants
        },
        "checks": {c.name: {"passed": c.passed, **{k: v for k, v in c.metadata.items() if isinstance(v, (int, float))}} for c in result.checks},
        "export_seconds": round(export_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
        "torch": torch.__version__,
    }))


def random_adapter(base_dir: Path, out_dir: Path, lora_std: float, seed: int) -> Path:
    """A LoRA on every linear layer whose B matrices are small random values, so merging it moves
    every adapted weight (PEFT initialises B to zeros, which would make the merge a no-op)."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, lora_std)
    adapted.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    main()
