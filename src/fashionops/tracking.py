"""MLflow tracking: where runs go, which run a pipeline writes to, and the tags a reviewer needs.

One MLflow run per candidate: ``train`` creates a run (named for the flow run / DVC experiment,
:func:`run_name`) and records its id in ``paths.run_file`` (``reports/train/mlflow_run.json``, an
output of the DVC ``train`` stage); ``evaluate``, ``index`` and ``register`` of the same execution
reopen it, and an execution that reruns only those stages (another flow run or DVC experiment, or
other evaluate/index settings) writes to a run of its own beside it, tagged with the train run
(:func:`pipeline_run`, :mod:`fashionops.run_lineage`). Runs carry MLflow's standard slots:
``mlflow.source.git.*`` tags, the prepared split as dataset inputs (DVC md5 as digest), and the
experiment is tagged as an ML (not GenAI) experiment. Every function takes the ``tracking`` section
and, where it needs locations, ``paths``.

A tracking server that does not answer: MLflow's HTTP client retries a request 7 times with
exponential backoff (about 4 minutes per call) and waits up to 120 s for each answer, so a stopped
server would hang a stage for many minutes. :func:`configure` sets :data:`HTTP_DEFAULTS` (3 retries,
backoff factor 1, 60 s timeout: a call to a stopped server fails within about 10 s) unless the
environment sets them; the Prefect tasks retry the whole stage later. The failure then reads
``error: MLflow tracking server <url> is unreachable (<reason>) during <command>...``
(:func:`tracking_unreachable`, :class:`fashionops.errors.TrackingUnreachable`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from fashionops.atomic import write_json
from fashionops.config import PathsConfig, TrackingConfig, flatten
from fashionops.environ import scoped_environ
from fashionops.errors import TrackingUnreachable, unreachable_server
from fashionops.pids import pid_alive
from fashionops.run_lineage import (
    EXECUTION_TAG,
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_TAGS,
    GIT_COMMIT_TAG,
    ML_EXPERIMENT_KIND,
    execution_id,
    flow_run_id,
    git,
    run_name,
    source_tags,
)

log = logging.getLogger(__name__)

# MLflow's own set_tracking_uri() also writes MLFLOW_TRACKING_URI into the environment (and
# Lightning's MLFlowLogger calls it), so "the variable is set" does not mean a user chose a
# server. A value equal to what MLflow itself last set is taken as MLflow's and remembered as
# such; a value present at import, or any other value, is the user's.
_ENV_AT_IMPORT = os.environ.get("MLFLOW_TRACKING_URI")
_USER_URIS: set[str] = set()
_MLFLOW_WRITTEN: set[str] = set()


def _mlflow_set_uri() -> str | None:
    try:
        from mlflow.tracking._tracking_service import utils as _utils

        return _utils._tracking_uri
    except (ImportError, AttributeError):
        return None


def _user_env_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` when a user (not MLflow's setter) put it there, else None."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if not env:
        return None
    if env == _ENV_AT_IMPORT or env in _USER_URIS:
        return env
    if env in _MLFLOW_WRITTEN or env == _mlflow_set_uri():
        _MLFLOW_WRITTEN.add(env)
        return None
    _USER_URIS.add(env)
    return env


def _absolute(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        db = Path(uri[len("sqlite:///") :]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    elif uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def tracking_uri(tracking: TrackingConfig) -> str:
    """``MLFLOW_TRACKING_URI`` if a user set it, else ``tracking.tracking_uri`` (SQLite made absolute)."""
    return _absolute(_user_env_uri() or tracking.tracking_uri)


def is_embedded(tracking: TrackingConfig) -> bool:
    """True for the embedded default (the params' SQLite store, no server)."""
    return _user_env_uri() is None and tracking.tracking_uri.startswith("sqlite:")


# MLflow's HTTP client settings for a tracking server (environment values win). MLflow's own
# defaults (7 retries, backoff factor 2, 120 s) suit a rate-limiting hosted service; against our
# own server they turn a stopped server into a 4-minute hang per call, while the flows already
# retry a failed stage with backoff.
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def limit_http_retries() -> None:
    """Set :data:`HTTP_DEFAULTS` in the environment where it does not set them (MLflow reads them
    at each request, and stage subprocesses inherit them)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def tracking_unreachable(exc: BaseException, doing: str, outcome: str = "") -> TrackingUnreachable | None:
    """A one-line :class:`TrackingUnreachable` when ``exc`` means the tracking server gave no
    answer (``doing``: the command, ``outcome``: what that left behind), else None."""
    found = unreachable_server(exc)
    return None if found is None else TrackingUnreachable(found[0], found[1], doing, outcome)


def configure(tracking: TrackingConfig) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; returns its id.

    The environment is left as it was (MLflow's setters would export the URI to it), except for
    MLflow's HTTP retry settings, which get :data:`HTTP_DEFAULTS` where unset.
    """
    import mlflow

    limit_http_retries()
    uri = tracking_uri(tracking)
    embedded = is_embedded(tracking)
    with scoped_environ(keep=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    name = tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if embedded:
            # Embedded default: artifacts next to the SQLite store, not in ./mlruns.
            location = Path(tracking.artifact_location).resolve().as_uri()
        try:
            return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except mlflow.exceptions.MlflowException:
            # Created concurrently by another stage/process since we looked.
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment made before, or by another tool
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, ML_EXPERIMENT_KIND)
    return exp.experiment_id


def _norm_path(path: str | Path) -> str:
    """A path as ``dvc.lock`` writes it: relative to the working directory when inside it."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            return str(p)
    return p.as_posix()


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


def dvc_md5(path: str | Path, hashes: Mapping[str, str] | None = None) -> str | None:
    """``dvc.lock``'s md5 of ``path`` (a stage output or ``data/raw.dvc``), None when it has none;
    ``hashes``: :func:`dvc_hashes` already read (default: read now)."""
    hashes = dvc_hashes() if hashes is None else hashes
    return hashes.get(_norm_path(path)) or hashes.get(str(path)) or None


def run_tags(paths: PathsConfig) -> dict[str, str]:
    """Tags that let a reviewer trace a run to code, data and orchestration.

    MLflow's ``mlflow.source.*`` tags (:func:`source_tags`) and our ``git_commit``/``git_dirty``
    (``git_dirty`` has no standard slot; model versions carry these tags too);
    ``dvc_raw_data_md5``/``dvc_prepared_md5`` from ``dvc.lock`` (``data/raw.dvc``);
    ``dvc_experiment`` under ``dvc exp run``; ``prefect_flow_run_id`` when a flow runs the stage;
    ``fashionops.execution`` (:func:`execution_id`). Keys whose source is absent are left out.
    """
    tags: dict[str, str] = source_tags()
    commit = tags.get(GIT_COMMIT_TAG)
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(git("status", "--porcelain", "--untracked-files=no")))
    hashes = dvc_hashes()
    for path, key in ((paths.raw_dir, "dvc_raw_data_md5"), (paths.prepared_dir, "dvc_prepared_md5")):
        md5 = dvc_md5(path, hashes)
        if md5:
            tags[key] = md5
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    run_id = flow_run_id()
    if run_id:
        tags["prefect_flow_run_id"] = run_id
    execution = execution_id()
    if execution:
        tags[EXECUTION_TAG] = execution
    return tags


def write_run_file(path: str | Path, run_id: str, experiment_id: str, uri: str) -> Path:
    """Record the pipeline's MLflow run (``paths.run_file``) so the later stages reopen it (atomically:
    readers see the previous run or this one)."""
    return write_json(path, {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri})


def read_run_file(path: str | Path) -> dict[str, Any] | None:
    """The run recorded by :func:`write_run_file`, or None when there is none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


