"""Catalogue import: read either catalogue layout, resolve where it comes from, copy it into
``paths.raw_dir`` in the canonical Kaggle layout and track it with DVC.

Layouts understood by :func:`load_catalogue`:

* **Kaggle**: ``root/styles.csv`` plus ``root/images/{id}.jpg``. ``styles.csv`` may be the clean
  copy (proper CSV quoting) or the original Kaggle file, whose ``productDisplayName`` sometimes
  holds unquoted commas (line 6044 and a few others) and whose missing values are the literal
  ``NA``: :func:`read_styles` copes with both.
* **folder-per-class**: ``root/<label>/*.jpg|jpeg|png``; the folder name becomes the label.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.atomic import staged_dir
from fashionops.config import DataConfig, PathsConfig
from fashionops.errors import DataError

COLUMNS: list[str] = [
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
]
STRING_COLUMNS: list[str] = [c for c in COLUMNS if c not in ("id", "year")]
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})
# Markers of a missing value in both the original and the clean styles.csv.
NA_VALUES: frozenset[str] = frozenset({"", "NA"})
SHARED_RELATIVE = Path("shared") / "data" / "fashion-product-images-small"


def _split_line(line: str) -> list[str]:
    # One physical line at a time: an unbalanced quote in the original file must not swallow
    # the following rows (no field of this catalogue legitimately spans lines).
    return next(csv.reader([line], skipinitialspace=False, strict=False))


def read_styles(path: str | Path) -> pd.DataFrame:
    """Read a ``styles.csv`` (clean copy or the original Kaggle file) into typed columns.

    Rows with more fields than the header have unquoted commas in the last column
    (``productDisplayName``); the extra fields are joined back with ``,``. ``NA`` and empty
    fields become missing. ``id`` is ``int64``, ``year`` nullable ``Int64``, every other column
    ``string``. Raises ``DataError`` naming ``path:line`` for rows that cannot be repaired
    (too few fields, a non-integer ``id`` or ``year``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: styles file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty file, expected a header line")
    header = [h.strip() for h in _split_line(lines[0])]
    if "id" not in header:
        raise DataError(f"{path}:1: header has no 'id' column (got {','.join(header)})")
    if len(set(header)) != len(header):
        raise DataError(f"{path}:1: duplicate column names in header {header}")
    width = len(header)
    id_pos = header.index("id")
    year_pos = header.index("year") if "year" in header else None
    columns: list[list[Any]] = [[] for _ in header]
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields: list[Any] = _split_line(line)
        if len(fields) > width:
            # Unquoted commas in the last column: join them back instead of dropping data.
            fields = fields[: width - 1] + [",".join(fields[width - 1 :])]
        elif len(fields) < width:
            raise DataError(
                f"{path}:{lineno}: expected {width} fields ({','.join(header)}), got {len(fields)}: {line[:120]!r}"
            )
        raw_id = fields[id_pos].strip()
        try:
            fields[id_pos] = int(raw_id)
        except ValueError:
            raise DataError(f"{path}:{lineno}: id {raw_id!r} is not an integer") from None
        for pos, value in enumerate(fields):
            if pos == id_pos:
                columns[pos].append(value)
            elif value in NA_VALUES or value.strip() in NA_VALUES:
                columns[pos].append(None)
            elif pos == year_pos:
                try:
                    year = float(value)
                    if not year.is_integer():
                        raise ValueError(value)
                    columns[pos].append(int(year))
                except ValueError:
                    raise DataError(f"{path}:{lineno}: year {value!r} is not an integer") from None
            else:
                columns[pos].append(value)
    data: dict[str, pd.Series] = {}
    for name, values in zip(header, columns):
        if name == "id":
            data[name] = pd.Series(values, dtype="int64")
        elif name == "year":
            data[name] = pd.Series(values, dtype="Int64")
        else:
            data[name] = pd.Series(values, dtype="string")
    return pd.DataFrame(data)


def _detect_layout(root: Path) -> str:
    if (root / "styles.csv").is_file():
        return "kaggle"
    if root.is_dir() and any(
        p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir() if f.is_file())
        for p in root.iterdir()
    ):
        return "folders"
    raise DataError(
        f"{root}: not a catalogue: expected styles.csv + images/{{id}}.jpg (Kaggle layout) "
        "or one folder of .jpg/.jpeg/.png images per class"
    )


