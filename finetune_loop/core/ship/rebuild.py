"""Rebuild a registered version from its record alone, and say how close the rebuild came.

The record is the version's bundle (its task spec snapshot and rebuild manifest) and the rows its
manifest names by hash in the row store (`core.common.row_store`): the exact training and
validation rows in the trainer's order, and the frozen holdout. Nothing is read from today's
task files, so an edited, re-exported or deleted source does not change what is rebuilt; a row
store file that no longer hashes to its name stops the rebuild with that file named.

Checked before training, and reported: the task spec snapshot and the base model hash to what the
manifest recorded; the warm-start adapter (training.init: champion) is the recorded version, to the
byte; and the environment: the training plan (device, precision, QLoRA), torch's CPU threads, the
installed packages, the install lock and the code commit, each difference named.

Then the rebuild trains with the recorded settings and seed under the same deterministic kernels
and compares:

* weights: every tensor of the rebuilt adapter against the recorded one, bit for bit, with the
  largest absolute difference. Bit-identity is promised when training.deterministic was on and the
  environment matches (same plan, threads, packages and code); a mismatch then fails the rebuild;
* holdout metrics: the rebuilt adapter answers the recorded holdout, and its primary metric and
  every other metric, per label (F1) and per slice, are compared with the version's own
  evaluation (eval_report.json of its bundle). Each must be within the tolerance in points, a
  label or slice at least one of its rows (one flipped answer on 8 rows is 12.5 points, and says
  nothing about the rebuild).

A mismatch is a report with its deltas, not an exception. The answer budget of a generation task
is the holdout's (the evaluation also counted the regression suite's targets, which the record
does not keep), so a generated answer longer than every holdout target may be cut earlier.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from finetune_loop.core.common.files import sha256_file, write_text_atomic
from finetune_loop.core.common.row_store import RowStore
from finetune_loop.core.common.spec import TaskSpec, load_task_spec
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.data.readers import read_examples
from finetune_loop.core.evaluate.metrics import Scores, score_suite
from finetune_loop.core.evaluate.scoring import answer_budget, answer_suite
from finetune_loop.core.train.base_model import prepare_base_model
from finetune_loop.core.train.install_lock import installed_packages, lock_sha256, package_differences
from finetune_loop.core.train.trainer import (
    ADAPTER_WEIGHTS_FILE,
    CODE_COMMIT,
    REBUILD_MANIFEST_FILE,
    build_trainer,
    deterministic_kernels,
    plan_training,
)

REBUILD_STAGE = "rebuild"
# Written on the version after each rebuild: when, and what it found.
REBUILD_TAG = "last_rebuild"
SPEC_FILE, EVAL_REPORT_FILE = "task_spec.yaml", "eval_report.json"


class RebuildError(RuntimeError):
    """The version cannot be rebuilt from its record: a part of the record is missing or changed."""


@dataclass(frozen=True)
class WeightComparison:
    tensors: int
    identical: int
    max_abs_diff: float
    worst_tensor: str | None
    # Tensor names on one side only.
    unmatched: tuple[str, ...] = ()

    @property
    def bit_identical(self) -> bool:
        return self.identical == self.tensors and not self.unmatched


@dataclass(frozen=True)
class MetricDelta:
    scope: str  # "holdout", "label <name>", "slice <field>=<value>"
    metric: str
    recorded: float
    rebuilt: float
    rows: int
    # The largest |delta| in points this line may show.
    allowed_points: float

    @property
    def delta_points(self) -> float:
        return (self.rebuilt - self.recorded) * 100

    @property
    def within(self) -> bool:
        return abs(self.delta_points) <= self.allowed_points + 1e-9


@dataclass
class RebuildReport:
    task: str
    version: str
    adapter_dir: Path
    inputs: list[str]
    # What the environment had at training time and has differently now, one line each.
    environment: list[str]
    # Why the weights are (not) expected to be bit-identical.
    bit_identity_promised: bool
    bit_identity_reason: str
    weights: WeightComparison
    metrics: list[MetricDelta]
    tolerance_points: float
    seconds: float
    resumed_from_step: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def metrics_within(self) -> bool:
        return all(m.within for m in self.metrics)

    @property
    def matches(self) -> bool:
        return self.metrics_within and (self.weights.bit_identical or not self.bit_identity_promised)

    def verdict(self) -> str:
        weights = "bit-identical weights" if self.weights.bit_identical else (
            f"weights differ in {self.weights.tensors - self.weights.identical} of {self.weights.tensors} tensors "
            f"(max |diff| {self.weights.max_abs_diff:.3g} in {self.weights.worst_tensor})"
        )
        outside = [m for m in self.metrics if not m.within]
        metrics = (f"holdout metrics within {self.tolerance_points:g} pt ({len(self.metrics)} compared)" if not outside
                   else f"{len(outside)} of {len(self.metrics)} holdout metrics outside tolerance")
        return f"{'MATCHES' if self.matches else 'MISMATCH'}: {weights}; {metrics}"

    def markdown(self) -> str:
        lines = [f"# Rebuild of {self.task} v{self.version}", "", f"**{self.verdict()}** ({self.seconds:.0f} s)", ""]
        lines += ["## Record", "", *[f"- {line}" for line in self.inputs], ""]
        lines += ["## Environment", "", f"- bit-identity {'promised' if self.bit_identity_promised else 'not promised'}: {self.bit_identity_reason}"]
        lines += [f"- {line}" for line in self.environment] or ["- the same as at training time"]
        lines += [*[f"- {note}" for note in self.notes], ""]
        lines += ["## Holdout metrics", "", "| scope | metric | rows | recorded | rebuilt | delta (pt) | allowed (pt) |", "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {m.scope} | {m.metric} | {m.rows} | {m.recorded:.4f} | {m.rebuilt:.4f} | {m.delta_points:+.2f} | {m.allowed_points:.2f} |"
                  for m in sorted(self.metrics, key=lambda m: (m.within, m.scope, m.metric))]
        return "\n".join(lines) + "\n"

    def record(self) -> dict:
        return {
            "task": self.task, "version": self.version, "matches": self.matches, "verdict": self.verdict(),
            "adapter_dir": str(self.adapter_dir), "inputs": self.inputs, "environment": self.environment,
            "bit_identity_promised": self.bit_identity_promised, "bit_identity_reason": self.bit_identity_reason,
            "weights": {**asdict(self.weights), "bit_identical": self.weights.bit_identical},
            "metrics": [{**asdict(m), "delta_points": m.delta_points, "within": m.within} for m in self.metrics],
            "tolerance_points": self.tolerance_points, "seconds": self.seconds, "resumed_from_step": self.resumed_from_step,
            "notes": self.notes,
        }


def compare_weights(recorded: Path, rebuilt: Path) -> WeightComparison:
    """Every tensor of two safetensors files: bitwise equal, and the largest absolute difference."""
    import numpy as np
    from safetensors.numpy import load_file

    a, b = load_file(str(recorded)), load_file(str(rebuilt))
    shared = sorted(set(a) & set(b))
    identical, worst, worst_name = 0, 0.0, None
    for name in shared:
        if a[name].shape == b[name].shape and a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes():
            identical += 1
            continue
        diff = float(np.max(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64)))) if a[name].shape == b[name].shape else float("inf")
        if worst_name is None or diff > worst:
            worst, worst_name = diff, name
    return WeightComparison(len(shared), identical, worst, worst_name, tuple(sorted(set(a) ^ set(b))))


def metric_deltas(recorded: dict, rebuilt: Scores, tolerance_points: float) -> list[MetricDelta]:
    """The rebuilt candidate's holdout scores against the `models.candidate` entry of an eval report."""
    rows = len(rebuilt.correct)
    holdout = {key: value for key, value in recorded["holdout"].items() if key != "primary"}
    found = {rebuilt.primary_name: rebuilt.primary, **rebuilt.metrics}
    deltas = [MetricDelta("holdout", name, float(holdout[name]), float(found[name]), rows, tolerance_points)
              for name in sorted(holdout) if name in found and isinstance(holdout[name], (int, float))]
    for label, stats in sorted(recorded.get("per_label", {}).items()):
        now = rebuilt.per_label.get(label)
        support = stats["support"]
        if now is not None and support:
            deltas.append(MetricDelta(f"label {label}", "f1", stats["f1"], now.f1, support, max(tolerance_points, 100 / support)))
    for slice_field, values in sorted(recorded.get("per_slice", {}).items()):
        for value, (score, count) in sorted(values.items()):
            now = rebuilt.per_slice.get(slice_field, {}).get(value)
            if now is not None and count:
                deltas.append(MetricDelta(f"slice {slice_field}={value}", rebuilt.primary_name, score, now[0], count, max(tolerance_points, 100 / count)))
    return deltas


