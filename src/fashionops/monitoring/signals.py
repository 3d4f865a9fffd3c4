"""The drift signals: each compares a window of the observation log with the training reference
with a named test and an effect size, and drifts only when both say so (``p < alpha`` and the
effect crosses its ``monitor.*`` threshold), so a large window never alarms on a negligible
difference and a small one never alarms on noise. Too few observations: ``insufficient_data``.

- ``class_distribution``: predicted classes; chi-square goodness-of-fit test of the window's counts
  against the reference proportions (add-0.5 smoothed) + Jensen–Shannon distance (base 2, 0..1)
  as the effect; PSI reported beside it.
- ``confidence``: the top-class probability; one-sided Mann–Whitney U test (window lower) + the
  drop of the mean as the effect.
- ``embedding``: a domain classifier (standardised logistic regression) told to separate window
  from reference projections; its 5-fold cross-validated ROC AUC is the effect (0.5: cannot tell
  them apart), the p-value a one-sided Mann–Whitney test on its out-of-fold scores.
- ``image_size``, ``image_brightness``, ``image_contrast``, ``image_colourfulness``: two-sample
  Kolmogorov–Smirnov test per image fact (size: height and width, the larger D counts) at a
  Bonferroni-corrected ``alpha / 5``; the KS statistic D is the effect, Cohen's d reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from fashionops.config_operations import MonitorConfig

Status = Literal["ok", "drift", "insufficient_data"]
FACT_SIGNALS = {
    "image_size": ("height", "width"),
    "image_brightness": ("brightness",),
    "image_contrast": ("contrast",),
    "image_colourfulness": ("colourfulness",),
}
N_FACT_TESTS = sum(len(f) for f in FACT_SIGNALS.values())  # the Bonferroni divisor


@dataclass
class Signal:
    """One signal's verdict: ``statistic`` names the effect whose ``value`` meets ``threshold``,
    ``test`` the significance test whose ``p_value`` meets ``alpha``."""

    name: str
    status: Status
    statistic: str
    value: float | None
    threshold: float
    test: str
    p_value: float | None
    alpha: float
    n_reference: int
    n_window: int
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: _clean(v) for k, v in asdict(self).items()}


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _verdict(sig: Signal, min_window: int) -> Signal:
    """Set ``status`` and ``reason`` from the numbers (or ``insufficient_data``)."""
    if sig.n_window < min_window or sig.value is None:
        sig.status = "insufficient_data"
        sig.reason = f"{sig.n_window} observations in the window, fewer than monitor.min_window={min_window}"
        return sig
    significant = sig.p_value is not None and sig.p_value < sig.alpha
    large = sig.value >= sig.threshold
    sig.status = "drift" if significant and large else "ok"
    p_text = "n/a" if sig.p_value is None else f"{sig.p_value:.2g}"
    sig.reason = (
        f"{sig.statistic} {sig.value:.3f} {'>=' if large else '<'} {sig.threshold:g}, "
        f"{sig.test} p={p_text} {'<' if significant else '>='} {sig.alpha:.2g}"
    )
    return sig


def class_distribution(ref: pd.Series, win: pd.Series, cfg: MonitorConfig) -> Signal:
    ref, win = ref.dropna().astype(str), win.dropna().astype(str)
    classes = sorted(set(ref) | set(win))
    ref_counts = ref.value_counts().reindex(classes, fill_value=0).to_numpy(dtype=float)
    win_counts = win.value_counts().reindex(classes, fill_value=0).to_numpy(dtype=float)
    sig = Signal("class_distribution", "ok", "Jensen-Shannon distance", None, cfg.class_js_max,
                 "chi-square goodness-of-fit", None, cfg.alpha, len(ref), len(win), "")  # fmt: skip
    if len(win) and len(ref):
        p_ref, p_win = ref_counts / ref_counts.sum(), win_counts / win_counts.sum()
        smoothed = (ref_counts + 0.5) / (ref_counts + 0.5).sum()
        chi = stats.chisquare(win_counts, smoothed * win_counts.sum())
        eps = 1e-4
        psi = float(np.sum((p_win - p_ref) * np.log((p_win + eps) / (p_ref + eps))))
        sig.value = float(jensenshannon(p_ref, p_win, base=2))
        sig.p_value = float(chi.pvalue)
        sig.detail = {
            "chi_square": float(chi.statistic),
            "psi": psi,
            "reference": dict(zip(classes, p_ref.round(4).tolist())),
            "window": dict(zip(classes, p_win.round(4).tolist())),
        }
    return _verdict(sig, cfg.min_window)


def confidence(ref: pd.Series, win: pd.Series, cfg: MonitorConfig) -> Signal:
    r, w = ref.dropna().to_numpy(dtype=float), win.dropna().to_numpy(dtype=float)
    sig = Signal("confidence", "ok", "mean confidence drop", None, cfg.confidence_drop_max,
                 "Mann-Whitney U (one-sided, window lower)", None, cfg.alpha, len(r), len(w), "")  # fmt: skip
    if len(r) and len(w):
        sig.value = float(r.mean() - w.mean())
        sig.p_value = float(stats.mannwhitneyu(w, r, alternative="less").pvalue)
        sig.detail = {"reference_mean": float(r.mean()), "window_mean": float(w.mean())}
    return _verdict(sig, cfg.min_window)


def embedding(ref: list[np.ndarray], win: list[np.ndarray], cfg: MonitorConfig) -> Signal:
    """Domain-classifier AUC on the projections (rows of another dimension are left out)."""
    dim = cfg.projection_dim
    r = np.array([v for v in ref if v is not None and len(v) == dim], dtype=np.float32).reshape(-1, dim)
    w = np.array([v for v in win if v is not None and len(v) == dim], dtype=np.float32).reshape(-1, dim)
    sig = Signal("embedding", "ok", "domain classifier ROC AUC", None, cfg.embedding_auc_max,
                 "Mann-Whitney U on out-of-fold scores", None, cfg.alpha, len(r), len(w), "")  # fmt: skip
    if len(w) >= max(2, cfg.min_window) and len(r) >= 2:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.concatenate([r, w])
        y = np.concatenate([np.zeros(len(r)), np.ones(len(w))])
        folds = StratifiedKFold(n_splits=min(5, len(r), len(w)), shuffle=True, random_state=0)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000))
        scores = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
        sig.value = float(roc_auc_score(y, scores))
        sig.p_value = float(stats.mannwhitneyu(scores[y == 1], scores[y == 0], alternative="greater").pvalue)
        sig.detail = {"folds": folds.get_n_splits(), "classifier": "logistic regression (standardised)"}
    return _verdict(sig, cfg.min_window)


def image_fact(name: str, ref: pd.DataFrame, win: pd.DataFrame, cfg: MonitorConfig) -> Signal:
    """KS per fact of ``FACT_SIGNALS[name]`` at alpha / N_FACT_TESTS; the largest D counts."""
    alpha = cfg.alpha / N_FACT_TESTS
    sig = Signal(name, "ok", "Kolmogorov-Smirnov D", None, cfg.fact_ks_max,
                 f"two-sample Kolmogorov-Smirnov (Bonferroni alpha/{N_FACT_TESTS})", None, alpha,
                 len(ref), len(win), "")  # fmt: skip
    if len(ref) and len(win):
        per_fact = {}
        for fact in FACT_SIGNALS[name]:
            r, w = ref[fact].to_numpy(dtype=float), win[fact].to_numpy(dtype=float)
            ks = stats.ks_2samp(r, w)
            pooled = math.sqrt((r.var(ddof=1) + w.var(ddof=1)) / 2) if len(r) > 1 and len(w) > 1 else 0.0
            diff = float(w.mean() - r.mean())
            cohen = diff / pooled if pooled > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
            per_fact[fact] = {
                "ks_d": float(ks.statistic),
                "p_value": float(ks.pvalue),
                "cohens_d": cohen,
                "reference_mean": float(r.mean()),
                "window_mean": float(w.mean()),
            }
        worst = max(per_fact, key=lambda f: (per_fact[f]["ks_d"], -per_fact[f]["p_value"]))
        sig.value, sig.p_value = per_fact[worst]["ks_d"], per_fact[worst]["p_value"]
        sig.detail = {"facts": per_fact, "worst": worst}
        sig = _verdict(sig, cfg.min_window)
        if len(per_fact) > 1 and sig.status != "insufficient_data":
            sig.reason = f"{worst}: {sig.reason}"
        return sig
    return _verdict(sig, cfg.min_window)


def all_signals(reference: pd.DataFrame, window: pd.DataFrame, cfg: MonitorConfig) -> list[Signal]:
    """Every signal of ``window`` against ``reference`` (frames of the observation log's columns)."""
    signals = [
        class_distribution(reference["predicted"], window["predicted"], cfg),
        confidence(reference["confidence"], window["confidence"], cfg),
        embedding(list(reference["projection"]), list(window["projection"]), cfg),
    ]
    signals += [image_fact(name, reference, window, cfg) for name in FACT_SIGNALS]
    return signals
