"""Data side of the ``train`` stage: the prepared uint8 cache as Lightning loaders.

Batches leave the loader as uint8 ``(B, H, W, 3)`` straight from the memory-mapped
``images.npy`` (one fancy-index per batch, no per-image decode), move to the device as bytes,
and are augmented, resized and normalised there (``BatchTransform`` in
``FashionDataModule.on_after_batch_transfer``). Normalisation and resizing are
``fashionops.inference.preprocess.preprocess_batch``, the same function inference uses.

Balancing (``prepare.balance``): ``weighted_sampler`` draws train samples with probability
inversely proportional to their class count; ``oversample`` needs nothing here (the copies
are rows of the index); ``class_weights`` is a weighted loss (see ``lit_module``).

Multi-attribute models (``spec.attributes``): the targets of a batch are ``(B, 1 + K)`` int64,
column 0 the primary ``label_idx``, then ``<attribute>_idx`` per extra head in spec order (``-1``:
ignored by that head). Single-head models get ``(B,)`` targets, exactly as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from fashionops.config import AugmentConfig, TrainConfig
from fashionops.errors import DataError
from fashionops.models.spec import ModelSpec
from fashionops.training.distributed import EvalShardSampler, shard_train_indices

SPLITS = ("train", "val", "test")
INDEX_COLUMNS = ("row", "id", "label", "label_idx", "split", "is_copy")


@dataclass
class PreparedData:
    """The prepare stage's outputs, read once (the image array memory-mapped, not loaded)."""

    root: Path
    images: np.ndarray  # uint8 (N, H, W, 3), np.memmap
    index: pd.DataFrame
    classes: list[str]
    label_column: str
    class_weights: list[float] | None
    # multi-attribute (prepare.labels): extra attribute -> classes, from labels.json; {} = single label
    attributes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split; oversampled copies only ever count in ``train``."""
        rows = self.index[self.index["split"] == name]
        if name != "train":
            rows = rows[~rows["is_copy"].astype(bool)]
        return rows


def load_prepared(root: str | Path) -> PreparedData:
    """Open ``data/prepared`` and check it against the contract (clear errors, no partial reads)."""
    root = Path(root)
    hint = "run `fashionops prepare` first"
    for name in ("images.npy", "index.parquet", "labels.json"):
        if not (root / name).is_file():
            raise DataError(f"{root / name} not found; {hint}")
    images = np.load(root / "images.npy", mmap_mode="r")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"{root / 'images.npy'}: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    index = pd.read_parquet(root / "index.parquet")
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise DataError(f"{root / 'index.parquet'}: missing columns {missing}; {hint}")
    labels = json.loads((root / "labels.json").read_text())
    classes = list(labels.get("classes", []))
    if not classes:
        raise DataError(f"{root / 'labels.json'}: no classes")
    rows = index["row"].to_numpy()
    if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
        raise DataError(f"{root / 'index.parquet'}: row out of range for images.npy with {len(images)} images")
    idx = index["label_idx"].to_numpy()
    if len(idx) and (idx.min() < 0 or idx.max() >= len(classes)):
        raise DataError(f"{root / 'index.parquet'}: label_idx out of range for {len(classes)} classes")
    unknown = set(index["split"].unique()) - set(SPLITS)
    if unknown:
        raise DataError(f"{root / 'index.parquet'}: unknown split values {sorted(unknown)}")
    weights = None
    if (root / "class_weights.json").is_file():
        weights = [float(w) for w in json.loads((root / "class_weights.json").read_text())["weights"]]
        if len(weights) != len(classes):
            raise DataError(f"{root / 'class_weights.json'}: {len(weights)} weights for {len(classes)} classes")
    attributes = {str(a): [str(c) for c in cs] for a, cs in (labels.get("attributes") or {}).items()}
    missing = [f"{a}_idx" for a in attributes if f"{a}_idx" not in index.columns]
    if missing:
        raise DataError(f"{root / 'index.parquet'}: missing columns {missing} named by labels.json; {hint}")
    return PreparedData(root, images, index, classes, str(labels.get("column", "label")), weights, attributes)


def target_columns(data: PreparedData, spec: ModelSpec) -> list[str]:
    """Index columns of a batch's targets: ``label_idx``, then ``<attribute>_idx`` per extra head."""
    missing = [a for a in spec.attributes if a not in data.attributes]
    if missing:
        raise DataError(
            f"{data.root / 'labels.json'}: no attribute(s) {missing} the model has heads for; "
            "run `fashionops prepare` with prepare.labels"
        )
    return ["label_idx", *(f"{a}_idx" for a in spec.attributes)]


