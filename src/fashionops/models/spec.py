"""``ModelSpec``: the typed contents of ``model_spec.json``, the contract between training and inference.

Everything that rebuilds or feeds a trained model reads it from here: the architecture
(``task``, ``backbone``, ``attention``, ``head``, ...), the label space (``classes``,
``label_column``), and the input it expects (``input_height`` x ``input_width`` pixels,
normalised with ``mean``/``std``). The JSON file is unchanged: ``to_dict()`` writes the same keys.

Multi-attribute models (``prepare.labels``) add ``attributes``: the EXTRA heads in order,
attribute -> its classes, the primary label (``label_column``/``classes``) excluded. ``{}`` means
one head; it is then left out of ``model_spec.json``, so single-head spec files stay as they were.
The file keeps the heads' order as a list, ``[{"name": ..., "classes": [...]}, ...]`` (its keys are
sorted when written; the order of the heads is that of the weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fashionops.errors import FashionOpsError

SPEC_FILE = "model_spec.json"
SPEC_VERSION = 1


class ModelSpec(BaseModel):
    """What a saved model is and what input it takes (frozen: a spec describes weights on disk)."""

    # Unknown keys are kept, so a spec written by a newer version still loads and round-trips.
    model_config = ConfigDict(extra="allow", frozen=True)

    spec_version: int = SPEC_VERSION
    task: Literal["classifier", "autoencoder"] = "classifier"
    backbone: str
    attention: str = "none"
    cbam_reduction: int = 16
    cbam_kernel: int = 7
    head: str = "linear"
    head_hidden: int = 512
    dropout: float = 0.0
    latent_dim: int = 16
    num_classes: int = 0
    classes: list[str] = Field(default_factory=list)
    label_column: str = "articleType"
    input_height: int = Field(ge=1)
    input_width: int = Field(ge=1)
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    pretrained: str = "none"
    embedding_dim: int | None = None
    loss_kind: str | None = None
    # extra heads of a multi-attribute model, in order: attribute -> classes (primary excluded)
    attributes: dict[str, list[str]] = Field(default_factory=dict)
    # classify each image together with its mirror image (mean logits): evaluate, pyfunc, server
    # and batch scoring all classify through the Predictor, which honours it
    flip_tta: bool = False
    # the prepared cache's size the model was trained from (None: its input size): single images
    # are resized to it first, as prepare did, then to the input size on the tensor, as training did
    cache_height: int | None = None
    cache_width: int | None = None

    @field_validator("attributes", mode="before")
    @classmethod
    def _heads_in_order(cls, value: Any) -> Any:
        """``model_spec.json``'s list of ``{"name", "classes"}`` -> the ordered dict (a dict passes)."""
        if isinstance(value, list):
            try:
                return {str(head["name"]): head["classes"] for head in value}
            except (TypeError, KeyError) as exc:
                raise ValueError('expected a list of {"name": ..., "classes": [...]}') from exc
        return value

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels of the images the model takes."""
        return self.input_height, self.input_width

    @property
    def pixel_size(self) -> tuple[int, int]:
        """``(height, width)`` of the uint8 images the model is fed (the cache's; see ``cache_height``)."""
        if self.cache_height and self.cache_width:
            return self.cache_height, self.cache_width
        return self.input_size

    @property
    def is_classifier(self) -> bool:
        return self.task == "classifier"

    @property
    def attribute_names(self) -> list[str]:
        """Every attribute the model tags, the primary label first."""
        return [self.label_column, *self.attributes]

    @property
    def all_classes(self) -> dict[str, list[str]]:
        """attribute -> classes for every head, the primary first (in ``attribute_logits`` order)."""
        return {self.label_column: list(self.classes), **{a: list(c) for a, c in self.attributes.items()}}

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict of ``model_spec.json`` (extra keys included; no ``attributes`` when single-head)."""
        data = self.model_dump()
        heads = data.pop("attributes", None)
        if heads:  # a list: json.dumps(sort_keys=True) would reorder a dict, not the heads' weights
            data["attributes"] = [{"name": name, "classes": classes} for name, classes in heads.items()]
        return data

    def updated(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied and validated."""
        return ModelSpec.model_validate({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "model spec") -> ModelSpec:
        """Validate a spec dict; errors name ``origin`` and the bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise FashionOpsError(f"{origin}: {key}: {err['msg']}") from None

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelSpec:
        """``model_spec.json`` of a saved model directory."""
        path = Path(model_dir) / SPEC_FILE
        if not path.is_file():
            raise FashionOpsError(
                f"no {SPEC_FILE} in {model_dir}: not a saved fashionops model (run `fashionops train`)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise FashionOpsError(f"{path}: invalid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise FashionOpsError(f"{path}: expected a JSON object")
        return cls.from_dict(data, str(path))

    def to_json(self) -> str:
        """The text of ``model_spec.json`` (sorted keys, as always written)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