def _environment(manifest: dict, plan: dict, threads: int) -> list[str]:
    recorded_plan = manifest["plan"]
    lines = [f"training plan {key}: {recorded_plan.get(key)} recorded, {value} now"
             for key, value in plan.items() if key != "note" and recorded_plan.get(key) != value]
    if manifest.get("torch_threads") not in (None, threads):
        lines.append(f"torch CPU threads: {manifest['torch_threads']} recorded, {threads} now")
    lines += package_differences(manifest.get("packages", {}), installed_packages())
    for what, recorded, now in (("install lock sha256", manifest.get("install_lock_sha256"), lock_sha256()),
                                ("code commit", manifest.get("git_commit"), CODE_COMMIT)):
        if recorded != now:
            lines.append(f"{what}: {recorded or 'none'} recorded, {now or 'none'} now")
    return lines


def _record_spec(bundle: Path, task_path: Path, manifest: dict) -> TaskSpec:
    """The task spec the version was trained with (its snapshot), resolved beside today's task file."""
    spec = load_task_spec(task_path, text=(bundle / SPEC_FILE).read_text(encoding="utf-8"), require_files=False)
    if spec.spec_sha256 != manifest["task_spec_sha256"]:
        raise RebuildError(f"{bundle / SPEC_FILE} hashes to {spec.spec_sha256}, but the manifest recorded task spec {manifest['task_spec_sha256']}")
    return spec


