"""The Prefect flows over the DVC pipeline, on a real Prefect API (test harness), real DVC and a
real MLflow store, with a 300-image subset of the catalogue."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import pytest
import yaml
from _workspace import REPO, TINY, copy_workspace, dvc, git, make_workspace, mlflow_client

from fashionops.cli import main as fashionops_main
from fashionops.config import ConfigError
from fashionops.orchestration.failures import PipelineError, StageFailed, classify_failure, error_message
from fashionops.orchestration.lock import WorkspaceBusy, workspace_lock
from fashionops.orchestration.overrides import apply_overrides, flow_overrides
from fashionops.orchestration.refresh import format_result, result_line, run_refresh_step
from fashionops.orchestration.runner import STAGES, stage_env

# ------------------------------------------------------------------------------ fast: the skeleton


def test_apply_overrides_writes_params_keeping_comments(tmp_path):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    old = yaml.safe_load(before)
    new = {
        "prepare.label": "subCategory",
        "train.epochs": old["train"]["epochs"] + 1,
        "register.promote": not old["register"]["promote"],
        "data.limit": 500,
        "train.lr": old["train"]["lr"] / 2,
    }
    changed = apply_overrides(
        tmp_path,
        flow_overrides(
            label=new["prepare.label"],
            epochs=new["train.epochs"],
            promote=new["register.promote"],
            data_limit=new["data.limit"],
            extra=[f"train.lr={new['train.lr']}"],
        ),
    )
    assert changed == {key: [old[key.split(".")[0]][key.split(".")[1]], value] for key, value in new.items()}
    after = (tmp_path / "params.yaml").read_text()
    data = yaml.safe_load(after)
    assert all(data[key.split(".")[0]][key.split(".")[1]] == value for key, value in new.items())
    # comments and untouched lines survive; only the five values differ
    comments = [ln[ln.index("#") :] for ln in before.splitlines() if "#" in ln]
    assert all(c in after for c in comments)
    diff = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines()) and len(diff) == 5, diff
    # the same values again change nothing (DVC then has nothing to rerun)
    assert apply_overrides(tmp_path, [f"train.epochs={new['train.epochs']}"]) == {}


def test_apply_overrides_rejects_unknown_key_and_writes_nothing(tmp_path):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(ConfigError, match="train.epoch"):
        apply_overrides(tmp_path, ["train.epochs=2", "train.epoch=3"])
    with pytest.raises(ConfigError, match="prepare.balance"):
        apply_overrides(tmp_path, flow_overrides(balance="sometimes"))
    assert (tmp_path / "params.yaml").read_text() == before


def test_failure_classification():
    validation = [
        "Running stage 'validate':",
        "> fashionops validate",
        "error: 1 critical expectation(s) failed for data/raw (summary: s.json):",
        "  image_readable (image_facts): 1 unexpected; e.g. id 42 (truncated JPEG)",
        "ERROR: failed to reproduce 'validate': failed to run: fashionops validate, exited with 1",
    ]
    assert not classify_failure("validate", validation)
    assert error_message(validation).splitlines() == [
        "1 critical expectation(s) failed for data/raw (summary: s.json):",
        "image_readable (image_facts): 1 unexpected; e.g. id 42 (truncated JPEG)",
    ]
    io_error = ["Traceback (most recent call last):", '  File "x.py", line 1', "OSError: [Errno 5] Input/output error"]
    assert classify_failure("prepare", io_error)
    assert error_message(io_error) == "OSError: [Errno 5] Input/output error"
    tracking_down = [
        "mlflow.exceptions.MlflowException: API request to http://mlflow:5000/api/2.0/runs "
        "failed with exception HTTPConnectionPool: Max retries exceeded (Connection refused)"
    ]
    assert classify_failure("train", tracking_down)
    bad_param = ["error: invalid configuration in params.yaml:", "  train.epochs: unknown key"]
    assert not classify_failure("train", bad_param)
    assert not classify_failure("train", ["ValueError: shapes do not match"])


def test_command_output_keeps_its_level_in_the_run_log():
    import logging

    from fashionops.orchestration.tasks import line_level

    assert line_level("12:00:01 WARNING fashionops.data.validation.stage: 3 images below 60 px") == logging.WARNING
    assert line_level("ERROR: failed to reproduce 'validate'") == logging.ERROR  # DVC
    assert line_level("error: 1 critical expectation(s) failed") == logging.ERROR  # the fashionops CLI
    assert line_level("12:00:02 DEBUG fashionops.x: detail") == logging.DEBUG
    assert line_level("Running stage 'train':") == line_level("Error rate 0.1") == logging.INFO


def test_refresh_command_lists_its_steps(capsys):
    """`fashionops refresh` is a real subcommand (the index-refresh flow runs its two steps)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "fashionops.cli", "refresh", "--help"],
        capture_output=True,
        text=True,
        env=stage_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fetch-champion" in proc.stdout and "register-index" in proc.stdout
    for step, option in (("fetch-champion", "--dest"), ("register-index", "--classifier-version")):
        with pytest.raises(SystemExit) as exit_:
            fashionops_main(["refresh", step, "--help"])
        assert exit_.value.code == 0 and option in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        fashionops_main(["refresh"])  # a step is required
    assert exit_.value.code == 2


