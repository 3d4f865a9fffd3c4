"""MLflow tracking: where runs go, which run a pipeline writes to, and the tags a reviewer needs.

One MLflow run per pipeline run: ``train`` creates it and records its id in
``<train.out_dir>/run.json``; ``evaluate``, ``index`` and ``register`` reopen that run.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from fashionops.config import Params

RUN_FILE = "run.json"


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.tracking_uri`` (SQLite made absolute)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        db = Path(uri[len("sqlite:///"):]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    return uri


def configure(params: Params) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; returns its id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(params))
    mlflow.set_registry_uri(tracking_uri(params))
    name = params.tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # Embedded default: artifacts next to the SQLite store, not in ./mlruns.
            location = Path(params.tracking.artifact_location).resolve().as_uri()
        return mlflow.create_experiment(name, artifact_location=location)
    return exp.experiment_id


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def dvc_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 of each stage output recorded in ``dvc.lock`` (and ``data/raw.dvc``), keyed by path."""
    hashes: dict[str, str] = {}
    raw_dvc = Path("data/raw.dvc")
    if raw_dvc.is_file():
        for out in (yaml.safe_load(raw_dvc.read_text()) or {}).get("outs", []):
            hashes[out["path"] if out["path"].startswith("data/") else f"data/{out['path']}"] = out.get("md5", "")
    lock = Path(lock_path)
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                hashes[out["path"]] = out.get("md5", "")
            for dep in stage.get("deps", []):
                hashes.setdefault(dep["path"], dep.get("md5", ""))
    return hashes


def run_tags(params: Params) -> dict[str, str]:
    """Tags that let a reviewer trace a run to code, data and orchestration."""
    tags: dict[str, str] = {}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    hashes = dvc_hashes()
    for path, key in ((params.data.raw_dir, "dvc_raw_data_md5"), (params.prepare.out_dir, "dvc_prepared_md5")):
        if hashes.get(path):
            tags[key] = hashes[path]
    for env, key in (
        ("DVC_EXP_NAME", "dvc_experiment"),
        ("PREFECT__FLOW_RUN_ID", "prefect_flow_run_id"),
        ("FASHIONOPS_FLOW_RUN_ID", "prefect_flow_run_id"),
    ):
        if os.environ.get(env):
            tags[key] = os.environ[env]
    return tags


def write_run_file(out_dir: str | Path, run_id: str, experiment_id: str, uri: str) -> Path:
    path = Path(out_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri}, indent=2))
    return path


def read_run_file(out_dir: str | Path) -> dict[str, Any] | None:
    path = Path(out_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@contextmanager
def pipeline_run(params: Params) -> Iterator[Any]:
    """Reopen the run that ``train`` created (``run.json``), or start a new one if there is none."""
    import mlflow

    configure(params)
    info = read_run_file(params.train.out_dir)
    if info and _run_exists(info["run_id"]):
        with mlflow.start_run(run_id=info["run_id"]) as run:
            yield run
    else:
        with mlflow.start_run(experiment_id=configure(params), tags=run_tags(params)) as run:
            yield run


def _run_exists(run_id: str) -> bool:
    import mlflow

    try:
        mlflow.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - MlflowException for unknown ids, any store error likewise
        return False