def rebuild_version(
    task: TaskSpec, version: str, tracker: Tracker, store: RowStore, base_cache: Path, out_dir: Path,
    *, tolerance_points: float = 1.0, cuda_available: bool | None = None,
) -> RebuildReport:
    """Rebuild `version` of `task`'s registered model into `out_dir` and compare it with the record
    (see the module docstring); `task` names the model, the version's own spec snapshot is what
    trains. Raises RebuildError when the record cannot be followed."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    ref = tracker.version_ref(task.registered_model_name, version)
    if ref is None:
        raise RebuildError(f"{task.registered_model_name} has no registered version {version!r}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    bundle = tracker.download_version(ref, out_dir / "recorded")
    if not (bundle / REBUILD_MANIFEST_FILE).is_file():
        raise RebuildError(f"{ref.name} v{version} has no {REBUILD_MANIFEST_FILE} in its bundle: it was not trained by this loop")
    manifest = json.loads((bundle / REBUILD_MANIFEST_FILE).read_text())
    missing = [key for key in ("train_rows_sha256", "validation_rows_sha256", "holdout_sha256") if not manifest.get(key)]
    if missing:
        raise RebuildError(f"{ref.name} v{version} was trained before its rows were kept by content (its manifest has no {', '.join(missing)}): "
                           "it cannot be rebuilt from its record")
    spec = _record_spec(bundle, task.spec_path, manifest)
    what = f"{ref.name} v{version}"
    train_rows = read_examples(store.verified_path(manifest["train_rows_sha256"], f"training rows of {what}"))
    validation_rows = read_examples(store.verified_path(manifest["validation_rows_sha256"], f"validation rows of {what}"))
    holdout = read_examples(store.verified_path(manifest["holdout_sha256"], f"holdout of {what}"))
    base = prepare_base_model(spec.base_model, base_cache)
    if base.source_sha256 != manifest["base_model_sha256"]:
        raise RebuildError(f"base model {spec.base_model} hashes to {base.source_sha256} here, but {what} was trained on {manifest['base_model_sha256']}")
    inputs = [
        f"task spec snapshot sha256 {spec.spec_sha256}",
        f"{len(train_rows)} training rows sha256 {manifest['train_rows_sha256']}, {len(validation_rows)} validation rows sha256 {manifest['validation_rows_sha256']}",
        f"holdout of {len(holdout)} rows sha256 {manifest['holdout_sha256']}",
        f"base {spec.base_model} sha256 {base.source_sha256}",
        f"seed {manifest['seed']}, {manifest['steps']} steps, init {manifest['init']}",
    ]
    init_dir = None
    if manifest["init"] != "base":
        parent = tracker.version_ref(ref.name, manifest["init"].rsplit("/v", 1)[1])
        if parent is None:
            raise RebuildError(f"{what} continued from {manifest['init']}, which is no longer registered")
        init_dir = tracker.download_version(parent, out_dir / "init")
        found = sha256_file(init_dir / ADAPTER_WEIGHTS_FILE)
        if found != manifest["init_adapter_sha256"]:
            raise RebuildError(f"{what} continued from {manifest['init']} with weights {manifest['init_adapter_sha256']}, but that version's weights now hash to {found}")
        inputs.append(f"warm start from {manifest['init']}, weights sha256 {found}")

    plan = plan_training(spec, base.directory, cuda_available)
    environment = _environment(manifest, asdict(plan), torch.get_num_threads())
    promised = spec.training.deterministic and not environment
    reason = ("training.deterministic is off" if not spec.training.deterministic
              else "deterministic kernels, the same plan, threads, packages and code" if promised
              else "the environment differs (below): the metrics decide")
    notes = [f"the recorded training resumed from step {manifest['resumed_from_step']} after an interruption"] if manifest.get("resumed_from_step") else []

    with deterministic_kernels(spec.training):
        trainer = build_trainer(spec, base.directory, train_rows, validation_rows, out_dir / "checkpoints", (), plan, init_adapter=init_dir)
        trainer.train()
    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    weights = compare_weights(bundle / ADAPTER_WEIGHTS_FILE, adapter_dir / ADAPTER_WEIGHTS_FILE)

    metrics: list[MetricDelta] = []
    if (bundle / EVAL_REPORT_FILE).is_file():
        recorded = json.loads((bundle / EVAL_REPORT_FILE).read_text())["models"]["candidate"]
        tokenizer = AutoTokenizer.from_pretrained(bundle)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.directory, dtype=torch.float32), adapter_dir).eval()
        answers = answer_suite(model, tokenizer, spec, [e.text for e in holdout], answer_budget(tokenizer, spec, holdout))
        metrics = metric_deltas(recorded, score_suite(spec, holdout, answers), tolerance_points)
    else:
        notes.append(f"{what} has no {EVAL_REPORT_FILE} (never evaluated): only the weights are compared")
    return RebuildReport(spec.name, version, adapter_dir, inputs, environment, promised, reason, weights, metrics,
                         tolerance_points, time.perf_counter() - started, manifest.get("resumed_from_step", 0), notes)


def log_rebuild(tracker: Tracker, report: RebuildReport, out_dir: Path, model_name: str, run_tags: dict[str, str]) -> str:
    """The report as an MLflow run (stage rebuild) and as a tag on the version; returns the run id."""
    report_path, markdown_path = out_dir / "rebuild_report.json", out_dir / "rebuild_report.md"
    write_text_atomic(report_path, json.dumps(report.record(), indent=2))
    write_text_atomic(markdown_path, report.markdown())
    with tracker.run(f"rebuild-{report.task}-v{report.version}", tags={"stage": REBUILD_STAGE, "rebuilt_version": report.version, **run_tags}) as run_id:
        tracker.log_metrics(run_id, {
            "matches": float(report.matches), "bit_identical": float(report.weights.bit_identical),
            "max_abs_weight_diff": report.weights.max_abs_diff, "seconds": report.seconds,
            "metrics_outside_tolerance": float(sum(not m.within for m in report.metrics)),
        })
        tracker.log_artifact(run_id, report_path, "rebuild")
        tracker.log_artifact(run_id, markdown_path, "rebuild")
    tracker.tag_version(model_name, report.version, {REBUILD_TAG: f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {report.verdict()}"[:500]})
    return run_id
