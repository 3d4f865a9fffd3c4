"""Who wrote an MLflow run, on what data, and which run a pipeline execution writes to.

* MLflow's standard slots: the experiment's kind (:data:`EXPERIMENT_TAGS`, so MLflow 3's UI opens
  on runs, not traces), the ``mlflow.source.*`` tags (:func:`source_tags`), a run name that is the
  flow run's DVC experiment (:func:`run_name`), and the prepared split as the run's dataset inputs
  with the DVC md5 of ``data/prepared`` as digest (:func:`log_data_inputs`).
* Candidates: an *execution* is one flow run or DVC experiment (:func:`execution_id`).
  :func:`execution_run` picks the run the stages after ``train`` write to: train's run when it
  holds this execution's results, else this execution's own run beside it, created with train's
  params, final metrics and dataset inputs and tagged ``fashionops.train_run_id``, so two
  candidates of one trained model (other evaluate/index settings) are two rows of the experiment
  that the MLflow UI compares. Stages run by hand (no flow run, no DVC experiment) are told apart
  by their settings only.

Functions that need the tracking store expect :func:`fashionops.tracking.configure` to have run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fashionops.config import PathsConfig

log = logging.getLogger(__name__)

# MLflow 3's UI opens an experiment on its GenAI (traces) pages unless the experiment's kind says
# otherwise: "custom_model_development" is its value for classic ML runs (the other kind it offers
# is "genai_development"; ExperimentKind in mlflow/server/js).
EXPERIMENT_KIND_TAG, ML_EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: ML_EXPERIMENT_KIND}
# MLflow's standard run tags (mlflow.utils.mlflow_tags): the UI shows them as the run's source.
GIT_COMMIT_TAG, GIT_BRANCH_TAG, GIT_REPO_TAG = (
    "mlflow.source.git.commit",
    "mlflow.source.git.branch",
    "mlflow.source.git.repoURL",
)
SOURCE_NAME_TAG, SOURCE_TYPE_TAG, NOTE_TAG = "mlflow.source.name", "mlflow.source.type", "mlflow.note.content"
DATASET_CONTEXT_TAG = "mlflow.data.context"
# Which execution wrote a run, and the train run whose model a candidate run evaluates.
EXECUTION_TAG, TRAIN_RUN_TAG = "fashionops.execution", "fashionops.train_run_id"
# Settings of the stages after train: a candidate run logs its own, never train's copies.
POST_TRAIN_SECTIONS = ("evaluate.", "index.", "register.")
# The settings that make another candidate of one trained model (register's only decide aliases).
CANDIDATE_SECTIONS = ("evaluate.", "index.")
SPLITS = ("train", "val", "test")


def git(*args: str) -> str | None:
    """``git <args>`` in the working directory (stripped stdout), None when git fails."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def flow_run_id() -> str | None:
    """The Prefect flow-run id: inside a flow from ``prefect.runtime``; in a stage subprocess
    from ``FASHIONOPS_FLOW_RUN_ID`` (exported by the flow) or Prefect's ``PREFECT__FLOW_RUN_ID``."""
    for env in ("FASHIONOPS_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID"):
        if os.environ.get(env):
            return os.environ[env]
    if "prefect" in sys.modules:  # only ask Prefect when a flow already imported it (import is slow)
        try:
            from prefect.runtime import flow_run

            run_id = flow_run.id
            return str(run_id) if run_id else None
        except Exception:  # noqa: BLE001 - outside a flow or an incompatible Prefect: no id
            return None
    return None


def execution_id() -> str | None:
    """This pipeline execution: the Prefect flow-run id, else the DVC experiment name
    (``DVC_EXP_NAME``, set by ``dvc exp run`` and by the flows); None for stages run by hand."""
    return flow_run_id() or os.environ.get("DVC_EXP_NAME") or None