def _canonical(df: pd.DataFrame, fill_missing: bool) -> pd.DataFrame:
    out = df.copy()
    if fill_missing:
        for name in COLUMNS:
            if name not in out.columns:
                out[name] = pd.Series(pd.NA, index=out.index, dtype="Int64" if name == "year" else "string")
    # Canonical columns first, then whatever else the file had, then `file`.
    ordered = [c for c in COLUMNS if c in out.columns]
    ordered += [c for c in out.columns if c not in ordered and c != "file"] + ["file"]
    return out[ordered]


def _load_folders(root: Path) -> pd.DataFrame:
    files = sorted(
        (p for p in root.glob("*/*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise DataError(f"{root}: no .jpg/.jpeg/.png images in class folders")
    labels = pd.Series([p.parent.name for p in files], dtype="string")
    # Stable ids: position in the sorted relative paths, from 1.
    df = pd.DataFrame(
        {
            "id": pd.Series(np.arange(1, len(files) + 1), dtype="int64"),
            "masterCategory": labels,
            "subCategory": labels,
            "articleType": labels,
            "productDisplayName": pd.Series([p.stem for p in files], dtype="string"),
            "file": [str(p.resolve()) for p in files],
        }
    )
    return df


def load_catalogue(root: str | Path, fill_missing: bool = True) -> pd.DataFrame:
    """Read a catalogue in either layout into one DataFrame with a ``file`` column.

    Columns: the canonical ``id, gender, masterCategory, subCategory, articleType, baseColour,
    season, year, usage, productDisplayName`` and ``file`` (absolute path str). For
    folder-per-class, ids are 1..N over the sorted relative paths, the folder name fills
    ``masterCategory``/``subCategory``/``articleType`` (so any ``prepare.label`` works) and the
    file stem ``productDisplayName``. Rows whose image file is missing are kept (``file`` still
    set): validation reports them. ``fill_missing=False`` leaves columns absent from
    ``styles.csv`` absent (validation uses it to report missing columns); missing columns
    are otherwise added empty.
    """
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise DataError(f"catalogue directory not found: {root}")
    if _detect_layout(root) == "kaggle":
        df = read_styles(root / "styles.csv")
        images = root / "images"
        df["file"] = [str(images / f"{i}.jpg") for i in df["id"]]
    else:
        # No file to be missing a column from: always the full canonical set.
        df = _load_folders(root)
        fill_missing = True
    return _canonical(df, fill_missing).reset_index(drop=True)


def _download_kaggle(dataset: str) -> Path:
    """Download the Kaggle data set (needs the internet and Kaggle credentials)."""
    try:
        import kagglehub

        path = Path(kagglehub.dataset_download(dataset))
    except ImportError:
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except ImportError:
            raise DataError(
                "no catalogue found: pass --source DIR, set data.source or $FASHION_DATA, put the data in "
                f"../{SHARED_RELATIVE}, or `pip install kagglehub` (with Kaggle credentials) to download "
                f"{dataset} automatically"
            ) from None
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        path = cache / "fashionops" / dataset.replace("/", "__")
        api = KaggleApi()
        api.authenticate()
        api.dataset_download_files(dataset, path=str(path), unzip=True)
    except Exception as exc:  # network, credentials, quota: say what to do instead
        raise DataError(f"Kaggle download of {dataset} failed ({exc}); pass --source DIR instead") from exc
    # The archive nests the catalogue (e.g. myntradataset/): take the shallowest styles.csv.
    found = sorted(path.rglob("styles.csv"), key=lambda p: len(p.parts))
    if not found:
        raise DataError(f"Kaggle download of {dataset} in {path} has no styles.csv")
    return found[0].parent


def resolve_source(cfg: DataConfig, source: str | Path | None = None) -> Path:
    """Where the catalogue comes from, first that applies:

    1. ``source`` (``--source``), 2. ``data.source``, 3. ``$FASHION_DATA``,
    4. ``../shared/data/fashion-product-images-small`` relative to the working directory,
    5. a Kaggle download of ``data.kaggle_dataset`` when ``data.download`` is true.
    Raises ``DataError`` saying how to get the data when none applies.
    """
    for origin, value in (
        ("--source", source),
        ("data.source", cfg.source),
        ("$FASHION_DATA", os.environ.get("FASHION_DATA") or None),
    ):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataError(f"{origin}: catalogue directory not found: {path}")
            return path.resolve()
    shared = Path.cwd().parent / SHARED_RELATIVE
    if (shared / "styles.csv").is_file():
        return shared.resolve()
    if not cfg.download:
        raise DataError(
            "no catalogue found: pass --source DIR, set data.source or $FASHION_DATA, or put the data in "
            f"{shared} (data.download is false, so no Kaggle download of {cfg.kaggle_dataset})"
        )
    return _download_kaggle(cfg.kaggle_dataset)


def stratified_sample(df: pd.DataFrame, n: int, by: str, seed: int) -> pd.DataFrame:
    """``n`` rows keeping the proportions of column ``by`` (largest-remainder allocation, seeded).

    Missing labels form their own stratum. Returns all rows when ``n >= len(df)``.
    """
    if by not in df.columns:
        raise DataError(f"data.stratify_by: column {by!r} not in the catalogue (columns: {', '.join(df.columns)})")
    if n >= len(df):
        return df.copy()
    keys = df[by].astype("string").fillna("<missing>")
    counts = keys.value_counts().sort_index()
    exact = counts.to_numpy(dtype=float) * n / len(df)
    quota = np.floor(exact).astype(int)
    # Hand out the remaining rows to the largest fractional parts (ties: class name order).
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - quota[i]), counts.index[i]))
    for i in order[: n - int(quota.sum())]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label, k in zip(counts.index, quota):
        if k:
            idx = np.flatnonzero((keys == label).to_numpy())
            chosen.append(rng.choice(idx, size=int(k), replace=False))
    picked = np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
    return df.iloc[picked].copy()


