"""``fashionops sweep`` and the ``hpo-sweep`` flow on a real 300-image subset: Optuna trials of the
project's own training (a small CNN, 2 short epochs), nested MLflow runs in a real SQLite store,
the best params as a real DVC experiment in a git + DVC workspace, median pruning with a real
study, and the flow on the Prefect test harness."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml
from _workspace import REPO, copy_workspace, dvc, git, make_workspace, mlflow_client

from fashionops.config import load_params
from fashionops.tuning.experiment import with_values
from fashionops.tuning.pruning import PARENT_TAG, STATE_TAG, MedianPruning
from fashionops.tuning.sweep import run_sweep

# Every trial: a small CNN on 48x36 images, 2 epochs of 3 batches (seconds on a CPU).
TRIAL = [
    "train.backbone=small_cnn",
    "train.pretrained=none",
    "train.input_height=48",
    "train.input_width=36",
    "train.batch_size=16",
    "train.num_workers=0",
    "train.epochs=2",
    "train.limit_batches=3",
    "train.early_stopping_patience=5",
    "prepare.min_images_per_class=10",
]


@contextmanager
def inside(ws: Path):
    """Run in the workspace (relative params.yaml paths) with no MLFLOW_TRACKING_URI leaking in or out."""
    old = os.getcwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        os.chdir(ws)
        try:
            yield
        finally:
            os.chdir(old)


@pytest.fixture(scope="module")
def prepared_ws(tmp_path_factory, catalogue_300):
    """A git + DVC workspace (this checkout's params.yaml, committed) holding data/prepared of the
    300 real images. Read-only: copy it."""
    from fashionops.data.prepare import run_prepare

    ws = make_workspace(tmp_path_factory.mktemp("sweep") / "ws")
    p = load_params(
        ws / "params.yaml",
        [
            f"paths.raw_dir={catalogue_300}",
            f"paths.prepared_dir={ws / 'data' / 'prepared'}",
            f"paths.reports_dir={ws.parent / 'prepare-reports'}",
            "prepare.min_images_per_class=10",
            "prepare.workers=1",
        ],
    )
    run_prepare(p.prepare, p.paths)
    return ws


def sweep_in(ws: Path, trials: int, overrides: list[str]) -> dict:
    with inside(ws):
        p = load_params("params.yaml", overrides)
        return run_sweep(p, trials=trials, timeout_s=None, params_path="params.yaml", overrides=overrides)


def outputs_snapshot(ws: Path) -> dict[str, tuple[int, int]]:
    """Every file under the workspace's models/ and reports/: (size, mtime)."""
    return {
        str(f.relative_to(ws)): (f.stat().st_size, f.stat().st_mtime_ns)
        for top in ("models", "reports")
        for f in sorted((ws / top).rglob("*"))
        if f.is_file()
    }


@pytest.fixture(scope="module")
def swept(prepared_ws, tmp_path_factory):
    """3 trials over params.yaml's own sweep.space; (workspace, summary, params.yaml bytes and git
    status from before the sweep)."""
    ws = copy_workspace(prepared_ws, tmp_path_factory.mktemp("swept") / "ws")
    before = (ws / "params.yaml").read_bytes()
    status = git("status", "--porcelain", "--untracked-files=all", cwd=ws).stdout
    summary = sweep_in(ws, 3, TRIAL)
    return ws, summary, before, status


def nested_runs(ws: Path, parent_id: str) -> list:
    client = mlflow_client(ws)
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'")


def experiments_listed(ws: Path) -> dict[str, dict]:
    """``dvc exp show --json``: experiment name -> its params.yaml data."""
    out = {}
    for baseline in json.loads(dvc("exp", "show", "--json", cwd=ws).stdout):
        for exp in baseline.get("experiments") or []:
            out[exp["name"]] = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]
    return out