def test_result_line_round_trip():
    lines = ["downloading", format_result({"version": "3", "model_dir": Path("/m/classifier")}), "done"]
    assert result_line(lines) == {"version": "3", "model_dir": "/m/classifier"}
    with pytest.raises(PipelineError, match="no result printed: no champion"):
        result_line(["error: no champion"])


def test_refresh_step_fails_with_the_commands_own_error(tmp_path):
    """`fashionops refresh fetch-champion` in a workspace whose registry has no champion."""
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    with pytest.raises(StageFailed, match="no @champion version of fashion-classifier") as failed:
        run_refresh_step(["fetch-champion", "--dest", str(tmp_path / "embedder")], tmp_path, name="fetch-champion")
    assert failed.value.stage == "fetch-champion" and failed.value.returncode == 1
    assert not failed.value.transient and not (tmp_path / "embedder").exists()


def _stage_workspace(root: Path, stages: dict[str, str]) -> Path:
    """A git + DVC repo whose dvc.yaml has the given stage commands (no fashionops code)."""
    root.mkdir()
    git("init", "-q", cwd=root)
    dvc("init", "-q", cwd=root)
    (root / "params.yaml").write_text("train: {epochs: 1}\n")
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    name: {"cmd": cmd, "outs": [{f"{name}.out": {"cache": False}}]} for name, cmd in stages.items()
                }
            }
        )
    )
    return root


def test_stage_task_retries_transient_failure_but_not_validation(tmp_path, prefect_api, flow_modules):
    from prefect import flow

    from fashionops.orchestration.tasks import stage_task

    py = sys.executable
    # `train` fails once with an I/O error, then succeeds; `validate` always fails an expectation.
    flaky = (
        "import pathlib,sys; p=pathlib.Path('attempts'); n=int(p.read_text()) if p.exists() else 0; "
        "p.write_text(str(n+1)); "
        "(n==0) and sys.exit('OSError: [Errno 5] Input/output error: data/raw/1.jpg'); "
        "pathlib.Path('train.out').write_text('ok')"
    )
    failing = (
        "import pathlib,sys; p=pathlib.Path('vattempts'); "
        "p.write_text(p.read_text()+'x' if p.exists() else 'x'); "
        "sys.exit('error: 1 critical expectation(s) failed:\\n  image_readable: id 7 is truncated')"
    )
    ws = _stage_workspace(tmp_path / "ws", {"train": f'{py} -c "{flaky}"', "validate": f'{py} -c "{failing}"'})
    fast = stage_task.with_options(retry_delay_seconds=0, retry_jitter_factor=None)

    @flow
    def run_one(stage: str):
        return fast(stage, str(ws), stage_env())

    result = run_one("train")
    assert result["status"] == "ran"
    assert (ws / "attempts").read_text() == "2"  # one failure, one retry

    state = run_one("validate", return_state=True)
    assert state.is_failed()
    assert "image_readable: id 7 is truncated" in state.message
    assert (ws / "vattempts").read_text() == "x"  # never retried


