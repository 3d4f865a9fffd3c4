"""The ``train`` stage on real images: outputs, MLflow run, resume after SIGKILL, balancing paths.

Everything trains ``small_cnn`` at a reduced input size on the 300-image real catalogue
with a few batches per epoch, so the whole file stays within a couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, SMALL_CNN_TRAIN, params_for

TINY = SMALL_CNN_TRAIN + ["train.limit_batches=3"]


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri(monkeypatch):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would point the next test's
    # params at this test's store; every test starts without it.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, small_catalogue) -> Path:
    """The prepare stage run once on the real small catalogue; returns its prepared_dir (read-only)."""
    from fashionops.data.prepare import run_prepare

    work = tmp_path_factory.mktemp("train_prepared")
    params = params_for(work, small_catalogue, TINY)
    run_prepare(params.prepare, params.paths)
    return Path(params.paths.prepared_dir)


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    """One SQLite store for the module (creating a store costs seconds)."""
    return tmp_path_factory.mktemp("train_mlflow")


def train_params(work: Path, prepared: Path, db: Path, extra: list[str] = ()):
    return params_for(
        work,
        None,
        TINY
        + [
            f"paths.prepared_dir={prepared}",
            f"tracking.tracking_uri=sqlite:///{db / 'mlflow.db'}",
            f"tracking.artifact_location={db / 'artifacts'}",
            *extra,
        ],
    )


def train(params, resume: bool = False) -> dict:
    """The stage as `fashionops train` calls it."""
    from fashionops.training.stage import run_train

    return run_train(
        params.train,
        params.paths,
        params.tracking,
        balance=params.prepare.balance,
        resume=resume,
        run_config=params.flat(),
    )


def read_history(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_train_writes_model_reports_checkpoints_and_mlflow_run(tmp_path, prepared, mlflow_db):
    from mlflow.tracking import MlflowClient

    from fashionops.inference.preprocess import preprocess_batch
    from fashionops.models.factory import load_model
    from fashionops.training.stage import HEADLINE, HISTORY_COLUMNS

    params = train_params(tmp_path, prepared, mlflow_db, ["train.epochs=2"])
    result = train(params)

    out, reports = Path(params.paths.classifier_dir), params.paths.reports("train")
    for name in ("weights.pt", "model_spec.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (out / name).is_file(), name
    assert not (out / "run.json").exists(), "the MLflow run is not part of the model"
    metrics = json.loads((reports / "summary.json").read_text())
    assert metrics == {k: v for k, v in result.items() if k in metrics}
    headline = json.loads((reports / "metrics.json").read_text())  # the DVC metrics: numbers only
    assert headline == {name: pytest.approx(metrics[key]) for name, key in HEADLINE.items()}
    assert metrics["epochs_run"] == 2
    for key in ("best_val_macro_f1", "best_val_acc", "best_val_loss", "seconds", "images_per_s"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["best_val_macro_f1"] <= 1.0 and metrics["images_per_s"] > 0
    assert metrics["device"].startswith("cpu") and metrics["precision"] == "32-true"

    rows = read_history(reports / "history.csv")
    assert list(rows[0].keys()) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        for col in ("train_loss", "val_loss", "val_acc", "val_macro_f1", "lr"):
            assert math.isfinite(float(row[col])), col
    best = max(rows, key=lambda r: (float(r["val_macro_f1"]), -int(r["epoch"])))
    assert int(best["epoch"]) == metrics["best_epoch"]
    assert float(best["val_macro_f1"]) == pytest.approx(metrics["best_val_macro_f1"])

    # weights.pt is the best checkpoint's network, and it predicts with the shared preprocessing
    module, spec = load_model(out)
    ckpt = torch.load(out / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    for key, value in module.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"model.{key}"]), key
    images = np.load(prepared / "images.npy", mmap_mode="r")[:4]
    with torch.no_grad():
        logits = module(preprocess_batch(np.asarray(images), spec))
    assert logits.shape == (4, spec.num_classes) and torch.isfinite(logits).all()
    assert spec.input_height == 48 and spec.input_width == 36

    # the MLflow run: params, per-epoch metrics, tags, artifacts, recorded in paths.run_file
    assert params.paths.run_file == reports / "mlflow_run.json"
    run_info = json.loads(params.paths.run_file.read_text())
    assert run_info["run_id"] == result["mlflow_run_id"]
    client = MlflowClient(run_info["tracking_uri"])
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    # artifacts next to the SQLite store (tracking.artifact_location), not in ./mlruns
    assert Path(urlparse(run.info.artifact_uri).path).is_relative_to(mlflow_db / "artifacts")
    assert "MLFLOW_TRACKING_URI" not in os.environ, "training must not redirect later stages' tracking"
    assert run.data.params["train.backbone"] == "small_cnn"
    assert run.data.params["train.epochs"] == "2"
    assert set(params.flat()) <= set(run.data.params)
    assert len(client.get_metric_history(run.info.run_id, "val/macro_f1")) == 2
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    assert run.data.metrics["train/best_val_macro_f1"] == pytest.approx(metrics["best_val_macro_f1"])
    assert run.data.tags["version.torch"] == torch.__version__ and run.data.tags["device"] == metrics["device"]
    artifacts = {
        a.path for d in ("", "model", "checkpoints", "train") for a in client.list_artifacts(run.info.run_id, d)
    }
    assert {
        "model/labels.json",
        "checkpoints/best.ckpt",
        "train/metrics.json",
        "train/summary.json",
        "train/history.csv",
    } <= artifacts

    # resuming with params that change the run is refused with the keys named
    from fashionops.errors import FashionOpsError

    longer = train_params(tmp_path, prepared, mlflow_db, ["train.epochs=5"])
    with pytest.raises(FashionOpsError, match=r"train.epochs: 2 -> 5"):
        train(longer, resume=True)


def _ckpt_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, prepared, mlflow_db):
    extra = ["train.epochs=2", "train.augment.crop_scale=0.2", "train.augment.color_jitter=0.2"]

    # the run to be killed: a separate process, SIGKILLed once epoch 1's last.ckpt exists
    killed_work = tmp_path / "killed"
    params = train_params(killed_work, prepared, mlflow_db, extra)
    cmd = [sys.executable, "-m", "fashionops.cli", "train", "--params", str(REPO / "params.yaml")]
    for item in (
        TINY
        + extra
        + [
            f"paths.prepared_dir={prepared}",
            f"paths.classifier_dir={params.paths.classifier_dir}",
            f"paths.reports_dir={params.paths.reports_dir}",
            f"tracking.tracking_uri={params.tracking.tracking_uri}",
            f"tracking.artifact_location={params.tracking.artifact_location}",
        ]
    ):
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    last = Path(params.paths.classifier_dir) / "checkpoints/last.ckpt"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not last.is_file():
            if proc.poll() is not None:
                pytest.fail(
                    f"training exited ({proc.returncode}) before its first checkpoint: {proc.stderr.read()[-2000:]}"
                )
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _ckpt_epoch(last) == 0, "the run finished before it could be killed; nothing was resumed"
    assert not (params.paths.reports("train") / "metrics.json").exists()
    # the killed run is recorded beside its checkpoints; paths.run_file is written only at the end
    assert not params.paths.run_file.exists()
    from fashionops.training.callbacks import checkpoint_run

    run_id = checkpoint_run(last.parent)["run_id"]  # stored in last.ckpt itself

    resumed = train(params, resume=True)

    clean = train(train_params(tmp_path / "clean", prepared, mlflow_db, extra))

    assert resumed["mlflow_run_id"] == run_id, "resume must continue the same MLflow run"
    assert resumed["epochs_run"] == clean["epochs_run"] == 2
    h_resumed = read_history(params.paths.reports("train") / "history.csv")
    h_clean = read_history(tmp_path / "clean/reports/train/history.csv")
    for a, b in zip(h_resumed, h_clean, strict=True):
        for col in ("train_loss", "val_loss", "val_acc", "val_macro_f1", "lr"):
            assert float(a[col]) == pytest.approx(float(b[col]), rel=1e-4, abs=1e-5), (a["epoch"], col)
    w_resumed = torch.load(Path(params.paths.classifier_dir) / "weights.pt", weights_only=True)
    w_clean = torch.load(tmp_path / "clean/models/classifier/weights.pt", weights_only=True)
    assert w_resumed.keys() == w_clean.keys()
    for key in w_clean:
        torch.testing.assert_close(w_resumed[key], w_clean[key], rtol=1e-4, atol=1e-5, msg=key)

    from mlflow.tracking import MlflowClient

    from fashionops.tracking import tracking_uri

    client = MlflowClient(tracking_uri(params.tracking))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags.get("resumed") == "true"
    history = client.get_metric_history(run_id, "val/macro_f1")
    assert len(history) == 2, "each epoch logged once across the kill and the resume"


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, prepared, mlflow_db):
    from fashionops.errors import FashionOpsError

    with pytest.raises(FashionOpsError, match="no checkpoint"):
        train(train_params(tmp_path, prepared, mlflow_db), resume=True)


def test_resume_accepts_a_checkpoint_older_than_a_train_key_at_its_default(tmp_path):
    """A checkpoint written before a train key existed ran with that key's default behaviour:
    resuming with the default is allowed, with another value it is refused, naming the key."""
    from fashionops.config import TrainConfig
    from fashionops.errors import FashionOpsError
    from fashionops.training.stage import check_resumable

    saved = TrainConfig(epochs=2).model_dump()
    del saved["early_epoch_sizes"], saved["backbone_lr_scale"]  # keys added after that run
    last = tmp_path / "last.ckpt"
    torch.save({"fashionops": {"train": saved}}, last)

    check_resumable(last, TrainConfig(epochs=2))  # the defaults: the same run
    with pytest.raises(FashionOpsError, match=r"train\.backbone_lr_scale: 1\.0 -> 0\.5\)"):
        check_resumable(last, TrainConfig(epochs=2, backbone_lr_scale=0.5))
    with pytest.raises(FashionOpsError, match=r"\(train\.epochs: 2 -> 3\)"):
        check_resumable(last, TrainConfig(epochs=3))


def test_weighted_sampler_and_weighted_ce_train(tmp_path, prepared, mlflow_db):
    from mlflow.tracking import MlflowClient

    from fashionops.training.stage import run_train

    params = train_params(
        tmp_path,
        prepared,
        mlflow_db,
        [
            "prepare.balance=weighted_sampler",
            "train.loss=weighted_ce",
            "train.epochs=1",
            "train.scheduler=cosine",
            "train.optimizer=sgd",
        ],
    )
    # called with its sections only (no run_config): the run logs what the function was given
    result = run_train(params.train, params.paths, params.tracking, balance=params.prepare.balance)
    assert result["epochs_run"] == 1 and math.isfinite(result["best_val_loss"])
    logged = MlflowClient(params.tracking.tracking_uri).get_run(result["mlflow_run_id"]).data.params
    assert logged["prepare.balance"] == "weighted_sampler" and logged["train.loss"] == "weighted_ce"
    assert "paths.prepared_dir" in logged and not any(k.startswith(("serve.", "index.")) for k in logged)


def test_weighted_sampler_balances_classes_and_is_seeded_by_epoch(prepared):
    from fashionops.training.datamodule import EpochRandomSampler, load_prepared, sample_weights

    data = load_prepared(prepared)
    labels = data.split("train")["label_idx"].to_numpy()
    # make the split strongly imbalanced: keep every sample of class 0, 3 of each other class
    keep = np.concatenate(
        [np.flatnonzero(labels == 0)] + [np.flatnonzero(labels == c)[:3] for c in range(1, labels.max() + 1)]
    )
    sub = labels[keep]
    sampler = EpochRandomSampler(range(len(sub)), seed=7, weights=sample_weights(sub, labels.max() + 1))
    draws = []
    for epoch in range(40):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    freq = np.bincount(sub[np.array(draws)], minlength=labels.max() + 1) / len(draws)
    assert np.allclose(freq, 1 / len(freq), atol=0.03), freq  # vs. natural share of class 0 >= 0.4
    assert np.mean(sub == 0) > 0.4

    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) != first
    sampler.set_epoch(3)
    assert list(sampler) == first


def test_datamodule_batches_are_uint8_and_the_transform_is_preprocess(prepared):
    from fashionops.config import AugmentConfig
    from fashionops.inference.preprocess import preprocess_batch
    from fashionops.models.spec import ModelSpec
    from fashionops.training.datamodule import BatchTransform, FashionDataModule, load_prepared

    data = load_prepared(prepared)
    spec = ModelSpec(
        backbone="small_cnn", input_height=48, input_width=36, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    dm = FashionDataModule(data, spec, batch_size=8, augment=AugmentConfig(hflip=True))
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, *data.image_hw, 3)
    assert labels.dtype == torch.int64
    val = data.split("val")
    images, labels = next(iter(dm.val_dataloader()))
    expected = np.asarray(data.images[val["row"].to_numpy()[: len(images)]])
    assert np.array_equal(images.numpy(), expected)
    assert labels.tolist() == val["label_idx"].tolist()[: len(labels)]

    plain = preprocess_batch(images, spec)
    assert torch.equal(dm.transform(images, train=False), plain)
    torch.manual_seed(0)
    flipped = BatchTransform(spec, AugmentConfig(hflip=True))(images, train=True)
    mirror = preprocess_batch(images.flip(2), spec)
    same = [(torch.equal(flipped[i], plain[i]), torch.equal(flipped[i], mirror[i])) for i in range(len(images))]
    assert all(a or b for a, b in same) and any(b and not a for a, b in same)

    heavy = BatchTransform(spec, AugmentConfig(hflip=False, crop_scale=0.3, affine_degrees=10, color_jitter=0.3))
    out = heavy(images, train=True)
    assert out.shape == plain.shape and torch.isfinite(out).all() and not torch.allclose(out, plain)


def test_losses_follow_the_model_loss_kind():
    from fashionops.config import TrainConfig
    from fashionops.models.factory import build_model, model_spec
    from fashionops.training.lit_module import FashionLitModule

    classes = [f"c{i}" for i in range(4)]
    torch.manual_seed(0)
    logits, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 3, 0, 0, 1, 2])
    weights = [0.5, 1.0, 2.0, 4.0]
    cfg = TrainConfig(backbone="small_cnn", pretrained="none", label_smoothing=0.1)
    spec = model_spec(cfg, classes, "articleType", (48, 36))
    lit = FashionLitModule(build_model(spec), spec, cfg, class_weights=weights, weighted_loss=True)
    expected = F.cross_entropy(logits, y, weight=torch.tensor(weights), label_smoothing=0.1)
    assert torch.allclose(lit.compute_loss(logits, None, y), expected)
    plain = FashionLitModule(build_model(spec), spec, cfg)
    assert not torch.allclose(plain.compute_loss(logits, None, y), expected)

    svm_cfg = TrainConfig(backbone="small_cnn", pretrained="none", head="svm")
    svm_spec = model_spec(svm_cfg, classes, "articleType", (48, 36))
    svm = FashionLitModule(build_model(svm_spec), svm_spec, svm_cfg)
    assert torch.allclose(svm.compute_loss(logits, None, y), F.multi_margin_loss(logits, y))

    ae_cfg = TrainConfig(task="autoencoder", backbone="conv_autoencoder", pretrained="none", loss="mse")
    ae_spec = model_spec(ae_cfg, classes, "articleType", (48, 36))
    ae = FashionLitModule(build_model(ae_spec), ae_spec, ae_cfg)
    x = torch.randn(2, 3, 48, 36)
    assert torch.allclose(ae.compute_loss(x * 0.5, x, y[:2]), F.mse_loss(x * 0.5, x))
    assert ae.monitor == ("val_loss", "min") and lit.monitor == ("val_macro_f1", "max")


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    from fashionops.training.lit_module import macro_f1

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 7, 200)
        p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 9, 200))  # some classes only predicted
        ours = float(macro_f1(torch.tensor(p), torch.tensor(y), 9))
        assert ours == pytest.approx(f1_score(y, p, average="macro"), abs=1e-6)


def test_autoencoder_trains_on_val_loss(tmp_path, prepared, mlflow_db):
    params = train_params(
        tmp_path,
        prepared,
        mlflow_db,
        [
            "train.task=autoencoder",
            "train.backbone=conv_autoencoder",
            "train.loss=mse",
            "train.epochs=1",
            "train.scheduler=plateau",
        ],
    )
    result = train(params)
    assert math.isfinite(result["best_val_loss"]) and result["best_val_macro_f1"] is None
    assert (Path(params.paths.classifier_dir) / "weights.pt").is_file()


@pytest.mark.slow
def test_gpu_profile_runs_the_train_stage_on_the_cpu(tmp_path, prepared, mlflow_db):
    """The `gpu` preset end to end on a few batches: 224x168 upsampling, bf16-mixed autocast,
    device-side augmentation, DataLoader workers and the offline weights. Only CUDA itself is not
    exercised here (CI has no GPU); the speed and accuracy of that profile need a GPU machine."""
    params = params_for(
        tmp_path,
        None,
        [
            "train.preset=gpu",
            "train.epochs=1",
            "train.limit_batches=2",
            "train.batch_size=8",
            "prepare.min_images_per_class=10",
            f"paths.prepared_dir={prepared}",
            f"tracking.tracking_uri=sqlite:///{mlflow_db / 'mlflow.db'}",
            f"tracking.artifact_location={mlflow_db / 'artifacts'}",
        ],
    )
    assert (params.train.precision, params.train.input_height, params.train.freeze_groups) == ("bf16-mixed", 224, 0)
    result = train(params)
    assert result["epochs_run"] == 1 and math.isfinite(result["best_val_loss"])
    report = json.loads((tmp_path / "reports/train/summary.json").read_text())
    assert report["precision"] == "bf16-mixed"  # what the Trainer ran with, not just the setting
    spec = json.loads((Path(params.paths.classifier_dir) / "model_spec.json").read_text())
    assert (spec["input_height"], spec["input_width"]) == (224, 168)


def test_ema_average_is_the_saved_model(tmp_path, prepared, mlflow_db):
    from fashionops.models.torch_files import load_weights_only

    params = train_params(tmp_path, prepared, mlflow_db, ["train.epochs=1", "train.ema_decay=0.5"])
    train(params)
    out = Path(params.paths.classifier_dir)
    ckpt = load_weights_only(out / "checkpoints" / "best.ckpt", "test")
    # the callback stores the average as the checkpoint's state_dict, the live weights beside it
    assert "current_model_state" in ckpt
    saved = torch.load(out / "weights.pt", map_location="cpu", weights_only=True)
    average = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    live = {k[len("model.") :]: v for k, v in ckpt["current_model_state"].items() if k.startswith("model.")}
    head = next(k for k in saved if k.startswith("head") and k.endswith("weight"))
    torch.testing.assert_close(saved[head], average[head])
    assert not torch.allclose(saved[head], live[head])  # the average, not the last step's weights


def test_backbone_lr_scale_gives_the_backbone_its_own_rate(tmp_path, prepared, mlflow_db):
    from fashionops.config import TrainConfig
    from fashionops.models.factory import build_model, model_spec
    from fashionops.training.lit_module import FashionLitModule

    cfg = TrainConfig(backbone="small_cnn", pretrained="none", lr=0.01, backbone_lr_scale=0.1, freeze_groups=0)
    spec = model_spec(cfg, ["a", "b", "c"], "articleType", (48, 36))
    lit = FashionLitModule(build_model(spec), spec, cfg)
    groups = lit._param_groups()
    in_backbone = {id(p) for p in lit.model.backbone.parameters()}
    rates = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert rates and all(rates[i] == pytest.approx(0.001) for i in in_backbone)
    assert all(lr == pytest.approx(0.01) for i, lr in rates.items() if i not in in_backbone)
    assert groups[0]["lr"] == pytest.approx(0.01)  # the logged rate is train.lr
    assert len(rates) == sum(p.requires_grad for p in lit.model.parameters())  # every parameter, once

    # the stage trains with the groups (one-cycle peaks per group)
    params = train_params(tmp_path, prepared, mlflow_db, ["train.epochs=1", "train.backbone_lr_scale=0.1"])
    train(params)
    history = read_history(params.paths.reports("train") / "history.csv")
    assert history and float(history[0]["lr"]) > 0


def test_early_epoch_sizes_train_the_first_epochs_small_and_the_rest_at_the_input_size(tmp_path, prepared, mlflow_db):
    """Progressive resizing: epoch 1 trains on the early size; epoch 2, every validation batch and
    the saved model are at the input size."""
    from lightning.pytorch.callbacks import Callback

    from fashionops.errors import FashionOpsError
    from fashionops.training.stage import run_train

    seen: list[tuple[str, int, tuple[int, int]]] = []

    class BatchSizes(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(("train", trainer.current_epoch, tuple(batch[0].shape[-2:])))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append(("val", trainer.current_epoch, tuple(batch[0].shape[-2:])))

    early = "train.early_epoch_sizes=[[24,16]]"
    small_cnn = train_params(tmp_path / "small_cnn", prepared, mlflow_db, ["train.epochs=2", early])
    with pytest.raises(FashionOpsError, match=r"train.early_epoch_sizes: the model cannot take 24x16 images"):
        train(small_cnn)  # a fixed-size flatten: a clear error before training
    # a timm backbone (global pooling) at a reduced size, random weights
    lite0 = ["train.backbone=tf_efficientnet_lite0", "train.input_height=48", "train.input_width=36", "train.epochs=2"]
    p = train_params(tmp_path, prepared, mlflow_db, [*lite0, early])
    run_train(p.train, p.paths, p.tracking, balance=p.prepare.balance, run_config=p.flat(), callbacks=[BatchSizes()])
    spec = json.loads((Path(p.paths.classifier_dir) / "model_spec.json").read_text())
    final = (spec["input_height"], spec["input_width"])
    assert final == (48, 36)
    assert {s for kind, epoch, s in seen if kind == "train" and epoch == 0} == {(24, 16)}
    assert {s for kind, epoch, s in seen if kind == "train" and epoch == 1} == {final}
    assert {s for kind, _, s in seen if kind == "val"} == {final}


def test_compile_trains_through_the_compiled_module_and_saves_its_plain_weights(tmp_path, prepared, mlflow_db):
    """``train.compile``: the steps run through ``torch.compile`` (TorchDynamo captured graphs) and
    the saved weights keep the plain model's keys (no ``_orig_mod.`` prefix), so inference loads them."""
    from torch._dynamo.utils import counters

    from fashionops.models.torch_files import load_weights_only

    counters.clear()
    params = train_params(tmp_path, prepared, mlflow_db, ["train.epochs=1", "train.compile=true"])
    result = train(params)
    assert result["epochs_run"] == 1 and math.isfinite(result["best_val_loss"])
    assert counters["stats"]["unique_graphs"] > 0  # Dynamo compiled the model's forward
    saved = torch.load(Path(params.paths.classifier_dir) / "weights.pt", map_location="cpu", weights_only=True)
    assert saved and not any("_orig_mod" in key for key in saved)
    ckpt = load_weights_only(Path(params.paths.classifier_dir) / "checkpoints" / "best.ckpt", "test")
    assert not any("_orig_mod" in key for key in ckpt["state_dict"])


