"""Per-image facts: existence, size, full decode, truncation, geometry, mode, sha256.

One row per catalogue row (:data:`FACT_COLUMNS`); the ``image_facts`` suite validates this
table and ``prepare`` reads it (``paths.facts``) to skip unusable images.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing as mp
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from fashionops.progress import Progress
from fashionops.workers import die_with_parent

log = logging.getLogger(__name__)

FACT_COLUMNS: list[str] = [
    "id",
    "file",
    "exists",
    "bytes",
    "decodes",
    "truncated",
    "width",
    "height",
    "mode",
    "format",
    "sha256",
    "error",
]
FACT_DTYPES: dict[str, str] = {
    "id": "int64",
    "file": "string",
    "exists": "bool",
    "bytes": "Int64",
    "decodes": "boolean",
    "truncated": "boolean",
    "width": "Int64",
    "height": "Int64",
    "mode": "string",
    "format": "string",
    "sha256": "string",
    "error": "string",
}


def image_facts(image_id: int, file: str) -> dict[str, Any]:
    """Facts about one image file: existence, size, full decode, truncation, geometry, sha256.

    ``decodes``/``truncated`` are None when the file does not exist (only ``image_exists``
    fails for it); ``error`` holds the decoder's message.
    """
    from PIL import Image, ImageFile

    # Never let PIL paper over a cut-off file.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    row: dict[str, Any] = dict.fromkeys(FACT_COLUMNS)
    row.update(id=int(image_id), file=file, exists=False)
    try:
        data = Path(file).read_bytes()
    except FileNotFoundError:
        row["error"] = "file not found"
        return row
    except OSError as exc:  # a directory, no permission, ...
        row.update(exists=Path(file).exists(), error=f"unreadable: {exc}", decodes=False, truncated=False)
        return row
    row.update(exists=True, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), truncated=False)
    if not data:
        row.update(decodes=False, error="empty file (0 bytes)")
        return row
    try:
        with Image.open(io.BytesIO(data)) as im:
            row.update(width=im.width, height=im.height, mode=im.mode, format=im.format)
            im.load()
        row["decodes"] = True
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for bad files
        msg = str(exc) or type(exc).__name__
        if msg.startswith("cannot identify image file"):
            msg = "cannot identify image file (not an image PIL can read)"
        row.update(decodes=False, error=msg, truncated="truncated" in msg.lower())
    return row


def _facts_chunk(items: list[tuple[int, str]]) -> list[dict[str, Any]]:
    return [image_facts(i, f) for i, f in items]


def gather_facts(catalogue: pd.DataFrame, workers: int = 2) -> pd.DataFrame:
    """Per-image facts table (one row per catalogue row, :data:`FACT_COLUMNS`) using ``workers`` processes."""
    items = list(zip(catalogue["id"].astype("int64").tolist(), catalogue["file"].astype(str).tolist()))
    # Large chunks: per-task overhead dominates for 5 KB thumbnails.
    size = max(64, len(items) // (max(workers, 1) * 8) + 1)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    rows: list[dict[str, Any]] = []
    with Progress(len(items), "checked", unit="images", logger=log) as progress:  # a bar, or a line per 10%
        if workers <= 1 or len(items) < 64:
            for chunk in chunks:
                rows.extend(_facts_chunk(chunk))
                progress.update(len(chunk))
        else:
            # fork is cheapest on Linux (nothing to re-import); elsewhere the platform default.
            method = "fork" if sys.platform.startswith("linux") else None
            # die_with_parent: no worker outlives a killed validate
            with mp.get_context(method).Pool(workers, initializer=die_with_parent) as pool:
                for part in pool.imap(_facts_chunk, chunks):  # in order, as each chunk is done
                    rows.extend(part)
                    progress.update(len(part))
    return pd.DataFrame(rows, columns=FACT_COLUMNS).astype(FACT_DTYPES)


def duplicate_groups(facts: pd.DataFrame) -> tuple[int, int]:
    """(number of groups of byte-identical images, images in those groups)."""
    sizes = facts["sha256"].dropna().value_counts()
    dup = sizes[sizes > 1]
    return int(len(dup)), int(dup.sum())
