"""One class per stack service: how to start it, when it is ready, how to stop it.

* :class:`Postgres` - PostgreSQL (``initdb`` once into ``<stack.dir>/postgres/data``, trust auth
  on 127.0.0.1 only, no Unix socket); run as the ``postgres`` account when we are root;
* :class:`ObjectStore` - moto's S3 server; it keeps objects in memory, so its request recording
  (``<stack.dir>/s3/requests.jsonl``) is replayed when it starts again;
* :class:`MlflowServer` - the MLflow tracking server: PostgreSQL backend, S3 artifacts proxied;
* :class:`PrefectServer` - the Prefect API and UI on PostgreSQL;
* :class:`PrefectWorker` - a process worker on the pool of ``prefect.yaml``.

A service's process is started by :func:`fashionops.stack.processes.start`; ``up`` waits for
:meth:`Service.ready` with a timeout.
"""

from __future__ import annotations

import json
import logging
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fashionops.stack.processes import StackError
from fashionops.stack.settings import DB_USER, HOST, StackSettings

log = logging.getLogger(__name__)

WORKER_NAME = "fashionops-stack-worker"
PG_ACCOUNT = "postgres"  # PostgreSQL refuses to run as root; this account runs it then


def venv_script(name: str) -> str:
    """A console script of this interpreter's environment (mlflow, prefect, moto_server)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.is_file() else (shutil.which(name) or name)


def http_status(url: str, data: dict[str, Any] | None = None, timeout_s: float = 3.0) -> int | None:
    """The HTTP status of GET (or POST ``data`` as JSON) ``url``; None when nothing answers."""
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def http_json(url: str, data: dict[str, Any] | None = None, timeout_s: float = 10.0) -> Any:
    """GET (or POST ``data``) ``url`` and decode its JSON answer."""
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


class Service:
    """A stack process: its name, port, command, readiness check and stop signal."""

    name = "service"
    ready_what = "ready"  # "ready" / "accepting connections": the wait's error says it
    stop_signal = signal.SIGTERM
    stop_whole_group = True

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    @property
    def port(self) -> int | None:
        return None

    @property
    def url(self) -> str | None:
        return None

    @property
    def log_file(self) -> Path:
        return self.settings.logs / f"{self.name}.log"

    def prepare(self) -> None:
        """One-time setup before the first start (nothing by default)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return self.settings.process_env()

    def user(self) -> str | None:
        """The account to run as (None: ours)."""
        return None

    def ready(self) -> bool:
        raise NotImplementedError