def test_mixup_blends_each_image_with_its_partner_and_cutmix_pastes_a_box_of_its_area():
    from fashionops.config import AugmentConfig
    from fashionops.training.mixing import mix_batch, mixing_enabled

    torch.manual_seed(0)
    x = torch.randn(5, 3, 16, 12)
    assert mix_batch(x, AugmentConfig()) is None and not mixing_enabled(AugmentConfig())
    assert mix_batch(x, AugmentConfig(mixup_alpha=0.2, mix_prob=0.0)) is None
    assert mix_batch(x[:1], AugmentConfig(mixup_alpha=0.2)) is None  # nothing to pair with

    mixed = mix_batch(x, AugmentConfig(mixup_alpha=0.4))
    assert mixed is not None and mixed.mode == "mixup" and 0.0 < mixed.lam < 1.0
    assert mixed.partner.tolist() == [4, 3, 2, 1, 0]
    torch.testing.assert_close(mixed.images, mixed.lam * x + (1 - mixed.lam) * x[mixed.partner])

    for _ in range(20):  # every box size and position, clipped at the borders
        cut = mix_batch(x, AugmentConfig(cutmix_alpha=1.0))
        assert cut is not None and cut.mode == "cutmix"
        from_partner = (cut.images == x[cut.partner]) & (cut.images != x)
        own = cut.images == x
        assert bool((own | from_partner).all())
        pasted = from_partner[0, 0].float().mean().item()  # image 0's partner is image 4: all differ
        assert cut.lam == pytest.approx(1.0 - pasted)
        # one box for the whole batch (image 2, the middle one, is its own partner: nothing changes)
        assert bool((from_partner[[0, 1, 3, 4]] == from_partner[0, 0]).all()) and not bool(from_partner[2].any())

    modes = {mix_batch(x, AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0)).mode for _ in range(30)}
    assert modes == {"mixup", "cutmix"}
    drawn = [mix_batch(x, AugmentConfig(mixup_alpha=0.2, mix_prob=0.5)) is not None for _ in range(200)]
    assert 60 < sum(drawn) < 140


