"""``prepare`` stage: filter classes, encode labels, split without duplicate leakage, balance,
and build the decoded image cache the training stage reads.

Reads the catalogue in ``paths.raw_dir``. Outputs (``paths.prepared_dir``, written to a
temporary directory and renamed at the end): ``images.npy`` (uint8 (N, H, W, 3),
memory-mappable), ``index.parquet`` (row, id, label, label_idx, split, sha256, source_id,
is_copy), ``labels.json`` and ``class_weights.json``; plus ``<paths.reports_dir>/prepare/summary.json``
(counts, per-class counts, dropped classes, duplicate groups, settings, speed) and ``metrics.json``
beside it (the DVC metrics file, same names in MLflow: :func:`headline_metrics`, ``data/images``,
``data/classes``, ...).

Multi-attribute tagging (``prepare.labels``): the primary ``label`` still drives filtering, the
split and balancing exactly as above (same rows, same split); the extra attributes are encoded
by :mod:`fashionops.data.attributes` into extra ``index.parquet`` columns (``<attribute>``,
``<attribute>_idx``; ``-1`` = ignored for that head), ``labels.json`` ``attributes`` and the
summary's ``attributes`` (per-attribute class counts).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fashionops.atomic import staged_dir, write_json
from fashionops.config import ConfigError, PathsConfig, PrepareConfig
from fashionops.data.attributes import attribute_summary, encode_attributes
from fashionops.data.catalogue import load_catalogue
from fashionops.data.imaging import decode_files_into
from fashionops.errors import DataError
from fashionops.workers import die_with_parent, kill_workers

SPLITS = ("train", "val", "test")
# Rows per decode task: big enough to amortise process round trips, small enough to balance.
_CHUNK = 1024
# Synthetic ids of oversampled copies are negative so they never collide with catalogue ids.
_COPY_ID_BASE = -1


# --------------------------------------------------------------------------- filtering


def select_classes(
    labels: pd.Series, min_images: int, include: Sequence[str] = (), exclude: Sequence[str] = (), column: str = "label"
) -> tuple[list[str], dict[str, str]]:
    """Classes to keep and why the others were dropped.

    ``include`` (if non-empty) restricts to those classes, ``exclude`` removes classes, then
    classes with fewer than ``min_images`` rows are dropped. Returns (sorted kept classes,
    {dropped class: reason}). An ``include`` name absent from the data is a ``ConfigError``.
    """
    counts = labels.value_counts()
    unknown = sorted(set(include) - set(counts.index))
    if unknown:
        raise ConfigError(f"prepare.include: classes not found in column {column!r}: {unknown}")
    dropped: dict[str, str] = {}
    kept: list[str] = []
    for name, count in sorted(counts.items()):
        if include and name not in include:
            dropped[name] = "not in prepare.include"
        elif name in exclude:
            dropped[name] = "in prepare.exclude"
        elif count < min_images:
            dropped[name] = f"{count} images < prepare.min_images_per_class={min_images}"
        else:
            kept.append(str(name))
    return kept, dropped


# --------------------------------------------------------------------------- split


def _check_fractions(fractions: Sequence[float] | np.ndarray) -> np.ndarray:
    frac = np.asarray(fractions, dtype=float)
    if frac.shape != (3,) or np.any(frac <= 0) or abs(frac.sum() - 1.0) > 1e-6:
        raise ConfigError(
            f"prepare.split: train/val/test fractions must be positive and sum to 1 (got {list(fractions)})"
        )
    return frac


def duplicate_groups(hashes: Sequence[str]) -> np.ndarray:
    """Group number per row: rows with the same content hash share a group (numbered by first row)."""
    codes, _ = pd.factorize(pd.Series(list(hashes)), sort=False)
    return codes


def split_groups(
    labels: Sequence[str],
    hashes: Sequence[str],
    fractions: Sequence[float] | np.ndarray = (0.8, 0.1, 0.1),
    seed: int = 42,
) -> np.ndarray:
    """Stratified train/val/test split in which byte-identical images share a split.

    Rows with the same ``hashes`` value form a group that is assigned as a whole. A group
    whose members have different labels is stratified under its majority label (ties: the
    alphabetically first). Within each class, groups are shuffled (seeded), the largest first,
    then each goes to the split furthest below its target count, so every class gets
    ~``fractions`` of its images in each split. Deterministic for a given ``seed``.
    Returns an array of ``"train" | "val" | "test"`` per row.
    """
    frac = _check_fractions(fractions)
    label_arr = np.asarray(list(labels), dtype=object)
    if len(label_arr) != len(hashes):
        raise ValueError(f"split_groups: {len(label_arr)} labels but {len(hashes)} hashes")
    group = duplicate_groups(hashes)
    n_groups = int(group.max()) + 1 if len(group) else 0
    frame = pd.DataFrame({"group": group, "label": label_arr})
    sizes = np.bincount(group, minlength=n_groups)
    # Majority label per group: most rows, then alphabetical, for determinism.
    majority = (
        frame.groupby(["group", "label"])
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["group", "n", "label"], ascending=[True, False, True])
        .drop_duplicates("group")
        .set_index("group")["label"]
    )
    group_split = np.empty(n_groups, dtype=np.int8)
    rng = np.random.default_rng(seed)
    for name in sorted(majority.unique()):
        members = majority.index[majority.to_numpy() == name].to_numpy()
        members = members[rng.permutation(len(members))]
        # Stable sort by size (desc) keeps the shuffled order among equal sizes.
        members = members[np.argsort(-sizes[members], kind="stable")]
        target = frac * sizes[members].sum()
        filled = np.zeros(3)
        for g in members:
            pick = int(np.argmax(target - filled))  # first (train) wins ties
            group_split[g] = pick
            filled[pick] += sizes[g]
    return np.asarray(SPLITS, dtype=object)[group_split[group]]


# --------------------------------------------------------------------------- decoding


def decode_into(npy_path: Path, files: Sequence[str], height: int, width: int, workers: int) -> list[str]:
    """Decode ``files`` into rows 0..len-1 of the existing ``.npy`` at ``npy_path`` in parallel.

    Each worker process opens the file as a memmap and fills its own slice. Returns the
    sha256 of each file's bytes. A missing/undecodable file raises ``DataError`` naming it.
    """
    files = [str(f) for f in files]
    # ~4 tasks per worker at least, so a slow chunk does not leave the other workers idle.
    size = max(64, min(_CHUNK, -(-len(files) // (4 * max(1, workers)))))
    chunks = [(start, files[start : start + size]) for start in range(0, len(files), size)]
    hashes: list[str] = [""] * len(files)
    if workers <= 1 or len(chunks) <= 1:
        for start, part in chunks:
            hashes[start : start + len(part)] = decode_files_into(str(npy_path), start, part, height, width)
        return hashes
    # spawn: safe whatever threads the caller (Prefect, a server) is running. die_with_parent:
    # the workers end with this process even when it is SIGKILLed.
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent
    ) as pool:
        futures = [
            (start, pool.submit(decode_files_into, str(npy_path), start, part, height, width)) for start, part in chunks
        ]
        try:
            for start, future in futures:
                part = future.result()
                hashes[start : start + len(part)] = part
        except Exception:
            # First bad image ends the run: do not decode the remaining chunks.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        except BaseException:
            # Interrupted (SIGTERM, Ctrl-C): stop the running chunks too, at once.
            kill_workers(pool)
            raise
    return hashes


# --------------------------------------------------------------------------- balancing


def augment_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy for offline oversampling: random h-flip, small shift and rotation
    (white fill, the catalogue background) and brightness jitter around white; same size."""
    height, width = image.shape[:2]
    img = Image.fromarray(image)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-10, 10))
    shift_x = int(rng.integers(-max(1, width // 12), max(1, width // 12) + 1))
    shift_y = int(rng.integers(-max(1, height // 12), max(1, height // 12) + 1))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, translate=(shift_x, shift_y), fillcolor=(255, 255, 255))
    # Brightness jitter that keeps the white background white (scaling the whole image
    # would give copies a grey background: a cue that only copies carry).
    ink = 255.0 - np.asarray(img, dtype=np.float32)
    out = 255.0 - ink * float(rng.uniform(0.8, 1.2))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plan_oversample(index: pd.DataFrame, target: int, seed: int) -> list[tuple[int, int]]:
    """(source row, copy number) pairs that bring each class's train count up to ``target``.

    Sources cycle through the class's train images in a seeded shuffled order.
    """
    rng = np.random.default_rng(seed)
    train = index[index["split"] == "train"]
    plan: list[tuple[int, int]] = []
    for _, rows in sorted(train.groupby("label_idx")["row"]):
        missing = target - len(rows)
        if missing <= 0 or len(rows) == 0:
            continue
        order = rows.to_numpy()[rng.permutation(len(rows))]
        plan.extend((int(order[k % len(order)]), k // len(order)) for k in range(missing))
    return plan


def class_weights(train_label_idx: Sequence[int], n_classes: int) -> list[float]:
    """ "Balanced" weights n_train / (n_classes * count_c) from train-split counts (count >= 1)."""
    counts = np.bincount(np.asarray(train_label_idx, dtype=np.int64), minlength=n_classes).astype(float)
    total = counts.sum()
    return [float(w) for w in total / (n_classes * np.maximum(counts, 1.0))]


# --------------------------------------------------------------------------- stage


def report_path(paths: PathsConfig) -> Path:
    """Where the stage writes its summary."""
    return paths.reports("prepare") / "summary.json"


def headline_metrics(summary: dict[str, Any]) -> dict[str, int]:
    """``metrics.json``: what the model is trained and tested on (distinct images, classes, the
    train and test split sizes) and how many classes ``prepare.min_images_per_class`` dropped."""
    originals = summary["split_originals"]
    return {
        "data/images": int(summary["n_images"]),
        "data/classes": int(summary["n_classes"]),
        "data/train_images": int(originals["train"]),
        "data/test_images": int(originals["test"]),
        "data/dropped_classes": len(summary["dropped_classes"]),
    }


def run_prepare(cfg: PrepareConfig, paths: PathsConfig) -> dict[str, Any]:
    """Run the prepare stage on ``paths.raw_dir`` into ``paths.prepared_dir``; returns the summary
    written to ``<paths.reports_dir>/prepare/summary.json``.

    Raises ``DataError`` if an image is missing or undecodable (naming the file) or no class
    is left after filtering, ``ConfigError`` for bad split fractions or unknown include names.
    """
    started = time.perf_counter()
    fractions = _check_fractions([cfg.split.train, cfg.split.val, cfg.split.test])
    raw_dir = Path(paths.raw_dir)
    catalogue = load_catalogue(raw_dir)
    column = cfg.label
    extras = cfg.attributes[1:]  # multi-attribute: the extra heads' columns ride along

    labels = catalogue[column]
    missing_label = labels.isna() | (labels.astype(str).str.strip() == "")
    carried = [c for c in extras if c in catalogue.columns]  # a missing one: DataError below
    frame = catalogue.loc[~missing_label, ["id", column, "file", *carried]].rename(columns={column: "label"})
    frame["label"] = frame["label"].astype(str)
    classes, dropped = select_classes(frame["label"], cfg.min_images_per_class, cfg.include, cfg.exclude, column)
    if not classes:
        raise DataError(
            f"{raw_dir}: no {column} class left after filtering "
            f"(min_images_per_class={cfg.min_images_per_class}, include={cfg.include}, exclude={cfg.exclude})"
        )
    frame = frame[frame["label"].isin(classes)].sort_values("id", kind="stable").reset_index(drop=True)
    n = len(frame)
    height, width = cfg.image_height, cfg.image_width

    out_dir = Path(paths.prepared_dir)
    with staged_dir(out_dir) as tmp_dir:  # no half-written cache, ever
        npy = tmp_dir / "images.npy"
        cache = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(n, height, width, 3))
        del cache  # workers open it themselves
        decode_start = time.perf_counter()
        hashes = decode_into(npy, frame["file"].tolist(), height, width, cfg.workers)
        decode_seconds = time.perf_counter() - decode_start

        frame["sha256"] = hashes
        frame["split"] = split_groups(frame["label"], hashes, fractions, cfg.seed)
        label_idx = {name: i for i, name in enumerate(classes)}
        index = pd.DataFrame(
            {
                "row": np.arange(n, dtype=np.int64),
                "id": frame["id"].astype(np.int64),
                "label": frame["label"],
                "label_idx": frame["label"].map(label_idx).astype(np.int64),
                "split": frame["split"].astype(str),
                "sha256": frame["sha256"],
                "source_id": frame["id"].astype(np.int64),
                "is_copy": False,
            }
        )
        attribute_classes: dict[str, list[str]] = {}
        rare: dict[str, dict[str, int]] = {}
        if extras:
            extra_columns, attribute_classes, rare = encode_attributes(frame, extras, str(raw_dir))
            for name, values in extra_columns.items():
                index[name] = values.to_numpy()

        n_copies = 0
        if cfg.balance == "oversample":
            plan = plan_oversample(index, cfg.oversample_target, cfg.seed)
            n_copies = len(plan)
            if n_copies:
                index = _append_copies(npy, index, plan, cfg.seed)

        weights = class_weights(index.loc[index["split"] == "train", "label_idx"], len(classes))
        index.to_parquet(tmp_dir / "index.parquet", index=False)
        labels_doc: dict[str, Any] = {"column": column, "classes": classes}
        if extras:
            labels_doc["attributes"] = attribute_classes
        write_json(tmp_dir / "labels.json", labels_doc)
        write_json(tmp_dir / "class_weights.json", {"weights": weights})

    seconds = time.perf_counter() - started
    groups = frame.groupby("sha256")["label"].agg(["size", "nunique"])
    dup = groups[groups["size"] > 1]
    counts = {
        split: {name: int(c) for name, c in sorted(Counter(index.loc[index["split"] == split, "label"]).items())}
        for split in SPLITS
    }
    summary: dict[str, Any] = {
        "label_column": column,
        "n_classes": len(classes),
        "n_images": int(n),
        "n_copies": int(n_copies),
        "n_rows": int(len(index)),
        "image_size": [height, width],
        "balance": cfg.balance,
        "seed": cfg.seed,
        "split_fractions": {s: float(f) for s, f in zip(SPLITS, fractions)},
        "split_counts": {s: int((index["split"] == s).sum()) for s in SPLITS},
        "split_originals": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "class_counts": counts,
        "dropped_classes": dropped,
        "dropped_missing_label": int(missing_label.sum()),
        "duplicate_groups": {
            "groups": int(len(dup)),
            "images": int(dup["size"].sum()),
            "groups_with_mixed_labels": int((dup["nunique"] > 1).sum()),
        },
        "images_per_s": round(n / decode_seconds, 1) if decode_seconds > 0 else None,
        "decode_seconds": round(decode_seconds, 3),
        "seconds": round(seconds, 3),
        "workers": cfg.workers,
        "out_dir": str(out_dir),
    }
    if extras:
        summary["attributes"] = attribute_summary(index, attribute_classes, rare)
    write_json(report_path(paths), summary)
    write_json(report_path(paths).with_name("metrics.json"), headline_metrics(summary))
    return summary


def _append_copies(npy: Path, index: pd.DataFrame, plan: list[tuple[int, int]], seed: int) -> pd.DataFrame:
    """Rewrite ``npy`` with augmented copies appended; returns the index with their rows."""
    originals = np.load(npy, mmap_mode="r")
    n, height, width, _ = originals.shape
    bigger = npy.with_name("images.grow.npy")
    out = np.lib.format.open_memmap(bigger, mode="w+", dtype=np.uint8, shape=(n + len(plan), height, width, 3))
    for start in range(0, n, 4096):  # chunked: never all originals in RAM at once
        stop = min(n, start + 4096)
        out[start:stop] = originals[start:stop]
    for k, (source_row, _) in enumerate(plan):
        # One generator per copy: the copy's pixels depend only on (seed, k).
        rng = np.random.default_rng([seed, k])
        out[n + k] = augment_copy(np.asarray(originals[source_row]), rng)
    out.flush()
    del out, originals
    os.replace(bigger, npy)
    source = index.set_index("row").loc[[row for row, _ in plan]].reset_index(drop=True)
    copies = pd.DataFrame(
        {
            "row": np.arange(n, n + len(plan), dtype=np.int64),
            "id": _COPY_ID_BASE - np.arange(len(plan), dtype=np.int64),
            "label": source["label"],
            "label_idx": source["label_idx"],
            "split": "train",
            "sha256": source["sha256"],  # the content the copy was made from (keeps duplicate checks valid)
            "source_id": source["id"],
            "is_copy": True,
        }
    )
    for name in index.columns.difference(copies.columns):  # extra attributes: the source's values
        copies[name] = source[name].to_numpy()
    copies = copies[list(index.columns)].astype(index.dtypes.to_dict())
    return pd.concat([index, copies], ignore_index=True)