def test_each_trial_is_a_nested_run_of_one_parent(swept):
    ws, summary, _, _ = swept
    client = mlflow_client(ws)
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == summary["run_name"] and parent.info.run_name.startswith("sweep-")
    assert parent.data.params["sweep.trials"] == "3"
    assert set(k for k in parent.data.params if k.startswith("sweep.space.")) == {
        f"sweep.space.{k}" for k in load_params(REPO / "params.yaml").sweep.space
    }
    runs = nested_runs(ws, summary["mlflow_run_id"])
    assert len(runs) == 3 == summary["trials"]
    assert sorted(int(r.data.tags["sweep.trial"]) for r in runs) == [0, 1, 2]
    states = [r.data.tags[STATE_TAG] for r in runs]
    assert set(states) <= {"COMPLETE", "PRUNED"} and states.count("COMPLETE") >= 2  # 2 startup trials
    assert summary["complete"] + summary["pruned"] == 3 and summary["failed"] == 0
    for run in runs:
        # the trial's values are the run's params (as --set applied them), its curve is per epoch
        assert run.data.params["train.backbone"] == "small_cnn"
        assert run.info.run_name == f"{summary['run_name']}-trial-{run.data.tags['sweep.trial']}"
        assert run.info.status == "FINISHED"
        curve = client.get_metric_history(run.info.run_id, "val/macro_f1")
        assert 1 <= len(curve) <= 2
    best = summary["best"]
    best_run = client.get_run(best["mlflow_run_id"])
    assert best_run.data.tags[STATE_TAG] == "COMPLETE"
    assert best["val_macro_f1"] == pytest.approx(best_run.data.metrics["train/best_val_macro_f1"])
    for key, value in best["params"].items():
        assert yaml.safe_load(best_run.data.params[key]) == pytest.approx(value)
    done = [r.data.metrics["train/best_val_macro_f1"] for r in runs if r.data.tags[STATE_TAG] == "COMPLETE"]
    assert best["val_macro_f1"] == pytest.approx(max(done))
    assert parent.data.metrics["sweep/best_val_macro_f1"] == pytest.approx(best["val_macro_f1"])
    assert parent.data.tags["dvc_experiment"] == summary["dvc_experiment"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/history.png"} <= artifacts


def test_best_params_are_a_listed_dvc_experiment(swept):
    ws, summary, _, _ = swept
    name = summary["dvc_experiment"]
    assert name == f"sweep-{summary['mlflow_run_id'][:8]}" and summary["apply"] == f"dvc exp apply {name}"
    listed = experiments_listed(ws)
    assert list(listed) == [name]
    for key, value in summary["best"]["params"].items():
        section, field = key.split(".")
        assert listed[name][section][field] == pytest.approx(value)
    # the experiment is HEAD with params.yaml changed, nothing else
    head = git("rev-parse", "HEAD", cwd=ws).stdout.strip()
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    assert git("diff", "--name-only", "HEAD", ref, cwd=ws).stdout.split() == ["params.yaml"]


def test_sweep_leaves_the_workspace_files_unchanged(swept):
    ws, _, before, status = swept
    assert (ws / "params.yaml").read_bytes() == before
    assert git("status", "--porcelain", "--untracked-files=all", cwd=ws).stdout == status
    assert not (ws / "models").exists() and not (ws / "reports").exists()  # trials trained in scratch dirs


@pytest.mark.slow
def test_dvc_experiment_applies_in_a_pipeline_workspace(trained_workspace, tmp_path):
    """In a workspace whose pipeline ran (dvc.lock committed), `dvc exp apply` puts exactly the best
    values into params.yaml, every other line as it was; the sweep left models/ and reports/ alone."""
    ws = copy_workspace(trained_workspace[0], tmp_path / "ws")
    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "pipeline ran", cwd=ws)
    before, outputs = (ws / "params.yaml").read_text(), outputs_snapshot(ws)
    summary = sweep_in(ws, 2, [*TRIAL, "train.epochs=1"])
    assert outputs and outputs_snapshot(ws) == outputs and (ws / "params.yaml").read_text() == before
    best, name = summary["best"]["params"], summary["dvc_experiment"]
    dvc("exp", "apply", name, cwd=ws)
    applied = (ws / "params.yaml").read_text()
    assert applied == with_values(before, best)
    data = yaml.safe_load(applied)
    assert {k: data[k.split(".")[0]][k.split(".")[1]] for k in best} == pytest.approx(best)
    changed = [a for a, b in zip(applied.splitlines(), before.splitlines()) if a != b]
    assert len(applied.splitlines()) == len(before.splitlines()) and 1 <= len(changed) <= len(best)
    assert all(line.split(":")[0].strip() in {k.split(".")[1] for k in best} for line in changed)
    assert git("status", "--porcelain", cwd=ws).stdout.split() == ["M", "params.yaml"]


