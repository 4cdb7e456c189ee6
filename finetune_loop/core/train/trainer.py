"""LoRA / QLoRA training with TRL's SFTTrainer: loss on the answer only, resumable, every step tracked.

`plan_training` checks the training settings against the base model and the machine before any
work starts. `train_adapter` checkpoints every `checkpoint_every_steps` steps into a directory named
by the data version and the task spec; a run killed mid-training (even by SIGKILL) resumes from the
last complete checkpoint there on the next call, and continues the same MLflow run. The adapter
bundle (weights, tokenizer, chat template, task spec, rebuild manifest) is logged to that run and
registered as a new model version with alias `challenger`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.files import sha256_file, write_text_atomic
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.row_store import RowStore
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.common.tracker import CHALLENGER_ALIAS, ModelVersionRef, Tracker
from finetune_loop.core.data.curation import CuratedDataset
from finetune_loop.core.data.production_log import FEEDBACK_SOURCE
from finetune_loop.core.data.readers import read_examples
from finetune_loop.core.data.splits import stratified_split
from finetune_loop.core.data.suites import FrozenSuite
from finetune_loop.core.train.base_model import BaseModel
from finetune_loop.core.train.install_lock import installed_packages, lock_sha256
from finetune_loop.core.train.prompts import encode_completion, encode_prompt
from finetune_loop.core.train.shared_prefix import shared_prefix_trainer_class

# The LoRA weights PEFT saves in an adapter directory.
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# The adapter bundle's record of what it was trained on (rows by hash, settings, environment).
REBUILD_MANIFEST_FILE = "rebuild_manifest.json"
# Written next to the checkpoints: which MLflow run they belong to, so a resumed attempt continues it.
_ATTEMPT_FILE = "mlflow_run.json"
_CHECKPOINT_PREFIX = "checkpoint-"
# cuBLAS needs a fixed workspace to be deterministic (https://docs.nvidia.com/cuda/cublas/#results-reproducibility).
_CUBLAS_WORKSPACE = ":4096:8"


class TrainingConfigError(ValueError):
    """The task's training settings cannot run on this base model or this machine."""


@dataclass(frozen=True)
class TrainingPlan:
    """What training will actually do, decided before any work starts, and recorded in MLflow."""

    device: str  # "cuda" or "cpu"
    device_name: str
    precision: str  # "bf16" or "fp32"
    qlora: bool
    target_modules: str | tuple[str, ...]
    shared_prefix: bool
    note: str = ""


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
    resumed_from_step: int
    peak_memory_mb: float
    loss_curve_path: Path


def plan_training(spec: TaskSpec, base_dir: Path, cuda_available: bool | None = None) -> TrainingPlan:
    """Validate the training settings against the base model's modules and this machine's devices.

    Raises TrainingConfigError naming the task file and the field."""
    import torch

    settings = spec.training
    where = f"{spec.spec_path}: training"
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    note = ""
    qlora = settings.qlora
    if qlora and not cuda:
        if not settings.qlora_cpu_fallback:
            raise TrainingConfigError(
                f"{where}.qlora is true but this machine has no CUDA device: QLoRA (bitsandbytes 4-bit NF4) needs a GPU. "
                "Run on a GPU worker, set training.qlora: false, or set training.qlora_cpu_fallback: true to train "
                "plain LoRA in fp32 here."
            )
        qlora = False
        note = "QLoRA requested, no CUDA device: plain LoRA in fp32 (training.qlora_cpu_fallback)"
    if qlora:
        try:
            metadata.version("bitsandbytes")
        except metadata.PackageNotFoundError as exc:
            raise TrainingConfigError(f"{where}.qlora is true but the bitsandbytes package is not installed") from exc
    if settings.shared_prefix and settings.gradient_checkpointing:
        raise TrainingConfigError(
            f"{where}.shared_prefix and {where}.gradient_checkpointing cannot both be true: checkpointing recomputes "
            "layers without the key/value cache the shared prefix lives in"
        )
    target_modules = _check_target_modules(spec, base_dir)
    if cuda:
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        device_name = torch.cuda.get_device_name(0)
    else:
        precision = "fp32"
        device_name = platform.processor() or platform.machine()
    return TrainingPlan(
        device="cuda" if cuda else "cpu",
        device_name=device_name,
        precision=precision,
        qlora=qlora,
        target_modules=target_modules,
        shared_prefix=settings.shared_prefix,
        note=note,
    )


