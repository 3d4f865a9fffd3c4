"""MLflow's standard slots on real pipeline runs (issue #19, "Metrics and run comparison"): run name,
``mlflow.source.git.commit``, the prepared split as dataset inputs, no ``param_changed.*`` tags, the
model card as the registered versions' description, the experiment's kind, a pyfunc that loads
without MLflow's type-hint warning, and one MLflow run per candidate (an execution that changes
only evaluate/index settings gets its own run beside train's).

The tiny pipeline (``tiny_pipeline``) runs its stages by hand (no flow, no DVC experiment); the
slow test reruns the flow's workspace (``trained_workspace``) as a DVC experiment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _workspace import copy_workspace, dvc, git, mlflow_client, private_mlflow_experiment

REPO = Path(__file__).resolve().parents[2]
_SESSION = uuid.uuid4().hex[:8]


def _copy_params(tiny_pipeline, tmp: Path, link: tuple[str, ...], **register_names: str):
    """The tiny pipeline's params with a reports folder of its own (the stages in ``link`` are
    links to the pipeline's reports) and this module's registered-model names."""
    p = tiny_pipeline.model_copy(deep=True)
    reports = tmp / "reports"
    reports.mkdir(parents=True)
    for name in link:
        (reports / name).symlink_to(Path(tiny_pipeline.paths.reports_dir) / name, target_is_directory=True)
    p.paths.reports_dir = str(reports)
    p.register.classifier_name = register_names.get("classifier", f"slots-classifier-{_SESSION}")
    p.register.index_name = register_names.get("index", f"slots-search-{_SESSION}")
    return p


def _register(params):
    """The register stage as ``fashionops register`` calls it (all of params.yaml as run_config)."""
    from fashionops.registry.register import run_register

    return run_register(
        params.register, params.paths, params.tracking, embedder_dir=params.index.embedder_dir, run_config=params.flat()
    )


def _client(params):
    from mlflow.tracking import MlflowClient

    from fashionops.tracking import tracking_uri

    uri = tracking_uri(params.tracking)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def registered(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline registered as ``fashionops register`` does; (params, result)."""
    params = _copy_params(tiny_pipeline, tmp_path_factory.mktemp("slots"), ("train", "evaluate", "index"))
    return params, _register(params)


def test_train_run_carries_the_standard_slots(registered):
    params, result = registered
    client = _client(params)
    train_id = json.loads(params.paths.run_file.read_text())["run_id"]
    assert result["run_id"] == train_id  # same settings, by hand: the train run holds the results
    run = client.get_run(train_id)
    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head == tags["git_commit"]
    assert tags["mlflow.source.name"].endswith("/dvc.yaml")
    # by hand: train-<UTC date>-<time>-<short commit>, not MLflow's random adjective-animal-123
    assert re.fullmatch(rf"train-\d{{8}}-\d{{4}}-{head[:7]}", run.info.run_name), run.info.run_name
    # the register stage logged all of params.yaml over train's params: None and "" agree now
    assert [k for k in tags if k.startswith("param_changed.")] == []
    assert run.data.params["data.limit"] == ""
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_prepared_split_is_the_runs_dataset_input(registered):
    params, result = registered
    run = _client(params).get_run(result["run_id"])
    index = pd.read_parquet(Path(params.paths.prepared_dir) / "index.parquet")
    by_context = {}
    for item in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        by_context[context] = item.dataset
    assert sorted(by_context) == ["test", "train", "val"]
    for split, dataset in by_context.items():
        assert dataset.name == f"prepared-{split}"
        assert json.loads(dataset.source)["uri"] == str(Path(params.paths.prepared_dir).resolve())
        assert json.loads(dataset.profile)["num_rows"] == int((index["split"] == split).sum())
        assert "label" in dataset.schema


def test_registered_versions_describe_themselves_with_the_model_card(registered, tmp_path):
    params, result = registered
    client = _client(params)
    card = Path(client.download_artifacts(result["run_id"], "model_card.md", str(tmp_path))).read_text()
    assert card.startswith(f"# {params.register.classifier_name}\n") and "## Metrics" in card
    cls = client.get_model_version(params.register.classifier_name, result["classifier"]["version"])
    idx = client.get_model_version(params.register.index_name, result["index"]["version"])
    assert cls.description == card
    assert idx.description.startswith("Visual search") and idx.description.endswith(card)
    assert "mlflow.source" not in card  # the card's lineage names git_commit once


