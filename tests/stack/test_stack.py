"""The production stack end to end: `fashionops stack up` (PostgreSQL, moto's S3 server, the MLflow
server on PostgreSQL + S3, the Prefect server on PostgreSQL, a process worker, both deployments) in a
temporary folder on free ports, then the `training-pipeline` *deployment* run through the server and
the worker on 300 real images, checked through the servers themselves: the Prefect API and its
database, MLflow's REST API, S3 listings, and a DVC round trip through the `stack` remote."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "pipeline"))
from _workspace import TINY, catalogue_subset, git, make_workspace  # noqa: E402

from fashionops.orchestration.runner import stage_env  # noqa: E402
from fashionops.stack import processes  # noqa: E402
from fashionops.stack.settings import ENV_NAMES, read_env_file  # noqa: E402

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SERVICES = ("postgres", "s3", "mlflow", "prefect-server", "prefect-worker")
MODELS = ("fashion-classifier", "fashion-visual-search")
OUTPUTS = ("data/raw", "data/prepared", "models/classifier", "models/index")
FLOW_TIMEOUT_S = 900
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def fashionops(*args: str, cwd: Path, env: dict[str, str], timeout: float = 900) -> dict:
    """`fashionops ...` as a user runs it; its JSON summary."""
    proc = subprocess.run(
        [sys.executable, "-m", "fashionops.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"fashionops {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout)


def get_json(url: str, data: dict | None = None) -> dict:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else f"(no {path})"


def file_md5s(root: Path) -> dict[str, str]:
    out = {}
    for rel in OUTPUTS:
        base = root / rel
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            out[path.relative_to(root).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared_catalogue):
    """A stack started by `fashionops stack up` in a workspace holding prefect.yaml and flows/
    (so its deployments run there), state in a temporary folder, on free ports; stopped at the end."""
    root = tmp_path_factory.mktemp("stack")
    catalogue = catalogue_subset(shared_catalogue, root / "catalogue")
    ws = make_workspace(root / "ws")
    shutil.copy2(REPO / "prefect.yaml", ws / "prefect.yaml")
    shutil.copytree(REPO / "flows", ws / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "deployments", cwd=ws)
    # PostgreSQL runs as `postgres` when the tests run as root: its folder must be reachable.
    stack_dir = Path(tempfile.mkdtemp(prefix="fashionops-stack-"))
    stack_dir.chmod(0o711)
    ports = dict(zip(("postgres_port", "s3_port", "mlflow_port", "prefect_port"), free_ports(4)))
    sets = [f"--set=stack.dir={stack_dir}", *(f"--set=stack.{k}={v}" for k, v in ports.items())]
    base_env = {k: v for k, v in stage_env().items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    started = time.monotonic()
    try:
        summary = fashionops("stack", "up", *sets, cwd=ws, env=base_env)
        up_s = time.monotonic() - started
        env = read_env_file(stack_dir / "env")
        yield {
            "ws": ws,
            "dir": stack_dir,
            "sets": sets,
            "base_env": base_env,
            "env": env,
            "ports": ports,
            "catalogue": catalogue,
            "up": summary,
            "up_s": up_s,
            "root": root,
        }
    finally:
        subprocess.run(
            [sys.executable, "-m", "fashionops.cli", "stack", "down", *sets],
            cwd=ws,
            env=base_env,
            capture_output=True,
            timeout=300,
        )
        print(f"stack fixture: {time.monotonic() - started:.0f} s in all")
        shutil.rmtree(stack_dir, ignore_errors=True)


def test_up_starts_every_service_and_writes_the_env_file(stack):
    print(f"stack up: {stack['up_s']:.0f} s")
    services = stack["up"]["services"]
    assert list(services) == list(SERVICES)
    assert all(s["state"] == "started" for s in services.values()), services
    env = stack["env"]
    assert tuple(env) == ENV_NAMES
    ports = stack["ports"]
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow_port']}"
    assert env["PREFECT_API_URL"] == f"http://127.0.0.1:{ports['prefect_port']}/api"
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['s3_port']}"
    assert env["FASHIONOPS_DVC_REMOTE"] == "stack"
    assert (stack["dir"] / "env").stat().st_mode & 0o077 == 0  # credentials: owner only
    # the DVC remote: url committed in .dvc/config, the endpoint only in the local config
    ws = stack["ws"]
    assert "s3://fashionops-dvc" in (ws / ".dvc" / "config").read_text()
    assert env["AWS_ENDPOINT_URL"] in (ws / ".dvc" / "config.local").read_text()
    assert env["AWS_ENDPOINT_URL"] not in (ws / ".dvc" / "config").read_text()


def test_up_again_finds_it_running(stack):
    again = fashionops("stack", "up", *stack["sets"], cwd=stack["ws"], env=stack["base_env"])
    assert {s["state"] for s in again["services"].values()} == {"already running"}
    pids = {name: s["pid"] for name, s in stack["up"]["services"].items()}
    assert {name: s["pid"] for name, s in again["services"].items()} == pids
    status = fashionops("stack", "status", *stack["sets"], cwd=stack["ws"], env=stack["base_env"])
    assert {s["state"] for s in status["services"].values()} == {"running"}


def test_training_deployment_runs_through_the_worker(stack):
    env, ws = stack["env"], stack["ws"]
    api, mlflow_url = env["PREFECT_API_URL"], env["MLFLOW_TRACKING_URI"]
    deployment = get_json(f"{api}/deployments/name/training-pipeline/training-pipeline")
    # the deployment runs its flow in the workspace `stack up` ran in (workspace parameter left empty)
    assert json.dumps(deployment["pull_steps"]).count(str(ws)) == 1, deployment["pull_steps"]
    parameters = {"source": str(stack["catalogue"]), "experiment": "stack-e2e", "lock_timeout_s": 60, **TINY}
    started = time.monotonic()
    # the README's command, against the stack's server
    created = subprocess.run(
        [
            str(Path(sys.executable).parent / "prefect"),
            "deployment",
            "run",
            "training-pipeline/training-pipeline",
            "--params",
            json.dumps(parameters),
        ],
        cwd=ws,
        env={**stack["base_env"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout)
    assert run_id, created.stdout
    run = {"id": run_id.group(1)}
    while True:
        run = get_json(f"{api}/flow_runs/{run['id']}")
        state = (run.get("state") or {}).get("type")
        if state in TERMINAL or time.monotonic() - started > FLOW_TIMEOUT_S:
            break
        time.sleep(3)
    print(f"training-pipeline deployment run: {time.monotonic() - started:.0f} s")
    worker_log = stack["dir"] / "logs" / "prefect-worker.log"
    assert state == "COMPLETED", f"flow run {run['id']}: {state} {run['state'].get('message')}\n{tail(worker_log, 80)}"

    # the server's PostgreSQL database holds the completed run
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=stack["ports"]["postgres_port"], user="postgres", dbname="prefect")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT state_type, deployment_id FROM flow_run WHERE id = %s", (run["id"],))
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None and str(row[0]).endswith("COMPLETED") and str(row[1]) == deployment["id"], row

    # MLflow's REST API: the pipeline's run and both models with @champion
    run_file = json.loads((ws / "reports" / "train" / "mlflow_run.json").read_text())
    assert run_file["tracking_uri"] == mlflow_url
    mlflow_run = get_json(f"{mlflow_url}/api/2.0/mlflow/runs/get?run_id={run_file['run_id']}")["run"]
    assert mlflow_run["info"]["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in mlflow_run["data"].get("tags", [])}
    assert tags.get("prefect_flow_run_id") == run["id"], tags
    champions = {}
    for name in MODELS:
        query = urllib.parse.urlencode({"name": name, "alias": "champion"})
        champions[name] = get_json(f"{mlflow_url}/api/2.0/mlflow/registered-models/alias?{query}")["model_version"]
    assert champions["fashion-classifier"]["run_id"] == run_file["run_id"]

    # the models' artifacts are objects in the MLflow bucket, listed through S3
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="fashionops-mlflow")
        for o in page.get("Contents", [])
    ]
    for name, version in champions.items():
        prefix = model_prefix(mlflow_url, version)
        assert f"{prefix}/MLmodel" in keys, (name, prefix, keys[:20])
        assert sum(k.startswith(prefix + "/") for k in keys) >= 3, (name, prefix)
    assert not any((ws / "mlflow").glob("**/MLmodel"))  # nothing went to the embedded store

    # DVC: the flow pushed its outputs to the stack remote ($FASHIONOPS_DVC_REMOTE in the worker's
    # environment); a push by hand finds them there, and a fresh clone pulls the same outputs back
    assert s3.list_objects_v2(Bucket="fashionops-dvc").get("KeyCount", 0) > 0, "the flow pushed nothing"
    dvc_env = {**stack["base_env"], **env}
    push = subprocess.run(
        [sys.executable, "-m", "dvc", "push", "-r", "stack"],
        cwd=ws,
        env=dvc_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert push.returncode == 0, push.stdout + push.stderr
    assert s3.list_objects_v2(Bucket="fashionops-dvc").get("KeyCount", 0) > 0
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "pipeline run", cwd=ws)
    clone = stack["root"] / "clone"
    git("clone", "-q", str(ws), str(clone), cwd=stack["root"])
    assert not (clone / ".dvc" / "config.local").exists()  # endpoint and credentials from the env only
    pull = subprocess.run(
        [sys.executable, "-m", "dvc", "pull", "-r", "stack"],
        cwd=clone,
        env=dvc_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pull.returncode == 0, pull.stdout + pull.stderr
    expected = file_md5s(ws)
    assert all(any(k.startswith(f"{rel}/") for k in expected) for rel in OUTPUTS)
    assert file_md5s(clone) == expected


def model_prefix(mlflow_url: str, version: dict) -> str:
    """The S3 key prefix (in the artifact bucket) of a registered model version's files."""
    location = version.get("storage_location") or ""
    if not location:
        source = version["source"]
        if source.startswith("models:/"):
            model_id = source[len("models:/") :].split("/")[0]
            logged = get_json(f"{mlflow_url}/api/2.0/mlflow/logged-models/{model_id}")
            location = logged["model"]["info"]["artifact_uri"]
        else:
            location = source
    assert location.startswith("mlflow-artifacts:/"), location  # proxied by the server to S3
    return location[len("mlflow-artifacts:/") :].strip("/")


def test_down_stops_exactly_its_processes(stack):
    records = [processes.load_record(stack["dir"] / "pids", name) for name in SERVICES]
    assert all(r is not None and processes.is_alive(r) for r in records)
    # a process that is not the stack's and stays up: the recorded pids only are stopped
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        result = fashionops("stack", "down", *stack["sets"], cwd=stack["ws"], env=stack["base_env"], timeout=300)
        assert result["services"] == {name: "stopped" for name in reversed(SERVICES)}
        assert not any(processes.is_alive(r) for r in records if r is not None)
        assert not any(processes.group_members(r.pid) for r in records if r is not None)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    again = fashionops("stack", "down", *stack["sets"], cwd=stack["ws"], env=stack["base_env"])
    assert set(again["services"].values()) == {"not started"}
    status = fashionops("stack", "status", *stack["sets"], cwd=stack["ws"], env=stack["base_env"])
    assert {s["state"] for s in status["services"].values()} == {"stopped"}
    assert os.path.isdir(stack["dir"] / "postgres" / "data")  # the databases stay for the next `up`