class Postgres(Service):
    name = "postgres"
    ready_what = "accepting connections"
    stop_signal = signal.SIGINT  # "fast" shutdown: the postmaster stops its backends itself
    stop_whole_group = False

    @property
    def port(self) -> int:
        return self.settings.config.postgres_port

    @property
    def url(self) -> str:
        return self.settings.database_url("postgres")

    @property
    def data_dir(self) -> Path:
        return self.settings.postgres_dir / "data"

    def user(self) -> str | None:
        import os

        return PG_ACCOUNT if os.geteuid() == 0 else None

    def prepare(self) -> None:
        """``initdb`` into ``<stack.dir>/postgres/data`` unless a cluster is there already."""
        if (self.data_dir / "PG_VERSION").is_file():
            return
        account = self.user()
        self.settings.postgres_dir.mkdir(parents=True, exist_ok=True)
        if account is not None:
            entry = pwd.getpwnam(account)
            _check_reachable(self.settings.postgres_dir, account)
            shutil.chown(self.settings.postgres_dir, entry.pw_uid, entry.pw_gid)
        args = [pg_binary("initdb"), "-D", str(self.data_dir), "-U", DB_USER, "--auth=trust", "-E", "UTF8"]
        args += ["--no-instructions"]
        log.info("initdb %s (trust authentication, 127.0.0.1 only)", self.data_dir)
        self.settings.logs.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            proc = subprocess.run(
                args, stdout=out, stderr=subprocess.STDOUT, user=account, group=account, timeout=300, check=False
            )
        if proc.returncode != 0:
            raise StackError(f"postgres: initdb {self.data_dir} failed (exit {proc.returncode}); see {self.log_file}")

    def command(self) -> list[str]:
        return [
            pg_binary("postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            f"port={self.port}",
            "-c",
            "unix_socket_directories=",  # TCP on 127.0.0.1 only
        ]

    def ready(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host=HOST, port=self.port, user=DB_USER, dbname="postgres", connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True


class ObjectStore(Service):
    name = "s3"
    ready_what = "answering S3 requests"
    recorded_bytes = 0  # size of the request recording before this start

    @property
    def port(self) -> int:
        return self.settings.config.s3_port

    @property
    def url(self) -> str:
        return self.settings.s3_url

    def command(self) -> list[str]:
        return [venv_script("moto_server"), "-H", HOST, "-p", str(self.port)]

    def env(self) -> dict[str, str]:
        self.settings.s3_journal.parent.mkdir(parents=True, exist_ok=True)
        return self.settings.process_env(
            {"MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(self.settings.s3_journal)}
        )

    def ready(self) -> bool:
        return http_status(f"{self.url}/moto-api/") == 200

    def prepare(self) -> None:
        """Note how much of the request recording the previous runs left (to replay after start)."""
        journal = self.settings.s3_journal
        self.recorded_bytes = journal.stat().st_size if journal.is_file() else 0

    def replay(self) -> None:
        """Put back the objects of the previous runs: replay moto's request recording."""
        journal = self.settings.s3_journal
        if not self.recorded_bytes:
            return
        log.info("s3: replaying %s (%d bytes of recorded requests)", journal, journal.stat().st_size)
        status = http_status(f"{self.url}/moto-api/recorder/replay-recording", data={}, timeout_s=600)
        if status != 200:
            raise StackError(f"s3: replaying {journal} failed (HTTP {status}); see {self.log_file}")


class MlflowServer(Service):
    name = "mlflow"

    @property
    def port(self) -> int:
        return self.settings.config.mlflow_port

    @property
    def url(self) -> str:
        return self.settings.mlflow_url

    def command(self) -> list[str]:
        return [
            venv_script("mlflow"),
            "server",
            "--backend-store-uri",
            self.settings.database_url("mlflow", driver="postgresql+psycopg2"),  # SQLAlchemy 2.1 defaults to psycopg 3
            "--artifacts-destination",
            f"s3://{self.settings.config.mlflow_bucket}/",
            "--serve-artifacts",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def ready(self) -> bool:
        return http_status(f"{self.url}/health") == 200


class PrefectServer(Service):
    name = "prefect-server"

    @property
    def port(self) -> int:
        return self.settings.config.prefect_port

    @property
    def url(self) -> str:
        return self.settings.prefect_api_url

    def command(self) -> list[str]:
        return [venv_script("prefect"), "server", "start", "--host", HOST, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        database = self.settings.database_url("prefect", driver="postgresql+asyncpg")
        return self.settings.process_env({"PREFECT_API_DATABASE_CONNECTION_URL": database})

    def ready(self) -> bool:
        return http_status(f"{self.url}/health") == 200


class PrefectWorker(Service):
    name = "prefect-worker"
    ready_what = "polling its work pool"

    def __init__(self, settings: StackSettings, pool: str) -> None:
        super().__init__(settings)
        self.pool = pool

    def command(self) -> list[str]:
        return [venv_script("prefect"), "worker", "start", "--pool", self.pool, "--name", WORKER_NAME]

    def ready(self) -> bool:
        """The worker has sent its first heartbeat to the server."""
        try:
            workers = http_json(f"{self.settings.prefect_api_url}/work_pools/{self.pool}/workers/filter", data={})
        except (OSError, ValueError):
            return False
        return any(w.get("name") == WORKER_NAME for w in workers)


def pg_binary(name: str) -> str:
    """A PostgreSQL server program (``initdb``, ``postgres``): on PATH or in Debian's folder."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if candidates:
        return str(candidates[-1])
    raise StackError(f"postgres: {name} not found on PATH or in /usr/lib/postgresql/*/bin (apt-get install postgresql)")


def _check_reachable(folder: Path, account: str) -> None:
    """PostgreSQL runs as ``account``: every folder above its data must let it pass."""
    uid = pwd.getpwnam(account).pw_uid
    for parent in folder.resolve().parents:
        st = parent.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)):
            raise StackError(
                f"postgres runs as {account!r} (not root) and cannot enter {parent} (mode {st.st_mode & 0o777:o}); "
                "set stack.dir to a folder it can reach, or chmod o+x that folder"
            )
