"""The search space of ``sweep.space``: which params may be swept, the check that every one is a
real, valid param (before the first trial), Optuna's suggestion per trial, and the ``--set``
overrides that apply a trial's values exactly like ``fashionops train --set section.key=value``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import yaml

from fashionops.config import load_params
from fashionops.config_operations import SweepConfig, SweepParam
from fashionops.errors import ConfigError

# Every trial trains on the workspace's prepared split: only what training reads can change.
SWEEPABLE_SECTIONS = ("train.",)
SWEEPABLE_KEYS = ("prepare.balance",)  # read by training (loss weights / sampler), not by prepare


def value_text(value: Any) -> str:
    """``value`` as YAML text that loads back to exactly ``value`` (``1e-05`` -> ``1.0e-05``)."""
    return yaml.safe_dump(value, default_flow_style=True).splitlines()[0]


def space_overrides(values: dict[str, Any]) -> list[str]:
    """``{"train.lr": 0.001}`` -> ``["train.lr=0.001"]``: a trial's values as ``--set`` overrides."""
    return [f"{key}={value_text(value)}" for key, value in values.items()]


def _probe_values(spec: SweepParam) -> list[Any]:
    """The values that bound what a dimension can suggest: its ends, or every choice."""
    if spec.type == "categorical":
        return list(spec.choices)
    assert spec.low is not None and spec.high is not None  # SweepParam checked it
    if spec.type == "int":
        return [int(spec.low), int(spec.high)]
    return [float(spec.low), float(spec.high)]


def check_space(cfg: SweepConfig, params_path: str | Path, overrides: list[str]) -> None:
    """Refuse a space that is empty or names a key that is not a sweepable param, or whose range
    reaches values the param does not accept; one line naming ``sweep.space.<key>``."""
    if not cfg.space:
        raise ConfigError(f"{params_path}: sweep.space is empty; declare e.g. `train.lr: {{type: float, ...}}`")
    for key, spec in cfg.space.items():
        where = f"{params_path}: sweep.space.{key}"
        if not (key.startswith(SWEEPABLE_SECTIONS) or key in SWEEPABLE_KEYS):
            raise ConfigError(
                f"{where}: only train.* params (and prepare.balance) can be swept: "
                "every trial trains on the workspace's prepared data"
            )
        for value in _probe_values(spec):
            try:
                load_params(params_path, [*overrides, f"{key}={value_text(value)}"])
            except ConfigError as exc:
                # load_params lists its findings below a heading: keep the one about this key
                details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
                raise ConfigError(f"{where} = {value!r}: {'; '.join(details)}") from None


def suggest(trial: optuna.Trial, space: dict[str, SweepParam]) -> dict[str, Any]:
    """The trial's value of every dimension (Optuna's TPE suggestions), in the space's order."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.type == "categorical":
            values[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            assert spec.low is not None and spec.high is not None
            values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
        else:
            assert spec.low is not None and spec.high is not None
            values[key] = trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log)
    return values


def describe(spec: SweepParam) -> str:
    """A dimension as one MLflow param value: ``float [0.0001, 0.003] log`` or ``categorical [a, b]``."""
    if spec.type == "categorical":
        return f"categorical {list(spec.choices)}"
    return f"{spec.type} [{spec.low}, {spec.high}]" + (" log" if spec.log else "")