@contextmanager
def pipeline_run(
    tracking: TrackingConfig,
    paths: PathsConfig,
    *,
    stage: str = "pipeline",
    settings: Mapping[str, Any] | None = None,
    **sections: Any,
) -> Iterator[Any]:
    """The MLflow run this pipeline execution writes to, active for the ``with`` block.

    That is the run ``train`` created (``paths.run_file``) when it holds this execution's results,
    else this execution's own candidate run beside it (found, or created with train's params,
    final metrics and dataset inputs; :func:`fashionops.run_lineage.execution_run`): a run
    belongs to this execution when its ``fashionops.execution`` tag names this flow run / DVC
    experiment (:func:`execution_id`; any run, by hand) and it logged the same settings.
    The stage's settings, compared with the run's params and logged into it: config sections by
    name (``evaluate=cfg``) and/or flattened ``settings`` (``{"index.n_trees": 50}``, see
    :func:`~fashionops.run_lineage.candidate_settings`). ``stage`` names a new run made by hand
    (:func:`run_name`). Without a train run, a new run named for the
    execution (:func:`run_name`). Either way the run gets the current :func:`run_tags` (a later
    stage may know more, e.g. the DVC hash of the prepared split once ``dvc.lock`` has it).
    """
    import mlflow

    from fashionops.run_lineage import execution_run, log_data_inputs

    experiment_id = configure(tracking)
    tags = {**run_tags(paths), **owner_tags()}
    settings = {**section_params(sections), **(settings or {})}
    info = read_run_file(paths.run_file)
    if info and run_exists(info["run_id"]):
        run_id = execution_run(experiment_id, info["run_id"], settings, paths, run_name(stage))
        with mlflow.start_run(run_id=run_id) as run:
            mlflow.set_tags(tags)
            log_params_flat(settings)
            yield run
    else:
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name(stage), tags=tags) as run:
            log_params_flat(settings)
            log_data_inputs(mlflow.MlflowClient(), run.info.run_id, paths)
            yield run


