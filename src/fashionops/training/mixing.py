"""Mixup and CutMix of a training batch (``train.augment.mixup_alpha`` / ``cutmix_alpha``).

Both pair each image with a partner from the same batch (the batch reversed: the sampler has
already shuffled it) and train on ``lam * loss(own label) + (1 - lam) * loss(partner's label)``.
Mixup blends the two whole images; CutMix pastes a box of the partner whose area is ``1 - lam``
(``lam`` is corrected to the box actually pasted after clipping at the border). One ``lam`` per
batch, drawn from Beta(alpha, alpha) as in both papers' reference code. When both are on, each
mixed batch uses one of them, chosen at random.

The draws come from torch's global generator, which the train stage seeds (``train.seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fashionops.config import AugmentConfig


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch: the images to train on, each one's partner and its own label's weight."""

    images: torch.Tensor
    partner: torch.Tensor  # index into the batch of each image's partner
    lam: float  # weight of each image's own label; the partner's label gets 1 - lam
    mode: str  # "mixup" | "cutmix"


def mixing_enabled(augment: AugmentConfig) -> bool:
    """Whether any training batch can be mixed."""
    return (augment.mixup_alpha > 0 or augment.cutmix_alpha > 0) and augment.mix_prob > 0


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of area ~``1 - lam`` around a uniform centre, clipped."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, ()).item())
    cx = int(torch.randint(width, ()).item())
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def mix_batch(images: torch.Tensor, augment: AugmentConfig) -> MixedBatch | None:
    """Mix a batch of NCHW training images, or None to train on it as it is (mixing off, a batch
    of one, or this batch not drawn: ``augment.mix_prob``)."""
    modes = [
        (name, alpha) for name, alpha in (("mixup", augment.mixup_alpha), ("cutmix", augment.cutmix_alpha)) if alpha > 0
    ]
    if not modes or images.shape[0] < 2:
        return None
    if augment.mix_prob < 1 and torch.rand(()).item() >= augment.mix_prob:
        return None
    name, alpha = modes[int(torch.randint(len(modes), ()).item())] if len(modes) > 1 else modes[0]
    lam = float(torch.distributions.Beta(alpha, alpha).sample().item())
    partner = torch.arange(images.shape[0] - 1, -1, -1, device=images.device)
    if name == "mixup":
        mixed = images * lam + images[partner] * (1.0 - lam)
        return MixedBatch(mixed, partner, lam, name)
    height, width = images.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[partner, :, top:bottom, left:right]  # gathers the box only
    pasted = (bottom - top) * (right - left) / (height * width)
    return MixedBatch(mixed, partner, 1.0 - pasted, name)
