"""The production shape against the real PostgreSQL of this machine: Dagster storage from
dagster.production.yaml (switched in with FINETUNE_LOOP_INSTANCE=production) in a fresh database,
a real `mlflow server` on loopback with a Postgres backend store, the code location as a real gRPC
server, and a real `dagster-daemon` that ticks the schedule and the drift sensor and launches the
runs they request. Skipped, with the reason, where PostgreSQL is unreachable.

Connection: the libpq variables PGHOST (default 127.0.0.1), PGPORT (5432), PGUSER (postgres),
PGPASSWORD (empty). Each test session creates its own two databases and drops them afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from finetune_loop_tests.conftest import write_tiny_task

psycopg2 = pytest.importorskip("psycopg2")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RETRAIN_ASSETS = ["holdout_suite", "regression_suite", "curated_dataset", "lora_adapter", "eval_report", "champion_model", "gguf_export"]
RUN_TIMEOUT_S = 420


def _pg_settings() -> dict[str, str]:
    return {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": os.environ.get("PGPORT", "5432"),
        "user": os.environ.get("PGUSER", "postgres"),
        "password": os.environ.get("PGPASSWORD", ""),
    }


def _connect(dbname: str):
    return psycopg2.connect(dbname=dbname, connect_timeout=5, **_pg_settings())


def _query(dbname: str, sql: str) -> list[tuple]:
    with _connect(dbname) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


@pytest.fixture(scope="module")
def databases():
    """Two fresh databases (Dagster, MLflow) for this test session, dropped at the end."""
    settings = _pg_settings()
    try:
        admin = _connect("postgres")
    except psycopg2.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL unreachable at {settings['host']}:{settings['port']} as {settings['user']} ({str(exc).strip()}); "
            "start it (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) or set PGHOST/PGPORT/PGUSER"
        )
    admin.autocommit = True
    prefix = f"finetune_loop_test_{uuid.uuid4().hex[:8]}"
    names = {"dagster": f"{prefix}_dagster", "mlflow": f"{prefix}_mlflow"}
    with admin.cursor() as cursor:
        for name in names.values():
            cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_url(dbname: str) -> str:
    s = _pg_settings()
    password = f":{s['password']}" if s["password"] else ""
    return f"postgresql+psycopg2://{s['user']}{password}@{s['host']}:{s['port']}/{dbname}"


class Service:
    """A long-running process started by the test, its output in a log file that failures quote."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)

    def tail(self, chars: int = 4000) -> str:
        self.log.flush()
        return f"--- {self.name} log ({self.log_path}) ---\n" + self.log_path.read_text(errors="replace")[-chars:]

    def wait_until(self, ready, what: str, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode} before {what}\n{self.tail()}")
            if ready():
                return
            time.sleep(1)
        raise AssertionError(f"{self.name}: no {what} after {timeout_s:.0f} s\n{self.tail()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _grpc_serving(port: int) -> bool:
    from dagster._grpc.client import DagsterGrpcClient

    try:
        return DagsterGrpcClient(port=port, host="127.0.0.1").health_check_query() == "SERVING"
    except Exception:  # the server is still loading the code location
        return False


def _dagster_cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([str(BIN / "dagster"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"dagster {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def _wait_for_run(instance: dg.DagsterInstance, services: list[Service], filters: dg.RunsFilter, timeout_s: float = RUN_TIMEOUT_S) -> dg.DagsterRun:
    """The latest run matching `filters`, once it has finished; its failure or a timeout quotes the logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = instance.get_runs(filters=filters, limit=1)
        if runs and runs[0].is_finished:
            run = runs[0]
            if run.status != dg.DagsterRunStatus.SUCCESS:
                errors = [e.message for e in instance.all_logs(run.run_id) if e.level >= 40]
                raise AssertionError(f"run {run.run_id} ended {run.status}: {errors[-3:]}\n" + "\n".join(s.tail() for s in services))
            return run
        time.sleep(2)
    raise AssertionError(f"no finished run matching {filters} after {timeout_s:.0f} s\n" + "\n".join(s.tail() for s in services))


@pytest.fixture(scope="module")
def production(tmp_path_factory, tiny_base_model, databases):
    root = tmp_path_factory.mktemp("production")
    home = root / "home"
    task = write_tiny_task(root / "task", tiny_base_model)
    settings = _pg_settings()
    mlflow_port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "FINETUNE_LOOP_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "FINETUNE_LOOP_TASK": str(task),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "DAGSTER_POSTGRES_HOST": settings["host"],
        "DAGSTER_POSTGRES_PORT": settings["port"],
        "DAGSTER_POSTGRES_USER": settings["user"],
        "DAGSTER_POSTGRES_PASSWORD": settings["password"],
        "DAGSTER_POSTGRES_DB": databases["dagster"],
        "FINETUNE_LOOP_CODE_HOST": "127.0.0.1",
        "FINETUNE_LOOP_CODE_PORT": str(grpc_port),
    }
    # The switch a user flips: the Makefile copies dagster.production.yaml into DAGSTER_HOME.
    subprocess.run(["make", "-s", "instance-config"], cwd=REPO, env={**env, "FINETUNE_LOOP_INSTANCE": "production"}, check=True)
    logs = root / "logs"
    logs.mkdir()
    artifacts = root / "mlflow-artifacts"
    services = [
        Service("mlflow", [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
            "--backend-store-uri", _pg_url(databases["mlflow"]), "--serve-artifacts", "--artifacts-destination", str(artifacts),
        ], env, logs),
        Service("code_location", [
            str(BIN / "dagster"), "api", "grpc", "--module-name", "finetune_loop.definitions", "--host", "127.0.0.1", "--port", str(grpc_port),
        ], env, logs),
    ]
    try:
        services[0].wait_until(lambda: _http_ok(f"http://127.0.0.1:{mlflow_port}/health"), "health endpoint")
        services[1].wait_until(lambda: _grpc_serving(grpc_port), "gRPC health check")
        workspace = ["-w", str(REPO / "workspace.production.yaml")]
        _dagster_cli(["schedule", "start", "six_week_retrain_schedule", *workspace], env)
        _dagster_cli(["sensor", "start", "drift_retrain_sensor", *workspace], env)
        with pytest.MonkeyPatch.context() as patch:
            for key in ("DAGSTER_HOME", "DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_PORT", "DAGSTER_POSTGRES_USER", "DAGSTER_POSTGRES_PASSWORD", "DAGSTER_POSTGRES_DB"):
                patch.setenv(key, env[key])
            with dg.DagsterInstance.get() as instance:
                _backdate_schedule(instance, days=8)
                services.append(Service("daemon", [str(BIN / "dagster-daemon"), "run", *workspace], env, logs))
                cadence_run = _wait_for_run(instance, services, dg.RunsFilter(tags={"finetune_loop/trigger": "cadence"}))
                _dagster_cli(["job", "launch", "--job", "monitor_job", "--location", "finetune_loop", *workspace], env)
                monitor_run = _wait_for_run(instance, services, dg.RunsFilter(job_name="monitor_job"))
                drift_run = _wait_for_run(instance, services, dg.RunsFilter(tags={"finetune_loop/trigger": "drift"}))
                yield {
                    "instance": instance, "databases": databases, "cadence_run": cadence_run, "monitor_run": monitor_run,
                    "drift_run": drift_run, "mlflow_uri": env["MLFLOW_TRACKING_URI"], "artifacts": artifacts,
                }
    finally:
        for service in reversed(services):
            service.stop()


def _backdate_schedule(instance: dg.DagsterInstance, days: int) -> None:
    """Start the schedule `days` ago, so the daemon owes it the weekly tick that fell in between
    (it catches up the latest missed tick) instead of waiting for next Monday 03:00."""
    from dagster._core.scheduler.instigation import (
        InstigatorType,
        ScheduleInstigatorData,
    )

    (state,) = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE) if s.name == "six_week_retrain_schedule"]
    started = (datetime.now(timezone.utc) - timedelta(days=days)).timestamp()
    instance.update_instigator_state(state.with_data(ScheduleInstigatorData(state.instigator_data.cron_schedule, start_timestamp=started)))


def test_dagster_storage_is_the_fresh_postgres_database(production):
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    instance = production["instance"]
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    runs = instance.get_runs()
    assert {run.job_name for run in runs} == {"retrain_job", "monitor_job"}
    # The rows are in this session's database, not in a SQLite file under DAGSTER_HOME.
    (count,) = _query(production["databases"]["dagster"], "SELECT count(*) FROM runs")[0]
    assert count == len(runs) >= 3
    assert not list((Path(os.environ.get("DAGSTER_HOME", "/nonexistent")) / "history").glob("*.db"))


def test_the_whole_graph_materialized_on_postgres(production):
    instance = production["instance"]
    cadence_run, monitor_run = production["cadence_run"], production["monitor_run"]
    for key in RETRAIN_ASSETS:
        record = instance.fetch_materializations(dg.AssetKey(key), limit=1, ascending=True).records
        assert record and record[0].run_id == cadence_run.run_id, f"{key} was not materialized by the scheduled run"
    drift = instance.get_latest_materialization_event(dg.AssetKey("drift_report"))
    assert drift.run_id == monitor_run.run_id
    assert drift.asset_materialization.metadata["drift_detected"].value is True
    gate = dg.AssetCheckKey(dg.AssetKey("eval_report"), "release_gate")
    assert all(r.evaluation.passed for r in instance.event_log_storage.get_asset_check_execution_history(gate, limit=5))


def test_schedule_and_sensor_ticked_by_the_daemon_launched_runs_that_completed(production):
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    instance = production["instance"]
    cadence_run, drift_run, monitor_run = production["cadence_run"], production["drift_run"], production["monitor_run"]
    assert cadence_run.tags["finetune_loop/evidence"] == "no champion yet"
    assert cadence_run.tags["dagster/schedule_name"] == "six_week_retrain_schedule"
    # The drift sensor's run names the drifting report it answers.
    assert drift_run.tags["dagster/sensor_name"] == "drift_retrain_sensor"
    assert drift_run.tags["dagster/run_key"] == f"drift-{monitor_run.run_id}"
    assert drift_run.job_name == cadence_run.job_name == "retrain_job"
    for name, kind, run in (("six_week_retrain_schedule", InstigatorType.SCHEDULE, cadence_run), ("drift_retrain_sensor", InstigatorType.SENSOR, drift_run)):
        (state,) = [s for s in instance.all_instigator_state(instigator_type=kind) if s.name == name]
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        launching = [t for t in ticks if t.status == TickStatus.SUCCESS]
        assert [t.run_ids for t in launching] == [[run.run_id]], f"{name}: {[(t.status, t.run_ids) for t in ticks]}"


def test_mlflow_server_on_postgres_tracked_training_eval_and_promotion(production):
    instance = production["instance"]
    client = MlflowClient(production["mlflow_uri"], registry_uri=production["mlflow_uri"])
    adapter = instance.get_latest_materialization_event(dg.AssetKey("lora_adapter")).asset_materialization.metadata
    train_run = client.get_run(adapter["mlflow_run_id"].value)
    assert train_run.info.status == "FINISHED"
    # Artifacts went through the server into its artifact store, not into a client-side path.
    assert train_run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = list(production["artifacts"].rglob("adapter_model.safetensors"))
    assert len(stored) == 2, stored  # one adapter per training run (scheduled, then drift-triggered)
    evaluation = instance.get_latest_materialization_event(dg.AssetKey("eval_report")).asset_materialization.metadata
    assert client.get_run(evaluation["mlflow_run_id"].value).data.metrics["candidate_accuracy"] == pytest.approx(evaluation["candidate_accuracy"].value)
    # Two gated trainings: the drift-triggered retrain is champion, the scheduled one kept for rollback.
    assert client.get_model_version_by_alias("tiny_triage-adapter", "champion").version == "2"
    assert client.get_model_version_by_alias("tiny_triage-adapter", "previous-champion").version == "1"
    # ... and the registry lives in the Postgres backend store.
    aliases = dict(_query(production["databases"]["mlflow"], "SELECT alias, version FROM registered_model_aliases"))
    assert aliases["champion"] == 2 and aliases["previous-champion"] == 1
    (finished,) = _query(production["databases"]["mlflow"], "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0]
    assert finished >= 7  # per training run: train, eval, export; plus the drift report


def test_docker_image_instance_config_launches_runs_in_the_cuda_image_with_a_gpu(tmp_path, databases, monkeypatch):
    """The images' dagster.yaml (deploy/Dockerfile: production settings, then the Docker run
    launcher) loads on Postgres; docker-py accepts the GPU request it hands to each run container."""
    import docker
    from dagster_docker import DockerRunLauncher

    (tmp_path / "dagster.yaml").write_text(
        (REPO / "dagster.production.yaml").read_text() + (REPO / "deploy" / "dagster.docker-run-launcher.yaml").read_text()
    )
    settings = _pg_settings()
    for key, value in {"HOST": settings["host"], "PORT": settings["port"], "USER": settings["user"], "PASSWORD": settings["password"], "DB": databases["dagster"]}.items():
        monkeypatch.setenv(f"DAGSTER_POSTGRES_{key}", value)
    monkeypatch.setenv("FINETUNE_LOOP_RUN_IMAGE", "finetune-loop:cuda")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, DockerRunLauncher)
        assert launcher.image == "finetune-loop:cuda"
        kwargs = launcher.container_kwargs
        # The restart policy: the Docker launcher reports dead run workers, and crashed runs are retried.
        assert instance.run_monitoring_enabled and launcher.supports_check_run_worker_health
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
    host_config = docker.types.HostConfig(version="1.44", device_requests=kwargs["device_requests"], shm_size=kwargs["shm_size"], binds=kwargs["volumes"])
    assert host_config["DeviceRequests"] == [{"Driver": "nvidia", "Count": 1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]


def test_production_instance_queues_one_retrain_per_task_and_one_training_step_per_gpu(tmp_path, databases, monkeypatch):
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.production.yaml").read_text())
    settings = _pg_settings()
    for key, value in {"HOST": settings["host"], "PORT": settings["port"], "USER": settings["user"], "PASSWORD": settings["password"], "DB": databases["dagster"]}.items():
        monkeypatch.setenv(f"DAGSTER_POSTGRES_{key}", value)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 1
    assert {"key": "finetune_loop/retrain_of", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in concurrency.run_queue_config.tag_concurrency_limits