def test_failing_trials_are_recorded_and_the_sweep_goes_on(prepared_ws, tmp_path):
    # train.loss=mse is a valid param value that training refuses for a classifier
    ws = copy_workspace(prepared_ws, tmp_path / "ws")
    space = "sweep.space={train.loss: {type: categorical, choices: [mse]}}"
    summary = sweep_in(ws, 2, [*TRIAL, space])
    assert (summary["trials"], summary["failed"], summary["best"], summary["dvc_experiment"]) == (2, 2, None, None)
    runs = nested_runs(ws, summary["mlflow_run_id"])
    assert len(runs) == 2
    assert all(r.info.status == "FAILED" and r.data.tags[STATE_TAG] == "FAIL" for r in runs)
    assert all("autoencoder loss" in r.data.tags["sweep.error"] for r in runs)
    assert mlflow_client(ws).get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert experiments_listed(ws) == {}


def test_bad_space_key_fails_before_training_with_one_line(prepared_ws, tmp_path):
    ws = copy_workspace(prepared_ws, tmp_path / "ws")
    from fashionops.orchestration.runner import stage_env

    env = {k: v for k, v in stage_env().items() if k != "MLFLOW_TRACKING_URI"}
    space = "sweep.space={train.lr: {type: float, low: 0.001, high: 0.01}, train.lrr: {type: float, low: 0.1, high: 1}}"
    proc = subprocess.run(
        [sys.executable, "-m", "fashionops.cli", "sweep", "--trials", "3", "--set", space],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith("error: params.yaml: sweep.space.train.lrr = 0.1: train.lrr: unknown key")
    assert not (ws / "mlflow").exists()  # nothing trained or logged


def test_out_of_range_space_fails_naming_the_key(prepared_ws):
    from fashionops.errors import ConfigError
    from fashionops.tuning.space import check_space

    params = prepared_ws / "params.yaml"
    over = ["sweep.space={train.dropout: {type: float, low: 0.1, high: 1.5}}"]
    with pytest.raises(ConfigError, match=r"sweep\.space\.train\.dropout = 1\.5: train\.dropout") as info:
        check_space(load_params(params, over).sweep, params, over)
    assert "\n" not in str(info.value)
    over = ["sweep.space={prepare.label: {type: categorical, choices: [subCategory]}}"]
    with pytest.raises(ConfigError, match=r"only train\.\* params"):
        check_space(load_params(params, over).sweep, params, over)


def test_median_pruning_stops_a_trial_below_the_median(prepared_ws, tmp_path):
    """A real study whose one finished trial scored an unreachable 1.01 at every epoch: the next
    trial is pruned after its first epoch (warm-up 0) and its training stops there cleanly."""
    from fashionops.training.stage import run_train

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(0, 0))
    study.add_trial(
        optuna.trial.create_trial(
            value=1.01, intermediate_values={0: 1.01, 1: 1.01, 2: 1.01}, params={}, distributions={}
        )
    )
    trial = study.ask()
    callback = MedianPruning(trial)
    with inside(prepared_ws):
        p = load_params(
            "params.yaml",
            [
                *TRIAL,
                "train.epochs=3",
                f"paths.classifier_dir={tmp_path / 'model'}",
                f"paths.reports_dir={tmp_path / 'reports'}",
                f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"tracking.artifact_location={tmp_path / 'artifacts'}",
            ],
        )
        metrics = run_train(
            p.train, p.paths, p.tracking, balance=p.prepare.balance, run_config=p.flat(), callbacks=[callback]
        )
    assert callback.pruned_at == 1 and list(callback.reported) == [0]
    assert metrics["epochs_run"] == 1 and (tmp_path / "model" / "weights.pt").is_file()
    assert trial.should_prune()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[-1].intermediate_values == {0: pytest.approx(metrics["best_val_macro_f1"])}


@pytest.mark.slow
def test_hpo_sweep_flow(prefect_api, prepared_ws, tmp_path):
    sys.path.insert(0, str(REPO / "flows"))
    try:
        import hpo_sweep
    finally:
        sys.path.remove(str(REPO / "flows"))
    from prefect.client.orchestration import get_client

    ws = copy_workspace(prepared_ws, tmp_path / "ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        state = hpo_sweep.hpo_sweep(
            trials=2, overrides=[*TRIAL, "train.epochs=1"], workspace=str(ws), return_state=True
        )
    assert state.is_completed(), state.message
    result = state.result()
    assert [r["trial"] for r in result["trial_rows"]] == [0, 1]
    assert all(r["state"] == "COMPLETE" and r["value"] is not None for r in result["trial_rows"])
    assert result["dvc_experiment"] in experiments_listed(ws)

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=flt)
    found = {a.key: a for a in arts}
    assert {"hpo-sweep-trials", "hpo-sweep-summary", "mlflow-sweep-run", "mlflow-best-trial"} <= set(found)
    assert result["dvc_experiment"] in found["hpo-sweep-summary"].data
    assert result["mlflow_run_id"] in found["mlflow-sweep-run"].data


