"""The Prefect form of the flows (issue #19): real types, params.yaml's values as defaults, config.py's
bounds and choices; a value left as the form showed it keeps params.yaml's; a run that changes
nothing saves no DVC experiment and publishes no registration."""

from __future__ import annotations

import json
import shutil
from typing import get_args

import pytest
import yaml
from _workspace import REPO, copy_workspace, dvc

from fashionops.config import ConfigError, PrepareConfig, TrainConfig, list_presets, load_params
from fashionops.orchestration.overrides import (
    ALL_IMAGES,
    NO_PRESET,
    RUN_PARAMETERS,
    apply_overrides,
    flow_overrides,
    run_defaults,
)
from fashionops.orchestration.runner import PUSHED_MARKER, push_unless_pushed, stage_env


def _schema(fn) -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(fn).model_dump_for_openapi()


def _file_value(params: dict, key: str):
    section, name = key.split(".")
    return params[section][name]


def test_form_has_real_types_defaults_from_params_yaml_and_config_bounds(flow_modules):
    tp, ir = flow_modules
    props = _schema(tp.training_pipeline)["properties"]
    for fn in (tp.training_pipeline, ir.index_refresh):  # no "str | None" toggles anywhere
        text = json.dumps(_schema(fn))
        assert "anyOf" not in text and '"null"' not in text, text
    assert all(prop.get("description") for prop in props.values())  # the docstring's Args
    # the defaults are this checkout's params.yaml values (null shown as "none" / 0)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, parameter in RUN_PARAMETERS.items():
        value = _file_value(params, parameter.key)
        assert props[name]["default"] == (parameter.null if value is None else value), name
    assert {name: props[name]["type"] for name in ("epochs", "promote", "backbone", "overrides")} == {
        "epochs": "integer",
        "promote": "boolean",
        "backbone": "string",
        "overrides": "array",
    }
    # choices: config.py's Literals and the shipped presets
    assert tuple(props["label"]["enum"]) == get_args(PrepareConfig.model_fields["label"].annotation)
    assert tuple(props["balance"]["enum"]) == get_args(PrepareConfig.model_fields["balance"].annotation)
    assert "oversample" in props["balance"]["enum"] and "subCategory" in props["label"]["enum"]
    assert props["preset"]["enum"] == [NO_PRESET, *list_presets()] and "small_cnn" in props["preset"]["enum"]
    # minimums: exactly the bounds config.py enforces (the value below is refused, the minimum is not)
    for name in ("epochs", "min_images_per_class", "image_height", "image_width"):
        minimum, key = props[name]["minimum"], RUN_PARAMETERS[name].key
        load_params(REPO / "params.yaml", [f"{key}={minimum}"])
        with pytest.raises(ConfigError, match=key):
            load_params(REPO / "params.yaml", [f"{key}={minimum - 1}"])
    assert props["epochs"]["minimum"] == 1 and props["data_limit"]["minimum"] == ALL_IMAGES


def test_form_tags_several_attributes(flow_modules, tmp_path):
    """`labels`: a multi-select of config.py's attributes; a choice is written into params.yaml as
    the list `prepare.labels` (label stays the first head), leaving the default writes nothing."""
    from fashionops.config import Attribute
    from fashionops.orchestration.overrides import flow_overrides

    tp, _ = flow_modules
    prop = _schema(tp.training_pipeline)["properties"]["labels"]
    assert prop["type"] == "array" and tuple(prop["items"]["enum"]) == get_args(Attribute)
    assert prop["default"] == []
    assert flow_overrides(untouched=[{"labels": []}], labels=[]) == []
    requested = flow_overrides(untouched=[{"labels": []}], labels=["gender", "baseColour"])
    assert requested == ['prepare.labels=["gender", "baseColour"]']
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    assert apply_overrides(tmp_path, requested) == {"prepare.labels": [[], ["gender", "baseColour"]]}
    params = load_params(tmp_path / "params.yaml")
    assert params.prepare.attributes == ["articleType", "gender", "baseColour"]
    with pytest.raises(ConfigError, match="prepare.labels"):
        load_params(tmp_path / "params.yaml", ["prepare.labels=[gender, gender]"])


