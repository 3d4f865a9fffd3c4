"""The typed configuration: params.yaml, presets and --set overrides, validated alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fashionops.cli import main
from fashionops.config import ConfigError, Params, list_presets, load_params, parse_override

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_file_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    # every key of the model is spelled out in params.yaml, so users see every knob
    assert set(on_disk) == set(Params.model_fields)
    for section, values in params.to_dict().items():
        assert set(on_disk[section]) == set(values), section


def test_paths_section_holds_every_location():
    params = load_params(REPO / "params.yaml", ["paths.reports_dir=out", "paths.prepared_dir=/tmp/p"])
    assert params.paths.reports("train") == Path("out/train")
    assert params.paths.run_file == Path("out/train/mlflow_run.json")
    assert params.paths.prepared_dir == "/tmp/p"
    # the locations live only in `paths` now: the old per-stage keys are unknown
    for old in (
        "data.raw_dir",
        "validate.facts_path",
        "prepare.out_dir",
        "train.out_dir",
        "train.report_dir",
        "evaluate.out_dir",
        "index.out_dir",
        "index.report_dir",
        "register.out_path",
    ):
        with pytest.raises(ConfigError, match=f"{old}: unknown key"):
            load_params(REPO / "params.yaml", [f"{old}=x"])


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epochz=3", "train.epochz: unknown key"),
        ("train.epochs=abc", "train.epochs"),
        ("nope.key=1", "nope: unknown key"),
        ("prepare.label=colour", "prepare.label"),
        ("train.augment.flip=true", "train.augment.flip: unknown key"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", [override])
    assert needle in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="train.learning_rate: unknown key"):
        load_params(path)


def test_overrides_are_parsed_as_yaml_and_nested():
    params = load_params(
        REPO / "params.yaml",
        ["train.epochs=7", "train.augment.hflip=false", "prepare.include=[Tshirts, Shirts]", "data.limit=null"],
    )
    assert params.train.epochs == 7 and params.train.augment.hflip is False
    assert params.prepare.include == ["Tshirts", "Shirts"] and params.data.limit is None
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert load_params(REPO / "params.yaml", ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="section.key"):
        parse_override("epochs=3")


def test_preset_applies_under_set_overrides():
    params = load_params(REPO / "params.yaml", ["train.preset=resnet18_cbam", "train.epochs=1"])
    assert params.train.backbone == "resnet18" and params.train.attention == "cbam"
    assert params.prepare.balance == "weighted_sampler"  # presets may set their data needs
    assert params.train.epochs == 1  # --set wins over the preset
    with pytest.raises(ConfigError, match="unknown preset"):
        load_params(REPO / "params.yaml", ["train.preset=nope"])


def test_every_published_system_has_a_preset():
    expected = {
        "vit_b16_sa",
        "alexnet",
        "alexnet_shallow",
        "alexnet_deep",
        "alexnet_svm",
        "alexnet_cbam",
        "resnet18_cbam",
        "vgg19",
        "small_cnn",
        "efficientnetv2_m",
        "nasnetalarge",
        "resnet50",
        "xception",
        "inception_v3",
        "densenet201",
        "conv_autoencoder",
        "resnet50_autoencoder",
        "default",
        "gpu",
    }
    assert expected <= set(list_presets())


def test_cli_reports_config_errors_with_exit_status_1(capsys):
    assert main(["params", "--set", "train.epochz=1"]) == 1
    assert "train.epochz: unknown key" in capsys.readouterr().err
    assert main(["params", "--set", "train.epochs=4"]) == 0
    assert "epochs: 4" in capsys.readouterr().out
