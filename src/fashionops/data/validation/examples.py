"""Culprits of a failed expectation: its unexpected count and human-readable examples.

Each expectation record names one of these ``Culprits`` functions; they read the GX result
(``ExpectationValidationResult``) and the two validated frames (catalogue metadata, per-image
facts) to say *which* rows, files or columns failed, e.g. ``id 123 (.../123.jpg: file not found)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

# (GX result, metadata frame, facts frame, max examples) -> (unexpected count, examples)
Culprits = Callable[[Any, pd.DataFrame, pd.DataFrame, int], tuple[int, list[str]]]


def failure_examples(
    culprits: Culprits, res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int
) -> tuple[int, list[str]]:
    """(unexpected count, up to ``limit`` culprits) of one failed expectation result."""
    if res.exception_info and res.exception_info.get("raised_exception"):
        return 1, [f"could not be evaluated: {str(res.exception_info.get('exception_message'))[:300]}"]
    return culprits(res, meta, facts, limit)


def _result(res: Any) -> dict[str, Any]:
    return res.result or {}


def _unexpected_count(res: Any) -> int:
    return int(_result(res).get("unexpected_count") or 0)


def missing_columns(res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """The required columns absent from ``styles.csv``."""
    mismatched = _result(res).get("details", {}).get("mismatched", {}) or {}
    missing = sorted(mismatched.get("missing", []) or [])
    return len(missing), [f"missing column {c!r}" for c in missing[:limit]]


def row_count(res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """The observed number of rows."""
    return 1, [f"{_result(res).get('observed_value', 0)} rows"]


def id_dtype(res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """The dtype the ``id`` column was read as."""
    return 1, [f"id column has dtype {meta['id'].dtype}"]


def duplicate_ids(res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """Each duplicated id with its line numbers in ``styles.csv`` (header = line 1)."""
    dup = meta[meta["id"].duplicated(keep=False)]
    out = [
        f"id {image_id} on rows {', '.join(str(i + 2) for i in grp.index)} of styles.csv"
        for image_id, grp in list(dup.groupby("id", sort=True))[:limit]
    ]
    return _unexpected_count(res), out


def duplicate_content(res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """The groups of ids whose image files have the same bytes (sha256)."""
    dup = facts[facts["sha256"].notna() & facts["sha256"].duplicated(keep=False)]
    groups = sorted(dup.groupby("sha256")["id"].apply(lambda s: sorted(s.tolist())).tolist())
    return _unexpected_count(res), [f"same bytes: ids {', '.join(map(str, g))}" for g in groups[:limit]]


def _image_culprits(res: Any, facts: pd.DataFrame, limit: int, show_value: bool) -> tuple[int, list[str]]:
    column = res.expectation_config.kwargs.get("column")
    ids = [row.get("id") for row in _result(res).get("unexpected_index_list") or []]
    by_id = facts.drop_duplicates("id").set_index("id")
    out: list[str] = []
    for image_id in ids[:limit]:
        if image_id in by_id.index:
            row = by_id.loc[image_id]
            if show_value:
                what = f"{column} {row[column]}"
            else:
                what = row["error"] if pd.notna(row["error"]) else ""
            out.append(f"id {image_id} ({row['file']}: {what})")
        else:
            out.append(f"id {image_id}")
    return _unexpected_count(res), out


def image_errors(res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """Each failing image's id and file with the reader's error message."""
    return _image_culprits(res, facts, limit, show_value=False)


def image_values(res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """Each failing image's id and file with the checked fact (``width 20``, ``mode CMYK``)."""
    return _image_culprits(res, facts, limit, show_value=True)


def column_values(res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """Each failing row's id and the checked column's value (the default)."""
    column = res.expectation_config.kwargs.get("column")
    out = [
        f"id {row.get('id')} ({column}={row.get(column)!r})"
        for row in (_result(res).get("unexpected_index_list") or [])[:limit]
    ]
    return _unexpected_count(res), out
