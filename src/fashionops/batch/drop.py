"""What a catalogue drop holds: one entry per image to score, in a stable order.

Two layouts:

* **Kaggle** (``styles.csv`` at the top): one entry per ``styles.csv`` row, image
  ``images/<id>.jpg``; the row's catalogue columns come along (the truth a later evaluation
  compares the predictions with). A row whose image file is missing is an entry with its reason.
* **plain folder** (no ``styles.csv``): every regular file below the folder, recursively (hidden
  files and folders left out), id = its path relative to the folder. Files that are not images
  are entries too: decoding gives their reason, so nothing in a drop goes unmentioned. A
  folder-per-class drop is a plain folder whose ``folder`` column is the class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fashionops.data.catalogue import COLUMNS, read_styles
from fashionops.errors import DataError

STYLES_FILE = "styles.csv"
IMAGES_DIR = "images"
# styles.csv columns kept beside the predictions (besides id)
CATALOGUE_COLUMNS: list[str] = [c for c in COLUMNS if c != "id"]


@dataclass(frozen=True)
class Drop:
    """A listed drop: ``entries`` has ``id`` (str), ``file`` (path relative to ``root``),
    ``path`` (absolute), ``problem`` (why it cannot be scored before decoding, else None), and
    the catalogue columns (Kaggle layout) or ``folder`` (plain folder)."""

    root: Path
    layout: str  # "kaggle" | "folder"
    entries: pd.DataFrame

    @property
    def extra_columns(self) -> list[str]:
        """The listing's columns that go into the Parquet file as they are."""
        return [c for c in self.entries.columns if c not in ("id", "file", "path", "problem")]

    def __len__(self) -> int:
        return len(self.entries)


def list_drop(data_dir: str | Path) -> Drop:
    """List a drop (see the module docstring); a missing folder, an empty one or an unreadable
    ``styles.csv`` is a ``DataError`` naming it."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{data_dir}: no such directory (the catalogue drop to score)")
    if (root / STYLES_FILE).is_file():
        return Drop(root, "kaggle", _kaggle_entries(root))
    return Drop(root, "folder", _folder_entries(root))


def _kaggle_entries(root: Path) -> pd.DataFrame:
    styles = read_styles(root / STYLES_FILE)
    if styles.empty:
        raise DataError(f"{root / STYLES_FILE}: no rows (nothing to score)")
    files = [f"{IMAGES_DIR}/{int(i)}.jpg" for i in styles["id"]]
    paths = [root / f for f in files]
    problems = [
        None if p.is_file() else f"{f}: listed in {STYLES_FILE} but the image file is missing"
        for f, p in zip(files, paths)
    ]
    entries = pd.DataFrame(
        {"id": [str(int(i)) for i in styles["id"]], "file": files, "path": [str(p) for p in paths], "problem": problems}
    )
    for column in CATALOGUE_COLUMNS:
        if column in styles.columns:
            entries[column] = styles[column].reset_index(drop=True)
    return entries


def _folder_entries(root: Path) -> pd.DataFrame:
    relative: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        relative += [(here / f).relative_to(root).as_posix() for f in filenames if not f.startswith(".")]
    relative.sort()
    if not relative:
        raise DataError(f"{root}: no files (expected images, or styles.csv + images/ in the Kaggle layout)")
    return pd.DataFrame(
        {
            "id": relative,
            "file": relative,
            "path": [str(root / r) for r in relative],
            "problem": [None] * len(relative),
            "folder": [str(Path(r).parent.as_posix()) if "/" in r else "" for r in relative],
        }
    )
