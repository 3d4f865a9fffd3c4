"""``drift.json`` and ``drift.html``: the verdict per signal, and one self-contained page (inline
CSS, charts as inline PNG; no script, no CDN: it opens offline and from an MLflow artifact)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.atomic import write_json, write_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}.drift{background:#fde2e1;font-weight:600}.ok{background:#e3f6e5}
.insufficient_data{background:#fff4d6}.verdict{font-size:1.2rem;padding:.5rem 1rem;display:inline-block}
.charts img{max-width:520px;margin:.3rem}small{color:#666}
"""


def write_reports(
    report_dir: str | Path, result: dict[str, Any], reference: pd.DataFrame, window: pd.DataFrame
) -> dict[str, Path]:
    """Write ``drift.json`` (``result``) and ``drift.html`` atomically into ``report_dir``."""
    report_dir = Path(report_dir)
    paths = {"json": report_dir / "drift.json", "html": report_dir / "drift.html"}
    write_json(paths["json"], result)
    write_text(paths["html"], render_html(result, reference, window))
    return paths


def render_html(result: dict[str, Any], reference: pd.DataFrame, window: pd.DataFrame) -> str:
    e = html.escape
    rows = []
    for s in result["signals"]:
        value = "" if s["value"] is None else f"{s['value']:.4f}"
        p_value = "" if s["p_value"] is None else f"{s['p_value']:.3g}"
        rows.append(
            f"<tr class='{e(s['status'])}'><td>{e(s['name'])}</td><td>{e(s['status'])}</td>"
            f"<td>{e(s['statistic'])}</td><td>{value}</td><td>{s['threshold']:g}</td>"
            f"<td>{e(s['test'])}</td><td>{p_value}</td><td>{s['alpha']:.3g}</td>"
            f"<td>{s['n_window']} / {s['n_reference']}</td><td>{e(s['reason'])}</td></tr>"
        )
    w = result["window"]
    window_text = ", ".join(f"{k}={v}" for k, v in w.items() if v is not None)
    charts = "".join(
        f"<img alt='{e(title)}' src='data:image/png;base64,{png}'>" for title, png in _charts(reference, window)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report: {e(result["verdict"])}</title>
<style>{_CSS}</style></head><body>
<h1>Drift report</h1>
<p class="verdict {e(result["verdict"])}">verdict: <b>{e(result["verdict"])}</b>{
        (" — " + e(", ".join(result["drifted"]))) if result["drifted"] else ""
    }</p>
<p>Reference: <b>{e(result["reference"]["model"])} v{e(str(result["reference"]["version"]))}</b>
(@{e(str(result["alias"]))}), {result["reference"]["n"]} held-out training images. Window: {e(window_text)};
{result["window_size"]} observations. <small>Created {e(result["created"])}.</small></p>
<table><tr><th>signal</th><th>verdict</th><th>statistic</th><th>value</th><th>threshold</th>
<th>test</th><th>p-value</th><th>alpha</th><th>n window / reference</th><th>why</th></tr>
{"".join(rows)}</table>
<p><small>A signal drifts when its test is significant (p &lt; alpha) and its statistic reaches the
threshold (monitor.* in params.yaml).</small></p>
<h2>Charts (reference vs window)</h2><div class="charts">{charts}</div>
</body></html>
"""


def _charts(reference: pd.DataFrame, window: pd.DataFrame) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []

    def emit(fig: Any, title: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        out.append((title, base64.b64encode(buf.getvalue()).decode("ascii")))

    if window.empty:
        return out
    classes = sorted(set(reference["predicted"].dropna()) | set(window["predicted"].dropna()))
    if classes:
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        x = np.arange(len(classes))
        for offset, (label, frame) in zip((-0.2, 0.2), (("reference", reference), ("window", window))):
            share = frame["predicted"].value_counts(normalize=True).reindex(classes, fill_value=0)
            ax.bar(x + offset, share.to_numpy(), width=0.4, label=label)
        ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=7)
        ax.set_title("predicted class share")
        ax.legend()
        emit(fig, "class distribution")
    for column, title in (
        ("confidence", "confidence"),
        ("brightness", "brightness (mean luma)"),
        ("contrast", "contrast (luma std)"),
        ("colourfulness", "colourfulness (Hasler-Süsstrunk)"),
    ):
        r, w = reference[column].dropna().to_numpy(float), window[column].dropna().to_numpy(float)
        if len(r) and len(w):
            fig, ax = plt.subplots(figsize=(4.5, 3))
            bins = np.histogram_bin_edges(np.concatenate([r, w]), bins=30).tolist()
            ax.hist(r, bins=bins, alpha=0.6, density=True, label="reference")
            ax.hist(w, bins=bins, alpha=0.6, density=True, label="window")
            ax.set_title(title)
            ax.legend()
            emit(fig, title)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.scatter(reference["width"], reference["height"], s=12, alpha=0.5, label="reference")
    ax.scatter(window["width"], window["height"], s=12, alpha=0.5, marker="x", label="window")
    ax.set_xlabel("width")
    ax.set_ylabel("height")
    ax.set_title("image size")
    ax.legend()
    emit(fig, "image size")
    pts = _pca2(reference["projection"], window["projection"])
    if pts is not None:
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.scatter(pts[0][:, 0], pts[0][:, 1], s=8, alpha=0.5, label="reference")
        ax.scatter(pts[1][:, 0], pts[1][:, 1], s=8, alpha=0.5, label="window")
        ax.set_title("embedding projection (first 2 principal components)")
        ax.legend()
        emit(fig, "embedding")
    return out


def _pca2(ref: pd.Series, win: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    r = [v for v in ref if v is not None]
    w = [v for v in win if v is not None]
    if not r or not w or len({len(v) for v in r + w}) != 1:
        return None
    x_ref, x_win = np.stack(r).astype(float), np.stack(w).astype(float)
    mean = x_ref.mean(axis=0)
    _, _, vt = np.linalg.svd(x_ref - mean, full_matrices=False)
    return (x_ref - mean) @ vt[:2].T, (x_win - mean) @ vt[:2].T