def test_other_evaluate_settings_get_their_own_candidate_run(tiny_pipeline, tmp_path, monkeypatch):
    """By hand: evaluate with another setting writes to a new run beside train's, which the same
    execution's register finds; train's run keeps its own settings and metrics."""
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("FASHIONOPS_FLOW_RUN_ID", raising=False)
    from fashionops.evaluation.stage import run_evaluate

    base = tiny_pipeline
    names = {"classifier": f"cand-c-{_SESSION}", "index": f"cand-i-{_SESSION}"}
    params = _copy_params(base, tmp_path, ("train", "index"), **names)
    params.evaluate.top_misclassified = base.evaluate.top_misclassified + 1
    client = _client(params)
    train_id = json.loads(params.paths.run_file.read_text())["run_id"]
    train_before = client.get_run(train_id).data

    first = run_evaluate(params.evaluate, params.paths, params.tracking)
    candidate_id = first["mlflow_run_id"]
    assert candidate_id != train_id
    again = run_evaluate(params.evaluate, params.paths, params.tracking)
    assert again["mlflow_run_id"] == candidate_id  # the same settings: the same candidate run
    assert _register(params)["run_id"] == candidate_id  # register logs the models into it

    candidate, train = client.get_run(candidate_id), client.get_run(train_id)
    assert candidate.data.tags["fashionops.train_run_id"] == train_id
    assert candidate.info.experiment_id == train.info.experiment_id
    assert re.fullmatch(r"evaluate-\d{8}-\d{4}-[0-9a-f]{7}", candidate.info.run_name), candidate.info.run_name
    # train's params and final metrics, so the compare view has every column
    assert candidate.data.params["train.epochs"] == train.data.params["train.epochs"]
    assert candidate.data.params["evaluate.top_misclassified"] == str(params.evaluate.top_misclassified)
    assert train.data.params["evaluate.top_misclassified"] == str(base.evaluate.top_misclassified)
    assert set(train.data.metrics) <= set(candidate.data.metrics)
    assert train.data.metrics == train_before.metrics  # the first candidate's numbers stay
    names = {i.dataset.name for i in candidate.inputs.dataset_inputs}
    assert names == {"prepared-train", "prepared-val", "prepared-test"}
    assert not [k for k in candidate.data.tags if k.startswith("param_changed.")]


def test_a_dvc_experiment_name_names_its_own_run(tiny_pipeline, tmp_path, monkeypatch):
    """Same settings, another execution (DVC_EXP_NAME): a candidate run named for it."""
    from fashionops.evaluation.stage import run_evaluate

    name = f"exp-{_SESSION}"
    monkeypatch.setenv("DVC_EXP_NAME", name)
    monkeypatch.delenv("FASHIONOPS_FLOW_RUN_ID", raising=False)
    params = _copy_params(tiny_pipeline, tmp_path, ("train", "index"))
    run_id = run_evaluate(params.evaluate, params.paths, params.tracking)["mlflow_run_id"]
    run = _client(params).get_run(run_id)
    assert run.info.run_name == name
    assert run.data.tags["fashionops.execution"] == name == run.data.tags["dvc_experiment"]
    assert run_id != json.loads(params.paths.run_file.read_text())["run_id"]


LOAD_AND_PREDICT = """
import sys, mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"image": [open(sys.argv[2], "rb").read()]}), params={"top_k": 2})
print("LABEL", out["label"][0])
"""


def test_loading_the_pyfunc_prints_no_type_hint_warning(tiny_pipeline, tmp_path, shared_catalogue):
    import mlflow

    from fashionops.registry.pyfunc import log_classifier

    exp = private_mlflow_experiment(tmp_path, "type-hints")
    with mlflow.start_run(experiment_id=exp):
        uri = log_classifier(tiny_pipeline.paths.classifier_dir, "classifier").model_uri
    image = next((shared_catalogue / "images").glob("*.jpg"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, uri, str(image)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LABEL " in proc.stdout
    assert "Add type hints" not in proc.stderr, proc.stderr
    assert "\x1b[" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_second_experiment_with_other_index_settings_is_a_second_run(trained_workspace, tmp_path):
    """The flow's run (named for its DVC experiment, DVC md5 as dataset digest), then `dvc exp run`
    with another index setting: index and register rerun into a new run beside train's, and both
    runs hold a full set of metrics to compare."""
    ws = copy_workspace(trained_workspace[0], tmp_path / "ws")
    client = mlflow_client(ws)
    first_id = json.loads((ws / "reports/train/mlflow_run.json").read_text())["run_id"]
    first = client.get_run(first_id)
    assert first.info.run_name == "e2e-first"
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    prepared_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "data/prepared")
    assert {i.dataset.digest for i in first.inputs.dataset_inputs} == {prepared_md5}
    assert first.data.tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD", cwd=ws).stdout.strip()
    assert not [k for k in first.data.tags if k.startswith("param_changed.")]

    git("add", "-A", cwd=ws)
    git("commit", "-q", "-m", "first candidate", cwd=ws)
    trees = int(first.data.params["index.n_trees"]) + 1
    dvc("exp", "run", "-S", f"index.n_trees={trees}", "-n", "more-trees", cwd=ws)
    second_id = json.loads((ws / "reports/register/result.json").read_text())["run_id"]
    assert second_id != first_id
    second, first = client.get_run(second_id), client.get_run(first_id)
    assert second.info.run_name == "more-trees"
    assert second.data.tags["fashionops.train_run_id"] == first_id
    assert second.data.params["index.n_trees"] == str(trees) != first.data.params["index.n_trees"]
    assert second.data.params["train.epochs"] == first.data.params["train.epochs"]
    assert set(first.data.metrics) <= set(second.data.metrics)
    assert {i.dataset.digest for i in second.inputs.dataset_inputs} == {prepared_md5}
    assert client.get_model_version_by_alias("fashion-classifier", "champion").run_id in (first_id, second_id)