class CachedImages(Dataset):
    """Rows of the uint8 cache with their labels; fetched a whole batch at a time.

    ``__getitems__`` (used by ``DataLoader`` with automatic batching) returns the batch already
    stacked, so ``collate_batch`` only passes it through. The memmap is reopened lazily in each
    worker process instead of being pickled (pickling a memmap copies the whole array).
    """

    def __init__(
        self, images_path: Path, rows: np.ndarray, labels: np.ndarray, images: np.ndarray | None = None
    ) -> None:
        self.images_path = Path(images_path)
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64))  # a writable copy
        self._images = images

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.images[self.rows[i]])), self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        rows = self.rows[idx]
        # Sorted reads are sequential on the memmap; put the batch back in sampler order after.
        order = np.argsort(rows, kind="stable")
        batch = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        batch[order] = self.images[rows[order]]
        return torch.from_numpy(batch), self.labels[torch.from_numpy(idx)]


def collate_batch(batch: Any) -> Any:
    """Batches come stacked from ``CachedImages.__getitems__``; single items are stacked here."""
    if isinstance(batch, tuple):
        return batch
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)


class EpochRandomSampler(RandomSampler):
    """Shuffle (or weighted draw with replacement) seeded by ``seed + epoch``, one rank's share.

    Lightning calls ``set_epoch`` before every epoch, also after a resume, so the order of an
    epoch depends only on the seed and the epoch number: a resumed run sees the same batches as
    an uninterrupted one. Under DDP every rank draws the same epoch order (plain or class-weighted)
    and keeps its shard (``distributed.shard_train_indices``): the balancing holds on every rank.
    """

    def __init__(
        self, data_source: Sized, seed: int, weights: torch.Tensor | None = None, rank: int = 0, world: int = 1
    ) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.rank, self.world = int(rank), int(world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.data_source)
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(n, generator=g).tolist()
        yield from shard_train_indices(order, self.rank, self.world)

    def __len__(self) -> int:
        return -(-len(self.data_source) // self.world)


def sample_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-sample weight 1/count(class): every class is drawn equally often in expectation."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.as_tensor(1.0 / np.maximum(counts, 1.0)[labels])


class BatchTransform:
    """uint8 NHWC batch on any device -> float NCHW model input (augmented when training).

    Augmentations (``train.augment``), all per sample and on the batch's device: horizontal
    flip; random resized crop keeping ``1 - crop_scale``..1 of the area plus a rotation of up to
    ``affine_degrees`` (one ``grid_sample`` that also produces the model's input size); colour
    jitter of brightness/contrast/saturation by up to ``color_jitter``. Everything else is
    ``preprocess_batch`` (resize + the spec's mean/std), exactly as at inference.
    """

    def __init__(self, spec: ModelSpec, augment: AugmentConfig | None = None, channels_last: bool = False) -> None:
        self.spec = spec
        self.augment = augment or AugmentConfig(hflip=False)
        self.channels_last = channels_last
        self.train_spec = spec  # what training batches are made for (``set_train_size``)

    @property
    def out_hw(self) -> tuple[int, int]:
        """(height, width) of the training batches."""
        return self.train_spec.input_size

    def set_train_size(self, hw: tuple[int, int] | None) -> None:
        """Make training batches ``hw`` pixels (progressive resizing), or the spec's size (None).
        Evaluation batches keep the spec's size."""
        size = tuple(hw) if hw is not None else self.spec.input_size
        self.train_spec = (
            self.spec
            if size == self.spec.input_size
            else self.spec.model_copy(update={"input_height": int(size[0]), "input_width": int(size[1])})
        )

    @property
    def geometric(self) -> bool:
        return self.augment.crop_scale > 0 or self.augment.affine_degrees > 0

    def __call__(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        from fashionops.inference.preprocess import preprocess_batch

        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"expected a uint8 (B, H, W, 3) batch, got {images.dtype} {tuple(images.shape)}")
        if train:
            images = self.augment_batch(images)
        x = preprocess_batch(images, self.train_spec if train else self.spec, images.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """The training augmentations on a uint8 NHWC batch.

        Returns uint8 NHWC when only flips are on (no float pass at all), else float NHWC in
        [0, 1] (already at the model's input size), which ``preprocess_batch`` accepts as is.
        """
        aug = self.augment
        b = images.shape[0]
        if aug.hflip:
            flip = torch.rand(b, device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(2), images)
        if not self.geometric and aug.color_jitter <= 0:
            return images
        x = images.permute(0, 3, 1, 2).float()  # NCHW in 0..255
        if self.geometric:
            x = self._crop_rotate(x)
        if aug.color_jitter > 0:
            x = self._color_jitter(x)
        return x.clamp_(0, 255).div_(255.0).permute(0, 2, 3, 1)

    def _crop_rotate(self, x: torch.Tensor) -> torch.Tensor:
        aug = self.augment
        b, _, h, w = x.shape
        dev = x.device
        area = 1.0 - aug.crop_scale * torch.rand(b, device=dev)
        log_ratio = (torch.rand(b, device=dev) * 2 - 1) * math.log(4 / 3) * (aug.crop_scale > 0)
        ratio = torch.exp(log_ratio)
        fw = torch.sqrt(area * ratio).clamp(max=1.0)
        fh = torch.sqrt(area / ratio).clamp(max=1.0)
        # crop centre anywhere the crop still fits, in normalised [-1, 1] coordinates
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - fw)
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - fh)
        angle = (torch.rand(b, device=dev) * 2 - 1) * math.radians(aug.affine_degrees)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # rotation in pixel space expressed in normalised coordinates (H != W)
        sx, sy = w / 2.0, h / 2.0
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = cos * fw
        theta[:, 0, 1] = -sin * fh * sy / sx
        theta[:, 1, 0] = sin * fw * sx / sy
        theta[:, 1, 1] = cos * fh
        theta[:, 0, 2] = cx
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, [b, 3, *self.out_hw], align_corners=False)
        # border padding: catalogue backgrounds are plain, so edge pixels are the right fill
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        j = self.augment.color_jitter
        b = x.shape[0]

        def factor() -> torch.Tensor:
            return (1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * j).clamp(min=0)

        x = x * factor()  # brightness
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        x = (x - gray.mean(dim=(2, 3), keepdim=True)) * factor() + gray.mean(dim=(2, 3), keepdim=True)  # contrast
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        return gray + (x - gray) * factor()  # saturation


class FashionDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``data/prepared`` plus the on-device batch transform."""

    def __init__(
        self,
        data: PreparedData,
        spec: ModelSpec,
        batch_size: int = 64,
        balance: str = "none",
        augment: AugmentConfig | None = None,
        num_workers: int = 0,
        seed: int = 42,
        channels_last: bool = False,
        eval_batch_size: int | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.data = data
        self.spec = spec
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size  # no gradients: bigger is cheaper
        self.balance = balance
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.transform = BatchTransform(spec, augment, channels_last=channels_last)
        self.datasets: dict[str, CachedImages] = {}
        targets = target_columns(data, spec) if spec.attributes else ["label_idx"]
        for split in SPLITS:
            rows = data.split(split)
            labels = rows[targets].to_numpy() if spec.attributes else rows["label_idx"].to_numpy()
            self.datasets[split] = CachedImages(
                data.root / "images.npy", rows["row"].to_numpy(), labels, images=data.images
            )
        if len(self.datasets["train"]) == 0:
            raise DataError(f"{data.root / 'index.parquet'}: the train split is empty")
        if len(self.datasets["val"]) == 0:
            raise DataError(f"{data.root / 'index.parquet'}: the val split is empty (needed for checkpoints)")

    @classmethod
    def from_config(
        cls,
        cfg: TrainConfig,
        spec: ModelSpec,
        data: PreparedData,
        *,
        balance: str = "none",
        channels_last: bool = False,
        pin_memory: bool = False,
    ) -> FashionDataModule:
        """The loaders ``train`` asks for (batch size, augmentation, workers, seed; ``prepare.balance``)."""
        return cls(
            data,
            spec,
            batch_size=cfg.batch_size,
            balance=balance,
            augment=cfg.augment,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
            channels_last=channels_last,
            pin_memory=pin_memory,
        )

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    def ranks(self) -> tuple[int, int]:
        """(rank, world size) of the trainer this module is attached to; (0, 1) without one."""
        trainer = self.trainer
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def train_sampler(self) -> EpochRandomSampler:
        train = self.datasets["train"]
        weights = None
        if self.balance == "weighted_sampler":
            primary = train.labels.numpy()  # (N,), or (N, 1 + K) with the primary first
            weights = sample_weights(primary if primary.ndim == 1 else primary[:, 0], len(self.data.classes))
        rank, world = self.ranks()
        return EpochRandomSampler(train, self.seed, weights, rank=rank, world=world)

    def eval_sampler(self, split: str) -> Sampler[int] | None:
        """This rank's unpadded shard of an evaluation split (None: the whole split, in order)."""
        rank, world = self.ranks()
        if world == 1:
            return None
        size = len(self.datasets[split])
        if size < world:  # a rank without a batch would miss the others' collectives
            raise DataError(f"{self.data.root / 'index.parquet'}: {size} {split} images, fewer than {world} processes")
        return EvalShardSampler(size, rank, world)

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        ds = self.datasets[split]
        train_sampler = self.train_sampler() if train else None
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=train_sampler if train_sampler is not None else self.eval_sampler(split),
            shuffle=False if train else None,
            # a last batch of 1 breaks BatchNorm in train mode; dropping < 1 batch per epoch is harmless
            drop_last=train_sampler is not None and len(train_sampler) > batch_size,
            collate_fn=collate_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            # an own generator: creating an iterator must not draw from the global RNG, or the
            # augmentation stream would depend on when Lightning creates it (differs on resume)
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.transform(images, train=training), labels