def _copy_image(src: Path, dest: Path) -> bool:
    """Copy one image to ``dest`` (JPEG); PNGs are re-encoded. False when the source is missing."""
    if not src.is_file():
        return False
    if src.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(src) as im:
            rgb = im.convert("RGB") if im.mode not in ("RGB", "L") else im
            rgb.save(dest, format="JPEG", quality=95)
    else:
        shutil.copyfile(src, dest)
    return True


def _dvc_root(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / ".dvc").is_dir():
            return parent
    return None


def _run_dvc(args: list[str], cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"`dvc {' '.join(args)}` failed in {cwd}: {(proc.stderr or proc.stdout).strip()[-2000:]}")


def import_catalogue(
    cfg: DataConfig, paths: PathsConfig, *, source: str | Path | None = None, track: bool = True, max_examples: int = 10
) -> dict[str, Any]:
    """Copy a catalogue into ``paths.raw_dir`` in the canonical Kaggle layout and track it with DVC.

    Folder-per-class sources are converted (``styles.csv`` written, images renamed ``{id}.jpg``,
    PNGs re-encoded as JPEG). ``data.limit`` keeps a stratified (``data.stratify_by``, seeded by
    ``data.seed``) sample. The copy is built in a temp dir next to ``raw_dir`` and swapped in,
    so a failed import leaves the previous ``raw_dir`` intact. Images listed but missing are not
    copied and are counted in ``missing_images`` (validation reports them by id). With ``track``,
    ``dvc add raw_dir`` creates ``raw_dir.dvc`` (needs a DVC repo above ``raw_dir``). The result
    lists the first ``max_examples`` missing ids (``validate.max_examples`` on the command line).
    """
    src = resolve_source(cfg, source)
    df = load_catalogue(src)
    total = len(df)
    if cfg.limit is not None:
        df = stratified_sample(df, cfg.limit, cfg.stratify_by, cfg.seed)
    raw = Path(paths.raw_dir).expanduser().resolve()
    if src == raw or src in raw.parents:
        raise DataError(f"source {src} is the destination paths.raw_dir (or contains it); pass another --source")
    dvc_root = _dvc_root(raw.parent) if track else None
    if track and dvc_root is None:
        raise DataError(f"{raw}: not inside a DVC repository; run `dvc init` first or import with --no-dvc")
    missing: list[int] = []
    converted = 0
    # Built beside raw_dir and swapped in: a failed import leaves the previous raw_dir intact.
    with staged_dir(raw) as tmp:
        (tmp / "images").mkdir()
        for image_id, file in zip(df["id"].tolist(), df["file"].tolist()):
            srcfile = Path(file)
            if _copy_image(srcfile, tmp / "images" / f"{image_id}.jpg"):
                converted += srcfile.suffix.lower() == ".png"
            else:
                missing.append(int(image_id))
        styles = df[[c for c in COLUMNS]]
        styles.to_csv(tmp / "styles.csv", index=False, na_rep="", quoting=csv.QUOTE_MINIMAL)
    dvc_file = None
    if track and dvc_root is not None:
        _run_dvc(["add", str(raw)], cwd=dvc_root)
        dvc_file = str(raw.with_name(raw.name + ".dvc"))
    return {
        "source": str(src),
        "raw_dir": str(raw),
        "source_rows": total,
        "rows": len(df),
        "images": len(df) - len(missing),
        "missing_images": len(missing),
        "missing_ids": missing[:max_examples],
        "converted_png": int(converted),
        "limit": cfg.limit,
        "dvc_file": dvc_file,
    }
