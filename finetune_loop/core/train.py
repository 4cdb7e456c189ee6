"""LoRA training with TRL's SFTTrainer: loss on the answer only, every step tracked in MLflow.

The adapter bundle (weights, tokenizer, chat template, task spec, rebuild manifest) is written to a
local directory, logged to the MLflow run, and registered as a new model version with alias
`challenger`.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from finetune_loop.core.curate import CuratedDataset, read_examples, stratified_split
from finetune_loop.core.models import BaseModel, render_completion, render_prompt
from finetune_loop.core.registry import CHALLENGER_ALIAS, ModelVersionRef, Tracker
from finetune_loop.core.specs import TaskSpec

_TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "gguf", "llama_cpp_python", "mlflow", "dagster")


@dataclass(frozen=True)
class TrainedAdapter:
    directory: Path
    mlflow_run_id: str
    model_version: ModelVersionRef
    train_rows_used: int
    steps: int
    final_train_loss: float
    validation_loss: float | None
    train_tokens: int
    tokens_per_second: float
    train_seconds: float
    device: str


def train_adapter(
    spec: TaskSpec,
    base: BaseModel,
    dataset: CuratedDataset,
    holdout_sha256: str,
    out_dir: Path,
    tracker: Tracker,
    run_tags: dict[str, str] | None = None,
) -> TrainedAdapter:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    settings = spec.training
    train_rows = read_examples(dataset.train_path)
    if settings.max_train_examples is not None and len(train_rows) > settings.max_train_examples:
        # A stratified sample keeps every label when the CPU budget caps the rows.
        _, train_rows = stratified_split(train_rows, settings.max_train_examples / len(train_rows), settings.seed)
    validation_rows = read_examples(dataset.validation_path)

    tokenizer = AutoTokenizer.from_pretrained(base.directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def as_prompt_completion(rows):
        return Dataset.from_list(
            [{"prompt": render_prompt(tokenizer, spec, r.text), "completion": render_completion(tokenizer, spec, r.text, r.label)} for r in rows]
        )

    train_data = as_prompt_completion(train_rows)
    validation_data = as_prompt_completion(validation_rows) if validation_rows else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(settings.seed)
    model = AutoModelForCausalLM.from_pretrained(base.directory, dtype=torch.float32)
    target_modules = settings.target_modules if isinstance(settings.target_modules, str) else list(settings.target_modules)
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    trainer_dir = out_dir / "trainer"
    config = SFTConfig(
        output_dir=str(trainer_dir),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.1,
        max_length=settings.max_length,
        # Loss on the answer only: the prompt is the same instruction every time and would dominate.
        completion_only_loss=True,
        # Batches of similar length: on CPU, padding tokens are most of the cost otherwise.
        train_sampling_strategy="group_by_length",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=device == "cpu",
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )

    params = {
        "task": spec.name,
        "task_spec_sha256": spec.spec_sha256,
        "base_model": spec.base_model,
        "base_model_sha256": base.source_sha256,
        "data_version": dataset.data_version,
        "holdout_sha256": holdout_sha256,
        "train_rows_available": dataset.report.train_rows,
        "train_rows_used": len(train_rows),
        "validation_rows": len(validation_rows),
        "device": device,
        **{f"training.{k}": v for k, v in asdict(settings).items()},
    }
    with tracker.run(f"train-{spec.name}", tags={"stage": "train", **(run_tags or {})}) as run_id:
        tracker.log_params(run_id, params)
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=train_data,
            eval_dataset=validation_data,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[_mlflow_step_logger(tracker, run_id, TrainerCallback)],
        )
        train_tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        started = time.perf_counter()
        result = trainer.train()
        train_seconds = time.perf_counter() - started
        validation_loss = trainer.evaluate()["eval_loss"] if validation_data is not None else None

        adapter_dir = out_dir / "adapter"
        trainer.save_model(str(adapter_dir))
        tokenizer.save_pretrained(adapter_dir)
        shutil.copyfile(spec.spec_path, adapter_dir / "task_spec.yaml")
        manifest = {
            "task": spec.name,
            "data_version": dataset.data_version,
            "holdout_sha256": holdout_sha256,
            "base_model": spec.base_model,
            "base_model_sha256": base.source_sha256,
            "task_spec_sha256": spec.spec_sha256,
            "training": asdict(settings),
            "seed": settings.seed,
            "device": device,
            "training_rows": [{"id": r.id, "label": r.label, "source": r.source} for r in train_rows],
            "packages": _package_versions(),
            "python": platform.python_version(),
            "git_commit": _git_commit(),
        }
        (adapter_dir / "rebuild_manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(trainer_dir, ignore_errors=True)  # the adapter dir holds everything worth keeping

        tokens_per_second = train_tokens * settings.epochs / train_seconds
        final_metrics = {"train_tokens_per_second": tokens_per_second, "train_seconds": train_seconds, "train_loss": result.training_loss}
        if validation_loss is not None:
            final_metrics["validation_loss"] = validation_loss
        tracker.log_metrics(run_id, final_metrics, step=result.global_step)
        tracker.log_artifacts(run_id, adapter_dir, "adapter")
        version = tracker.register_version(
            spec.registered_model_name,
            run_id,
            "adapter",
            tags={"data_version": dataset.data_version, "base_model_sha256": base.source_sha256, **(run_tags or {})},
        )
        tracker.set_alias(spec.registered_model_name, CHALLENGER_ALIAS, version.version)

    return TrainedAdapter(
        directory=adapter_dir,
        mlflow_run_id=run_id,
        model_version=version,
        train_rows_used=len(train_rows),
        steps=result.global_step,
        final_train_loss=result.training_loss,
        validation_loss=validation_loss,
        train_tokens=train_tokens,
        tokens_per_second=tokens_per_second,
        train_seconds=train_seconds,
        device=device,
    )


def _mlflow_step_logger(tracker: Tracker, run_id: str, callback_base: type):
    """A TrainerCallback (built lazily so importing this module does not import transformers) that
    sends every logged training value to MLflow at its step."""

    class StepLogger(callback_base):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if numeric:
                tracker.log_metrics(run_id, numeric, step=state.global_step, timestamp_ms=int(time.time() * 1000))

    return StepLogger()


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()