def test_run_defaults_follow_the_file(tmp_path):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path, ["train.epochs=7", "train.preset=small_cnn", "data.limit=500"])
    defaults = run_defaults(tmp_path / "params.yaml")
    # the file's own values, not its preset's (small_cnn trains 20 epochs)
    assert (defaults["epochs"], defaults["preset"], defaults["data_limit"]) == (7, "small_cnn", 500)
    assert run_defaults(tmp_path / "missing.yaml")["epochs"] == TrainConfig().epochs  # config.py's default
    (tmp_path / "params.yaml").write_text("train: {epoch: 3}\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        run_defaults(tmp_path / "params.yaml")


def test_a_value_left_as_the_form_showed_it_keeps_params_yaml(tmp_path):
    """The stale-default case: params.yaml edited after deploying; the form still shows the old
    values, and submitting it unchanged must not revert the newer ones."""
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    deployed = run_defaults(tmp_path / "params.yaml")  # what `prefect deploy` recorded
    edited = {"train.epochs": deployed["epochs"] + 4, "train.preset": "small_cnn", "data.limit": 500}
    apply_overrides(tmp_path, [f"{key}={json.dumps(value)}" for key, value in edited.items()])
    current = run_defaults(tmp_path / "params.yaml")  # the flow's signature defaults at run time
    before = (tmp_path / "params.yaml").read_text()

    # the form submitted as shown: nothing is written
    assert flow_overrides(untouched=[current, deployed], **deployed) == []
    assert flow_overrides(untouched=[current, deployed], **current) == []
    # one field changed: only that one is written; the edited values stay
    form = {**deployed, "label": "subCategory"}
    requested = flow_overrides(untouched=[current, deployed], **form)
    assert requested == ['prepare.label="subCategory"']
    assert apply_overrides(tmp_path, requested) == {"prepare.label": [deployed["label"], "subCategory"]}
    after = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert all(_file_value(after, key) == value for key, value in edited.items())
    assert len(before.splitlines()) == len((tmp_path / "params.yaml").read_text().splitlines())
    # "none" and 0 are the form's null: choosing them clears the preset and the sample limit
    cleared = flow_overrides(untouched=[current], preset=NO_PRESET, data_limit=ALL_IMAGES)
    assert cleared == ["train.preset=null", "data.limit=null"]
    assert set(apply_overrides(tmp_path, cleared)) == {"train.preset", "data.limit"}
    after = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert after["train"]["preset"] is None and after["data"]["limit"] is None
    # extra overrides always go through; a name that is no run parameter is an error
    assert flow_overrides(["train.lr=0.01"], untouched=[current], **current) == ["train.lr=0.01"]
    with pytest.raises(ConfigError, match="epoch"):
        flow_overrides(epoch=3)


def test_deployment_records_the_form_and_the_server_enforces_it(prefect_api, flow_modules):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    tp, _ = flow_modules
    deployment_id = tp.training_pipeline.to_deployment(name="form-test").apply()
    with get_client(sync_client=True) as client:
        props = client.read_deployment(deployment_id).parameter_openapi_schema["properties"]
        assert props["epochs"]["default"] == tp.FORM_DEFAULTS["epochs"] and props["epochs"]["minimum"] == 1
        assert props["label"]["enum"] == ["masterCategory", "subCategory", "articleType"]
        with pytest.raises(PrefectHTTPStatusError, match="epochs"):  # refused at submit, not after
            client.create_flow_run_from_deployment(deployment_id, parameters={"epochs": 0})
        with pytest.raises(PrefectHTTPStatusError, match="balance"):
            client.create_flow_run_from_deployment(deployment_id, parameters={"balance": "sometimes"})


def test_a_deployment_run_reads_the_defaults_its_form_showed(prefect_api, flow_modules):
    """``deployment_defaults()`` inside a run created from a deployment: the recorded defaults."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    tp, _ = flow_modules

    @flow(name="form-defaults-probe")
    def probe(epochs: int = 5, label: str = "subCategory") -> dict:
        return tp.deployment_defaults()

    assert probe() == {}  # not from a deployment
    deployment_id = probe.to_deployment(name="probe").apply()
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment_id, parameters={"epochs": 9})
    assert run_flow(probe, flow_run=run, parameters={"epochs": 9}) == {"epochs": 5, "label": "subCategory"}


def _experiments(ws) -> list[str]:
    return sorted(dvc("exp", "list", "--name-only", cwd=ws).stdout.split())


@pytest.mark.slow
def test_a_run_that_changes_nothing_saves_no_experiment_and_registers_nothing(
    trained_workspace, tmp_path, flow_modules
):
    """The trained workspace again, with no parameter given (as `make run` does): params.yaml is not
    written, every stage is skipped, no DVC experiment is saved, no registration is published."""
    from test_flows import _flow_artifacts

    ws = copy_workspace(trained_workspace[0], tmp_path / "ws")
    params = (ws / "params.yaml").read_text()
    experiments = _experiments(ws)
    assert "e2e-first" in experiments
    summary = flow_modules[0].training_pipeline(workspace=str(ws), experiment="e2e-noop")
    assert (ws / "params.yaml").read_text() == params and summary["params_changed"] == {}
    assert summary["ran"] == [] and summary["nothing_changed"] is True, summary["stages"]
    assert summary["dvc_experiment"] is None and summary["registered"] == [] and summary["register"] is None
    assert _experiments(ws) == experiments
    arts = _flow_artifacts(summary["flow_run_id"])
    assert "registration" not in arts and not any(key.startswith("registered-") for key in arts), sorted(arts)
    assert "evaluation-metrics" in arts  # the metrics of the model the workspace holds are still shown
    # dvc push: a run that changes nothing skips it once this dvc.lock reached the remote
    dvc("remote", "add", "team", str(tmp_path / "remote"), cwd=ws)
    env, lines = {**stage_env(), "FASHIONOPS_DVC_REMOTE": "team"}, []
    assert push_unless_pushed(str(ws), env, True, lines.append) == "team"  # never pushed there yet
    assert any((tmp_path / "remote").rglob("*")) and (ws / PUSHED_MARKER).is_file()
    assert push_unless_pushed(str(ws), env, True, lines.append) is None
    assert "nothing changed: dvc push skipped" in lines[-1]
    assert push_unless_pushed(str(ws), env, False, lines.append) == "team"  # a run that changed something
