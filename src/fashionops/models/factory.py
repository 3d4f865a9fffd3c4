"""Build, save and load models from a JSON ``model_spec`` (the model contract).

``model_spec(train, classes, label_column, cache_hw)`` turns ``TrainConfig`` into a
:class:`~fashionops.models.spec.ModelSpec`; ``build_model(spec)`` builds the ``nn.Module``;
``save_model`` writes ``weights.pt`` (state_dict) + ``model_spec.json``; ``load_model(dir)``
rebuilds it in eval mode.

Module API (every model built here):

* ``module(x)`` -> logits ``(B, num_classes)`` for ``task: classifier``; the reconstruction of
  ``x`` (same shape) for ``task: autoencoder``.
* ``module.attribute_logits(x)`` (classifiers) -> ``(primary logits, *extra heads' logits)`` in
  ``spec.attributes`` order: a multi-attribute model (``prepare.labels``) has one linear head per
  extra attribute on the same pooled features; a single-head model returns ``(module(x),)``.
* ``module.embed(x)`` -> ``(B, embedding_dim)``: pooled features before the head (classifier)
  or the bottleneck latent (autoencoder); the index uses it as the embedder.
* ``module.embedding_dim``; ``module.spec`` (the spec it was built from);
  ``module.pretrained_report`` (counts of loaded tensors, or ``None``).
* ``module.loss_kind`` tells the training loop which loss to use:
  ``"ce"`` -> ``nn.CrossEntropyLoss`` (``train.loss: weighted_ce`` adds class weights),
  ``"hinge"`` -> ``nn.MultiMarginLoss`` (the ``svm`` head: multi-class hinge loss of a linear
  SVM over the pooled features), ``"mse"`` -> ``nn.MSELoss(recon, x)`` (autoencoders).

Architecture = backbone (any timm model or a built-in: ``alexnet``, ``alexnet_shallow``,
``alexnet_deep``, ``small_cnn``; ``conv_autoencoder`` for the autoencoder task) -> optional
attention on the unpooled features (``cbam`` on CNN maps; ``spatial`` = attention-weighted
pooling of ViT patch tokens or map positions) -> pooling -> head (``linear | mlp | svm``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fashionops.atomic import atomic_path, write_text
from fashionops.config import TrainConfig
from fashionops.errors import FashionOpsError
from fashionops.models.attention import CBAM, SpatialAttentionPool
from fashionops.models.autoencoder import ConvAutoencoder, TimmEncoderAutoencoder
from fashionops.models.backbones import BUILTIN_BACKBONES, Backbone
from fashionops.models.heads import LinearHead, build_head
from fashionops.models.pretrained import LITE0_MEAN, LITE0_STD, PACKAGED_BACKBONES, apply_pretrained
from fashionops.models.spec import SPEC_FILE, SPEC_VERSION, ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "weights.pt"


class FashionClassifier(nn.Module):
    """Backbone -> attention (none | cbam | spatial) -> pooling -> head."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        attention: str = "none",
        cbam_reduction: int = 16,
        cbam_kernel: int = 7,
        head: str = "linear",
        head_hidden: int = 512,
        dropout: float = 0.2,
        extra_heads: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.attention_kind = attention
        channels = backbone.num_features
        if attention == "cbam":
            if backbone.kind != "map":
                raise FashionOpsError(
                    f"train.attention=cbam needs a CNN feature map; backbone {backbone.name!r} gives "
                    f"{backbone.kind} features (use attention: spatial for ViTs)"
                )
            self.attention: nn.Module = CBAM(channels, cbam_reduction, cbam_kernel)
        elif attention == "spatial":
            if backbone.kind == "vector":
                raise FashionOpsError(
                    f"train.attention=spatial needs a feature map or tokens; {backbone.name!r} gives a vector"
                )
            self.attention = SpatialAttentionPool(channels)
        elif attention == "none":
            self.attention = nn.Identity()
        else:
            raise FashionOpsError(f"train.attention: unknown {attention!r}; use none, cbam or spatial")
        self.head = build_head(head, channels, num_classes, head_hidden, dropout)
        # One linear head per extra attribute (spec.attributes order); empty for single-head models,
        # so their state_dict keys are unchanged.
        self.extra_heads = nn.ModuleList(LinearHead(channels, n, dropout) for n in (extra_heads or []))
        self.loss_kind = self.head.loss_kind
        self.embedding_dim = channels
        self.num_classes = num_classes

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the head, ``(B, embedding_dim)``."""
        feats = self.backbone(x)
        if self.attention_kind == "cbam":
            return self.backbone.pool(self.attention(feats))
        if self.attention_kind == "spatial":
            if feats.ndim == 3:
                feats = self.backbone.patch_tokens(feats)
            return self.attention(feats)
        return self.backbone.pool(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def embed_with_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features and class logits from one pass (visual search re-ranks with both)."""
        feats = self.embed(x)
        return feats, self.head(feats)

    def attribute_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits of every head from one pass: ``(primary, *extra heads in spec.attributes order)``."""
        feats = self.embed(x)
        return (self.head(feats), *(head(feats) for head in self.extra_heads))


def _normalization(train: TrainConfig) -> tuple[list[float], list[float]]:
    if train.normalization == "none":
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if train.normalization == "backbone":
        if train.backbone in PACKAGED_BACKBONES.get(train.pretrained, ()):
            return list(LITE0_MEAN), list(LITE0_STD)
        if train.backbone not in BUILTIN_BACKBONES and train.backbone != "conv_autoencoder":
            try:
                from timm.models import get_pretrained_cfg

                cfg = get_pretrained_cfg(train.backbone)
            except Exception:  # noqa: BLE001 - unknown to timm's registry: fall back to ImageNet stats
                cfg = None
            if cfg is not None and cfg.mean and cfg.std:
                return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def model_spec(
    train: TrainConfig,
    classes: list[str],
    label_column: str,
    cache_hw: tuple[int, int],
    attributes: dict[str, list[str]] | None = None,
) -> ModelSpec:
    """JSON-serialisable description of the model ``train`` asks for (see module docstring).

    ``cache_hw`` is the prepared cache's (height, width); ``train.input_height/width`` override it.
    ``attributes``: the extra heads of a multi-attribute model (attribute -> classes, primary excluded).
    ``embedding_dim`` is found by building the architecture on the meta device (no weights).
    """
    height = int(train.input_height or cache_hw[0])
    width = int(train.input_width or cache_hw[1])
    mean, std = _normalization(train)
    spec: dict[str, Any] = {
        "spec_version": SPEC_VERSION,
        "task": train.task,
        "backbone": train.backbone,
        "attention": train.attention,
        "cbam_reduction": int(train.cbam_reduction),
        "cbam_kernel": int(train.cbam_kernel),
        "head": train.head,
        "head_hidden": int(train.head_hidden),
        "dropout": float(train.dropout),
        "latent_dim": int(train.latent_dim),
        "num_classes": len(classes),
        "classes": [str(c) for c in classes],
        "label_column": label_column,
        "input_height": height,
        "input_width": width,
        "mean": mean,
        "std": std,
        "pretrained": train.pretrained,
        "attributes": {str(a): [str(c) for c in cs] for a, cs in (attributes or {}).items()},
        "flip_tta": bool(train.flip_tta and train.task == "classifier"),
        "cache_height": int(cache_hw[0]),
        "cache_width": int(cache_hw[1]),
    }
    draft = ModelSpec.from_dict(spec)
    with torch.device("meta"):
        probe = _build(draft, "none")
    probed: Any = probe  # every module built here has these attributes (see the module doc)
    return draft.updated(embedding_dim=int(probed.embedding_dim), loss_kind=probed.loss_kind)


def _build(spec: ModelSpec, source: str) -> nn.Module:
    hw = spec.input_size
    name = spec.backbone
    is_timm = name not in BUILTIN_BACKBONES and name != "conv_autoencoder"
    if source == "timm" and not is_timm:
        raise FashionOpsError(
            f"train.pretrained=timm: built-in backbone {name!r} has no hub weights; use none or file:PATH"
        )
    if spec.task == "autoencoder":
        if spec.attributes:
            raise FashionOpsError("model spec: attributes (prepare.labels) need task: classifier")
        if name == "conv_autoencoder":
            module: nn.Module = ConvAutoencoder(hw, spec.latent_dim)
            target: nn.Module = module
        else:
            backbone = Backbone(name, hw, pretrained_timm=source == "timm")
            module = TimmEncoderAutoencoder(backbone, spec.latent_dim)
            target = backbone.model
    elif spec.task == "classifier":
        if name == "conv_autoencoder":
            raise FashionOpsError("train.backbone=conv_autoencoder needs train.task=autoencoder")
        if spec.num_classes < 1:
            raise FashionOpsError("model spec: num_classes must be at least 1")
        for attribute, classes in spec.attributes.items():
            if not classes:
                raise FashionOpsError(f"model spec: attributes.{attribute} has no classes")
        backbone = Backbone(name, hw, pretrained_timm=source == "timm")
        module = FashionClassifier(
            backbone,
            spec.num_classes,
            attention=spec.attention,
            cbam_reduction=spec.cbam_reduction,
            cbam_kernel=spec.cbam_kernel,
            head=spec.head,
            head_hidden=spec.head_hidden,
            dropout=spec.dropout,
            extra_heads=[len(classes) for classes in spec.attributes.values()],
        )
        target = backbone.model
    else:
        raise FashionOpsError(f"model spec: unknown task {spec.task!r}")
    report = apply_pretrained(target, source, name)
    built: Any = module  # attributes of the module API (see the module doc)
    built.pretrained_report = report.summary() if report else None
    built.spec = spec
    return module


def build_model(spec: ModelSpec, pretrained: str | None = None) -> nn.Module:
    """Build the module a spec describes; ``pretrained`` overrides ``spec.pretrained``.

    Loading a trained model passes ``"none"`` (its weights come from ``weights.pt``).
    """
    source = spec.pretrained if pretrained is None else pretrained
    return _build(spec, str(source))


def save_model(out_dir: str | Path, module: nn.Module, spec: ModelSpec) -> None:
    """Write ``weights.pt`` (CPU state_dict) and ``model_spec.json`` into ``out_dir`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    text = spec.to_json()
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        torch.save(state, tmp)
    write_text(out / SPEC_FILE, text)


def read_spec(model_dir: str | Path) -> ModelSpec:
    """``model_spec.json`` of a saved model directory."""
    return ModelSpec.read(model_dir)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild a saved model (random init, no download) and load ``weights.pt``; eval mode on ``device``."""
    spec = read_spec(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise FashionOpsError(f"no {WEIGHTS_FILE} in {model_dir}")
    module = build_model(spec, pretrained="none")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FashionOpsError(f"{weights}: weights do not fit the spec in {SPEC_FILE}: {str(exc)[:500]}") from exc
    module.to(device).eval()
    return module, spec
