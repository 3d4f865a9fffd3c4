"""Helpers for the orchestration tests: real git + DVC workspaces built from this checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What a workspace needs from the working tree (helpers' files may not be committed yet, so
# copy them rather than `git clone`): the pipeline definition, params, GX suites and the code
# that dvc.yaml lists as dependencies.
WORKSPACE_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", "gx", "src/fashionops"]

# A tiny but real pipeline: 300 images, 10 classes, one short epoch of a small CNN.
TINY = {
    "min_images_per_class": 10,
    "epochs": 1,
    "backbone": "small_cnn",
    "overrides": [
        "train.pretrained=none",
        "train.batch_size=32",
        "train.limit_batches=4",
        "evaluate.batch_size=128",
        "index.dim=null",  # the small CNN embeds in 256-d already: no projection
        "index.n_trees=5",
        "index.max_trees=10",
        "index.tune_queries=30",
        "index.retrieval_queries=2",
        "validate.workers=1",
        "prepare.workers=1",
    ],
}


def run(args: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    from fashionops.orchestration.runner import stage_env

    # stage_env: this interpreter's scripts (`fashionops`) on PATH for the dvc.yaml commands
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env or stage_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check)


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd)


def make_workspace(dest: Path) -> Path:
    """A fresh git + DVC repository with this checkout's pipeline files, committed; no data."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in WORKSPACE_FILES:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".gitignore").write_text((REPO / ".gitignore").read_text())
    git("init", "-q", "-b", "main", cwd=dest)
    dvc("init", "-q", cwd=dest)
    dvc("config", "core.autostage", "true", cwd=dest)
    dvc("config", "core.analytics", "false", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "workspace", cwd=dest)
    return dest


def copy_workspace(src: Path, dest: Path) -> Path:
    """A copy a test may change (git history, DVC cache and outputs included)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def mlflow_client(ws: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{ws / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def catalogue_subset(
    src: Path, dest: Path, per_class: int = 30, classes: int = 10, label: str = "articleType", seed: int = 0
) -> Path:
    """A real subset of the catalogue: ``per_class`` images of each of the ``classes`` largest
    classes (styles.csv rows as they are, every column kept)."""
    import pandas as pd

    styles = pd.read_csv(src / "styles.csv")
    top = styles[label].value_counts().index[:classes]
    rows = pd.concat(
        [
            styles[styles[label] == c].sample(n=min(per_class, int((styles[label] == c).sum())), random_state=seed)
            for c in top
        ]
    )
    (dest / "images").mkdir(parents=True, exist_ok=True)
    for image_id in rows["id"]:
        shutil.copyfile(src / "images" / f"{image_id}.jpg", dest / "images" / f"{image_id}.jpg")
    rows.to_csv(dest / "styles.csv", index=False)
    return dest


def serving_copy(params, dest: Path, jit: bool = False):
    """Params serving a private copy of a pipeline's classifier and index (``serve.source: local``).

    ``jit=False`` (eager) keeps the many short-lived apps of the tests fast; ``fashionops serve``
    serves the TorchScript traces by default.
    """
    p = params.model_copy(deep=True)
    shutil.copytree(params.paths.classifier_dir, dest / "classifier", ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(params.paths.index_dir, dest / "index")
    p.paths.classifier_dir = str(dest / "classifier")
    p.paths.index_dir = str(dest / "index")
    p.index.embedder_dir = None
    p.serve.source = "local"
    p.serve.model_dir = None
    p.serve.reload_poll_s = 0.0
    p.serve.jit = jit
    return p


def private_mlflow_experiment(store: Path, name: str) -> str:
    """Point this process' MLflow at its own SQLite store under ``store`` and create experiment
    ``name`` there (its id); the environment's ``MLFLOW_TRACKING_URI`` is left as it was."""
    import os

    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    # MLflow exports the URI to the environment; leave it as it was for the other tests.
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env
    return mlflow.create_experiment(name, artifact_location=(store / "artifacts").as_uri())
