"""Feature extractors: any timm model, plus built-in CNNs from the published Fashion work.

A ``Backbone`` returns *unpooled* features so an attention module can sit on them:
``kind="map"`` -> ``(B, C, H, W)`` (CNNs), ``kind="tokens"`` -> ``(B, N, C)`` (ViT-style, with
``num_prefix_tokens`` class/register tokens first), ``kind="vector"`` -> ``(B, C)`` (``small_cnn``,
whose dense stack is part of the published architecture). ``backbone.model`` is the wrapped
network; pretrained weights are loaded onto it.

Built-ins (weights start random; ``train.pretrained: file:PATH`` loads torchvision-layout
checkpoints onto ``alexnet*`` since the ``features.N`` indices match ``torchvision.models.alexnet``):

* ``alexnet``: torchvision AlexNet convolutional trunk (5 conv layers, 256 channels).
* ``alexnet_shallow``: the first 3 conv layers (conv1-conv3, 384 channels), for the depth ablation.
* ``alexnet_deep``: AlexNet plus an extra 3x3 conv block (6 conv layers, 256 channels).
* ``small_cnn``: two 3x3 conv + max-pool blocks (32, 64 filters) then dense 32-64-128-256-256
  (ReLU), as in the published 60x60 small CNN; its features are the last 256-d dense layer.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fashionops.errors import FashionOpsError

log = logging.getLogger(__name__)

BUILTIN_BACKBONES = ("alexnet", "alexnet_shallow", "alexnet_deep", "small_cnn")


def _alexnet_features(variant: str) -> nn.Sequential:
    # Same layer indices as torchvision.models.alexnet().features so its checkpoints load by name.
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    ]
    if variant == "alexnet_shallow":
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        return nn.Sequential(*layers)
    layers += [
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    ]
    if variant == "alexnet_deep":
        layers += [nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
    return nn.Sequential(*layers)


class AlexNetTrunk(nn.Module):
    """AlexNet convolutional trunk (``alexnet``, ``alexnet_shallow``, ``alexnet_deep``)."""

    def __init__(self, variant: str = "alexnet") -> None:
        super().__init__()
        self.features = _alexnet_features(variant)
        self.num_features = 384 if variant == "alexnet_shallow" else 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class SmallCNN(nn.Module):
    """Published small CNN: 2 x (3x3 conv -> ReLU -> 2x2 max-pool), dense 32-64-128-256-256."""

    dense_sizes = (32, 64, 128, 256, 256)

    def __init__(self, input_hw: tuple[int, int] = (60, 60)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        h, w = input_hw[0] // 4, input_hw[1] // 4
        if h < 1 or w < 1:
            raise FashionOpsError(f"small_cnn: input {input_hw} is too small (needs at least 4x4)")
        dense: list[nn.Module] = [nn.Flatten()]
        prev = 64 * h * w
        for size in self.dense_sizes:
            dense += [nn.Linear(prev, size), nn.ReLU(inplace=True)]
            prev = size
        self.dense = nn.Sequential(*dense)
        self.num_features = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.features(x))


def create_timm(name: str, input_hw: tuple[int, int], pretrained: bool = False) -> nn.Module:
    """``timm.create_model(name, num_classes=0, global_pool="")``; ViTs get ``img_size=input_hw``.

    ``pretrained=True`` downloads hub weights (needs internet); the caller wraps its errors.
    """
    import timm

    if not timm.is_model(name):
        raise FashionOpsError(
            f"train.backbone: {name!r} is neither a timm model nor a built-in "
            f"({', '.join(BUILTIN_BACKBONES)}, conv_autoencoder); see timm.list_models()"
        )
    kwargs: dict = {"num_classes": 0, "global_pool": ""}
    if _is_vit_like(name) and tuple(input_hw) != (224, 224):
        # timm resamples the position embeddings of pretrained weights to this size.
        kwargs["img_size"] = tuple(input_hw)
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _is_vit_like(name: str) -> bool:
    return any(name.startswith(p) for p in ("vit_", "deit", "eva", "beit", "cait", "xcit", "flexivit"))


def _min_side(name: str) -> int:
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is not None and cfg.min_input_size:
            return int(min(cfg.min_input_size[1:]))
    except Exception:  # noqa: BLE001 - unknown cfg: fall back to probing
        pass
    return 1


class Backbone(nn.Module):
    """Wraps a network so that ``forward`` returns unpooled features of a known kind/width.

    Inputs smaller than the network can take (e.g. 80x60 into AlexNet or Inception) are
    upsampled in ``forward`` to ``resize_to`` rather than failing; the size is found by probing.
    """

    def __init__(self, name: str, input_hw: tuple[int, int], pretrained_timm: bool = False) -> None:
        super().__init__()
        self.name = name
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.is_timm = name not in BUILTIN_BACKBONES
        if name in ("alexnet", "alexnet_shallow", "alexnet_deep"):
            self.model: nn.Module = AlexNetTrunk(name)
        elif name == "small_cnn":
            self.model = SmallCNN(self.input_hw)
        else:
            if pretrained_timm:
                try:
                    self.model = create_timm(name, self.input_hw, pretrained=True)
                except FashionOpsError:
                    raise
                except Exception as exc:
                    raise FashionOpsError(
                        f"train.pretrained=timm: could not download weights for {name!r} ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); it needs internet; use file:PATH or efficientnet_lite0/1/2"
                    ) from exc
            else:
                self.model = create_timm(name, self.input_hw)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        self.nhwc = getattr(self.model, "output_fmt", "NCHW") == "NHWC"  # e.g. Swin
        self.resize_to: tuple[int, int] | None = None
        self.kind, self.num_features = self._probe()

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_timm:
            timm_model: Any = self.model  # a timm model: forward_features is part of its API
            out = timm_model.forward_features(x)
            if isinstance(out, (list, tuple)):
                out = out[-1]
            if self.nhwc and out.ndim == 4:
                out = out.permute(0, 3, 1, 2)
            return out
        return self.model(x)

    def _probe(self) -> tuple[str, int]:
        """Run one image through (no grad, eval mode) to learn the feature kind and width."""
        h, w = self.input_hw
        side = _min_side(self.name) if self.is_timm else 1
        candidates = [(max(h, side), max(w, side))]
        for target in (64, 128, 224, 299, 331):
            scale = target / min(h, w)
            if scale > 1:
                candidates.append((math.ceil(h * scale), math.ceil(w * scale)))
        was_training = self.training
        self.eval()
        last: Exception | None = None
        try:
            for hw in candidates:
                try:
                    out = self._shape_of(hw)
                except (RuntimeError, ValueError, AssertionError, NotImplementedError) as exc:
                    last = exc
                    continue
                if hw != (h, w):
                    self.resize_to = hw
                    log.warning("backbone %s: input %dx%d is too small; upsampling to %dx%d", self.name, h, w, *hw)
                break
            else:
                raise FashionOpsError(
                    f"backbone {self.name!r} cannot take input {h}x{w} ({last}); set train.input_height/input_width"
                )
        finally:
            self.train(was_training)
        if out.ndim == 4:
            return "map", int(out.shape[1])
        if out.ndim == 3:
            return "tokens", int(out.shape[2])
        if out.ndim == 2:
            return "vector", int(out.shape[1])
        raise FashionOpsError(f"backbone {self.name!r}: unexpected feature shape {tuple(out.shape)}")

    def _shape_of(self, hw: tuple[int, int]) -> torch.Tensor:
        """Features of one blank image: on the meta device (shapes only, no compute), else on CPU."""
        from torch.func import functional_call

        meta = {
            f"model.{n}": torch.empty_like(t, device="meta") for n, t in self.model.state_dict(keep_vars=True).items()
        }
        try:
            with torch.no_grad():
                return functional_call(self, meta, (torch.zeros(1, 3, *hw, device="meta"),))
        except Exception:  # noqa: BLE001 - e.g. a module keeps a plain (non-buffer) tensor: fall back to a real forward
            first = next(iter(self.model.state_dict().values()), None)
            device = first.device if first is not None else torch.device("cpu")
            with torch.no_grad():
                return self._raw(torch.zeros(1, 3, *hw, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_to is not None:
            x = F.interpolate(x, size=self.resize_to, mode="bilinear", align_corners=False)
        return self._raw(x)

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens without the class/register prefix tokens."""
        return tokens[:, self.num_prefix_tokens :]

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Default pooling: global average for maps, class token (or mean) for tokens."""
        if feats.ndim == 4:
            return feats.mean(dim=(2, 3))
        if feats.ndim == 3:
            return feats[:, 0] if self.num_prefix_tokens else feats.mean(dim=1)
        return feats


def freeze_leading_groups(model: nn.Module, n_groups: int) -> int:
    """Freeze the first ``n_groups`` parameter groups (stem, then stages, in timm's coarse
    ``group_matcher`` order) of the timm backbone inside ``model``; returns the tensors frozen
    (0 for built-in backbones and autoencoders, which have no pretrained groups to keep).

    Frozen layers still run forward (and batch-norm statistics still adapt), but no gradient
    flows into them, which skips the most expensive high-resolution part of the backward pass.
    """
    from timm.models import group_parameters

    backbones = [m for m in model.modules() if isinstance(m, Backbone)]
    if not backbones or not backbones[0].is_timm:
        # Built-in backbones (small_cnn, alexnet*) and autoencoders are small and train from
        # scratch: there is nothing pretrained to keep, so the setting does not apply.
        return 0
    net: Any = backbones[0].model  # a timm model: group_matcher is part of its API
    groups = group_parameters(net, net.group_matcher(coarse=True))
    order = sorted(groups)
    if n_groups >= len(order):
        raise FashionOpsError(f"train.freeze_groups={n_groups}: {backbones[0].name} has only {len(order)} groups")
    names = {name for gid in order[:n_groups] for name in groups[gid]}
    frozen = 0
    for name, param in net.named_parameters():
        if name in names:
            param.requires_grad_(False)
            frozen += 1
    return frozen
