"""``evaluate`` stage: test-split metrics, per-class report, confusion pictures, MLflow logging.

Scores either the trained model in ``paths.classifier_dir`` (default) or any MLflow pyfunc
classifier (``--model-uri``), on the prepared cache's test split (default) or a labelled catalogue
(``--data``). Writes ``<reports>/evaluate/{metrics.json, summary.json, per_class.csv, per_class.md,
misclassified_pairs.csv, predictions.csv, confusion_matrix.png, top_confusions.png,
confusion_gallery.png, per_class_f1.png, training_curves.png}`` (the error analysis:
:mod:`fashionops.evaluation.error_analysis`: ``predictions.csv`` names each image by its item id
with its top probability, ``per_class.*`` the training images per class and the classes below
F1 0.8, ``confusion_gallery.png`` shows the most confident mistakes of the most frequent
confusions, ``top_confusions.png`` those confusions as bars). Metric names are ``test/<name>``:
``metrics.json`` (the DVC metrics file, logged to MLflow under the same names; the registry
compares on ``test/macro_f1``) holds the headline scores
(:data:`fashionops.evaluation.metrics.TEST_HEADLINE`), ``summary.json`` every score and count.
A multi-attribute model adds every extra head's scores (``test/<attribute>_accuracy``,
``per_class_<attribute>.csv``, ``attributes.csv``: :mod:`fashionops.evaluation.heads`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.atomic import write_text
from fashionops.config import EvaluateConfig, PathsConfig, TrackingConfig
from fashionops.evaluation.error_analysis import (
    WEAK_F1,
    predictions_frame,
    train_image_counts,
    weak_classes_markdown,
    with_train_images,
    write_confusion_gallery,
)
from fashionops.evaluation.heads import (
    head_headline_names,
    head_metrics,
    head_report_files,
    majority_scores,
    write_head_reports,
)
from fashionops.evaluation.metrics import (
    TEST_HEADLINE,
    classification_metrics,
    confusion,
    headline_name,
    misclassified_pairs,
    per_class_report,
    present_labels,
    report_markdown,
)
from fashionops.evaluation.scoring import Scored, local_model, pyfunc_model, score_catalogue, score_test_split

log = logging.getLogger(__name__)

REPORT_FILES = [
    "metrics.json",
    "summary.json",
    "per_class.csv",
    "per_class.md",
    "misclassified_pairs.csv",
    "predictions.csv",
    "confusion_matrix.png",
    "top_confusions.png",
    "confusion_gallery.png",
    "per_class_f1.png",
    "training_curves.png",
]


def write_reports(
    scored: Scored,
    out_dir: str | Path,
    history_csv: str | Path | None,
    top_misclassified: int = 20,
    train_counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Every evaluate output from one scored set; returns every ``test/`` score (``summary.json``).

    ``train_counts``: training images per class (:func:`train_image_counts`), the ``train_images``
    column of the per-class table (empty when None).
    """
    from fashionops.evaluation.plots import (
        plot_confusion_matrix,
        plot_per_class_f1,
        plot_top_confusions,
        plot_training_curves,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_true, y_pred, classes = scored.y_true, scored.y_pred, scored.classes
    raw = classification_metrics(y_true, y_pred, scored.proba, len(classes))
    metrics: dict[str, Any] = {headline_name(k): (None if np.isnan(v) else v) for k, v in raw.items()}
    metrics[headline_name("n_excluded")] = float(sum(scored.excluded.values()))
    if scored.heads:  # multi-attribute: every extra head, and the primary's majority baseline
        metrics.update(head_metrics(scored))
        metrics.update({headline_name(k): v for k, v in majority_scores(scored).items()})
        write_head_reports(scored, metrics, out)
    report = with_train_images(per_class_report(y_true, y_pred, classes), train_counts)
    pairs = misclassified_pairs(y_true, y_pred, classes, top_misclassified)
    write_text(out / "per_class.csv", report.to_csv(index=False))
    write_text(
        out / "per_class.md",
        report_markdown(report, metrics) + weak_classes_markdown(report, y_true, y_pred, classes, WEAK_F1),
    )
    write_text(out / "misclassified_pairs.csv", pairs.to_csv(index=False))
    write_text(out / "predictions.csv", predictions_frame(scored).to_csv(index=False))
    weak = report.loc[report["f1"] < WEAK_F1, "class"].tolist()
    if weak:
        log.info("%d classes below F1 %g: %s", len(weak), WEAK_F1, ", ".join(map(str, weak)))
    plot_top_confusions(pairs, out / "top_confusions.png", title=f"Top {top_misclassified} confusions (test)")
    write_confusion_gallery(scored, out / "confusion_gallery.png")
    seen = present_labels(y_true, y_pred)
    plot_confusion_matrix(
        confusion(y_true, y_pred, len(classes))[np.ix_(seen, seen)],
        [classes[i] for i in seen],
        out / "confusion_matrix.png",
    )
    plot_per_class_f1(report, out / "per_class_f1.png")
    history = pd.read_csv(history_csv) if history_csv and Path(history_csv).is_file() else None
    plot_training_curves(history, out / "training_curves.png")
    write_text(out / "summary.json", json.dumps(metrics, indent=2))
    # last: its presence means complete
    write_text(out / "metrics.json", json.dumps(headline_metrics(metrics, list(scored.heads)), indent=2))
    return metrics


def headline_metrics(summary: dict[str, Any], attributes: list[str] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` subset of every test score: the :data:`TEST_HEADLINE` names that have a
    value (ROC-AUC, AUPRC and log loss need probabilities), then each extra head's
    (``attributes``: ``test/<attribute>_accuracy``, ``test/<attribute>_macro_f1``)."""
    names = [headline_name(k) for k in TEST_HEADLINE] + head_headline_names(attributes or [])
    return {name: summary[name] for name in names if summary.get(name) is not None}


def run_evaluate(
    cfg: EvaluateConfig,
    paths: PathsConfig,
    tracking: TrackingConfig,
    *,
    model_uri: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Score a classifier and write/log the evaluation reports.

    ``model_uri``: an MLflow pyfunc URI (default: the trained model in ``paths.classifier_dir``).
    ``data_dir``: a labelled catalogue (default: the prepared cache's test split). Images of classes
    the model does not know are excluded and reported. The default stage logs to the pipeline's
    MLflow run; scoring another model or data set gets its own run in the same experiment.
    """
    import mlflow

    from fashionops.tracking import configure, pipeline_run, run_tags

    model = (
        pyfunc_model(model_uri, tracking, cfg.batch_size)
        if model_uri
        else local_model(paths.classifier_dir, cfg.batch_size)
    )
    scored = score_catalogue(model, data_dir) if data_dir else score_test_split(model, paths.prepared_dir)
    out = paths.reports("evaluate")
    # the training images per class: the prepared cache's, when it is this model's label space
    train_counts = train_image_counts(paths.prepared_dir, scored.classes, scored.label_column)
    metrics = write_reports(
        scored, out, paths.reports("train") / "history.csv", cfg.top_misclassified, train_counts=train_counts
    )
    log.info(
        "test accuracy %.4f, macro-F1 %.4f on %d images (%s)",
        metrics["test/accuracy"],
        metrics["test/macro_f1"],
        int(metrics["test/n_samples"]),
        scored.source,
    )
    for attribute, head in scored.heads.items():
        log.info(
            "test %s: accuracy %.4f, macro-F1 %.4f on %d images (%d without a known value)",
            attribute,
            metrics[f"test/{attribute}_accuracy"],
            metrics[f"test/{attribute}_macro_f1"],
            len(head.y_true),
            int(sum(head.excluded.values())),
        )

    ctx: Any
    if model_uri or data_dir:
        ctx = mlflow.start_run(
            experiment_id=configure(tracking),
            run_name="evaluate",
            tags={
                **run_tags(paths),
                "evaluate_model_uri": model_uri or paths.classifier_dir,
                "evaluate_data": scored.source,
            },
        )
    else:
        ctx = pipeline_run(tracking, paths, stage="evaluate", evaluate=cfg)  # other settings: another candidate run
    with ctx as run:
        # the headline names only (as in metrics.json); every score is in the summary.json artifact
        mlflow.log_metrics({k: float(v) for k, v in headline_metrics(metrics, list(scored.heads)).items()})
        for name in REPORT_FILES + head_report_files(scored):
            mlflow.log_artifact(str(out / name), artifact_path="evaluate")
        run_id = run.info.run_id
    return {
        "metrics": metrics,
        "excluded_classes": scored.excluded,
        "data": scored.source,
        "model": model_uri or str(paths.classifier_dir),
        "out_dir": str(out),
        "mlflow_run_id": run_id,
    }