def test_workspace_lock_waits_then_fails_with_a_clear_message(tmp_path, prefect_api, flow_modules):
    ws = make_workspace(tmp_path / "ws")
    with workspace_lock(ws, owner="flow run first"):
        with pytest.raises(WorkspaceBusy, match="flow run first"):
            with workspace_lock(ws, timeout_s=0.5):
                pass
        # a flow started meanwhile fails before touching params.yaml or any stage
        before = (ws / "params.yaml").read_text()
        state = flow_modules[0].training_pipeline(workspace=str(ws), epochs=2, lock_timeout_s=1, return_state=True)
        assert state.is_failed() and "another pipeline run holds" in state.message
        assert (ws / "params.yaml").read_text() == before
    # released: the next holder gets it at once; and a waiter gets it when the holder finishes
    held = threading.Event()
    release = threading.Event()

    def holder():
        with workspace_lock(ws, owner="thread"):
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    threading.Timer(0.5, release.set).start()
    with workspace_lock(ws, timeout_s=10):
        assert not t.is_alive() or release.is_set()
    t.join()


def test_flows_deploy_with_parameter_schema(prefect_api, flow_modules):
    from prefect.client.orchestration import get_client

    tp, ir = flow_modules
    ids = {}
    for fl, name in ((tp.training_pipeline, "test-training"), (ir.index_refresh, "test-refresh")):
        deployment = fl.to_deployment(name=name, description=fl.description, parameters={"workspace": str(REPO)})
        ids[name] = deployment.apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(ids["test-training"])
        props = dep.parameter_openapi_schema["properties"]
        assert dep.name == "test-training" and dep.parameters == {"workspace": str(REPO)}
        assert {
            "label",
            "min_images_per_class",
            "backbone",
            "preset",
            "epochs",
            "image_height",
            "image_width",
            "balance",
            "promote",
            "data_limit",
            "overrides",
            "workspace",
        } <= set(props)
        assert "masterCategory" in json.dumps(props["label"]) and "articleType" in props["label"]["description"]
        assert "oversample" in json.dumps(props["balance"])
        assert "integer" in json.dumps(props["epochs"]) and props["epochs"]["description"]
        assert "Validate, prepare, train" in dep.description
        refresh = client.read_deployment(ids["test-refresh"])
        assert {"source", "alias", "workspace"} <= set(refresh.parameter_openapi_schema["properties"])
        assert client.read_flow(dep.flow_id).name == "training-pipeline"


def test_prefect_yaml_deploys_every_flow(prefect_api, tmp_path):
    """`prefect deploy --all` with the project's prefect.yaml against the test server."""
    import os
    import subprocess

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {"training-pipeline", "index-refresh", "batch-scoring", "drift-report", "hpo-sweep"}
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = spec["deployments"][0]["work_pool"]["name"]
    with get_client(sync_client=True) as client:  # what `make ui` does: a local process pool
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("training-pipeline/training-pipeline")
        assert dep.work_pool_name == pool
        assert "epochs" in dep.parameter_openapi_schema["properties"]
        refresh = client.read_deployment_by_name("index-refresh/index-refresh")
        assert refresh.entrypoint == "flows/index_refresh.py:index_refresh"
        for name, entrypoint in [
            ("batch-scoring/batch-scoring", "flows/batch_scoring.py:batch_scoring"),
            ("drift-report/drift-report", "flows/drift_report.py:drift_report"),
            ("hpo-sweep/hpo-sweep", "flows/hpo_sweep.py:hpo_sweep"),
        ]:
            assert client.read_deployment_by_name(name).entrypoint == entrypoint


# ------------------------------------------------------------------------------ slow: end to end


def _flow_artifacts(flow_run_id: str) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in arts}


@pytest.mark.slow
def test_training_flow_end_to_end(trained_workspace):
    ws, summary = trained_workspace
    assert summary["imported"] is True and (ws / "data" / "raw.dvc").is_file()
    assert summary["ran"] == list(STAGES), summary["stages"]
    assert summary["dvc_experiment"] == "e2e-first"
    # DVC: every stage locked, outputs present
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(STAGES)
    for rel in (
        "data/prepared/images.npy",
        "models/classifier/weights.pt",
        "models/index/index.ann",
        "reports/evaluate/metrics.json",
        "reports/register/result.json",
    ):
        assert (ws / rel).is_file(), rel
    exps = json.dumps(json.loads(dvc("exp", "show", "--json", cwd=ws).stdout))
    assert "e2e-first" in exps
    # MLflow: the run is tagged with this flow run and the DVC experiment; both models registered
    client = mlflow_client(ws)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["prefect_flow_run_id"] == summary["flow_run_id"]
    assert run.data.tags["dvc_experiment"] == "e2e-first"
    register = json.loads((ws / "reports/register/result.json").read_text())
    assert register["decision"] == "promoted"
    cls = client.get_model_version_by_alias("fashion-classifier", "champion")
    idx = client.get_model_version_by_alias("fashion-visual-search", "champion")
    assert (str(cls.version), str(idx.version)) == (register["classifier"]["version"], register["index"]["version"])
    assert idx.tags["classifier_version"] == str(cls.version)
    assert {"name": "fashion-classifier", "version": str(cls.version)} in summary["registered"]
    assert summary["metrics"] and "test/macro_f1" in summary["metrics"]
    # Prefect artifacts of this flow run
    arts = _flow_artifacts(summary["flow_run_id"])
    assert {
        "validation-summary",
        "evaluation-metrics",
        "per-class-metrics",
        "mlflow-run",
        "registered-fashion-classifier",
        "registered-fashion-visual-search",
    } <= set(arts)
    assert summary["mlflow_run_id"] in arts["mlflow-run"].data