def _check_target_modules(spec: TaskSpec, base_dir: Path) -> str | tuple[str, ...]:
    """Every named target module must exist in the base model as a linear layer; a typo would
    otherwise surface as PEFT's error deep inside training, or as an adapter on the wrong layers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    targets = spec.training.target_modules
    if targets == "all-linear":
        return targets
    # The meta device builds the module tree without allocating or loading any weight.
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
    linear_names = [name for name, module in skeleton.named_modules() if isinstance(module, torch.nn.Linear)]
    available = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
    if isinstance(targets, str):
        # PEFT reads a single string other than "all-linear" as a regular expression over full names.
        if not any(re.fullmatch(targets, name) for name in linear_names):
            raise TrainingConfigError(
                f"{spec.spec_path}: training.target_modules {targets!r} matches no linear layer of base model "
                f"{spec.base_model}; its linear layers are named {available}"
            )
        return targets
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise TrainingConfigError(
            f"{spec.spec_path}: training.target_modules {unknown} not found in base model {spec.base_model}; "
            f"its linear layers are named {available} (or use 'all-linear')"
        )
    return tuple(targets)


def select_training_rows(spec: TaskSpec, dataset: CuratedDataset) -> tuple[list[Example], list[Example]]:
    """The curated training rows, under training.max_train_examples: labelled production feedback
    first, up to training.feedback_share of the cap (a stratified sample of it when there is more),
    then a stratified sample of the other rows for the rest (every label keeps its share)."""
    settings = spec.training
    train_rows = read_examples(dataset.train_path)
    cap = settings.max_train_examples
    if cap is None or len(train_rows) <= cap:
        return train_rows, read_examples(dataset.validation_path)
    feedback = [r for r in train_rows if r.source == FEEDBACK_SOURCE]
    others = [r for r in train_rows if r.source != FEEDBACK_SOURCE]
    chosen_feedback = _stratified_sample(spec, feedback, min(len(feedback), round(cap * settings.feedback_share)))
    chosen_others = _stratified_sample(spec, others, cap - len(chosen_feedback))
    return chosen_feedback + chosen_others, read_examples(dataset.validation_path)


def _stratified_sample(spec: TaskSpec, rows: list[Example], count: int) -> list[Example]:
    if count >= len(rows):
        return rows
    if count <= 0:
        return []
    _, sample = stratified_split(rows, count / len(rows), spec.training.seed, kind_of(spec).stratum)
    return sample


def build_trainer(
    spec: TaskSpec,
    base_dir: Path,
    train_rows: list[Example],
    validation_rows: list[Example],
    out_dir: Path,
    callbacks=(),
    plan: TrainingPlan | None = None,
    init_adapter: Path | None = None,
):
    """The SFTTrainer exactly as training uses it: prompt/completion pairs encoded through the base
    tokenizer's chat template (`encode_prompt`: the user's text as text, never as control tokens),
    loss on the completion (answer) tokens only, checkpoints every `checkpoint_every_steps` steps
    into `out_dir`. With `init_adapter` (training.init: champion) training continues from that
    adapter's weights instead of a fresh LoRA."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    settings = spec.training
    plan = plan or plan_training(spec, base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def as_prompt_completion(rows):
        # Tokenized here, not by TRL: TRL would tokenize the rendered text with its control tokens
        # parsed, the user's text included.
        encoded = []
        for r in rows:
            prompt, completion = encode_prompt(tokenizer, spec, r.text), encode_completion(tokenizer, spec, r.text, r.label)
            encoded.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
        return Dataset.from_list(encoded)

    torch.manual_seed(settings.seed)
    bf16 = plan.precision == "bf16"
    load_kwargs = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if plan.qlora:
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    model = AutoModelForCausalLM.from_pretrained(base_dir, **load_kwargs)
    target_modules = plan.target_modules if isinstance(plan.target_modules, str) else list(plan.target_modules)
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    config = SFTConfig(
        output_dir=str(out_dir),
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
        activation_checkpointing=settings.gradient_checkpointing,
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.checkpoint_every_steps,
        # Two, not one: the newest may be half-written when the process is killed while saving.
        save_total_limit=2,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=plan.device == "cpu",
        bf16=bf16,
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = lora
    if init_adapter is not None:
        from peft import PeftModel

        _check_warm_start(spec, init_adapter)
        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
        peft_config = None  # the model already carries the (trainable) adapter
    trainer_class = SFTTrainer
    if plan.shared_prefix:
        trainer_class = shared_prefix_trainer_class()
    return trainer_class(
        model=model,
        args=config,
        train_dataset=as_prompt_completion(train_rows),
        eval_dataset=as_prompt_completion(validation_rows) if validation_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )


def _check_warm_start(spec: TaskSpec, init_adapter: Path) -> None:
    """A warm start continues the champion's own LoRA matrices: their rank and scale must be the task's."""
    config_path = Path(init_adapter) / "adapter_config.json"
    if not config_path.is_file():
        raise TrainingConfigError(f"training.init is 'champion', but {init_adapter} holds no adapter_config.json")
    config = json.loads(config_path.read_text())
    asked = {"r": spec.training.lora_r, "lora_alpha": spec.training.lora_alpha}
    found = {key: config.get(key) for key in asked}
    if found != asked:
        raise TrainingConfigError(
            f"{spec.spec_path}: training.init is 'champion', but the champion adapter has lora_r {found['r']} and "
            f"lora_alpha {found['lora_alpha']} where the task asks {asked['r']} and {asked['lora_alpha']}; "
            "set training.init: base for this retrain (a rank change starts afresh)"
        )


def training_key(spec: TaskSpec, base: BaseModel, dataset: CuratedDataset, holdout_sha256: str, init: str = "base") -> str:
    """Names the checkpoint directory: the same data, the same task spec (hence the same settings)
    and the same starting adapter (`init`) resume; anything else starts afresh."""
    fields = {"data": dataset.data_version, "holdout": holdout_sha256, "base": base.source_sha256, "spec": spec.spec_sha256}
    if init != "base":
        fields["init"] = init
    material = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def last_complete_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (the Trainer writes it last), so a
    process killed while saving never leaves a half checkpoint to resume from."""
    if not directory.is_dir():
        return None
    steps = []
    for path in directory.glob(f"{_CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(_CHECKPOINT_PREFIX):]
        if suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        return path
    return None


def train_adapter(
    spec: TaskSpec,
    base: BaseModel,
    dataset: CuratedDataset,
    holdout: FrozenSuite,
    out_dir: Path,
    tracker: Tracker,
    row_store: RowStore,
    run_tags: dict[str, str] | None = None,
    checkpoints_root: Path | None = None,
    cuda_available: bool | None = None,
    init_adapter: ModelVersionRef | None = None,
    init_adapter_dir: Path | None = None,
) -> TrainedAdapter:
    """Train (or resume) the adapter; the bundle lands in `out_dir/adapter`, checkpoints under
    `checkpoints_root/<training key>` (default `out_dir.parent/checkpoints`). `cuda_available`
    overrides device detection (None: use CUDA when present). `init_adapter` / `init_adapter_dir`:
    the registered version (and its downloaded adapter) a warm start continues from. The rows fed
    to the trainer and the holdout go into `row_store`; the rebuild manifest names them by hash."""
    import torch
    from transformers import TrainerCallback

    settings = spec.training
    plan = plan_training(spec, base.directory, cuda_available)  # before any work: a bad config costs nothing
    train_rows, validation_rows = select_training_rows(spec, dataset)
    holdout_sha256 = holdout.content_hash
    init = f"{init_adapter.name}/v{init_adapter.version}" if init_adapter else "base"
    key = training_key(spec, base, dataset, holdout_sha256, init)
    checkpoint_dir = (checkpoints_root or out_dir.parent / "checkpoints") / key
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume_from = last_complete_checkpoint(checkpoint_dir)
    previous_run_id = _previous_attempt(checkpoint_dir, tracker)
    if resume_from is None:
        previous_run_id = None  # nothing to resume: a fresh run, not a continuation
    resumed_from_step = int(resume_from.name[len(_CHECKPOINT_PREFIX):]) if resume_from else 0

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
        "training_key": key,
        "init": init,
        **{f"plan.{k}": v for k, v in asdict(plan).items()},
        **{f"training.{k}": v for k, v in asdict(settings).items()},
    }
    tags = {"stage": "train", **(run_tags or {})}
    with tracker.run(f"train-{spec.name}", tags=tags, continue_run_id=previous_run_id) as run_id:
        write_text_atomic(checkpoint_dir / _ATTEMPT_FILE, json.dumps({"mlflow_run_id": run_id}))
        if previous_run_id:
            tracker.set_tags(run_id, {"finetune_loop/resumed_from_step": resumed_from_step, "finetune_loop/resumed_by": json.dumps(run_tags or {})})
        else:
            tracker.log_dataset_input(run_id, dataset.train_path, name=f"{spec.name}-train", digest=dataset.data_version, context="training")
            tracker.log_dataset_input(run_id, dataset.validation_path, name=f"{spec.name}-validation", digest=dataset.data_version, context="validation")
            # The curation evidence travels with the run: what was removed, and why.
            for evidence in ("report.json", "dedup_audit.md", "quarantine.jsonl"):
                tracker.log_artifact(run_id, dataset.directory / evidence, "dataset")
        monitor = tracker.system_metrics(run_id, resume=previous_run_id is not None)
        try:
            with deterministic_kernels(settings):
                step_logger = _mlflow_step_logger(tracker, run_id, TrainerCallback)
                trainer = build_trainer(
                    spec, base.directory, train_rows, validation_rows, checkpoint_dir, [step_logger], plan,
                    init_adapter=init_adapter_dir if init_adapter else None,
                )
                tracker.log_params(run_id, {**params, **_determinism(settings), **_trainer_hyperparameters(trainer)})
                tokenizer = trainer.processing_class
                if plan.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
                train_seconds = time.perf_counter() - started
                validation_loss = trainer.evaluate()["eval_loss"] if validation_rows else None
        finally:
            monitor.finish()
        # Tokens this process trained on (a resumed run counts only what it ran), without padding.
        train_tokens = trainer.state.num_input_tokens_seen - step_logger.tokens_at_start
        peak_memory_mb = _peak_memory_mb(plan.device)

        adapter_dir = out_dir / "adapter"
        trainer.save_model(str(adapter_dir))
        tokenizer.save_pretrained(adapter_dir)
        shutil.copyfile(spec.spec_path, adapter_dir / "task_spec.yaml")
        manifest = {
            "task": spec.name,
            "data_version": dataset.data_version,
            "holdout_sha256": row_store.put_file(holdout.path),
            # The exact rows the trainer saw, in its order (a rebuild reads them by these hashes).
            "train_rows_sha256": row_store.put_rows(train_rows),
            "validation_rows_sha256": row_store.put_rows(validation_rows),
            "base_model": spec.base_model,
            "base_model_sha256": base.source_sha256,
            "task_spec_sha256": spec.spec_sha256,
            "training": asdict(settings),
            "plan": asdict(plan),
            "seed": settings.seed,
            # A warm start's weights depend on the version it continued from, to the byte.
            "init": init,
            "init_adapter_sha256": sha256_file(Path(init_adapter_dir) / ADAPTER_WEIGHTS_FILE) if init_adapter else None,
            # CPU kernels may split a reduction by thread count: bit-identity holds at the same count.
            "torch_threads": torch.get_num_threads(),
            "determinism": _determinism(settings),
            "steps": result.global_step,
            "resumed_from_step": resumed_from_step,
            # Provenance of every row the adapter saw (rows of the curated split named by
            # data_version): a revoked source or licence can be traced to the models it is in.
            "training_rows": [{"id": r.id, "label": r.label, "source": r.source, "licence": r.licence} for r in train_rows],
            # Every installed distribution (a rebuild names the ones that differ) and the lock it came from.
            "packages": installed_packages(),
            "install_lock_sha256": lock_sha256(),
            "python": platform.python_version(),
            "git_commit": CODE_COMMIT,
        }
        write_text_atomic(adapter_dir / REBUILD_MANIFEST_FILE, json.dumps(manifest, indent=2))
        loss_curve = _plot_loss_curve(trainer.state.log_history, out_dir / "loss_curve.png", spec.name)

        tokens_per_second = train_tokens / train_seconds
        final_metrics = {
            "train_tokens_per_second": tokens_per_second,
            "train_tokens": train_tokens,
            "train_seconds": train_seconds,
            "train_loss": result.training_loss,
            "peak_memory_mb": peak_memory_mb,
        }
        if validation_loss is not None:
            final_metrics["validation_loss"] = validation_loss
        tracker.log_metrics(run_id, final_metrics, step=result.global_step)
        tracker.log_artifact(run_id, loss_curve, "plots")
        tracker.log_artifacts(run_id, adapter_dir, "adapter")
        version = tracker.register_version(
            spec.registered_model_name,
            run_id,
            "adapter",
            tags={
                "data_version": dataset.data_version,
                "base_model_sha256": base.source_sha256,
                # A label admitted or a setting changed is a new spec: the version says which one it had.
                "task_spec_sha256": spec.spec_sha256,
                "rebuild_manifest": REBUILD_MANIFEST_FILE,
                "git_commit": manifest["git_commit"] or "unknown",
                **(run_tags or {}),
            },
        )
        tracker.set_alias(spec.registered_model_name, CHALLENGER_ALIAS, version.version)
        # Finished: nothing left to resume, and the adapter dir holds everything worth keeping.
        shutil.rmtree(checkpoint_dir, ignore_errors=True)

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
        device=plan.device,
        resumed_from_step=resumed_from_step,
        peak_memory_mb=peak_memory_mb,
        loss_curve_path=loss_curve,
    )


def recorded_base(adapter_dir: Path) -> tuple[str, str] | None:
    """(base_model, its weights' sha256) an adapter was trained on, from its rebuild manifest; None
    for an adapter without one."""
    path = Path(adapter_dir) / REBUILD_MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest["base_model"], manifest["base_model_sha256"]


def trained_rows_path(adapter_dir: Path, row_store: RowStore, what: str) -> Path:
    """The row-store file of the exact rows the adapter in `adapter_dir` was trained on, as its
    rebuild manifest names them (checked against their hash); `what` names them in an error."""
    manifest = json.loads((Path(adapter_dir) / REBUILD_MANIFEST_FILE).read_text())
    return row_store.verified_path(manifest["train_rows_sha256"], what)


def _previous_attempt(checkpoint_dir: Path, tracker: Tracker) -> str | None:
    """The MLflow run of an earlier attempt on these checkpoints, if it never finished."""
    try:
        run_id = json.loads((checkpoint_dir / _ATTEMPT_FILE).read_text())["mlflow_run_id"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None
    return run_id if tracker.unfinished(run_id) else None


@contextmanager
def deterministic_kernels(settings):
    """torch's deterministic kernels for the duration of training (the process-wide setting is
    restored afterwards). warn_only: an op without a deterministic kernel warns instead of failing
    the run; the warning lands in the step log."""
    import torch

    if not settings.deterministic:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    previous_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # cuBLAS reads this when its handle is created; set before any CUDA work of this process.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", _CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous_cudnn


def _determinism(settings) -> dict[str, object]:
    return {
        "seed": settings.seed,
        "deterministic_algorithms": settings.deterministic,
        "deterministic_warn_only": settings.deterministic,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG", "unset") if settings.deterministic else "unset",
    }


def _trainer_hyperparameters(trainer) -> dict[str, object]:
    """Every scalar TrainingArguments value the run used (optimizer, schedule, clipping, ...)."""
    skip = {"output_dir", "logging_dir", "hub_token", "push_to_hub_token"}
    return {
        f"trainer.{k}": v
        for k, v in trainer.args.to_dict().items()
        if k not in skip and (v is None or isinstance(v, (bool, int, float, str)))
    }


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux: the peak resident set of this process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plot_loss_curve(log_history: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evaluation = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    if train:
        axes.plot(*zip(*train), label="train loss")
    if evaluation:
        axes.plot(*zip(*evaluation), "o", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (answer tokens)")
    axes.set_title(f"{title}: training loss")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _mlflow_step_logger(tracker: Tracker, run_id: str, callback_base: type):
    """A TrainerCallback (built lazily so importing this module does not import transformers) that
    sends every logged training value to MLflow at its step, plus non-padding tokens per second."""

    class StepLogger(callback_base):
        def __init__(self):
            self._last = None  # (time, tokens seen)
            self.tokens_at_start = 0  # restored from the checkpoint on resume

        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            now = time.perf_counter()
            if "loss" in numeric and self._last is not None and now > self._last[0]:
                numeric["tokens_per_second"] = (state.num_input_tokens_seen - self._last[1]) / (now - self._last[0])
            self._last = (now, state.num_input_tokens_seen)
            if numeric:
                tracker.log_metrics(run_id, numeric, step=state.global_step, timestamp_ms=int(time.time() * 1000))

        def on_train_begin(self, args, state, control, **kwargs):
            self.tokens_at_start = state.num_input_tokens_seen
            self._last = (time.perf_counter(), state.num_input_tokens_seen)

    return StepLogger()


def _code_commit() -> str | None:
    """The checkout's commit, "+dirty" when tracked files differ from it; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return f"{commit}+dirty" if git("status", "--porcelain", "--untracked-files=no") else commit
    except (OSError, subprocess.CalledProcessError):
        return None


# Read once, when the code is imported: a commit landing while a long training runs does not change
# the code that runs it, and the manifest names the code that ran.
CODE_COMMIT = _code_commit()
