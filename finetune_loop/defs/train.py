"""Group `train`: the base model as an observed source (its data version is the weights' hash) and the
`lora_adapter` trained on the curated set. Core: `finetune_loop.core.train`."""


import dagster as dg

from finetune_loop.core.common.row_store import RowStore
from finetune_loop.core.common.tracker import CHAMPION_ALIAS
from finetune_loop.core.data.curation import CuratedDataset
from finetune_loop.core.data.recent import (
    FEEDBACK_SEEN_TAG,
    FEEDBACK_UNTIL_TAG,
    RecentSuite,
)
from finetune_loop.core.data.suites import FrozenSuite
from finetune_loop.core.ship.registry import trained_labels_tag
from finetune_loop.core.train import trainer
from finetune_loop.defs.common import mlflow_link, run_tags
from finetune_loop.defs.metadata import LoraAdapterMetadata
from finetune_loop.defs.resources import LoopResource

GROUP = "train"
# What a GPU worker needs: dagster-k8s gives the step's pod one GPU; the `gpu` concurrency pool
# (dagster.yaml: one per GPU) keeps a second training step, of any task, from sharing it.
TRAINING_OP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}},
    },
}
TRAINING_POOL = "gpu"
# A killed or crashed training step is retried; each retry resumes from the last checkpoint of the
# same data version and task spec, so a retry costs at most checkpoint_every_steps steps.
TRAINING_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


@dg.observable_source_asset(description="The task's base model (task YAML `base_model`); its data version is the hash of its weights file(s).")
def base_model(loop: LoopResource) -> dg.ObserveResult:
    base = loop.base_model()
    return dg.ObserveResult(
        data_version=dg.DataVersion(base.source_sha256[:16]),
        metadata={"base_model": base.name, "sha256": base.source_sha256, "directory": dg.MetadataValue.path(str(base.directory))},
    )


@dg.asset(
    deps=[base_model],
    description="LoRA/QLoRA adapter trained with TRL SFTTrainer (resumable from checkpoints), logged to MLflow and registered with alias `challenger`.",
    tags={"finetune_loop/stage": "train"},
    op_tags=TRAINING_OP_TAGS,
    pool=TRAINING_POOL,
    retry_policy=TRAINING_RETRY_POLICY,
)
def lora_adapter(
    context: dg.AssetExecutionContext, loop: LoopResource, curated_dataset: CuratedDataset, holdout_suite: FrozenSuite,
    recent_suite: RecentSuite,
) -> dg.Output[trainer.TrainedAdapter]:
    spec = loop.spec()
    tracker = loop.tracker()
    base = loop.base_model()
    out_dir = loop.task_dir("adapters") / context.run.run_id
    # training.init: champion continues from the serving adapter; without a champion there is
    # nothing to continue from, and the first model starts from the base (said in the log).
    champion = tracker.version_by_alias(spec.registered_model_name, CHAMPION_ALIAS) if spec.training.init == "champion" else None
    if spec.training.init == "champion" and champion is None:
        context.log.info("training.init is 'champion' but there is no champion yet: this adapter starts from the base")
    init_dir = tracker.download_version(champion, out_dir / "init") if champion else None
    if init_dir is not None and loop.champion_base(init_dir) is not None:
        # LoRA matrices belong to the weights they were trained against: a new base starts afresh.
        context.log.info(f"training.init is 'champion', but champion v{champion.version} was trained on another base: this adapter starts from {spec.base_model}")
        champion, init_dir = None, None
    try:
        adapter = trainer.train_adapter(
            spec, base, curated_dataset, holdout_suite, out_dir, tracker, RowStore.for_home(loop.loop_home()),
            run_tags(context), checkpoints_root=loop.task_dir("checkpoints"),
            init_adapter=champion, init_adapter_dir=init_dir,
        )
    except trainer.TrainingConfigError as exc:
        # A retry cannot fix the task file; only crashes and kills are worth retrying.
        raise dg.Failure(str(exc), allow_retries=False) from exc
    labels_tag = trained_labels_tag(spec.labels)
    if not labels_tag:
        context.log.warning("the task's labels are too long for a registry tag: labels_admitted cannot tell which labels this version knows")
    # How far this version's training feedback reaches: a later recent suite starts after it, so
    # this version is never judged on a request it trained on.
    feedback_tags = {} if recent_suite.trained_until is None else {
        FEEDBACK_UNTIL_TAG: recent_suite.trained_until.isoformat(), FEEDBACK_SEEN_TAG: recent_suite.window_end.isoformat(),
    }
    tracker.tag_version(adapter.model_version.name, adapter.model_version.version, {**labels_tag, **feedback_tags})
    metadata = LoraAdapterMetadata.from_sources(
        adapter,
        mlflow_run=mlflow_link(tracker, adapter.mlflow_run_id),
        model_name=adapter.model_version.name,
        model_version=adapter.model_version.version,
        data_version=curated_dataset.data_version,
        base_model_sha256=base.source_sha256,
        loss_curve=adapter.loss_curve_path,
        adapter_path=adapter.directory,
    )
    return dg.Output(adapter, metadata=metadata.to_dagster())


# This stage's assets: `definitions.py` puts them in group GROUP (per task on the platform).
ASSETS = [base_model, lora_adapter]
