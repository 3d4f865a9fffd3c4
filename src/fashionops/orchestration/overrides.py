"""A run's parameters, written into the workspace's ``params.yaml``.

A flow's typed parameters become ``section.key=value`` overrides (:func:`flow_overrides`),
validated by :mod:`fashionops.config` and written into ``params.yaml`` with comments and layout
kept (:func:`apply_overrides`, what ``dvc exp run -S`` does), so DVC sees them as changed params
and reruns exactly the stages they affect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fashionops.config import Params, load_params, parse_override


def flow_overrides(
    label: str | None = None,
    min_images_per_class: int | None = None,
    backbone: str | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    image_height: int | None = None,
    image_width: int | None = None,
    balance: str | None = None,
    promote: bool | None = None,
    data_limit: int | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """``section.key=value`` overrides for the run parameters that are set (None: keep params.yaml)."""
    mapping = (
        ("prepare.label", label),
        ("prepare.min_images_per_class", min_images_per_class),
        ("train.backbone", backbone),
        ("train.preset", preset),
        ("train.epochs", epochs),
        ("prepare.image_height", image_height),
        ("prepare.image_width", image_width),
        ("prepare.balance", balance),
        ("register.promote", promote),
        ("data.limit", data_limit),
    )
    out = [f"{key}={json.dumps(value)}" for key, value in mapping if value is not None]
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
