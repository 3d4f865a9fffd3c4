"""Index refresh: the @champion classifier embeds a changed catalogue, no retraining.

The steps run in the workspace like the stages (its paths, git commit and MLflow store):

* ``fashionops refresh fetch-champion`` (:func:`fetch_champion`) downloads the classifier version
  holding the alias;
* :func:`build_refresh_index` runs ``fashionops index`` with it as embedder into
  :data:`REFRESH_DIR`, outside DVC (the DVC ``index`` stage belongs to the trained classifier);
* ``fashionops refresh register-index`` registers that index paired with the same classifier
  version (``fashionops.registry.register.register_index_for``).

The two ``fashionops refresh`` commands print their result as one ``RESULT {json}`` line
(:func:`format_result`), which :func:`run_refresh_step` reads back (:func:`result_line`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fashionops.config import RegisterConfig, TrackingConfig
from fashionops.orchestration.failures import PipelineError, StageFailed, error_message
from fashionops.orchestration.reports import read_json
from fashionops.orchestration.runner import LogFn, fashionops_command, run_command

REFRESH_DIR = ".dvc/tmp/index-refresh"  # git- and DVC-ignored; the registry keeps the result
RESULT_PREFIX = "RESULT "


def fetch_champion(
    cfg: RegisterConfig, trk: TrackingConfig, dest: str | Path, alias: str = "champion"
) -> dict[str, Any]:
    """Download the ``cfg.classifier_name`` version that holds ``alias`` into ``dest``; returns its
    version and the model directory inside it (``weights.pt``, ``model_spec.json``) to embed with."""
    import mlflow

    from fashionops import tracking
    from fashionops.registry.aliases import AliasNotSet, reader_client, resolve_pair
    from fashionops.registry.pyfunc import CLASSIFIER_ARTIFACT, artifact_dir

    tracking.configure(trk)
    try:  # an unpaired alias is refused (RegistryError); a missing one is reported below
        version: str | None = resolve_pair(reader_client(trk), cfg, alias)[0]
    except AliasNotSet:
        version = None
    if version is None:
        raise PipelineError(
            f"no @{alias} version of {cfg.classifier_name} in {tracking.tracking_uri(trk)}: "
            "run the training-pipeline flow first"
        )
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.classifier_name}/{version}", dst_path=str(dest)))
    model_dir = artifact_dir(local, CLASSIFIER_ARTIFACT)
    if not (model_dir / "model_spec.json").is_file():
        raise PipelineError(f"classifier v{version} has no {CLASSIFIER_ARTIFACT}/model_spec.json in {local}")
    return {"name": cfg.classifier_name, "version": str(version), "model_dir": str(model_dir)}


def refresh_overrides(workspace: str | Path, embedder_dir: str | Path) -> list[str]:
    """Overrides that build the index with ``embedder_dir`` into ``REFRESH_DIR`` (the DVC-tracked
    ``models/index`` of the training pipeline stays as DVC recorded it)."""
    out = Path(workspace).resolve() / REFRESH_DIR
    # reports_dir inside REFRESH_DIR: its train/mlflow_run.json does not exist, so the build opens
    # a new MLflow run instead of reopening the champion's training run (paths.run_file)
    return [
        f"index.embedder_dir={embedder_dir}",
        f"paths.classifier_dir={embedder_dir}",
        f"paths.index_dir={out / 'index'}",
        f"paths.reports_dir={out / 'reports'}",
    ]


def build_refresh_index(
    workspace: str | Path, embedder_dir: str | Path, env: dict[str, str] | None = None, log: LogFn | None = None
) -> dict[str, Any]:
    """``fashionops index`` with the champion embedder, outside DVC (the DVC ``index`` stage
    belongs to the trained classifier); returns the index dir and its metrics."""
    args = fashionops_command("index")
    for override in refresh_overrides(workspace, embedder_dir):
        args += ["--set", override]
    code, lines = run_command(args, cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed.from_output("index", code, lines)
    out = Path(workspace).resolve() / REFRESH_DIR
    return {
        "index_dir": str(out / "index"),
        "report_dir": str(out / "reports"),
        "metrics": read_json(out / "reports" / "index" / "metrics.json"),
    }


def format_result(result: dict[str, Any]) -> str:
    """The one line a ``fashionops refresh`` step prints for :func:`result_line` to read."""
    return RESULT_PREFIX + json.dumps(result, default=str)


def result_line(lines: list[str]) -> dict[str, Any]:
    """The result a ``fashionops refresh`` step printed (its last ``RESULT`` line)."""
    for line in reversed(lines):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise PipelineError("no result printed: " + error_message(lines))


def run_refresh_step(
    command: list[str],
    workspace: str | Path,
    env: dict[str, str] | None = None,
    log: LogFn | None = None,
    name: str = "index-refresh",
) -> dict[str, Any]:
    """Run ``fashionops refresh <command>`` in the workspace; its result dict."""
    code, lines = run_command(fashionops_command("refresh", *command), cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed.from_output(name, code, lines)
    return result_line(lines)
