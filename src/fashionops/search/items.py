"""The index's items: every catalogue row with an image, and those images encoded.

Row order is the ANN id (``annoy_idx``): items are sorted by catalogue ``id``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fashionops.environ import usable_cores
from fashionops.errors import DataError
from fashionops.inference.predictor import Encoded, Predictor
from fashionops.progress import Progress
from fashionops.search.store import ITEM_COLUMNS, RESULT_COLUMNS

log = logging.getLogger(__name__)


def catalogue_items(raw_dir: str | Path) -> pd.DataFrame:
    """Every catalogue row with an image, sorted by ``id`` (the index's row order)."""
    from fashionops.data.catalogue import load_catalogue

    cat = load_catalogue(raw_dir)
    if cat.empty:
        raise DataError(f"{raw_dir}: the catalogue is empty")
    cat = cat.sort_values("id", kind="stable").reset_index(drop=True)
    for col in [*RESULT_COLUMNS, *ITEM_COLUMNS]:  # gender/baseColour/year too: what an API item shows
        if col not in cat and col != "sha256":  # sha256: computed from the file when embedded
            cat[col] = None
    return cat


@dataclass
class PixelCache:
    """The prepare stage's decoded images (``images.npy``), found by the sha256 of their file's bytes.

    A cached row holds exactly ``resize_rgb(load_rgb(file), H, W)`` (see
    :func:`fashionops.data.imaging.decode_file`), so for a model whose input is the cache's size it
    is what decoding the file would give, without the JPEG decode.
    """

    images: np.ndarray  # (N, H, W, 3) uint8, memory-mapped
    row_of_sha: dict[str, int]

    @classmethod
    def open(cls, prepared_dir: str | Path) -> PixelCache | None:
        """The cache in ``prepared_dir``, or None when it has none (the stage then decodes every file)."""
        root = Path(prepared_dir)
        if not ((root / "images.npy").is_file() and (root / "index.parquet").is_file()):
            return None
        images = np.load(root / "images.npy", mmap_mode="r")
        index = pd.read_parquet(root / "index.parquet", columns=["row", "sha256", "is_copy"])
        originals = index[~index["is_copy"].astype(bool)]  # copies are augmented: not the file's pixels
        return cls(images, dict(zip(originals["sha256"], originals["row"].astype(int))))

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the cached images."""
        return int(self.images.shape[1]), int(self.images.shape[2])


def embed_catalogue(
    cat: pd.DataFrame,
    predictor: Predictor,
    batch_size: int = 256,
    flip_tta: bool = False,
    with_probs: bool = False,
    pixels: PixelCache | None = None,
    chunk: int = 1024,
    threads: int | None = 1,
) -> tuple[Encoded, pd.DataFrame]:
    """Decode every catalogue image at the model's input size and encode it (:meth:`Predictor.encode`).

    ``pixels``: the prepared cache; an item whose file bytes hash to a cached image is taken from it
    instead of being decoded again, when the cache's size is the model's pixel size. Files are read, hashed and decoded
    ``chunk`` images at a time in a background thread while the model encodes the previous chunk.
    ``threads``: forward passes run in parallel on the CPU, each single-threaded (None: one per
    usable core; 1: one pass with torch's own intra-op threads). Small images are encoded
    fastest that way: a multi-threaded pass over 80x60 images mostly waits for its own threads.
    Returns ``(encoded, items)`` where ``items`` has ``annoy_idx`` and ``sha256`` of the file bytes.
    Unreadable images raise ``DataError`` naming the file.
    """
    if pixels is not None and pixels.size != tuple(predictor.pixel_size):
        pixels = None  # another size: resizing the cache would not match decoding the file
    files = [str(f) for f in cat["file"]]
    starts = list(range(0, len(files), chunk))
    chunks: list[Encoded] = []
    shas: list[str] = []
    n_cached = 0
    workers = 1 if predictor.device.type != "cpu" else (threads or usable_cores())
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode") as encoders,
        _torch_threads(1 if workers > 1 else None),
        Progress(len(files), "embedded", unit="images", logger=log) as progress,  # a bar, or a line per 10%
    ):
        pending = pool.submit(load_item_pixels, files[:chunk], predictor, pixels) if starts else None
        for i in range(len(starts)):
            assert pending is not None
            images, chunk_shas, cached = pending.result()
            nxt = starts[i + 1] if i + 1 < len(starts) else None
            pending = (
                pool.submit(load_item_pixels, files[nxt : nxt + chunk], predictor, pixels) if nxt is not None else None
            )
            chunks.append(
                _encode_chunk(images, predictor, batch_size, flip_tta, with_probs, encoders if workers > 1 else None)
            )
            shas.extend(chunk_shas)
            n_cached += cached
            progress.update(len(images))
    log.info("%d of %d images taken from the prepared cache, %d decoded", n_cached, len(files), len(files) - n_cached)
    items = cat.copy()
    items["sha256"] = shas
    items.insert(0, "annoy_idx", np.arange(len(items), dtype=np.int64))
    items = items[["annoy_idx", *ITEM_COLUMNS, "file"]]
    return Encoded.concat(chunks), items


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: unchanged), restored after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _encode_chunk(
    images: np.ndarray,
    predictor: Predictor,
    batch_size: int,
    flip_tta: bool,
    with_probs: bool,
    pool: ThreadPoolExecutor | None,
) -> Encoded:
    """``images`` encoded batch by batch, on ``pool``'s threads when given (order kept)."""

    def encode_batch(batch: np.ndarray) -> Encoded:
        return predictor.encode(batch, batch_size, flip_tta=flip_tta, with_probs=with_probs)

    if pool is None:
        return encode_batch(images)
    return Encoded.concat(
        list(pool.map(encode_batch, [images[i : i + batch_size] for i in range(0, len(images), batch_size)]))
    )


def load_item_pixels(
    files: list[str], predictor: Predictor, pixels: PixelCache | None
) -> tuple[np.ndarray, list[str], int]:
    """``files`` as one uint8 NHWC batch at the model's pixel size (:attr:`Predictor.pixel_size`),
    their sha256s, how many came from the cache."""
    from fashionops.data.imaging import load_rgb, read_image_bytes

    h, w = predictor.pixel_size
    out = np.empty((len(files), h, w, 3), dtype=np.uint8)
    shas: list[str] = []
    from_cache: list[tuple[int, int]] = []  # (position, cache row)
    for pos, file in enumerate(files):
        data = read_image_bytes(file)
        sha = hashlib.sha256(data).hexdigest()
        shas.append(sha)
        row = pixels.row_of_sha.get(sha) if pixels is not None else None
        if row is not None:
            from_cache.append((pos, row))
        else:
            out[pos] = predictor.fit(load_rgb(data, name=file))[0]
    if from_cache and pixels is not None:
        positions, rows = (np.array(v) for v in zip(*from_cache))
        order = np.argsort(rows)  # ascending rows: a sequential read of the memory map
        out[positions[order]] = pixels.images[rows[order]]
    return out, shas, len(from_cache)
