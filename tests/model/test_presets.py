"""Every shipped preset loads, builds (no download) and trains one step at its input size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fashionops.config import PRESETS_DIR, list_presets, load_params
from fashionops.models import build_model, model_spec

REPO = Path(__file__).resolve().parents[2]
HEAVY = {
    "nasnetalarge",
    "efficientnetv2_m",
    "vgg19",
    "vit_b16_sa",
    "densenet201",
    "xception",
    "inception_v3",
    "resnet50_autoencoder",
}
LIGHT = {
    "default",
    "gpu",
    "alexnet",
    "alexnet_shallow",
    "alexnet_deep",
    "alexnet_svm",
    "alexnet_cbam",
    "resnet18_cbam",
    "resnet50",
    "small_cnn",
    "conv_autoencoder",
}


def test_all_presets_shipped_and_documented():
    assert set(list_presets()) == HEAVY | LIGHT
    for name in list_presets():
        first = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# "), f"{name}.yaml must start with a comment citing what it reproduces"


def test_published_hyperparameters():
    p = {name: load_params(REPO / "params.yaml", [f"train.preset={name}"]) for name in list_presets()}
    defaults = load_params(REPO / "params.yaml")
    assert p["default"].train == defaults.train.model_copy(update={"preset": "default"})
    assert (p["alexnet_cbam"].train.cbam_reduction, p["alexnet_cbam"].train.cbam_kernel) == (8, 5)
    assert (p["resnet18_cbam"].train.cbam_reduction, p["resnet18_cbam"].train.cbam_kernel) == (16, 7)
    for name in ("alexnet", "alexnet_shallow", "alexnet_deep", "alexnet_svm", "alexnet_cbam", "resnet18_cbam"):
        t = p[name].train
        assert (t.optimizer, t.lr, t.batch_size) == ("adam", 1e-4, 32), name
        assert p[name].prepare.balance == "weighted_sampler", name
    assert p["alexnet_svm"].train.head == "svm"
    vit = p["vit_b16_sa"]
    assert (vit.train.attention, vit.train.loss, vit.train.optimizer) == ("spatial", "weighted_ce", "adamw")
    assert (vit.prepare.label, vit.prepare.min_images_per_class) == ("masterCategory", 1)
    for name in ("efficientnetv2_m", "nasnetalarge", "resnet50", "xception", "inception_v3", "densenet201"):
        t = p[name].train
        assert (t.optimizer, t.scheduler, t.lr, t.label_smoothing, t.dropout, t.early_stopping_patience) == (
            "adamw",
            "cosine",
            1e-4,
            0.1,
            0.3,
            6,
        ), name
    assert (p["nasnetalarge"].train.input_height, p["inception_v3"].train.input_height) == (331, 299)
    assert (p["small_cnn"].train.input_height, p["small_cnn"].train.input_width) == (60, 60)
    assert len(p["small_cnn"].prepare.include) == 6
    assert p["conv_autoencoder"].train.task == "autoencoder" and p["conv_autoencoder"].train.latent_dim == 16
    assert p["gpu"].train.precision == "bf16-mixed"


def _one_step(name: str) -> None:
    params = load_params(REPO / "params.yaml", [f"train.preset={name}"])
    n_classes = 7 if params.prepare.label == "masterCategory" else 5
    classes = [f"class{i}" for i in range(n_classes)]
    cache_hw = (params.prepare.image_height, params.prepare.image_width)
    spec = model_spec(params.train, classes, params.prepare.label, cache_hw)
    model = build_model(spec, pretrained="none").train()
    torch.manual_seed(0)
    x = torch.randn(2, 3, spec.input_height, spec.input_width)
    # The head's (decoder's) input is module.embed(x): capture it instead of a second forward.
    seen: list[torch.Tensor] = []
    after_embed = model.decoder if model.loss_kind == "mse" else model.head
    after_embed.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    out = model(x)
    assert seen[0].shape == (2, spec.embedding_dim)
    if model.loss_kind == "mse":
        assert out.shape == x.shape
        loss = nn.functional.mse_loss(out, x)
    else:
        assert out.shape == (2, n_classes)
        target = torch.tensor([0, n_classes - 1])
        loss = (nn.MultiMarginLoss() if model.loss_kind == "hinge" else nn.CrossEntropyLoss())(out, target)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[-2:]), "head received no gradient"
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


# ids avoid bare "gpu": conftest skips any test carrying a "gpu" keyword when no CUDA is present.
@pytest.mark.parametrize("name", sorted(LIGHT), ids=lambda n: f"preset_{n}")
def test_preset_builds_and_steps(name):
    _one_step(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEAVY), ids=lambda n: f"preset_{n}")
def test_heavy_preset_builds_and_steps(name):
    _one_step(name)
