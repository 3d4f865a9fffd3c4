"""Pretrained weights: packaged EfficientNet-Lite0 (offline), file: checkpoints, timm hub errors."""

from __future__ import annotations

import pytest
import torch

from fashionops.config import TrainConfig
from fashionops.errors import FashionOpsError
from fashionops.inference.preprocess import preprocess_batch
from fashionops.models import build_model, model_spec, save_model
from fashionops.models.pretrained import LITE0_MEAN, LITE0_STD, load_file, load_packaged, map_packaged_state_dict
from fashionops.models.spec import ModelSpec

CLASSES = ["a", "b", "c"]
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def lite0_spec(**train) -> dict:
    return model_spec(TrainConfig(**train), CLASSES, "articleType", (80, 60))


@pytest.mark.parametrize(
    ("name", "backbone", "tensors", "size"),
    [
        ("efficientnet_lite0", "tf_efficientnet_lite0", 296, 224),
        ("efficientnet_lite1", "tf_efficientnet_lite1", 386, 240),
        ("efficientnet_lite2", "tf_efficientnet_lite2", 386, 260),
    ],
)
def test_packaged_lite_weights_classify_chelsea_as_a_cat(name, backbone, tensors, size):
    import timm
    from skimage import data

    model = timm.create_model(backbone, pretrained=False, num_classes=1000)
    report = load_packaged(model, name)
    assert report.matched == tensors and not report.missing
    model.eval()
    spec = ModelSpec(backbone=backbone, input_height=size, input_width=size, mean=list(LITE0_MEAN), std=list(LITE0_STD))
    x = preprocess_batch([data.chelsea()], spec)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in IMAGENET_CATS, f"{name}: predicted ImageNet class {top}"
    assert probs[list(IMAGENET_CATS)].sum() > 0.5
    # Same image, random weights: no cat (guards against the test passing by accident).
    random_model = timm.create_model(backbone, pretrained=False, num_classes=1000).eval()
    with torch.no_grad():
        assert random_model(x).softmax(-1)[0][list(IMAGENET_CATS)].sum() < 0.5


def test_packaged_weights_refuse_another_backbone():
    with pytest.raises(FashionOpsError, match="efficientnet_lite2 only fits backbone tf_efficientnet_lite2"):
        build_model(lite0_spec(backbone="tf_efficientnet_lite1", pretrained="efficientnet_lite2"))


def test_default_spec_loads_lite0_onto_the_backbone():
    spec = lite0_spec()
    assert spec.pretrained == "efficientnet_lite0"
    model = build_model(spec)
    assert model.pretrained_report == {
        "source": "efficientnet_lite0",
        "matched": 294,
        "missing": 0,
        "unexpected": 0,
        "mismatched": 0,
    }  # 296 minus the 1000-class classifier weight and bias
    random = build_model(spec, pretrained="none")
    assert random.pretrained_report is None
    stem = "backbone.model.conv_stem.weight"
    assert not torch.equal(model.state_dict()[stem], random.state_dict()[stem])


def test_lite0_mapping_checks_shapes():
    import timm

    other = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    with pytest.raises(FashionOpsError, match="efficientnet_lite0"):
        map_packaged_state_dict(other)


def test_file_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    source = build_model(lite0_spec(pretrained="none"))
    backbone_state = source.backbone.model.state_dict()
    # A Lightning-style checkpoint: wrapped keys plus non-tensor entries.
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "state_dict": {f"model.backbone.model.{k}": v for k, v in backbone_state.items()},
            "epoch": 3,
            "hyper_parameters": {"lr": 1e-3},
        },
        ckpt,
    )
    target = build_model(lite0_spec(), pretrained=f"file:{ckpt}")
    report = target.pretrained_report
    assert report["matched"] == len(backbone_state)
    assert report["missing"] == 0 and report["unexpected"] == 0 and report["mismatched"] == 0
    for key, value in backbone_state.items():
        assert torch.equal(target.backbone.model.state_dict()[key], value), key

    # A fashionops weights.pt of another head size loads its backbone; the head is not in the target.
    save_model(tmp_path / "trained", source, source.spec)
    other = model_spec(TrainConfig(pretrained="none"), ["x"] * 7, "articleType", (80, 60))
    reused = build_model(other, pretrained=f"file:{tmp_path / 'trained' / 'weights.pt'}")
    assert reused.pretrained_report["matched"] == len(backbone_state)
    assert reused.pretrained_report["unexpected"] == 2  # head.fc.weight/bias
    assert torch.equal(reused.backbone.model.conv_stem.weight, source.backbone.model.conv_stem.weight)


def test_file_checkpoint_partial_and_shape_mismatch(tmp_path):
    model = build_model(lite0_spec(pretrained="none"))
    state = model.backbone.model.state_dict()
    partial = {k: v for k, v in list(state.items())[:10]}
    partial["conv_head.weight"] = torch.zeros(7, 7)  # wrong shape: skipped, reported
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    report = load_file(model.backbone.model, path)
    assert report.matched == 10
    assert report.mismatched == ["conv_head.weight"]
    assert len(report.missing) == len(state) - 10


def test_file_checkpoint_errors(tmp_path):
    with pytest.raises(FashionOpsError, match="not found"):
        build_model(lite0_spec(), pretrained=f"file:{tmp_path / 'nope.pt'}")
    junk = tmp_path / "junk.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, junk)
    with pytest.raises(FashionOpsError, match="no tensor matched"):
        build_model(lite0_spec(), pretrained=f"file:{junk}")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(FashionOpsError, match="not a readable"):
        build_model(lite0_spec(), pretrained=f"file:{text}")


def test_timm_hub_weights_error_clearly_offline(monkeypatch):
    import huggingface_hub.constants

    # Force offline mode so the test is deterministic (and fast) whatever the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = model_spec(TrainConfig(backbone="resnet18", pretrained="timm"), CLASSES, "articleType", (64, 64))
    with pytest.raises(FashionOpsError, match="needs internet; use file:PATH or efficientnet_lite0"):
        build_model(spec)
    with pytest.raises(FashionOpsError, match="no hub weights"):
        build_model(model_spec(TrainConfig(backbone="alexnet", pretrained="timm"), CLASSES, "articleType", (80, 60)))


@pytest.mark.network
def test_timm_hub_weights_download():
    spec = model_spec(TrainConfig(backbone="resnet18", pretrained="timm"), CLASSES, "articleType", (64, 64))
    model = build_model(spec)
    assert model.backbone.model.conv1.weight.abs().sum() > 0


def test_file_vit_checkpoint_at_224_loads_onto_smaller_input(tmp_path):
    import timm

    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "vit224.pth"
    torch.save(full.state_dict(), path)
    spec = model_spec(
        TrainConfig(backbone="vit_tiny_patch16_224", attention="spatial", pretrained="none"),
        CLASSES,
        "masterCategory",
        (64, 48),
    )
    model = build_model(spec, pretrained=f"file:{path}")
    report = model.pretrained_report
    # pos_embed (1, 197, C) is resampled to the 4x3 grid (1, 13, C) instead of being dropped.
    assert report["mismatched"] == 0 and report["missing"] == 0
    assert report["matched"] == len(full.state_dict())
    assert torch.equal(model.backbone.model.patch_embed.proj.weight, full.patch_embed.proj.weight)