def completed_trials(db: Path) -> int:
    """Trials tagged COMPLETE so far, read straight from the SQLite store while the sweep writes it
    (no MLflow client here: it would migrate a database the sweep is still creating)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            query = "SELECT count(*) FROM tags WHERE key = 'sweep.state' AND value = 'COMPLETE'"
            return int(con.execute(query).fetchone()[0])
    except sqlite3.Error:  # not created (or not migrated) yet
        return 0


@pytest.mark.slow
def test_sigterm_ends_the_sweep_keeping_the_best_so_far(prepared_ws, tmp_path):
    """SIGTERM once a trial has completed: exit 143, the parent run KILLED, no run left RUNNING,
    and the best trial so far is still the DVC experiment."""
    import signal
    import time

    from fashionops.orchestration.runner import stage_env

    ws = copy_workspace(prepared_ws, tmp_path / "ws")
    env = {k: v for k, v in stage_env().items() if k != "MLFLOW_TRACKING_URI"}
    args = [sys.executable, "-m", "fashionops.cli", "sweep", "--trials", "50"]
    for override in [*TRIAL, "train.epochs=1"]:
        args += ["--set", override]
    proc = subprocess.Popen(args, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
            if completed_trials(ws / "mlflow" / "mlflow.db"):
                break
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: fashionops sweep terminated (SIGTERM)")
    client = mlflow_client(ws)
    runs = client.search_runs([client.get_experiment_by_name("fashionops").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("stage") == "sweep")
    assert parent.info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in runs)
    name = parent.data.tags["dvc_experiment"]
    assert name in experiments_listed(ws)


def test_hpo_sweep_form_is_typed_and_reads_the_printed_summary():
    from prefect.utilities.callables import parameter_schema

    from fashionops.tuning.flow_steps import printed_summary, sweep_command

    sys.path.insert(0, str(REPO / "flows"))
    try:
        import hpo_sweep
    finally:
        sys.path.remove(str(REPO / "flows"))
    props = parameter_schema(hpo_sweep.hpo_sweep).model_dump_for_openapi()["properties"]
    assert set(props) == {"trials", "timeout_s", "overrides", "workspace"}
    trials = json.dumps(props["trials"])
    assert (
        '"minimum": 1' in trials and '"integer"' in trials and '"null"' in trials and props["trials"]["default"] is None
    )
    assert '"exclusiveMinimum": 0' in json.dumps(props["timeout_s"])
    assert sweep_command(3, None, ["train.epochs=1"])[-5:] == ["sweep", "--trials", "3", "--set", "train.epochs=1"]
    lines = ["INFO trial 0: ...", "{", '  "trials": 3,', '  "best": {"trial": 1}', "}"]
    assert printed_summary(lines) == {"trials": 3, "best": {"trial": 1}}


def test_a_stop_signal_is_raised_at_the_next_safe_point():
    """The first SIGTERM is only recorded (raised by the check the sweep runs between batches and
    after every trial, never in the middle of an MLflow write); a second one acts at once; the
    previous handler is back afterwards."""
    import signal
    import time

    from fashionops.errors import Terminated
    from fashionops.tuning.stopping import StopOnSignal, stop_signals

    before = signal.getsignal(signal.SIGTERM)
    with stop_signals() as stop:
        stop.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # delivered: recorded, not raised here
        assert stop.signum == signal.SIGTERM
        with pytest.raises(Terminated):
            StopOnSignal(stop).on_train_batch_end(None, None)
        with pytest.raises(Terminated):
            stop.check()
        with pytest.raises(Terminated):  # a second signal: the previous handler, at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == before


def test_prefect_yaml_deploys_hpo_sweep(prefect_api, tmp_path):
    """`prefect deploy --name hpo-sweep` with the project's prefect.yaml: the typed form is served."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "hpo-sweep")
    pool = deployment["work_pool"]["name"]
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path)}
    prefect = str(Path(sys.executable).parent / "prefect")
    proc = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--name", "hpo-sweep"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("hpo-sweep/hpo-sweep")
    assert dep.entrypoint == "flows/hpo_sweep.py:hpo_sweep" and dep.work_pool_name == pool
    assert {"trials", "timeout_s", "overrides", "workspace"} == set(dep.parameter_openapi_schema["properties"])
