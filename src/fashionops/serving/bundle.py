"""The served models: ``ModelBundle`` (one immutable classifier/index pair) and ``BundleHolder``.

A bundle holds the classifier and the index's embedder (both :class:`Predictor`; often the same
object), the index's searcher, the catalogue image directory and what ``/health`` tells about
them. The holder owns the current bundle: a reload builds a whole new bundle first and then
swaps one reference, so a request, which takes ``holder.current`` once, always sees a matching
pair. Loading a bundle is :mod:`fashionops.serving.loader`'s job.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashionops.inference.predictor import Predictor
from fashionops.search.searcher import IndexSearcher
from fashionops.serving.downloads import remove_download_dir
from fashionops.serving.schemas import Item, SearchHit

log = logging.getLogger(__name__)


def inference_slots() -> int:
    """How many forward passes may run at once: cores // torch intra-op threads (at least 1)."""
    import torch

    return max(1, (os.cpu_count() or 1) // max(1, torch.get_num_threads()))


@dataclass(frozen=True)
class ModelBundle:
    """One consistent classifier/index pair and everything a request needs to use it.

    ``slots`` bounds concurrent forward passes to what the cores can run without
    oversubscription (cores // torch threads).
    """

    predictor: Predictor  # the classifier
    embedder: Predictor  # the model the index was built with (often ``predictor`` itself)
    searcher: IndexSearcher
    images_dir: Path
    source: str  # registry | dir | local
    alias: str | None
    classifier: dict[str, Any]  # name, version, run_id, ... (what /health shows)
    index: dict[str, Any]
    fingerprint: str  # identity of the pair; a poll reloads when it changes
    cleanup_dir: Path | None = None  # a download directory this bundle owns
    loaded_at: float = field(default_factory=time.time)
    slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(inference_slots()), repr=False, compare=False
    )
    _items: dict[int, dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # frozen: the derived fields are set once, here
        object.__setattr__(self, "images_dir", Path(self.images_dir).resolve())
        records = self.searcher.items.to_dict(orient="records")
        object.__setattr__(self, "_items", {int(r["id"]): r for r in records})

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.spec.classes)

    @property
    def n_items(self) -> int:
        return len(self._items)

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports about this pair."""
        return {
            "source": self.source,
            "alias": self.alias,
            "classifier": self.classifier,
            "index": self.index,
            "fingerprint": self.fingerprint,
            "loaded_at": self.loaded_at,
            "items": self.n_items,
            "classes": len(self.classes),
            "label_column": self.predictor.spec.label_column,
            "jit": self.predictor.is_scripted,
        }

    def classifier_answer(self) -> dict[str, Any]:
        """The ``model`` of a ``/classify`` response."""
        return {**self.classifier, "alias": self.alias, "source": self.source}

    def index_answer(self) -> dict[str, Any]:
        """The ``model`` of a ``/search`` response."""
        return {**self.index, "alias": self.alias, "source": self.source}

    def classify(self, image: np.ndarray, k: int) -> dict[str, Any]:
        """(H, W, 3) uint8 -> ``{"label", "probability", "top": [{"label", "probability"}],
        "attributes": {name: {"label", "probability"}}}`` (every attribute, the primary first)."""
        batch = self.predictor.fit([image])  # resized outside the slot: only the pass is bounded
        with self.slots:
            return self.predictor.classify(batch, k)[0]

    def search_image(self, image: np.ndarray, k: int) -> list[SearchHit]:
        """Top-k catalogue items most similar to an image (encoded as the index's items were)."""
        batch = self.embedder.fit([image])
        with self.slots:
            enc = self.searcher.encode(self.embedder, batch)
        return self._hits(self.searcher.search(enc.embeddings, k, enc.class_probs)[0])

    def search_item(self, item_id: int, k: int) -> list[SearchHit]:
        """Top-k items most similar to a catalogue item, the item itself left out."""
        if item_id not in self._items:
            raise KeyError(item_id)
        return self._hits(self.searcher.search_by_id(item_id, k))

    def item(self, item_id: int) -> Item | None:
        """Catalogue metadata of an indexed item, or None."""
        row = self._items.get(item_id)
        return None if row is None else Item(**catalogue_item(row))

    def image_path(self, item_id: int) -> Path | None:
        """The catalogue image of an indexed item; never a path outside ``images_dir``."""
        if item_id not in self._items:
            return None
        path = (self.images_dir / f"{int(item_id)}.jpg").resolve()
        if not path.is_relative_to(self.images_dir) or not path.is_file():
            return None
        return path

    def _hits(self, records: list[dict[str, Any]]) -> list[SearchHit]:
        """Searcher records (id, catalogue columns, distance) -> items with their distance."""
        hits = []
        for rec in records:
            meta = {**self._items.get(int(rec["id"]), {}), **{k: v for k, v in rec.items() if k != "distance"}}
            hits.append(SearchHit(**catalogue_item(meta), distance=float(rec["distance"])))
        return hits


def catalogue_item(row: dict[str, Any]) -> dict[str, Any]:
    """An ``items.parquet`` row as the API shows an item."""
    item_id = int(row["id"])
    return {
        "id": item_id,
        "name": _clean(row.get("productDisplayName")),
        "masterCategory": _clean(row.get("masterCategory")),
        "subCategory": _clean(row.get("subCategory")),
        "articleType": _clean(row.get("articleType")),
        "gender": _clean(row.get("gender")),
        "baseColour": _clean(row.get("baseColour")),
        "year": None if (year := _clean(row.get("year"))) is None else int(year),
        "image_url": f"/items/{item_id}/image",
        "item_url": f"/items/{item_id}",
    }


def _clean(value: Any) -> Any:
    """A parquet cell as JSON: NaN -> None, numpy scalars -> Python values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def release_freed_memory() -> None:
    """Collect cycles and hand freed heap memory back to the OS (glibc keeps it otherwise: a
    replaced pair's ~100 MB would stay in the process's RSS as free heap)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class BundleHolder:
    """The serving bundle: readers take ``current`` once; reloads build then swap the reference."""

    def __init__(
        self,
        bundle: ModelBundle,
        loader: Callable[[], ModelBundle],
        fingerprint: Callable[[], str | None] | None = None,
    ) -> None:
        self.current = bundle
        self._loader = loader
        self._fingerprint = fingerprint
        self._reload_lock = threading.Lock()
        self.last_error: str | None = None
        self.reloads = 0

    def reload(self, force: bool = True) -> dict[str, Any]:
        """Load a new pair and swap it in; on failure keep serving the old one and raise.

        ``force=False``: only when the source's fingerprint differs from the served one.
        """
        with self._reload_lock:
            old = self.current
            if not force and self._fingerprint is not None:
                fp = self._fingerprint()
                if fp is None or fp == old.fingerprint:
                    return {"reloaded": False, "fingerprint": old.fingerprint}
            try:
                new = self._loader()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise
            changed = new.fingerprint != old.fingerprint
            self.current = new  # one reference assignment: atomic for readers
            self.last_error = None
            self.reloads += 1
            if old.cleanup_dir and old.cleanup_dir != new.cleanup_dir:
                remove_download_dir(old.cleanup_dir)
            previous = old.fingerprint
            del old  # the old pair is freed once the requests still using it finish
            release_freed_memory()
            log.info("reloaded models: %s -> %s", previous, new.fingerprint)
            return {"reloaded": True, "changed": changed, "previous": previous, "fingerprint": new.fingerprint}

    def close(self) -> None:
        """Delete the served bundle's download folder (server shutdown; the bundle is not used again)."""
        if self.current.cleanup_dir:
            remove_download_dir(self.current.cleanup_dir)

    def poll_forever(self, interval_s: float, stop: threading.Event) -> None:
        """Reload when the source's fingerprint changes; errors are logged, never fatal."""
        while not stop.wait(interval_s):
            try:
                result = self.reload(force=False)
                if result.get("reloaded"):
                    log.info("poll picked up new models: %s", result["fingerprint"])
            except Exception as exc:  # noqa: BLE001 - a poll must never kill the server
                log.warning("reload poll failed (still serving %s): %s", self.current.fingerprint, exc)
