"""Model zoo: attention/heads shapes, factory spec/build/save/load, preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fashionops.config import TrainConfig
from fashionops.errors import DataError, FashionOpsError
from fashionops.inference.preprocess import preprocess_batch
from fashionops.models import build_model, load_model, model_spec, save_model
from fashionops.models.attention import CBAM, SpatialAttentionPool
from fashionops.models.heads import build_head
from fashionops.models.spec import ModelSpec

CLASSES = ["Tshirts", "Shirts", "Casual Shoes", "Watches"]


def spec_for(cache_hw=(80, 60), **train) -> ModelSpec:
    train.setdefault("pretrained", "none")
    return model_spec(TrainConfig(**train), CLASSES, "articleType", cache_hw)


def batch(spec: ModelSpec, n: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, spec.input_height, spec.input_width, 3), dtype=np.uint8)
    return preprocess_batch(images, spec)


# --- attention and heads -------------------------------------------------------------------


def test_cbam_keeps_shape_and_reweights():
    torch.manual_seed(0)
    cbam = CBAM(32, reduction=8, kernel_size=5)
    x = torch.randn(2, 32, 6, 5)
    y = cbam(x)
    assert y.shape == x.shape
    # Both gates are sigmoids in (0, 1): output magnitude shrinks but is not identical to the input.
    assert torch.all(y.abs() <= x.abs() + 1e-6)
    assert not torch.allclose(y, x)
    assert cbam.channel.mlp[0].out_channels == 4  # 32 / reduction 8
    assert cbam.spatial.conv.kernel_size == (5, 5)
    with pytest.raises(ValueError):
        cbam(torch.randn(2, 10, 32))


def test_spatial_attention_pool_is_a_weighted_mean():
    torch.manual_seed(0)
    pool = SpatialAttentionPool(16)
    tokens = torch.randn(3, 7, 16)
    out = pool(tokens)
    assert out.shape == (3, 16)
    w = pool.last_weights
    assert w.shape == (3, 7) and torch.allclose(w.sum(1), torch.ones(3))
    assert torch.allclose(out, (w.unsqueeze(-1) * tokens).sum(1), atol=1e-5)
    # A (B, C, H, W) map is pooled over its H*W positions.
    fmap = torch.randn(2, 16, 3, 4)
    assert pool(fmap).shape == (2, 16) and pool.last_weights.shape == (2, 12)


@pytest.mark.parametrize("kind,loss_kind", [("linear", "ce"), ("mlp", "ce"), ("svm", "hinge")])
def test_heads(kind, loss_kind):
    head = build_head(kind, 20, 5, hidden=8, dropout=0.1)
    assert head.loss_kind == loss_kind
    x = torch.randn(4, 20, requires_grad=True)
    logits = head(x)
    assert logits.shape == (4, 5)
    loss = (nn.MultiMarginLoss() if loss_kind == "hinge" else nn.CrossEntropyLoss())(logits, torch.tensor([0, 1, 2, 4]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(FashionOpsError):
        build_head("tree", 20, 5, 8, 0.1)


# --- factory ---------------------------------------------------------------------------------


def test_model_spec_contents_and_sizes():
    spec = spec_for()
    json.dumps(spec.to_dict())  # JSON-serialisable
    for key in (
        "task",
        "backbone",
        "attention",
        "cbam_reduction",
        "cbam_kernel",
        "head",
        "head_hidden",
        "dropout",
        "latent_dim",
        "num_classes",
        "classes",
        "label_column",
        "input_height",
        "input_width",
        "mean",
        "std",
        "embedding_dim",
        "pretrained",
    ):
        assert key in spec.to_dict()
    assert (spec.input_height, spec.input_width) == (80, 60)
    assert spec.num_classes == 4 and spec.classes == CLASSES
    assert spec.embedding_dim == 1280  # EfficientNet-Lite0 head width
    assert spec.mean == pytest.approx([0.485, 0.456, 0.406])
    sized = spec_for(input_height=96, input_width=72, normalization="backbone")
    assert (sized.input_height, sized.input_width) == (96, 72)
    assert sized.mean == pytest.approx([0.5, 0.5, 0.5])  # tf_efficientnet_lite0's own stats
    raw = spec_for(normalization="none")
    assert raw.mean == [0.0, 0.0, 0.0] and raw.std == [1.0, 1.0, 1.0]


def test_default_classifier_forward_and_embed():
    spec = spec_for()
    model = build_model(spec).eval()
    x = batch(spec)
    assert model.loss_kind == "ce"
    assert model(x).shape == (2, 4)
    emb = model.embed(x)
    assert emb.shape == (2, spec.embedding_dim) == (2, model.embedding_dim)
    assert torch.isfinite(emb).all()


def test_cbam_resnet18_on_native_size():
    spec = spec_for(backbone="resnet18", attention="cbam", cbam_reduction=16, cbam_kernel=7, head="mlp", head_hidden=32)
    model = build_model(spec)
    assert isinstance(model.attention, CBAM)
    x = batch(spec)
    logits = model(x)
    assert logits.shape == (2, 4) and model.embed(x).shape == (2, 512)
    logits.sum().backward()
    assert model.attention.spatial.conv.weight.grad is not None


def test_vit_spatial_attention_on_patch_tokens_at_non_224_input():
    spec = spec_for(cache_hw=(64, 48), backbone="vit_tiny_patch16_224", attention="spatial")
    model = build_model(spec).eval()
    assert model.backbone.kind == "tokens"
    x = batch(spec)
    assert model(x).shape == (2, 4)
    assert model.embed(x).shape == (2, spec.embedding_dim) == (2, 192)
    # Weighted pooling over the 4x3 patch tokens, class token excluded.
    assert model.attention.last_weights.shape == (2, 12)


@pytest.mark.parametrize("name,dim", [("alexnet", 256), ("alexnet_shallow", 384), ("alexnet_deep", 256)])
def test_alexnet_variants_take_small_inputs(name, dim):
    spec = spec_for(backbone=name, head="svm")
    model = build_model(spec)
    assert model.loss_kind == "hinge" and spec.loss_kind == "hinge"
    assert model.backbone.resize_to is not None  # 80x60 is below AlexNet's minimum: upsampled
    x = batch(spec)
    assert model(x).shape == (2, 4) and model.embed(x).shape == (2, dim)


def test_alexnet_depth_variants_differ():
    convs = {}
    for name in ("alexnet_shallow", "alexnet", "alexnet_deep"):
        model = build_model(spec_for(backbone=name))
        convs[name] = sum(isinstance(m, nn.Conv2d) for m in model.backbone.model.modules())
    assert convs == {"alexnet_shallow": 3, "alexnet": 5, "alexnet_deep": 6}


def test_small_cnn_is_the_published_architecture():
    spec = spec_for(cache_hw=(60, 60), backbone="small_cnn")
    model = build_model(spec)
    net = model.backbone.model
    assert [m.out_channels for m in net.features if isinstance(m, nn.Conv2d)] == [32, 64]
    assert all(m.kernel_size == (3, 3) for m in net.features if isinstance(m, nn.Conv2d))
    assert [m.out_features for m in net.dense if isinstance(m, nn.Linear)] == [32, 64, 128, 256, 256]
    assert model(batch(spec)).shape == (2, 4)
    with pytest.raises(FashionOpsError, match="cbam"):
        build_model(spec_for(cache_hw=(60, 60), backbone="small_cnn", attention="cbam"))


def test_conv_autoencoder_reconstructs_and_learns():
    torch.manual_seed(0)
    spec = spec_for(task="autoencoder", backbone="conv_autoencoder", latent_dim=16)
    assert spec.embedding_dim == 16
    model = build_model(spec)
    assert model.loss_kind == "mse"
    x = batch(spec, n=4)
    assert model(x).shape == x.shape and model.embed(x).shape == (4, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_timm_encoder_autoencoder_latent():
    spec = spec_for(task="autoencoder", backbone="resnet18", latent_dim=8)
    model = build_model(spec)
    x = batch(spec)
    assert model(x).shape == x.shape and model.embed(x).shape == (2, 8)


def test_bad_configs_fail_clearly():
    with pytest.raises(FashionOpsError, match="neither a timm model"):
        spec_for(backbone="not_a_model_xyz")
    with pytest.raises(FashionOpsError, match="cbam"):
        spec_for(cache_hw=(64, 48), backbone="vit_tiny_patch16_224", attention="cbam")
    with pytest.raises(FashionOpsError, match="efficientnet_lite0"):
        build_model(spec_for(backbone="resnet18"), pretrained="efficientnet_lite0")
    with pytest.raises(FashionOpsError, match="pretrained"):
        build_model(spec_for(), pretrained="imagenet21k")


def test_save_load_round_trip_identical(tmp_path):
    spec = spec_for(backbone="resnet18", attention="cbam", head="mlp", head_hidden=16)
    model = build_model(spec)
    x = batch(spec)
    model.train()
    model(x)  # move BatchNorm running stats away from their init so the round trip is meaningful
    model.eval()
    save_model(tmp_path / "m", model, spec)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model_spec.json", "weights.pt"]
    loaded, loaded_spec = load_model(tmp_path / "m")
    assert loaded_spec == spec
    assert json.loads((tmp_path / "m" / "model_spec.json").read_text()) == spec.to_dict()
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.embed(x), loaded.embed(x))
    # A spec that does not fit the weights is an error naming the files.
    bad = dict(spec.to_dict(), head_hidden=32)
    (tmp_path / "m" / "model_spec.json").write_text(json.dumps(bad))
    with pytest.raises(FashionOpsError, match="do not fit"):
        load_model(tmp_path / "m")
    with pytest.raises(FashionOpsError, match="model_spec.json"):
        load_model(tmp_path / "missing")


# --- preprocessing ---------------------------------------------------------------------------

SPEC = ModelSpec(backbone="small_cnn", input_height=80, input_width=60, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 1.0])


def test_preprocess_numpy_and_torch_nhwc():
    images = np.zeros((3, 80, 60, 3), dtype=np.uint8)
    images[..., 0] = 255
    images[..., 1] = 51
    out = preprocess_batch(images, SPEC)
    assert out.shape == (3, 3, 80, 60) and out.dtype == torch.float32
    assert torch.allclose(out[:, 0], torch.ones(1))  # (1 - 0.5) / 0.5
    assert torch.allclose(out[:, 1], torch.full((1,), (0.2 - 0.25) / 0.25), atol=1e-6)
    assert torch.allclose(out[:, 2], torch.zeros(1))
    assert torch.equal(preprocess_batch(torch.from_numpy(images), SPEC), out)


def test_preprocess_resizes_any_size_list():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(80, 60), (400, 300), (33, 71)]]
    images.append(np.full((50, 40), 128, dtype=np.uint8))  # greyscale
    images.append(np.full((50, 40, 4), 128, dtype=np.uint8))  # RGBA
    out = preprocess_batch(images, SPEC)
    assert out.shape == (5, 3, 80, 60)
    # Constant images stay constant through the antialiased resize.
    expected = (128 / 255 - torch.tensor(SPEC.mean)) / torch.tensor(SPEC.std)
    assert torch.allclose(out[3].mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(out[4], out[3])
    # The first image is at the target size already: exactly the NHWC path.
    assert torch.allclose(out[0], preprocess_batch(images[0][None], SPEC)[0])


def test_preprocess_resize_is_antialiased():
    # A 1-pixel checkerboard downsampled 4x averages to mid-grey instead of aliasing.
    board = (np.indices((320, 240)).sum(0) % 2 * 255).astype(np.uint8)
    img = np.repeat(board[..., None], 3, axis=2)
    out = preprocess_batch(img[None], ModelSpec(backbone="small_cnn", input_height=80, input_width=60))
    assert out.shape == (1, 3, 80, 60)
    assert abs(out.mean().item() - 0.5) < 0.01 and out.std().item() < 0.05


def test_preprocess_rejects_bad_input():
    with pytest.raises(DataError):
        preprocess_batch(np.zeros((2, 80, 60, 5), dtype=np.uint8), SPEC)
    with pytest.raises(DataError):
        preprocess_batch([np.zeros((80, 60, 3), dtype=np.int32)], SPEC)


def test_preprocess_read_only_memmap(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.full((4, 80, 60, 3), 255, dtype=np.uint8))
    cache = np.load(path, mmap_mode="r")
    out = preprocess_batch(cache[1:3], SPEC)
    assert out.shape == (2, 3, 80, 60) and torch.allclose(out[:, 0], torch.ones(1))