def run_name(stage: str) -> str:
    """The MLflow run name: the DVC experiment (``DVC_EXP_NAME``; a flow names it after its flow
    run), else ``<stage>-<UTC date>-<time>-<short commit>`` (``train-20261201-1030-1450143``)."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    commit = git("rev-parse", "--short=7", "HEAD")
    when = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    return f"{stage}-{when}-{commit}" if commit else f"{stage}-{when}"


def source_tags() -> dict[str, str]:
    """MLflow's source tags for the checkout the stage runs in: the git commit, the branch and
    ``origin`` URL when there are, and ``<repo>/dvc.yaml`` (the pipeline that ran) as source name."""
    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {GIT_COMMIT_TAG: commit, SOURCE_TYPE_TAG: "LOCAL"}
    root = git("rev-parse", "--show-toplevel")
    if root:
        tags[SOURCE_NAME_TAG] = f"{root}/dvc.yaml"
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags[GIT_BRANCH_TAG] = branch
    origin = git("remote", "get-url", "origin")
    if origin:
        tags[GIT_REPO_TAG] = origin
    return tags


# --------------------------------------------------------------------------- dataset inputs
def data_inputs(paths: PathsConfig, md5: str | None) -> list[Any]:
    """The prepared split as MLflow dataset inputs, one per split (context ``train``/``val``/
    ``test``): a small frame of its ``id``/``label`` rows (the run page shows rows and schema), the
    prepared folder as source and ``md5`` (``dvc.lock``'s hash of it) as digest. Empty when the
    split is not prepared."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag

    index = Path(paths.prepared_dir) / "index.parquet"
    if not index.is_file():
        return []
    frame = pd.read_parquet(index, columns=["id", "label", "split"])
    inputs = []
    with warnings.catch_warnings():  # MLflow's hint about integer columns: the ids have no gaps
        warnings.simplefilter("ignore", UserWarning)
        for split in SPLITS:
            rows = frame[frame["split"] == split][["id", "label"]].reset_index(drop=True)
            dataset = from_pandas(
                rows,
                source=str(Path(paths.prepared_dir).resolve()),
                name=f"prepared-{split}",
                targets="label",
                digest=md5 or None,  # None: MLflow hashes the rows
            )
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag(DATASET_CONTEXT_TAG, split)]))
    return inputs


def log_data_inputs(client: Any, run_id: str, paths: PathsConfig) -> int:
    """Log :func:`data_inputs` to run ``run_id`` (an input it has is not logged twice); returns
    how many. Lineage only: a failure is a warning, except a tracking server that does not answer."""
    from fashionops.errors import unreachable_server
    from fashionops.tracking import dvc_md5

    try:
        inputs = data_inputs(paths, dvc_md5(paths.prepared_dir))
        if inputs:
            client.log_inputs(run_id, datasets=inputs)
        return len(inputs)
    except Exception as exc:
        if unreachable_server(exc) is not None:
            raise
        log.warning("could not log the prepared split as the MLflow run's dataset inputs: %s", exc)
        return 0


# --------------------------------------------------------------------------- candidate runs
def candidate_settings(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluate and index settings of a flattened configuration (``Params.flat()``)."""
    return {key: value for key, value in flat.items() if key.startswith(CANDIDATE_SECTIONS)}


def _belongs(run: Any, execution: str | None, settings: Mapping[str, Any]) -> bool:
    """Whether ``run`` holds this execution's results: same execution (any, by hand) and no
    setting logged with another value."""
    from fashionops.tracking import param_text

    if execution is not None and run.data.tags.get(EXECUTION_TAG) != execution:
        return False
    params = run.data.params
    return all(params.get(key, param_text(value)) == param_text(value) for key, value in settings.items())


def execution_run(
    experiment_id: str, train_run_id: str, settings: Mapping[str, Any], paths: PathsConfig, name: str
) -> str:
    """The id of the run this execution's stages after train write to: train's run
    ``train_run_id`` if it belongs to this execution (:func:`_belongs`: same flow run / DVC
    experiment and same ``settings``, the stage's flattened config), else the newest run tagged
    with that train run that does, else a new candidate run named ``name`` (:func:`candidate_run`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    train = client.get_run(train_run_id)
    execution = execution_id()
    if _belongs(train, execution, settings):
        return train_run_id
    query = f"tags.`{TRAIN_RUN_TAG}` = '{train_run_id}'"
    if execution is not None:
        query += " and tags.`{}` = '{}'".format(EXECUTION_TAG, execution.replace("'", "\\'"))
    found = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=100)
    for run in found:
        if _belongs(run, execution, settings):
            return str(run.info.run_id)
    return candidate_run(client, experiment_id, train, paths, name)


def candidate_run(client: Any, experiment_id: str, train: Any, paths: PathsConfig, name: str) -> str:
    """A new run beside train's: train's params (but not its evaluate/index/register settings:
    the stages log this execution's), its final metrics (what this execution does not rerun stays
    comparable), its dataset inputs, tagged ``fashionops.train_run_id``. Returns its id."""
    from mlflow.entities import Metric, Param

    from fashionops.tracking import owner_tags, run_tags

    train_id, train_name = train.info.run_id, train.info.run_name
    note = (
        f"Candidate of train run `{train_name}` ({train_id}): the same trained model, evaluated and "
        f"indexed by execution `{execution_id() or name}`. Compare: select both runs, then Compare."
    )
    tags = {**run_tags(paths), **owner_tags(), TRAIN_RUN_TAG: train_id, NOTE_TAG: note}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in train.data.params.items() if not k.startswith(POST_TRAIN_SECTIONS)]
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in train.data.metrics.items()]
    for start in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 entries
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    if train.inputs and train.inputs.dataset_inputs:
        client.log_inputs(run_id, datasets=list(train.inputs.dataset_inputs))
    else:
        log_data_inputs(client, run_id, paths)
    log.info("MLflow: new candidate run %s (%s) beside train run %s (%s)", name, run_id, train_name, train_id)
    return str(run_id)
