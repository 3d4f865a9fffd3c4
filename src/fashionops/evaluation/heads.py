"""Test metrics of a multi-attribute model's extra heads (``Scored.heads``, ``prepare.labels``).

Every extra attribute gets, in the evaluate ``summary.json``, the primary's score names prefixed
with it: ``test/<attribute>_accuracy``, ``test/<attribute>_macro_f1``, ... (one slash, as every
metric name), plus ``test/<attribute>_n_excluded`` (images without a value the head knows) and a
majority-class baseline, ``test/<attribute>_majority_accuracy`` / ``_majority_macro_f1`` (always
predicting the train split's most frequent class). ``metrics.json`` (DVC, MLflow) adds
:data:`HEAD_HEADLINE` of them per head. Files: ``per_class_<attribute>.csv`` per head and
``attributes.csv`` (one row per attribute, the primary first). A single-head model adds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.atomic import write_text
from fashionops.evaluation.metrics import classification_metrics, headline_name, per_class_report
from fashionops.evaluation.scoring import Scored

# Per extra head in metrics.json (few: the DVC metrics files stay short; the rest is in summary.json)
HEAD_HEADLINE = ("accuracy", "macro_f1")
ATTRIBUTES_FILE = "attributes.csv"


def head_name(attribute: str, key: str) -> str:
    """``("gender", "accuracy")`` -> ``test/gender_accuracy``."""
    return headline_name(f"{attribute}_{key}")


def majority_scores(scored: Scored) -> dict[str, float]:
    """Accuracy and macro-F1 of always predicting ``scored.majority`` (empty when unknown)."""
    if scored.majority is None:
        return {}
    constant = np.full_like(scored.y_true, scored.majority)
    raw = classification_metrics(scored.y_true, constant, None, len(scored.classes))
    return {"majority_accuracy": raw["accuracy"], "majority_macro_f1": raw["macro_f1"]}


def head_metrics(scored: Scored) -> dict[str, float | None]:
    """Every extra head's scores under ``test/<attribute>_<key>`` (NaN as None, like the primary's)."""
    out: dict[str, float | None] = {}
    for attribute, head in scored.heads.items():
        raw = classification_metrics(head.y_true, head.y_pred, head.proba, len(head.classes))
        raw.update(majority_scores(head))
        raw["n_excluded"] = float(sum(head.excluded.values()))
        out.update({head_name(attribute, k): (None if np.isnan(v) else v) for k, v in raw.items()})
    return out


def head_headline_names(attributes: list[str]) -> list[str]:
    """The ``metrics.json`` names of the extra heads (:data:`HEAD_HEADLINE` each)."""
    return [head_name(a, k) for a in attributes for k in HEAD_HEADLINE]


def head_report_files(scored: Scored) -> list[str]:
    """The files :func:`write_head_reports` writes for ``scored`` (none for a single head)."""
    return [*(f"per_class_{a}.csv" for a in scored.heads), ATTRIBUTES_FILE] if scored.heads else []


def write_head_reports(scored: Scored, summary: dict[str, Any], out_dir: str | Path) -> None:
    """``per_class_<attribute>.csv`` per extra head and ``attributes.csv`` (nothing for a single head)."""
    if not scored.heads:
        return
    out = Path(out_dir)
    for attribute, head in scored.heads.items():
        report = per_class_report(head.y_true, head.y_pred, head.classes)
        write_text(out / f"per_class_{attribute}.csv", report.to_csv(index=False))
    rows = [_attribute_row(scored.label_column, scored, summary, primary=True)]
    rows += [_attribute_row(a, head, summary, primary=False) for a, head in scored.heads.items()]
    write_text(out / ATTRIBUTES_FILE, pd.DataFrame(rows).to_csv(index=False))


def _attribute_row(attribute: str, scored: Scored, summary: dict[str, Any], primary: bool) -> dict[str, Any]:
    def value(key: str) -> Any:
        return summary.get(headline_name(key) if primary else head_name(attribute, key))

    baseline = majority_scores(scored)
    return {
        "attribute": attribute,
        "head": "primary" if primary else "extra",
        "classes": len(scored.classes),
        "n_samples": int(len(scored.y_true)),
        "n_excluded": int(sum(scored.excluded.values())),
        "accuracy": value("accuracy"),
        "macro_f1": value("macro_f1"),
        "majority_accuracy": baseline.get("majority_accuracy"),
        "majority_macro_f1": baseline.get("majority_macro_f1"),
    }
