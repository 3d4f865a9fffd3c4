"""What the stack's services need once they run: the databases, the buckets, the DVC remote
``stack``, the Prefect work pool and every deployment of prefect.yaml. Each step is idempotent."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from fashionops.stack.processes import StackError
from fashionops.stack.services import venv_script
from fashionops.stack.settings import DATABASES, DB_USER, DVC_REMOTE, HOST, REGION, StackSettings

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 600


def create_databases(settings: StackSettings) -> list[str]:
    """Create the ``mlflow`` and ``prefect`` databases when missing; returns those created."""
    import psycopg2

    created = []
    conn = psycopg2.connect(host=HOST, port=settings.config.postgres_port, user=DB_USER, dbname="postgres")
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
    finally:
        conn.close()
    if created:
        log.info("postgres: created databases %s", ", ".join(created))
    return created


def s3_client(settings: StackSettings) -> Any:
    """A boto3 S3 client of the stack's object store."""
    import boto3

    key_id, secret = settings.credentials()
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_url,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name=REGION,
    )


def create_buckets(settings: StackSettings) -> list[str]:
    """Create the MLflow artifact bucket and the DVC bucket when missing; returns those created."""
    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    created = []
    for bucket in (settings.config.mlflow_bucket, settings.config.dvc_bucket):
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
            created.append(bucket)
    if created:
        log.info("s3: created buckets %s", ", ".join(created))
    return created


def configure_dvc_remote(settings: StackSettings) -> str | None:
    """The DVC remote ``stack`` on ``s3://<stack.dvc_bucket>`` in the repository's config (committed),
    its endpoint in ``.dvc/config.local`` (not committed); credentials come from the environment.
    Returns the remote's url, None when the root is not a DVC repository."""
    if not (settings.root / ".dvc").is_dir():
        log.warning("%s is not a DVC repository: no DVC remote %r configured", settings.root, DVC_REMOTE)
        return None
    url = f"s3://{settings.config.dvc_bucket}"
    remotes = _dvc(settings, "remote", "list").split()
    if DVC_REMOTE not in remotes:
        _dvc(settings, "remote", "add", DVC_REMOTE, url)
        log.info("DVC remote %r added: %s (.dvc/config)", DVC_REMOTE, url)
    elif remotes[remotes.index(DVC_REMOTE) + 1] != url:
        _dvc(settings, "remote", "modify", "--local", DVC_REMOTE, "url", url)
    _dvc(settings, "remote", "modify", "--local", DVC_REMOTE, "endpointurl", settings.s3_url)
    return url


def work_pool_name(root: Path) -> str:
    """The work pool of ``prefect.yaml``'s deployments (they all use one)."""
    path = root / "prefect.yaml"
    if not path.is_file():
        raise StackError(f"{path} not found: run `fashionops stack up` from the repository root")
    pools = {
        ((d.get("work_pool") or {}).get("name") or "")
        for d in (yaml.safe_load(path.read_text()) or {}).get("deployments") or []
    }
    pools.discard("")
    if len(pools) != 1:
        raise StackError(f"{path}: expected one work_pool name over the deployments, found {sorted(pools) or 'none'}")
    return pools.pop()


def apply_deployments(
    settings: StackSettings, pool: str, refresh_cron: str | None, drift_cron: str | None = None
) -> None:
    """The process work pool, then ``prefect deploy --all`` from the repository root (each
    deployment runs its flows in this checkout), and the index-refresh (``index.refresh_cron``)
    and drift-report (``monitor.cron``) schedules when set."""
    _prefect(settings, "work-pool", "create", pool, "--type", "process", "--overwrite")
    _prefect(settings, "--no-prompt", "deploy", "--all")
    if refresh_cron:
        _prefect(settings, "--no-prompt", "deploy", "--name", "index-refresh", "--cron", refresh_cron)
    if drift_cron:
        _prefect(settings, "--no-prompt", "deploy", "--name", "drift-report", "--cron", drift_cron)
    log.info("prefect: work pool %s and the deployments of %s applied", pool, settings.root / "prefect.yaml")


def _prefect(settings: StackSettings, *args: str) -> str:
    return _run(settings, "prefect", [venv_script("prefect"), *args])


def _dvc(settings: StackSettings, *args: str) -> str:
    return _run(settings, "dvc", [sys.executable, "-m", "dvc", *args])


def _run(settings: StackSettings, what: str, args: list[str]) -> str:
    """Run a setup command in the repository root with the stack's environment; its output is
    appended to ``<stack.dir>/logs/setup.log``; a failure names the command and that log."""
    log_file = settings.logs / "setup.log"
    proc = subprocess.run(
        args,
        cwd=settings.root,
        env=settings.process_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    with open(log_file, "a") as out:
        out.write(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise StackError(f"{what}: `{' '.join(args[1:])}` failed: {last}; see {log_file}")
    return proc.stdout
