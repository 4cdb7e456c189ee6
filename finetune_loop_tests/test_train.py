"""Training on a tiny random llama: config validation before any work, what two steps change, the
shared-prefix loss, and a real training subprocess killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.row_store import RowStore
from finetune_loop.core.common.spec import TaskSpecError, load_task_spec
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.data import curation, readers, suites, validation
from finetune_loop.core.train import base_model, trainer
from finetune_loop_tests.conftest import write_tiny_task


def _task(tmp_path: Path, base: Path, **training) -> Path:
    path = write_tiny_task(tmp_path / "task", base)
    raw = yaml.safe_load(path.read_text())
    raw["training"].update(training)
    path.write_text(yaml.safe_dump(raw))
    return path


def _curated(spec, home: LoopHome) -> tuple[curation.CuratedDataset, suites.FrozenSuite]:
    suites_dir = home.task_dir(spec.name, "suites")
    holdout = suites.freeze_suite(spec, "holdout", suites_dir)
    regression = suites.freeze_suite(spec, "regression", suites_dir, exclude=[holdout])
    dataset = curation.curate_dataset(spec, [holdout, regression], home.task_dir(spec.name, "datasets"))
    return dataset, holdout


def _tracker(home: LoopHome, spec) -> Tracker:
    return Tracker.for_task(home, spec.name)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"lora_r": 0}, "training.lora_r must be positive, got 0"),
        ({"batch_size": 0}, "training.batch_size must be positive, got 0"),
        ({"checkpoint_every_steps": 0}, "training.checkpoint_every_steps must be positive"),
        ({"target_modules": []}, "training.target_modules must be 'all-linear' or a non-empty list"),
    ],
)
def test_out_of_range_training_settings_fail_on_load(tmp_path, tiny_base_model, training, message):
    with pytest.raises(TaskSpecError) as error:
        load_task_spec(_task(tmp_path, tiny_base_model, **training))
    assert message in str(error.value) and "task.yaml" in str(error.value)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"target_modules": ["q_proj", "qkv_proj"]}, "training.target_modules ['qkv_proj'] not found in base model"),
        ({"target_modules": "model\\.layers\\.\\d+\\.attn\\.c_attn"}, "matches no linear layer"),
        ({"qlora": True}, "training.qlora is true but this machine has no CUDA device"),
        ({"shared_prefix": True, "gradient_checkpointing": True}, "cannot both be true"),
    ],
)
def test_bad_training_config_fails_before_any_work(tmp_path, tiny_base_model, training, message):
    spec = load_task_spec(_task(tmp_path, tiny_base_model, **training))
    home = LoopHome(tmp_path / "home")
    dataset, holdout = _curated(spec, home)
    tracker = _tracker(home, spec)
    base = base_model.prepare_base_model(str(tiny_base_model), home.artifacts / "base_models")
    with pytest.raises(trainer.TrainingConfigError) as error:
        trainer.train_adapter(spec, base, dataset, holdout, tmp_path / "out", tracker, RowStore.for_home(home), cuda_available=False)
    assert message in str(error.value) and "task.yaml" in str(error.value)
    # Before any work: no MLflow run, no checkpoint directory, no adapter.
    assert tracker.client.search_runs([tracker.experiment_id]) == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "checkpoints").exists()


def test_qlora_without_cuda_falls_back_only_when_the_task_allows_it(tmp_path, tiny_base_model):
    spec = load_task_spec(_task(tmp_path, tiny_base_model, qlora=True, qlora_cpu_fallback=True))
    plan = trainer.plan_training(spec, tiny_base_model, cuda_available=False)
    assert (plan.qlora, plan.device, plan.precision) == (False, "cpu", "fp32")
    assert "qlora_cpu_fallback" in plan.note


def test_two_steps_change_lora_weights_and_leave_every_base_weight_untouched(tmp_path, tiny_base_model):
    spec = load_task_spec(_task(tmp_path, tiny_base_model, learning_rate=0.01, checkpoint_every_steps=1000))
    rows, _ = validation.read_labeled_examples(spec)
    sft_trainer = trainer.build_trainer(spec, tiny_base_model, rows[:16], [], tmp_path / "checkpoints")
    sft_trainer.args.max_steps = 2
    sft_trainer.args.warmup_steps = 0  # a warm-up would make step 1's learning rate zero
    before = {name: p.detach().clone() for name, p in sft_trainer.model.named_parameters()}
    sft_trainer.train()
    assert sft_trainer.state.global_step == 2
    lora_names = [n for n, p in sft_trainer.model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n for n in lora_names)
    after = dict(sft_trainer.model.named_parameters())
    # lora_B starts at zero and moves first; lora_A moves once lora_B is non-zero (second step).
    for name in lora_names:
        assert not torch.equal(before[name], after[name].detach()), f"{name} did not change"
    frozen = [n for n in before if n not in lora_names]
    assert len(frozen) >= 10
    for name in frozen:
        assert torch.equal(before[name], after[name].detach()), f"base weight {name} changed"


def test_shared_prefix_loss_and_gradients_equal_the_plain_batch(tmp_path, tiny_base_model):
    spec = load_task_spec(_task(tmp_path, tiny_base_model, lora_dropout=0.0, shared_prefix=True, learning_rate=0.05))
    rows, _ = validation.read_labeled_examples(spec)
    sft_trainer = trainer.build_trainer(spec, tiny_base_model, rows[:12], [], tmp_path / "checkpoints")
    assert type(sft_trainer).__name__ == "SharedPrefixSFTTrainer"
    # The instruction is most of each prompt: that is what gets computed once.
    assert sft_trainer.prefix_length >= 10
    sft_trainer.args.max_steps = 1
    sft_trainer.train()  # LoRA B non-zero, so the comparison covers a trained adapter, not the identity
    batch = next(iter(sft_trainer.get_train_dataloader()))
    model = sft_trainer.model
    model.eval()  # no dropout: both paths see the same function

    def loss_and_grads(shared: bool):
        model.zero_grad()
        if shared:
            loss = sft_trainer.compute_loss(model, dict(batch))
        else:
            loss = super(type(sft_trainer), sft_trainer).compute_loss(model, dict(batch))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain_grads = loss_and_grads(shared=False)
    shared_loss, shared_grads = loss_and_grads(shared=True)
    assert shared_loss == pytest.approx(plain_loss.item(), rel=1e-4)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-3, atol=1e-6, msg=f"gradient of {name} differs")


_CHILD = """
import sys
from finetune_loop_tests.test_train import run_training
run_training(sys.argv[1], sys.argv[2])
"""


def run_training(task_path: str, home_dir: str) -> trainer.TrainedAdapter:
    """One `lora_adapter` materialization's worth of work, callable in a subprocess."""
    spec = load_task_spec(task_path)
    home = LoopHome(Path(home_dir))
    dataset, holdout = _curated(spec, home)
    base = base_model.prepare_base_model(spec.base_model, home.artifacts / "base_models")
    out_dir = home.task_dir(spec.name, "adapters") / f"attempt-{os.getpid()}"
    return trainer.train_adapter(
        spec, base, dataset, holdout, out_dir, _tracker(home, spec), RowStore.for_home(home), {"dagster_run_id": f"pid-{os.getpid()}"},
        checkpoints_root=home.task_dir(spec.name, "checkpoints"),
    )


