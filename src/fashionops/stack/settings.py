"""Where a stack lives and how to reach it: its folders, URLs, credentials and environment.

Everything is derived from the ``stack`` section and the repository root the stack serves
(``fashionops stack up`` runs there); the S3 credentials are generated once and kept in
``<stack.dir>/credentials.json`` (mode 0600), since moto accepts any pair but every S3 client must
sign with one.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path

from fashionops.config import StackConfig

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # the stack never listens anywhere else
REGION = "us-east-1"
DVC_REMOTE = "stack"  # the DVC remote on the dvc bucket (`dvc push -r stack`)
DB_USER = "postgres"
DATABASES = ("mlflow", "prefect")
# The names `.stack/env` exports (docker-compose.yml uses the same ones).
ENV_NAMES = (
    "MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "FASHIONOPS_DVC_REMOTE",
    "FASHIONOPS_MLFLOW_UI",
)


@dataclass(frozen=True)
class StackSettings:
    """A stack's locations and addresses; ``root`` is the repository it serves (prefect.yaml)."""

    config: StackConfig
    root: Path

    @classmethod
    def from_config(cls, config: StackConfig, root: str | Path = ".") -> StackSettings:
        return cls(config=config, root=Path(root).resolve())

    @property
    def dir(self) -> Path:
        """The stack's folder (``stack.dir``, relative to the repository root)."""
        return (self.root / self.config.dir).resolve()

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pids(self) -> Path:
        return self.dir / "pids"

    @property
    def env_file(self) -> Path:
        return self.dir / "env"

    @property
    def prefect_home(self) -> Path:
        return self.dir / "prefect"

    @property
    def s3_journal(self) -> Path:
        """moto's request recording, replayed when the S3 server starts again."""
        return self.dir / "s3" / "requests.jsonl"

    @property
    def postgres_dir(self) -> Path:
        return self.dir / "postgres"

    def database_url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{DB_USER}@{HOST}:{self.config.postgres_port}/{database}"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.config.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.config.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.config.prefect_port}/api"

    def credentials(self) -> tuple[str, str]:
        """The S3 access key id and secret of this stack (generated on first use)."""
        path = self.dir / "credentials.json"
        if path.is_file():
            data = json.loads(path.read_text())
            return str(data["access_key_id"]), str(data["secret_access_key"])
        self.dir.mkdir(parents=True, exist_ok=True)
        pair = {"access_key_id": "fashionops-" + secrets.token_hex(6), "secret_access_key": secrets.token_hex(20)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(pair, out)
        log.info("generated S3 credentials for the stack in %s", path)
        return pair["access_key_id"], pair["secret_access_key"]

    def client_env(self) -> dict[str, str]:
        """What a client of the stack needs (the ``.stack/env`` names, in ``ENV_NAMES`` order)."""
        key_id, secret = self.credentials()
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREFECT_API_URL": self.prefect_api_url,
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.s3_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "FASHIONOPS_DVC_REMOTE": DVC_REMOTE,
            "FASHIONOPS_MLFLOW_UI": self.mlflow_url,
        }
        assert tuple(env) == ENV_NAMES
        return env

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a stack process: this one's, the client names, Prefect's home."""
        env = dict(os.environ)
        env.update(self.client_env())
        env["PREFECT_HOME"] = str(self.prefect_home)
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def write_env_file(self) -> Path:
        """``<stack.dir>/env``: one ``export NAME=value`` line per client name (mode 0600)."""
        lines = [f"# fashionops stack ({self.dir}): `source {self.env_file}`"]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in self.client_env().items()]
        tmp = self.env_file.with_name(".env.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        os.replace(tmp, self.env_file)
        return self.env_file


def read_env_file(path: str | Path) -> dict[str, str]:
    """The variables of an env file written by :meth:`StackSettings.write_env_file`."""
    env: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            name, _, value = line[len("export ") :].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env
