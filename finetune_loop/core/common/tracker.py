"""MLflow tracking and model registry, through an explicit client (no global active run), so two
stages in one process never log into each other's runs."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mlflow import MlflowClient
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from finetune_loop.core.common.home import LoopHome

CHALLENGER_ALIAS = "challenger"
CHAMPION_ALIAS = "champion"
PREVIOUS_CHAMPION_ALIAS = "previous-champion"
# MLflow rejects longer param values.
_MAX_PARAM_LENGTH = 6000
_MAX_PARAMS_PER_BATCH = 100
_SYSTEM_METRICS_INTERVAL_S = 2

# The SQLite store logs its schema migrations at INFO on every new process; users don't need them.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str
    source: str


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: Path, experiment_name: str):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                experiment_name, artifact_location=self._local_artifact_location(artifact_root, experiment_name)
            )
        else:
            self.experiment_id = experiment.experiment_id

    @classmethod
    def for_task(cls, home: LoopHome, task_name: str) -> "Tracker":
        """The task's MLflow experiment on the home's tracking server (MLFLOW_TRACKING_URI or the
        embedded SQLite file): the one way every stage, sensor and command reaches the tracker."""
        return cls(home.mlflow_tracking_uri, home.artifacts / "mlflow", task_name)

    def _local_artifact_location(self, artifact_root: Path, experiment_name: str) -> str | None:
        """A tracking server decides where artifacts go (its volume or S3, proxied as
        mlflow-artifacts:/), so a client on another machine never writes a path only it can see. A
        local store gets an explicit directory: its default is ./mlruns relative to whatever
        directory the process happens to run in."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        artifact_root.mkdir(parents=True, exist_ok=True)
        return (artifact_root / experiment_name).resolve().as_uri()

    @contextmanager
    def run(self, run_name: str, tags: dict[str, str] | None = None, continue_run_id: str | None = None) -> Iterator[str]:
        """An MLflow run that ends FINISHED, or FAILED when the block raises. With `continue_run_id`
        the block continues that (unfinished) run instead of creating one: a resumed attempt."""
        if continue_run_id is not None:
            self.client.update_run(continue_run_id, status="RUNNING")
            run_id = continue_run_id
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {}).info.run_id
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def unfinished(self, run_id: str) -> bool:
        """The run exists and never finished: it is RUNNING (its process died) or FAILED."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        return run.info.lifecycle_stage == "active" and run.info.status in ("RUNNING", "FAILED")

    def system_metrics(self, run_id: str, resume: bool = False):
        """MLflow's system metrics monitor (CPU, memory, disk, network; GPU where pynvml finds
        one) sampling into `run_id` until `.finish()`."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        class FlushingSystemMetricsMonitor(SystemMetricsMonitor):
            """MLflow's monitor discards the samples of its last, unfinished interval at shutdown,
            so a run (or a resumed tail of one) shorter than an interval would log no system
            metrics at all; this one publishes them before it stops."""

            def finish(self) -> None:
                if self._process is None:
                    return
                self._shutdown_event.set()
                self._process.join()
                self._process = None
                if any(m.metrics for m in self.monitors):
                    self.publish_metrics(self.aggregate_metrics())
                self.mlflow_logger.flush()

        monitor = FlushingSystemMetricsMonitor(
            run_id, sampling_interval=_SYSTEM_METRICS_INTERVAL_S, resume_logging=resume, tracking_uri=self.tracking_uri
        )
        monitor.start()
        return monitor

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        """Params not yet on the run (a resumed run keeps the ones it logged first), in batches
        within MLflow's limit of 100 per call."""
        existing = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=new[start : start + _MAX_PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0, timestamp_ms: int = 0) -> None:
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_dataset_input(self, run_id: str, path: Path, *, name: str, digest: str, context: str) -> None:
        """Record a JSONL split as a dataset input of the run (MLflow's dataset tracking), named by
        the curated data version so the UI links every run to the exact rows it saw."""
        rows = sum(1 for line in path.open(encoding="utf-8") if line.strip())
        dataset = DatasetEntity(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": path.resolve().as_uri()}),
            profile=json.dumps({"num_rows": rows}),
        )
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])

    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri

    def delete_run_artifacts(self, run_id: str) -> None:
        """Every artifact of the run, from whichever store holds them (local, S3, …); the run's
        params, metrics and tags stay."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(self.artifact_uri(run_id)).delete_artifacts()

    def download_version_file(self, ref: ModelVersionRef, name: str, destination: Path) -> Path:
        """One file of a registered version's bundle (its manifest, say), without the weights."""
        import mlflow.artifacts

        destination.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{ref.source.rstrip('/')}/{name}", tracking_uri=self.tracking_uri, dst_path=str(destination),
        ))

    def register_version(self, model_name: str, run_id: str, artifact_path: str, tags: dict[str, str]) -> ModelVersionRef:
        try:
            self.client.create_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self.artifact_uri(run_id)}/{artifact_path}"
        version = self.client.create_model_version(model_name, source=source, run_id=run_id, tags=tags)
        return ModelVersionRef(model_name, str(version.version), run_id, source)

    def version_by_alias(self, model_name: str, alias: str) -> ModelVersionRef | None:
        try:
            version = self.client.get_model_version_by_alias(model_name, alias)
        except MlflowException:
            return None
        return ModelVersionRef(model_name, str(version.version), version.run_id, version.source)

    def version_ref(self, model_name: str, version: str) -> ModelVersionRef | None:
        """A registered version by number; None when `model_name` has no such version."""
        try:
            found = self.client.get_model_version(model_name, str(version))
        except MlflowException:
            return None
        return ModelVersionRef(model_name, str(found.version), found.run_id, found.source)

    def tag_version(self, model_name: str, version: str, tags: dict[str, object]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model_name, version, key, str(value))

    def describe_version(self, model_name: str, version: str, description: str) -> None:
        self.client.update_model_version(model_name, version, description=description)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, version)

    def delete_alias(self, model_name: str, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(model_name, alias)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    def download_version(self, ref: ModelVersionRef, destination: Path | None = None) -> Path:
        """A registered version's files (the adapter bundle) as a local directory, under
        `destination` when given (else a fresh temporary directory)."""
        import mlflow.artifacts

        if destination is not None:
            destination.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=ref.source, tracking_uri=self.tracking_uri, dst_path=str(destination) if destination else None,
        ))

    def latest_run(self, stage: str):
        """The newest run of this task's experiment with tag `stage` (eval, drift, export …), or None."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.stage = '{stage}'", order_by=["attributes.start_time DESC"], max_results=1
        )
        return runs[0] if runs else None

    def version_tags(self, model_name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(model_name, version).tags)

    def all_version_tags(self, model_name: str) -> dict[str, dict[str, str]]:
        """Every registered version of `model_name` (none registered: empty) with its tags."""
        versions = self.client.search_model_versions(f"name = '{model_name}'")
        return {str(v.version): dict(v.tags) for v in versions}
