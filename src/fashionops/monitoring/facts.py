"""Simple facts of an image as decoded (HxWx3 uint8 RGB), the ones drift monitoring compares:
size, brightness (mean luma), contrast (luma standard deviation) and colourfulness.

Colourfulness is the Hasler–Süsstrunk metric (2003): with ``rg = R - G`` and
``yb = (R + G) / 2 - B``, ``sqrt(std_rg² + std_yb²) + 0.3 * sqrt(mean_rg² + mean_yb²)``
(0 for a grey image, ~100+ for a very colourful one). Luma is ITU-R BT.601
(``0.299 R + 0.587 G + 0.114 B``), 0..255.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Large uploads are subsampled by a stride to at most this many pixels per side: the means and
# standard deviations barely move, and a 2400x1800 photo costs a millisecond, not tens.
_MAX_SIDE = 256


class ImageFacts(NamedTuple):
    height: int
    width: int
    brightness: float
    contrast: float
    colourfulness: float


FACT_NAMES = ("height", "width", "brightness", "contrast", "colourfulness")


def image_facts(image: np.ndarray) -> ImageFacts:
    """The facts of one HxWx3 (or HxW grey) uint8 image; ``height``/``width`` are the full size."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    height, width = int(arr.shape[0]), int(arr.shape[1])
    step = max(1, -(-max(height, width) // _MAX_SIDE))  # ceil division
    rgb = arr[::step, ::step, :3].astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    rg = r - g
    yb = 0.5 * (r + g) - b
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    return ImageFacts(height, width, float(luma.mean()), float(luma.std()), colourfulness)