@pytest.mark.slow
def test_second_run_with_no_change_skips_every_stage(trained_workspace, tmp_path, flow_modules):
    ws = copy_workspace(trained_workspace[0], tmp_path / "ws")
    before = len(mlflow_client(ws).search_model_versions("name='fashion-classifier'"))
    summary = flow_modules[0].training_pipeline(workspace=str(ws), experiment="e2e-again", **TINY)
    assert summary["params_changed"] == {} and summary["imported"] is False
    assert summary["ran"] == [] and summary["skipped"] == list(STAGES), summary["stages"]
    assert len(mlflow_client(ws).search_model_versions("name='fashion-classifier'")) == before


@pytest.mark.slow
def test_validation_failure_fails_the_flow_and_registers_nothing(tmp_path, catalogue_300, prefect_api, flow_modules):
    catalogue = tmp_path / "catalogue"
    shutil.copytree(catalogue_300, catalogue)
    victim = sorted((catalogue / "images").glob("*.jpg"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # a truncated JPEG
    ws = make_workspace(tmp_path / "ws")
    state = flow_modules[0].training_pipeline(workspace=str(ws), source=str(catalogue), return_state=True, **TINY)
    assert state.is_failed()
    assert "stage 'validate' failed" in state.message and victim.stem in state.message, state.message
    assert "expectation" in state.message
    # nothing downstream ran, nothing registered
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"] if (ws / "dvc.lock").exists() else {}
    assert "prepare" not in lock and "register" not in lock
    assert not (ws / "reports/register/result.json").exists()
    if (ws / "mlflow" / "mlflow.db").exists():
        assert mlflow_client(ws).search_registered_models() == []
    # the failing expectation is shown in the UI
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        run = client.read_flow_runs(flow_run_filter=run_filter)[0]
    assert run.state.is_failed()
    arts = _flow_artifacts(str(run.id))
    assert victim.stem in arts["validation-summary"].data


@pytest.mark.slow
def test_index_refresh_registers_a_paired_index_without_retraining(trained_workspace, tmp_path, flow_modules):
    ws = copy_workspace(trained_workspace[0], tmp_path / "ws")
    client = mlflow_client(ws)
    champion = client.get_model_version_by_alias("fashion-classifier", "champion")
    old_index = client.get_model_version_by_alias("fashion-visual-search", "champion")
    n_classifiers = len(client.search_model_versions("name='fashion-classifier'"))
    weights = (ws / "models/classifier/weights.pt").read_bytes()
    summary = flow_modules[1].index_refresh(workspace=str(ws))
    assert summary["classifier"]["version"] == str(champion.version)
    new_index = client.get_model_version_by_alias("fashion-visual-search", "champion")
    assert int(new_index.version) > int(old_index.version) and str(new_index.version) == summary["index"]["version"]
    assert new_index.tags["classifier_version"] == str(champion.version)
    assert "champion" in summary["moved_aliases"]
    paired = client.get_model_version("fashion-classifier", str(champion.version)).tags["paired_index_version"]
    assert paired == str(new_index.version)
    # no retraining: no new classifier version, weights untouched, DVC outputs unchanged
    assert len(client.search_model_versions("name='fashion-classifier'")) == n_classifiers
    assert (ws / "models/classifier/weights.pt").read_bytes() == weights
    status = dvc("status", "--json", cwd=ws).stdout
    assert json.loads(status or "{}") == {}, status
