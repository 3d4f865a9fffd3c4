"""The shipped presets: one YAML file per published system (``train.preset: <name>``).

A preset file holds ``prepare``/``train``/... sections applied over ``params.yaml`` (by
:func:`fashionops.config.load_params`) and two top-level keys that are not params: ``description``
(one line) and ``reproduces`` (the published result it reproduces), shown by
``fashionops params --presets``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fashionops.errors import ConfigError, did_you_mean

PRESETS_DIR = Path(__file__).parent


class PresetInfo(BaseModel):
    """What ``fashionops params --presets`` tells about a preset: the top-level ``description:`` and
    ``reproduces:`` keys of its file (not params: they are never merged into the configuration)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str  # one line: the model and how it is trained
    reproduces: str  # the published result it reproduces ("none" for our own profiles)


PRESET_INFO_KEYS = ("description", "reproduces")


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _read_preset(name: str) -> dict[str, Any]:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"train.preset: unknown preset {name!r}{did_you_mean(name, list_presets())}; "
            f"known: {', '.join(list_presets())}"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path}: expected a mapping of sections")
    return data


def load_preset(name: str) -> dict[str, Any]:
    """Sections of a preset file (e.g. ``{"train": {...}, "prepare": {...}}``), without its
    :class:`PresetInfo` keys."""
    return {k: v for k, v in _read_preset(name).items() if k not in PRESET_INFO_KEYS}


def preset_info(name: str) -> PresetInfo:
    """The ``description`` and ``reproduces`` of a shipped preset (validated: both are required)."""
    data = _read_preset(name)
    try:
        return PresetInfo.model_validate({"name": name, **{k: data.get(k) for k in PRESET_INFO_KEYS}})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"preset {PRESETS_DIR / name}.yaml: {problems}") from None