def test_training_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path, tiny_base_model):
    # About fifty short steps, a checkpoint every 4: the kill lands well before the end.
    task = _task(tmp_path, tiny_base_model, epochs=6, batch_size=4, checkpoint_every_steps=4)
    spec = load_task_spec(task)
    home = LoopHome(tmp_path / "home")
    checkpoints = home.artifacts / "checkpoints" / spec.name
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(task), str(home.root)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while trainer.last_complete_checkpoint(next(checkpoints.glob("*"), checkpoints / "none")) is None:
            assert child.poll() is None, f"training exited before its first checkpoint: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    (key_dir,) = list(checkpoints.iterdir())
    killed_at = int(trainer.last_complete_checkpoint(key_dir).name.split("-")[1])
    dead_run_id = json.loads((key_dir / "mlflow_run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(home.mlflow_tracking_uri, registry_uri=home.mlflow_tracking_uri)
    assert client.get_run(dead_run_id).info.status == "RUNNING"  # nobody closed it: the process died

    adapter = run_training(str(task), str(home.root))

    train_rows = len(readers.read_examples(_curated(spec, home)[0].train_path))
    expected_steps = -(-train_rows // 4) * 6
    assert adapter.resumed_from_step == killed_at and 0 < killed_at < expected_steps
    assert adapter.steps == expected_steps
    # The same MLflow run, continued and finished; one run in the experiment, not two.
    assert adapter.mlflow_run_id == dead_run_id
    run = client.get_run(dead_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["finetune_loop/resumed_from_step"] == str(killed_at)
    assert len(client.search_runs([run.info.experiment_id])) == 1
    logged_steps = {m.step for m in client.get_metric_history(dead_run_id, "loss")}
    assert logged_steps == set(range(1, expected_steps + 1))
    assert not key_dir.exists()  # finished: checkpoints removed

    # Fully tracked: hyperparameters, determinism, throughput, memory, system metrics, the curve.
    params = run.data.params
    for name in ("training.lora_r", "training.seed", "trainer.optim", "trainer.max_grad_norm", "plan.device", "seed",
                 "deterministic_algorithms", "base_model_sha256", "data_version", "task_spec_sha256"):
        assert name in params, name
    metrics = run.data.metrics
    for name in ("grad_norm", "learning_rate", "tokens_per_second", "train_tokens_per_second", "peak_memory_mb"):
        assert metrics[name] > 0, name
    assert any(name.startswith("system/cpu_utilization") for name in metrics)
    assert [a.path for a in client.list_artifacts(dead_run_id, "plots")] == ["plots/loss_curve.png"]
    assert adapter.loss_curve_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The registered version points at a bundle that carries the rebuild manifest.
    version = client.get_model_version(adapter.model_version.name, adapter.model_version.version)
    assert version.tags["dagster_run_id"] == f"pid-{os.getpid()}"
    manifest_path = client.download_artifacts(dead_run_id, "adapter/rebuild_manifest.json", str(tmp_path / "download"))
    manifest = json.loads(Path(manifest_path).read_text())
    assert manifest["resumed_from_step"] == killed_at and manifest["steps"] == expected_steps
    assert manifest["data_version"] == params["data_version"] and manifest["seed"] == spec.training.seed
    assert {"id", "source"} <= set(manifest["training_rows"][0])


def test_training_asset_carries_what_a_gpu_worker_and_a_retry_need():
    from finetune_loop.definitions import defs

    op = defs.resolve_assets_def("lora_adapter").op
    k8s = json.loads(op.tags["dagster-k8s/config"])
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert op.pool == "gpu"
    assert op.retry_policy is not None and op.retry_policy.max_retries >= 1


def test_training_steps_queue_on_the_gpu_pool_and_each_task_retrains_one_run_at_a_time(tmp_path):
    """As Dagster reads the embedded instance file: pool `gpu` (lora_adapter's) admits one step at a
    time, and the run queue one retrain per task (tag finetune_loop/retrain_of, set on every request);
    the production file's settings are read the same way on Postgres in test_production.py."""
    import dagster as dg

    (tmp_path / "dagster.yaml").write_text((Path(__file__).resolve().parents[1] / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 1
    assert {"key": "finetune_loop/retrain_of", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in concurrency.run_queue_config.tag_concurrency_limits


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("qlora", [False, True], ids=["lora-bf16", "qlora-nf4"])
def test_gpu_training_uses_bf16_and_qlora_loads_the_base_in_4bit(tmp_path, tiny_base_model, qlora):
    spec = load_task_spec(_task(tmp_path, tiny_base_model, qlora=qlora, learning_rate=0.01))
    plan = trainer.plan_training(spec, tiny_base_model)
    assert plan.device == "cuda" and plan.qlora == qlora
    assert plan.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    rows, _ = validation.read_labeled_examples(spec)
    sft_trainer = trainer.build_trainer(spec, tiny_base_model, rows[:16], [], tmp_path / "checkpoints", plan=plan)
    if qlora:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in sft_trainer.model.modules())
    sft_trainer.args.max_steps = 2
    sft_trainer.train()
    assert sft_trainer.state.global_step == 2 and sft_trainer.state.log_history[0]["loss"] > 0
