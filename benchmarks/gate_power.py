"""How often the release gate lets an equally good retrain through, against what it claims.

The example task is trained 1 + --seeds times on the same curated data, changing only
training.seed: equal candidates by construction. The first is the champion. Every other one is
scored on the frozen holdout beside it and judged by the gate's own `non_inferior_to_champion`
rule (`gate.paired_test`, the function decide_release calls); `gate_power` computes, from the
holdout's size and the disagreement observed between the two models, how often that rule should
pass an equal candidate (and a 5-pt-worse one). The arms:

* `base`: each candidate is a fresh LoRA on the base (training.init: base);
* `champion`: each candidate continues from the champion's adapter (training.init: champion), one
  more pass over the same rows with its own seed.

Everything runs on the real bundled base (SmolLM2-135M-Instruct) through the loop's own curation,
trainer and scorer, in a temporary FINETUNE_LOOP_HOME. Prints a table per arm and one JSON line.

    python benchmarks/gate_power.py                         # 3 seeds per arm, both arms
    python benchmarks/gate_power.py --seeds 5 --arms base --margin 0.04
    python benchmarks/gate_power.py --sizing                # the OC table only: no training (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="equal candidates per arm (besides the champion)")
    parser.add_argument("--arms", default="base,champion", help="comma-separated: base (cold start), champion (warm start)")
    parser.add_argument("--margin", type=float, default=None, help="non-inferiority margin to judge with (default: the task's)")
    parser.add_argument("--home", type=Path, default=None, help="FINETUNE_LOOP_HOME (default: a new temporary directory)")
    parser.add_argument("--sizing", action="store_true", help="print the claimed pass rate per disagreement and margin at the holdout's size, and exit")
    parser.add_argument("--rows", type=int, default=182, help="--sizing: paired rows (the example task's holdout has 182)")
    args = parser.parse_args()
    if args.sizing:
        print_sizing(args.rows)
        return
    home_dir = args.home or Path(tempfile.mkdtemp(prefix="gate_power_"))
    os.environ["FINETUNE_LOOP_HOME"] = str(home_dir)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_loop.core.common.home import LoopHome
    from finetune_loop.core.common.row_store import RowStore
    from finetune_loop.core.common.spec import load_task_spec
    from finetune_loop.core.common.tracker import Tracker
    from finetune_loop.core.data.curation import curate_dataset
    from finetune_loop.core.data.readers import read_examples
    from finetune_loop.core.data.suites import freeze_suite
    from finetune_loop.core.evaluate.gate import NON_INFERIOR, paired_test
    from finetune_loop.core.evaluate.gate_power import power_check
    from finetune_loop.core.evaluate.scoring import predict_labels
    from finetune_loop.core.train.base_model import prepare_base_model
    from finetune_loop.core.train.prompts import rendered_length
    from finetune_loop.core.train.trainer import train_adapter
    from finetune_loop.defs.resources import EXAMPLE_TASK

    started = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    home = LoopHome(home_dir)
    spec = load_task_spec(EXAMPLE_TASK)
    margin = spec.gate.champion_margin if args.margin is None else args.margin
    base = prepare_base_model(spec.base_model, home.task_dir(spec.name, "base"))
    tracker = Tracker.for_task(home, spec.name)
    suites_dir = home.task_dir(spec.name, "suites")
    holdout = freeze_suite(spec, "holdout", suites_dir, token_length=rendered_length(spec, base.directory))
    regression = freeze_suite(spec, "regression", suites_dir, exclude=[holdout], token_length=rendered_length(spec, base.directory))
    dataset = curate_dataset(spec, [holdout, regression], home.task_dir(spec.name, "datasets"), token_length=rendered_length(spec, base.directory))
    rows = read_examples(holdout.path)
    texts = [e.text for e in rows]

    def train(name: str, seed: int, init=None, init_dir=None):
        seeded = dataclasses.replace(spec, training=dataclasses.replace(spec.training, seed=seed))
        # Its own checkpoint root: the training key does not hold the seed (the task file's hash does).
        adapter = train_adapter(
            seeded, base, dataset, holdout, home_dir / "adapters" / name, tracker, RowStore.for_home(home),
            {"benchmark": "gate_power", "arm": name}, checkpoints_root=home_dir / "checkpoints" / name,
            init_adapter=init, init_adapter_dir=init_dir,
        )
        return adapter

    tokenizer = AutoTokenizer.from_pretrained(base.directory)

    def correct(adapter_dir: Path) -> list[float]:
        model = AutoModelForCausalLM.from_pretrained(base.directory, dtype=torch.float32)
        adapted = PeftModel.from_pretrained(model, adapter_dir).eval()
        predictions = predict_labels(adapted, tokenizer, spec, texts)
        return [float(p == e.label) for p, e in zip(predictions, rows)]

    champion = train("champion", spec.training.seed)
    champion_correct = correct(champion.directory)
    results = {}
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        if arm not in ("base", "champion"):
            raise SystemExit(f"unknown arm {arm!r}: base or champion")
        outcomes = []
        for k in range(1, args.seeds + 1):
            seed = spec.training.seed + 1000 * k
            warm = arm == "champion"
            candidate = train(f"{arm}-{k}", seed, champion.model_version if warm else None, champion.directory if warm else None)
            candidate_correct = correct(candidate.directory)
            test = paired_test(candidate_correct, champion_correct, NON_INFERIOR, margin=margin, settings=spec.gate)
            power = power_check(spec.gate, NON_INFERIOR, rows=len(rows), margin=margin, disagreement=test.disagreement)
            outcomes.append({
                "seed": seed, "accuracy": sum(candidate_correct) / len(rows), "delta": test.interval.mean_difference,
                "lower_bound": test.interval.lower, "disagreement": test.disagreement, "passed": test.passed,
                "claimed_pass_if_equal": power.characteristic.pass_probability[0.0],
                "claimed_pass_if_5pt_worse": power.characteristic.pass_probability[-0.05],
                "rows_needed": power.needed if isinstance(power.needed, int) else None,
            })
        results[arm] = outcomes

    champion_accuracy = sum(champion_correct) / len(rows)
    print(f"champion (seed {spec.training.seed}): holdout accuracy {champion_accuracy:.3f} on {len(rows)} rows; margin {margin:.3f}, "
          f"one-sided confidence {spec.gate.bootstrap_confidence:.2f}")
    for arm, outcomes in results.items():
        print(f"\narm {arm}: {len(outcomes)} equal candidates (same data, another seed)")
        print("| seed | accuracy | δ vs champion | lower bound | disagreement | passed | claimed P(pass|equal) | claimed P(pass|−5pt) | rows needed |")
        print("|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for o in outcomes:
            print(f"| {o['seed']} | {o['accuracy']:.3f} | {o['delta']:+.3f} | {o['lower_bound']:+.3f} | {o['disagreement']:.3f} | "
                  f"{'yes' if o['passed'] else 'no'} | {o['claimed_pass_if_equal']:.2f} | {o['claimed_pass_if_5pt_worse']:.2f} | {o['rows_needed']} |")
        passed = sum(o["passed"] for o in outcomes)
        claimed = sum(o["claimed_pass_if_equal"] for o in outcomes) / len(outcomes)
        print(f"passed {passed}/{len(outcomes)}; the gate claims {claimed:.2f} on average for an equal candidate")
    print(json.dumps({
        "benchmark": "gate_power", "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "holdout_rows": len(rows),
        "margin": margin, "champion_accuracy": champion_accuracy, "arms": results, "seconds": round(time.perf_counter() - started, 1),
    }))


def print_sizing(rows: int) -> None:
    """The non-inferiority rule's chance to pass an equal candidate, and the rows it would need
    to meet the power goals, per disagreement rate and margin (the example task's gate settings)."""
    from finetune_loop.core.common.spec import load_task_spec
    from finetune_loop.core.evaluate.gate import NON_INFERIOR
    from finetune_loop.core.evaluate.gate_power import power_check
    from finetune_loop.defs.resources import EXAMPLE_TASK

    settings = load_task_spec(EXAMPLE_TASK).gate
    margins = (0.02, 0.03, 0.04)
    print(f"n={rows}: P(an equal candidate passes) (rows needed for the goals)")
    print("| disagreement | " + " | ".join(f"margin {m:.2f}" for m in margins) + " |")
    print("|---:|" + "---:|" * len(margins))
    for disagreement in (0.05, 0.08, 0.12, 0.17):
        cells = []
        for margin in margins:
            check = power_check(settings, NON_INFERIOR, rows=rows, margin=margin, disagreement=disagreement)
            cells.append(f"{check.characteristic.pass_probability[0.0]:.2f} ({check.needed})")
        print(f"| {disagreement:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