def param_text(value: Any) -> str:
    """A config value as an MLflow param: None (YAML null) is the empty string, others ``str()``."""
    return "" if value is None else str(value)[:6000]


def section_params(sections: Mapping[str, Any]) -> dict[str, Any]:
    """``{"evaluate": EvaluateConfig(...)}`` -> ``{"evaluate.batch_size": 256, ...}`` (flattened like
    ``Params.flat()``, so the keys and values match what ``train`` logged)."""
    tree = {name: cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg) for name, cfg in sections.items()}
    return flatten(tree) if tree else {}


def log_params_flat(flat: Mapping[str, Any]) -> None:
    """Log a flattened configuration (``Params.flat()``, values as :func:`param_text`) to the active
    run; keys it already has are skipped. MLflow params are immutable: a key logged with another
    value keeps its first value (debug log); settings that change a candidate's results get their
    own run (:func:`pipeline_run`)."""
    import mlflow

    run = mlflow.active_run()
    if run is None or not flat:
        return
    logged = mlflow.get_run(run.info.run_id).data.params
    new: dict[str, str] = {}
    for key, value in flat.items():
        text = param_text(value)
        if key not in logged:
            new[key] = text
        elif logged[key] != text:
            log.debug("MLflow run %s keeps param %s=%r (now %r)", run.info.run_id, key, logged[key], text)
    items = list(new.items())
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics_file(path: str | Path, prefix: str = "") -> dict[str, float]:
    """Log every numeric top-level value of a metrics JSON file to the active run; returns them."""
    import mlflow

    path = Path(path)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    metrics = {
        f"{prefix}{k}": float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if metrics and mlflow.active_run() is not None:
        mlflow.log_metrics(metrics)
    return metrics


def log_artifacts_if_present(paths: list[str | Path], artifact_path: str | None = None) -> list[str]:
    """Log each existing file or directory; missing ones are skipped. Returns what was logged."""
    import mlflow

    logged: list[str] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            mlflow.log_artifacts(str(p), f"{artifact_path}/{p.name}" if artifact_path else p.name)
        elif p.is_file():
            mlflow.log_artifact(str(p), artifact_path)
        else:
            continue
        logged.append(str(p))
    return logged


# Tags naming the process that holds a run open: a RUNNING run whose owner is dead was killed.
OWNER_PID_TAG, OWNER_HOST_TAG = "fashionops.owner_pid", "fashionops.owner_host"


def owner_tags() -> dict[str, str]:
    """The tags that say which process (pid on host) is writing a run."""
    return {OWNER_PID_TAG: str(os.getpid()), OWNER_HOST_TAG: socket.gethostname()}


def mark_abandoned_runs(tracking: TrackingConfig) -> list[str]:
    """Set runs of the experiment left RUNNING by a killed process to KILLED; returns their ids.

    A run counts as abandoned when its owner tags (:func:`owner_tags`) name this host and a pid
    that is no longer alive; runs without them (other tools, older versions) or owned by another
    host are left alone, since a pid can only be checked here.
    """
    from mlflow.tracking import MlflowClient

    experiment_id = configure(tracking)
    client = MlflowClient(tracking_uri(tracking))
    host = socket.gethostname()
    killed: list[str] = []
    try:
        running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    except Exception as exc:  # noqa: BLE001 - housekeeping: never the reason a training fails
        log.warning("could not look for MLflow runs left RUNNING by killed processes: %s", exc)
        return killed
    for run in running:
        tags = run.data.tags
        pid = tags.get(OWNER_PID_TAG, "")
        if tags.get(OWNER_HOST_TAG) != host or not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        killed.append(run.info.run_id)
        log.warning("MLflow run %s was left RUNNING by killed process %s: marked KILLED", run.info.run_id, pid)
    return killed


def run_exists(run_id: str, uri: str | None = None) -> bool:
    """Whether ``run_id`` is a run of the store at ``uri`` (default: the one :func:`configure` set)."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).get_run(run_id)
        return True
    except Exception as exc:
        if unreachable_server(exc) is not None:
            raise  # a server that does not answer says nothing about the run
        return False  # MlflowException for unknown ids, any store error likewise
