"""Inference/evaluation preprocessing shared by every stage that feeds a model.

``preprocess_batch(images, spec)``: uint8 RGB images -> float32 NCHW at the spec's
``input_size`` (antialiased bilinear resize, no crop, like the training
cache), scaled to [0, 1] and normalised with the spec's ``mean``/``std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fashionops.errors import DataError
from fashionops.models.spec import ModelSpec


def _to_hwc3(image: np.ndarray | torch.Tensor, index: int) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        t = image
    else:
        arr = np.asarray(image)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.ndim == 2:  # greyscale
        t = t.unsqueeze(-1)
    if t.ndim != 3:
        raise DataError(f"image {index}: expected HxWx3 pixels, got shape {tuple(t.shape)}")
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    elif t.shape[-1] == 4:  # RGBA: drop alpha
        t = t[..., :3]
    elif t.shape[-1] != 3:
        raise DataError(f"image {index}: expected 1, 3 or 4 channels last, got shape {tuple(t.shape)}")
    return t


def _scale(t: torch.Tensor) -> torch.Tensor:
    # uint8 -> [0, 1]; float input is taken as already in [0, 1].
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.is_floating_point():
        return t.float()
    raise DataError(f"images must be uint8 (or float in [0, 1]), got {t.dtype}")


def preprocess_batch(
    images: np.ndarray | torch.Tensor | Sequence[np.ndarray],
    spec: ModelSpec,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """uint8 NHWC array/tensor (or a list of HxWx3 arrays of any size) -> normalised float32 NCHW.

    The result has shape ``(N, 3, *spec.input_size)`` on ``device``
    (default CPU). Greyscale and RGBA inputs are converted to RGB.
    """
    height, width = spec.input_size
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = np.array(images)  # e.g. a slice of np.load(mmap_mode="r"); torch wants writable memory
        t = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
        if t.shape[-1] not in (1, 3, 4):
            raise DataError(f"images: expected NHWC with 3 channels last, got shape {tuple(t.shape)}")
        if t.shape[-1] == 1:
            t = t.expand(-1, -1, -1, 3)
        elif t.shape[-1] == 4:
            t = t[..., :3]
        if device is not None:
            t = t.to(device)
        batch = _scale(t).permute(0, 3, 1, 2)
        if tuple(batch.shape[-2:]) != (height, width):
            batch = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    else:
        items = [images] if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3 else list(images)
        if not items:
            return torch.empty(0, 3, height, width, device=device)
        resized = []
        for i, image in enumerate(items):
            t = _to_hwc3(image, i)
            if device is not None:
                t = t.to(device)
            x = _scale(t).permute(2, 0, 1).unsqueeze(0)
            if tuple(x.shape[-2:]) != (height, width):
                x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
            resized.append(x)
        batch = torch.cat(resized)
    batch = (batch - mean.to(batch.device)) / std.to(batch.device)
    return batch.contiguous()