def test_a_mixed_training_step_weights_both_labels_losses_and_mixing_refuses_an_autoencoder():
    from fashionops.config import AugmentConfig, TrainConfig
    from fashionops.errors import FashionOpsError
    from fashionops.models.factory import build_model, model_spec
    from fashionops.training.lit_module import FashionLitModule

    classes = [f"c{i}" for i in range(4)]
    cfg = TrainConfig(
        backbone="small_cnn", pretrained="none", label_smoothing=0.1, augment=AugmentConfig(mixup_alpha=0.4)
    )
    spec = model_spec(cfg, classes, "articleType", (48, 36))
    lit = FashionLitModule(build_model(spec), spec, cfg)
    lit.eval()  # no dropout: the step's output can be recomputed
    x, y = torch.randn(4, 3, 48, 36), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(3)
    loss = lit.training_step((x, y), 0)
    torch.manual_seed(3)
    from fashionops.training.mixing import mix_batch

    mixed = mix_batch(x, cfg.augment)
    out = lit.model(mixed.images)
    expected = mixed.lam * F.cross_entropy(out, y, label_smoothing=0.1) + (1 - mixed.lam) * F.cross_entropy(
        out, y.flip(0), label_smoothing=0.1
    )
    torch.testing.assert_close(loss, expected)
    plain = FashionLitModule(build_model(spec), spec, TrainConfig(backbone="small_cnn", pretrained="none"))
    assert not plain.mixing

    ae_cfg = TrainConfig(
        task="autoencoder",
        backbone="conv_autoencoder",
        pretrained="none",
        loss="mse",
        augment=AugmentConfig(cutmix_alpha=1.0),
    )
    ae_spec = model_spec(ae_cfg, classes, "articleType", (48, 36))
    with pytest.raises(FashionOpsError, match=r"train\.augment\.mixup_alpha/cutmix_alpha: .*single-label classifier"):
        FashionLitModule(build_model(ae_spec), ae_spec, ae_cfg)


def test_mixup_and_cutmix_train_the_stage(tmp_path, prepared, mlflow_db, monkeypatch):
    import fashionops.training.lit_module as lit_module

    modes: list[str] = []
    mix_batch = lit_module.mix_batch

    def counted(images, augment):
        mixed = mix_batch(images, augment)
        modes.append(mixed.mode if mixed is not None else "none")
        return mixed

    monkeypatch.setattr(lit_module, "mix_batch", counted)
    params = train_params(
        tmp_path,
        prepared,
        mlflow_db,
        ["train.epochs=2", "train.augment.mixup_alpha=0.2", "train.augment.cutmix_alpha=1.0"],
    )
    result = train(params)
    assert len(modes) == 6 and set(modes) <= {"mixup", "cutmix"}  # every training batch (3 per epoch)
    assert result["epochs_run"] == 2 and math.isfinite(result["best_val_loss"])
    assert (Path(params.paths.classifier_dir) / "weights.pt").is_file()
