"""docker-compose.yml stays consistent with `make stack` (``fashionops.stack``): the same services,
environment names, databases, buckets, ports, work pool and server options. Fast, starts nothing
(docker-compose.yml is never run here: no Docker engine)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Names the containers set beyond `.stack/env`'s: Prefect's telemetry off, the mounted catalogue.
EXTRA_CLIENT_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED", "FASHION_DATA"}


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """The stack's settings for this checkout, its state folder in a temporary place (credentials)."""
    from fashionops.config import load_params
    from fashionops.stack.settings import StackSettings

    config = load_params(REPO / "params.yaml").stack
    return StackSettings.from_config(config.model_copy(update={"dir": str(tmp_path_factory.mktemp("stack"))}), REPO)


def service(compose: dict, name: str) -> dict:
    return compose["services"][name]


def command(compose: dict, name: str) -> list[str]:
    cmd = service(compose, name)["command"]
    return cmd if isinstance(cmd, list) else cmd.split()


def after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_same_services_as_the_stack_plus_a_one_shot_init(compose, settings):
    from fashionops.stack.up import services

    assert set(compose["services"]) == {s.name for s in services(settings)} | {"init"}
    assert service(compose, "init")["restart"] == "no"


def test_clients_get_exactly_the_env_names_of_stack_env(compose, settings):
    from fashionops.stack.settings import DVC_REMOTE, ENV_NAMES, REGION

    assert tuple(settings.client_env()) == ENV_NAMES  # what `.stack/env` exports
    for name in ("prefect-worker", "init"):
        env = service(compose, name)["environment"]
        assert set(ENV_NAMES) <= set(env), (name, set(ENV_NAMES) - set(env))
    worker_env = service(compose, "prefect-worker")["environment"]
    assert set(worker_env) - set(ENV_NAMES) <= EXTRA_CLIENT_ENV
    assert worker_env["FASHIONOPS_DVC_REMOTE"] == DVC_REMOTE
    assert worker_env["AWS_DEFAULT_REGION"].endswith(f":-{REGION}}}")
    assert worker_env["AWS_ENDPOINT_URL"] == worker_env["MLFLOW_S3_ENDPOINT_URL"]


def test_same_buckets_and_databases(compose, settings):
    from fashionops.stack.settings import DATABASES, DB_USER

    init_env = service(compose, "init")["environment"]
    assert init_env["STACK_BUCKETS"].split() == [settings.config.mlflow_bucket, settings.config.dvc_bucket]
    assert init_env["STACK_DATABASES"].split() == list(DATABASES)
    assert service(compose, "postgres")["environment"]["POSTGRES_USER"] == DB_USER == init_env["PGUSER"]
    mlflow = command(compose, "mlflow")
    assert after(mlflow, "--artifacts-destination").rstrip("/") == f"s3://{settings.config.mlflow_bucket}"
    assert after(mlflow, "--backend-store-uri").endswith("@postgres:5432/mlflow")


def test_the_mlflow_and_prefect_servers_take_the_stacks_options(compose, settings):
    from fashionops.stack.services import MlflowServer, PrefectServer

    stack_flags = {arg for arg in MlflowServer(settings).command() if arg.startswith("--")}
    assert stack_flags <= set(command(compose, "mlflow")), stack_flags - set(command(compose, "mlflow"))
    stack_db = {k for k, v in PrefectServer(settings).env().items() if v.startswith("postgresql+asyncpg://")}
    compose_db = {k for k, v in service(compose, "prefect-server")["environment"].items() if "postgresql" in str(v)}
    assert stack_db == compose_db and compose_db
    assert all(
        str(v).endswith("@postgres:5432/prefect")
        for k, v in service(compose, "prefect-server")["environment"].items()
        if k in compose_db
    )


def test_ports_are_the_stack_ports_on_127_0_0_1_only(compose, settings):
    cfg = settings.config
    published = {
        "postgres": (cfg.postgres_port, 5432),
        "s3": (cfg.s3_port, 9000),
        "mlflow": (cfg.mlflow_port, 5000),
        "prefect-server": (cfg.prefect_port, 4200),
    }
    for name, (host_port, container_port) in published.items():
        assert f"127.0.0.1:{host_port}:{container_port}" in service(compose, name)["ports"], name
    for name, spec in compose["services"].items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    client_urls = service(compose, "prefect-worker")["environment"]
    assert client_urls["MLFLOW_TRACKING_URI"].endswith(":5000")
    assert re.search(r":4200/api$", client_urls["PREFECT_API_URL"])


def test_the_worker_serves_the_pool_of_prefect_yaml_with_the_stack_remote(compose, settings):
    from fashionops.stack.services import WORKER_NAME
    from fashionops.stack.settings import DVC_REMOTE
    from fashionops.stack.setup import work_pool_name

    script = " ".join(command(compose, "prefect-worker"))
    pool = work_pool_name(REPO)
    assert f"prefect work-pool create {pool} --type process" in script
    assert "prefect --no-prompt deploy --all" in script
    assert f"prefect worker start --pool {pool} --name {WORKER_NAME}" in script
    assert f"dvc remote modify --local {DVC_REMOTE} endpointurl" in script
    # the image's checkout holds the DVC remote the worker points at the container network's S3
    assert f"['remote \"{DVC_REMOTE}\"']" in (REPO / ".dvc" / "config").read_text()


def test_readme_production_section_names_the_env_and_the_commands():
    from fashionops.stack.settings import DVC_REMOTE, ENV_NAMES

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Production\n") :]
    section = section[: section.index("\n## ", 1)]
    assert [name for name in ENV_NAMES if name not in section] == []
    for command in (
        "make stack",
        "source .stack/env",
        "prefect deployment run 'training-pipeline/training-pipeline'",
        f"dvc push -r {DVC_REMOTE}",
        f"dvc pull -r {DVC_REMOTE}",
        "make stack-down",
        "train.strategy=ddp",
        "train.devices=2",
        "docker compose up",
    ):
        assert command in section, command
