"""A run's parameters, written into the workspace's ``params.yaml``.

The flows' typed parameters (:data:`RUN_PARAMETERS`: each one names the ``params.yaml`` key it
sets) become ``section.key=value`` overrides (:func:`flow_overrides`), validated by
:mod:`fashionops.config` and written into ``params.yaml`` with comments and layout kept
(:func:`apply_overrides`, what ``dvc exp run -S`` does), so DVC sees them as changed params and
reruns exactly the stages they affect.

The Prefect form of a deployment shows each parameter with its type, bounds and choices (config.py's
own, :data:`Label`, :data:`Epochs`, ...) and, as its default, the value in the checkout's
``params.yaml`` when the deployment was made (:func:`run_defaults`). A value left at a default the
form showed is not written, so the workspace's ``params.yaml`` decides, even after it was edited
(:func:`flow_overrides`'s ``untouched``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, get_args

import yaml
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from fashionops.config import Attribute, ConfigError, Params, list_presets, load_params, parse_override

NO_PRESET = "none"  # the form's choice for `train.preset: null` (a form field has no null)
ALL_IMAGES = 0  # the form's value for `data.limit: null`: the whole catalogue


def _config_field(key: str) -> FieldInfo:
    """config.py's field of ``section.key`` (its type, default and bounds)."""
    section, name = key.split(".")
    model: type[BaseModel] = Params.model_fields[section].annotation  # type: ignore[assignment]
    return model.model_fields[name]


def _choices(key: str) -> tuple[str, ...]:
    """The choices config.py allows for ``section.key`` (its Literal)."""
    return tuple(get_args(_config_field(key).annotation))


def _minimum(key: str) -> int:
    """The lower bound config.py enforces on ``section.key`` (its ``Field(ge=...)``)."""
    return next(int(m.ge) for m in _config_field(key).metadata if hasattr(m, "ge"))


# The form's types: config.py's choices and bounds (one source of truth); plain types for mypy.
if TYPE_CHECKING:
    Label: TypeAlias = str
    Attributes: TypeAlias = list[str]
    Balance: TypeAlias = str
    PresetName: TypeAlias = str
    MinImages: TypeAlias = int
    Epochs: TypeAlias = int
    ImageSize: TypeAlias = int
    DataLimit: TypeAlias = int
else:
    Label = Literal[_choices("prepare.label")]
    Attributes = list[Literal[get_args(Attribute)]]  # prepare.labels: a multi-select in the form
    Balance = Literal[_choices("prepare.balance")]
    PresetName = Literal[(NO_PRESET, *list_presets())]
    MinImages = Annotated[int, Field(ge=_minimum("prepare.min_images_per_class"))]
    Epochs = Annotated[int, Field(ge=_minimum("train.epochs"))]
    ImageSize = Annotated[int, Field(ge=_minimum("prepare.image_height"))]
    DataLimit = Annotated[int, Field(ge=ALL_IMAGES)]


@dataclass(frozen=True)
class RunParameter:
    """A flow parameter that sets one ``params.yaml`` key."""

    key: str  # section.key
    null: Any = None  # the form's stand-in for the key's null (None: the key has no null)


RUN_PARAMETERS: dict[str, RunParameter] = {
    "label": RunParameter("prepare.label"),
    "labels": RunParameter("prepare.labels"),
    "min_images_per_class": RunParameter("prepare.min_images_per_class"),
    "backbone": RunParameter("train.backbone"),
    "preset": RunParameter("train.preset", null=NO_PRESET),
    "epochs": RunParameter("train.epochs"),
    "image_height": RunParameter("prepare.image_height"),
    "image_width": RunParameter("prepare.image_width"),
    "balance": RunParameter("prepare.balance"),
    "promote": RunParameter("register.promote"),
    "data_limit": RunParameter("data.limit", null=ALL_IMAGES),
}


def run_defaults(params_path: str | Path) -> dict[str, Any]:
    """The run parameters' values in ``params_path`` as the form shows them (null as
    :data:`NO_PRESET` / :data:`ALL_IMAGES`): the flow's signature defaults. A missing file gives
    config.py's defaults; an invalid one raises ``ConfigError``."""
    path = Path(params_path)
    tree: dict[str, Any] = {}
    if path.is_file():
        load_params(path)  # a typo or a wrong type: ConfigError naming the key
        tree = yaml.safe_load(path.read_text()) or {}
    # The file's own values, not its preset's: those are what an override replaces.
    flat = Params.model_validate(tree).flat()
    out: dict[str, Any] = {}
    for name, parameter in RUN_PARAMETERS.items():
        value = flat[parameter.key]
        out[name] = parameter.null if value is None else value
    return out


def flow_overrides(
    extra: list[str] | None = None, untouched: Sequence[Mapping[str, Any]] = (), **values: Any
) -> list[str]:
    """``section.key=value`` overrides for the run parameters in ``values`` (names of
    :data:`RUN_PARAMETERS`), then ``extra``.

    A value equal to its default in one of ``untouched`` (the defaults the form showed: the flow's
    signature defaults, the deployment's recorded ones) is left out, so the workspace's
    ``params.yaml`` keeps its value, even when it was edited after the deployment was made. Also
    left out: None (the old "keep params.yaml").
    """
    out: list[str] = []
    for name, value in values.items():
        if name not in RUN_PARAMETERS:
            raise ConfigError(f"unknown run parameter {name!r}; known: {', '.join(RUN_PARAMETERS)}")
        if value is None or any(name in defaults and defaults[name] == value for defaults in untouched):
            continue
        parameter = RUN_PARAMETERS[name]
        written = None if parameter.null is not None and value == parameter.null else value
        out.append(f"{parameter.key}={json.dumps(written)}")
    return out + list(extra or [])


def apply_overrides(workspace: str | Path, overrides: list[str]) -> dict[str, list[Any]]:
    """Write ``overrides`` into ``<workspace>/params.yaml`` keeping comments and layout.

    Validated first with :func:`fashionops.config.load_params` (a typo or a wrong type raises
    ``ConfigError`` naming the key and nothing is written). Returns ``{"section.key": [old, new]}``
    for the values that actually changed (DVC only reruns stages whose params changed).
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    path = Path(workspace) / "params.yaml"
    if not overrides:
        return {}
    load_params(path, overrides)  # raises ConfigError before anything is written
    yaml = YAML()  # round-trip: comments, key order and flow style are kept
    yaml.preserve_quotes = True
    yaml.width = 4096
    # Write None as `null` like the file does, not as an empty value.
    yaml.representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    data = yaml.load(path.read_text()) if path.is_file() else None
    if data is None:
        data = CommentedMap()
    changed: dict[str, list[Any]] = {}
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        old = node.get(parts[-1], None)
        if old != value or parts[-1] not in node:
            node[parts[-1]] = value
            changed[".".join(parts)] = [_plain(old), value]
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as fh:
            yaml.dump(data, fh)
        os.replace(tmp, path)  # never a half-written params.yaml
    return changed


def _plain(value: Any) -> Any:
    """ruamel's commented containers as plain JSON-able values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def workspace_params(workspace: str | Path) -> Params:
    """The workspace's ``params.yaml`` (paths in it are relative to the workspace)."""
    return load_params(Path(workspace) / "params.yaml")


def workspace_path(workspace: str | Path, path: str | Path) -> Path:
    """A path from ``params.yaml`` as seen from outside the workspace (absolute paths as they are)."""
    p = Path(path)
    return p if p.is_absolute() else Path(workspace) / p
