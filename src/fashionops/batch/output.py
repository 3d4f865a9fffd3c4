"""The scored rows as a Parquet file, and what a person reads first: the summary.

One row per entry of the drop, in the drop's order (:mod:`fashionops.batch.drop`):

=============================  ==================  =========================================
column                         type                holds
=============================  ==================  =========================================
id, file                       string              the entry (file relative to the drop)
status, error                  string              ``ok`` | ``error`` and the reason
label, probability             string, float32     the primary label (``label_column``)
top_labels, top_probabilities  list<string/f32>    the ``score.top_k`` most probable labels
predicted_<attr>[_probability] string, float32     each extra attribute of a multi-head model
embedding                      list<float32>       L2-normalised, as the index embeds queries
neighbour_ids                  list<int64>         nearest catalogue items (``score.neighbours``)
neighbour_similarities         list<float32>       cosine similarity (angular index; else -distance)
neighbour_article_types        list<string>        those items' articleType
<catalogue columns> / folder   as in styles.csv    Kaggle layout / plain folder
classifier_version, index_v..  string              the registered pair that scored
=============================  ==================  =========================================

The file's key-value metadata ``fashionops`` holds the pair, the alias and the classes (JSON).
Error rows have nulls in every prediction column.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fashionops.atomic import atomic_path
from fashionops.batch.drop import Drop

METADATA_KEY = b"fashionops"
OK, ERROR = "ok", "error"
TOP_LABELS_SHOWN = 10  # labels in the summary's by-label counts


def _column(values: list[Any], type_: pa.DataType) -> pa.Array:
    return pa.array(values, type=type_)


def attribute_names(results: list[dict[str, Any]], primary: str) -> list[str]:
    """The extra attributes the rows carry (multi-head models), in first-seen order."""
    names: dict[str, None] = {}
    for row in results:
        for name in row.get("attributes") or {}:
            if name != primary:
                names[name] = None
    return list(names)


def scores_table(drop: Drop, results: list[dict[str, Any]], pair: dict[str, Any]) -> pa.Table:
    """The Parquet table: one row per drop entry (see the module docstring)."""
    entries = drop.entries
    if len(results) != len(entries):
        raise ValueError(f"{len(results)} results for {len(entries)} entries")

    def get(key: str) -> list[Any]:
        return [row.get(key) for row in results]

    embeddings = [None if (e := row.get("embedding")) is None else np.asarray(e, np.float32) for row in results]
    columns: dict[str, pa.Array] = {
        "id": _column(list(entries["id"]), pa.string()),
        "file": _column(list(entries["file"]), pa.string()),
        "status": _column(get("status"), pa.string()),
        "error": _column(get("error"), pa.string()),
        "label": _column(get("label"), pa.string()),
        "probability": _column(get("probability"), pa.float32()),
        "top_labels": _column(get("top_labels"), pa.list_(pa.string())),
        "top_probabilities": _column(get("top_probabilities"), pa.list_(pa.float32())),
    }
    primary = str(pair.get("label_column") or "")
    for name in attribute_names(results, primary):
        answers = [(row.get("attributes") or {}).get(name) or {} for row in results]
        columns[f"predicted_{name}"] = _column([a.get("label") for a in answers], pa.string())
        columns[f"predicted_{name}_probability"] = _column([a.get("probability") for a in answers], pa.float32())
    columns |= {
        "embedding": _column(embeddings, pa.list_(pa.float32())),
        "neighbour_ids": _column(get("neighbour_ids"), pa.list_(pa.int64())),
        "neighbour_similarities": _column(get("neighbour_similarities"), pa.list_(pa.float32())),
        "neighbour_article_types": _column(get("neighbour_article_types"), pa.list_(pa.string())),
    }
    for name in drop.extra_columns:
        if name not in columns:
            columns[name] = pa.Array.from_pandas(entries[name])
    n = len(entries)
    columns["classifier_version"] = _column([str(pair["classifier"].get("version"))] * n, pa.string())
    columns["index_version"] = _column([str(pair["index"].get("version"))] * n, pa.string())
    table = pa.table(columns)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(pair, default=str).encode()})


def write_scores(table: pa.Table, out: str | Path) -> Path:
    """Write the table to ``out`` atomically: readers see the previous file or the whole new one."""
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a directory; --out names the Parquet file to write")
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def bad_images(drop: Drop, results: list[dict[str, Any]]) -> pd.DataFrame:
    """``id, file, error`` of every entry that could not be scored."""
    rows = [
        {"id": i, "file": f, "error": r.get("error")}
        for i, f, r in zip(drop.entries["id"], drop.entries["file"], results)
        if r.get("status") != OK
    ]
    return pd.DataFrame(rows, columns=["id", "file", "error"])


def label_counts(results: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(label, count) of the scored rows, most frequent first (ties by label)."""
    counts = Counter(str(r["label"]) for r in results if r.get("status") == OK)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def summarise(
    drop: Drop, results: list[dict[str, Any]], pair: dict[str, Any], out: Path, seconds: float
) -> dict[str, Any]:
    """The short summary ``fashionops score`` prints (and logs to MLflow)."""
    scored = [r for r in results if r.get("status") == OK]
    confidence = float(np.mean([r["probability"] for r in scored])) if scored else None
    return {
        "out": str(out),
        "data": str(drop.root),
        "layout": drop.layout,
        "alias": pair.get("alias"),
        "classifier": {k: pair["classifier"].get(k) for k in ("name", "version")},
        "index": {k: pair["index"].get(k) for k in ("name", "version")},
        "images": len(results),
        "scored": len(scored),
        "failed": len(results) - len(scored),
        "mean_confidence": None if confidence is None else round(confidence, 6),
        "labels": dict(label_counts(results)[:TOP_LABELS_SHOWN]),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(results) / seconds, 2) if seconds > 0 else None,
    }
