"""The command line's contract (issue #19): every option says what it does and its default,
``--version`` works, commands that read images fail at once on a bad input (before any model or
MLflow store is touched), a mistyped key/preset/command gets a "did you mean", and
``params --presets`` tells what each preset reproduces. Real parser, real subprocesses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import REPO
from fashionops.cli import HelpFormatter, build_parser, main
from fashionops.config import ConfigError, list_presets, load_params, preset_info


def _parsers(parser: argparse.ArgumentParser, name: str = "fashionops") -> list[tuple[str, argparse.ArgumentParser]]:
    """``parser`` and every subcommand's parser below it, with their command lines."""
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += _parsers(sub, f"{name} {sub_name}")
    return out


def test_every_option_of_every_command_has_help_and_shows_its_default():
    parsers = _parsers(build_parser())
    assert len(parsers) > 20  # every subcommand, the nested refresh/stack steps too
    missing = []
    for command, parser in parsers:
        formatter = HelpFormatter(command)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            what = f"{command} {'/'.join(action.option_strings) or action.dest}"
            text = formatter._get_help_string(action) or ""
            if not action.help:
                missing.append(f"{what}: no help")
            elif action.option_strings and action.nargs != 0 and "default" not in text and "(required)" not in text:
                missing.append(f"{what}: no default shown")
            elif action.nargs == 0 and action.default not in (False, None):
                missing.append(f"{what}: a flag on by default")  # flags are off unless given
    assert not missing, "\n".join(missing)


def test_help_output_shows_defaults_and_required():
    out = subprocess.run(
        [sys.executable, "-m", "fashionops.cli", "pull", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flat = " ".join(out.split())
    assert "--alias ALIAS registry alias of the pair to download (default: champion)" in flat
    assert "(replaced) (required)" in flat
    serve = subprocess.run(
        [sys.executable, "-m", "fashionops.cli", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "(default: serve.port, 8000)" in " ".join(serve.split())


def test_version_prints_the_installed_version():
    proc = subprocess.run([sys.executable, "-m", "fashionops.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fashionops {version('fashionops')}"


def _params_file(tmp_path: Path) -> tuple[Path, Path]:
    """A params file whose MLflow store is a SQLite file that does not exist yet."""
    store = tmp_path / "mlflow" / "mlflow.db"
    path = tmp_path / "params.yaml"
    path.write_text(
        f"tracking:\n  tracking_uri: sqlite:///{store}\n"
        f"paths:\n  index_dir: {tmp_path / 'no-index'}\n  classifier_dir: {tmp_path / 'no-model'}\n"
    )
    return path, store


@pytest.mark.parametrize("command", ["predict", "search"])
def test_bad_image_inputs_fail_before_any_model_is_loaded(tmp_path, shared_catalogue, command):
    params, store = _params_file(tmp_path)
    good = next((shared_catalogue / "images").glob("*.jpg"))
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    missing = tmp_path / "missing.jpg"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fashionops.cli",
            command,
            str(good),
            str(missing),
            str(text),
            str(tmp_path),
            "--params",
            str(params),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert f"{missing}: no such file" in lines[0]
    assert f"{text}: not an image" in lines[0]
    assert f"{tmp_path}: is a directory" in lines[0]
    assert str(good) not in lines[0]  # only the bad ones are named
    assert proc.stdout == ""  # nothing was scored
    # the model was never looked up: the MLflow store was not even created
    assert not store.exists() and not store.parent.exists()


def test_a_missing_file_alone_names_it(tmp_path):
    params, _ = _params_file(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "fashionops.cli", "predict", "nope.jpg", "--params", str(params)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert (proc.returncode, proc.stderr) == (1, "error: nope.jpg: no such file\n")


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.epoch=2", "train.epoch: unknown key (did you mean train.epochs?)"),
        ("trian.epochs=2", "trian: unknown key (did you mean train.epochs?)"),
        ("train.augment.hflp=true", "train.augment.hflp: unknown key (did you mean train.augment.hflip?)"),
        ("serv.port=9000", "serv: unknown key (did you mean serve.port?)"),
        ("train.preset=resnet18cbam", "unknown preset 'resnet18cbam' (did you mean resnet18_cbam?)"),
    ],
)
def test_unknown_keys_suggest_the_closest_one(override, suggestion, capsys):
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", [override])
    assert suggestion in str(err.value)
    assert main(["params", "--params", str(REPO / "params.yaml"), "--set", override]) == 1
    assert suggestion in capsys.readouterr().err


def test_nothing_close_suggests_nothing():
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", ["zzzz.qqq=1"])
    assert "zzzz: unknown key" in str(err.value) and "did you mean" not in str(err.value)


def test_mistyped_command_suggests_the_closest_one():
    proc = subprocess.run([sys.executable, "-m", "fashionops.cli", "prdict", "x.jpg"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'prdict'" in proc.stderr and "(did you mean predict?)" in proc.stderr


def test_params_presets_lists_what_each_reproduces(capsys):
    assert main(["params", "--presets"]) == 0
    out = capsys.readouterr().out
    for name in list_presets():
        info = preset_info(name)  # typed: both keys are required
        assert info.description and "\n" not in info.description and info.reproduces
        assert f"{name}\n    {info.description}\n    reproduces: {info.reproduces}" in out
    published = {
        "nasnetalarge": "93.19%",
        "resnet18_cbam": "macro-F1 0.93",
        "vit_b16_sa": "83%",
        "small_cnn": "85%",
        "vgg19": "92.5%",
        "resnet50": "92.15%",
    }
    for name, number in published.items():
        assert number in preset_info(name).reproduces, name
    assert preset_info("default").reproduces.startswith("none (ours)")
    # the info keys are not params: a preset still loads into the typed configuration
    assert load_params(REPO / "params.yaml", ["train.preset=nasnetalarge"]).train.input_height == 331
