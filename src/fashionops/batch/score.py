"""``fashionops score``: the registered classifier + index pair of an alias scores a catalogue drop.

The pair is loaded as the server loads it (:func:`fashionops.serving.loader.load_bundle_from_registry`:
the alias resolved as a checked pair, both models downloaded, the index checked against its
embedder). The drop is listed (:mod:`fashionops.batch.drop`) and scored ``score.batch_size``
images at a time: each image decoded with the project's decoder (``serve.max_pixels`` guard); a
file that cannot be decoded becomes a row with status ``error`` and its reason, never a crash.
The decoded images of a batch go through the classifier once (``Predictor.classify`` over every
class: the top ``score.top_k`` and the full probabilities for drift monitoring; extra attributes
of a multi-head model come along), through the index's embedder once (encoded as the index
encodes queries) and through one batched index search. With ``score.jit`` both models run as
frozen TorchScript traces in channels_last layout, as the index stage encodes the catalogue.
Results go to a Parquet file written atomically (:mod:`fashionops.batch.output`), a summary
JSON beside it (``<out>.summary.json``) and one MLflow run (:mod:`fashionops.batch.mlflow_log`).
With ``score.record`` the scored images are also appended to the observation log of drift
monitoring (:func:`fashionops.monitoring.record_observations`, source ``score``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fashionops.atomic import write_json
from fashionops.batch.drop import Drop, list_drop
from fashionops.batch.mlflow_log import log_results, scoring_run
from fashionops.batch.output import ERROR, OK, bad_images, label_counts, scores_table, summarise, write_scores
from fashionops.config import Params
from fashionops.errors import DataError
from fashionops.inference.predictor import Predictor
from fashionops.progress import Progress
from fashionops.search.searcher import IndexSearcher
from fashionops.serving.bundle import ModelBundle

log = logging.getLogger(__name__)

RECORD_SOURCE = "score"
Models = tuple[Predictor, Predictor, IndexSearcher]  # classifier, the index's embedder, the index


def summary_path(out: str | Path) -> Path:
    """Where the summary of a scoring into ``out`` goes: ``scores.parquet`` -> ``scores.summary.json``."""
    return Path(out).with_suffix(".summary.json")


def decode(path: str, file: str, max_pixels: int | None) -> tuple[np.ndarray | None, str | None]:
    """(HxWx3 uint8 image, None), or (None, why it cannot be scored). Never raises for a bad file."""
    from fashionops.data.imaging import load_rgb

    try:
        return load_rgb(path, max_pixels=max_pixels, name=file), None
    except Exception as exc:  # noqa: BLE001 - one bad file is a row with its reason, never a crash
        text = str(exc) or type(exc).__name__
        return None, text if text.startswith(file) else f"{file}: {text}"


class Recorder:
    """Appends scored batches to the drift-monitoring log; a failing log is reported once and
    switched off (the scoring itself goes on)."""

    def __init__(self, p: Params, model_version: str | None) -> None:
        self.cfg = p.monitor
        self.model_version = model_version
        self.rows = 0
        self.error: str | None = None

    def __call__(
        self, images: list[np.ndarray], probs: np.ndarray, classes: list[str], emb: np.ndarray | None, ids: list[str]
    ) -> None:
        if self.error is not None:
            return
        from fashionops.monitoring import record_observations

        try:
            self.rows += record_observations(
                self.cfg,
                images=images,
                probabilities=probs,
                classes=classes,
                embeddings=emb,
                source=RECORD_SOURCE,
                model_version=self.model_version,
                item_ids=ids,
            )
        except Exception as exc:  # noqa: BLE001 - monitoring must not cost the scores
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("recording for drift monitoring failed (%s); scoring goes on without it", self.error)


def bulk_models(bundle: ModelBundle, jit: bool) -> Models:
    """(classifier, embedder, searcher) for scoring many images: with ``jit``, frozen TorchScript
    traces in channels_last layout (what the index stage encodes the catalogue with: about twice
    the eager images/s on CPU; each trace checked against the eager module, eager on any doubt)."""
    predictor, embedder, searcher = bundle.predictor, bundle.embedder, bundle.searcher
    if not jit:
        return predictor, embedder, searcher
    embed = embedder.encoding_method(bool(searcher.rerank))
    heads = ["attribute_logits"] if predictor.spec.attributes else []  # a multi-head model's extra heads
    # `embed`: the classifier's plain embeddings that drift monitoring records (score_images)
    if embedder is predictor:
        both = predictor.compiled(list(dict.fromkeys(["forward", *heads, "embed", embed])), channels_last=True)
        return both, both, searcher
    return (
        predictor.compiled(["forward", *heads, "embed"], channels_last=True),
        embedder.compiled([embed], channels_last=True),
        searcher,
    )


def score_images(
    models: Models, images: list[np.ndarray], top_k: int, neighbours: int, batch_size: int, monitored: bool = False
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray | None]:
    """Score decoded images: (one result dict per image, probabilities (N, C), the embeddings drift
    monitoring records (N, D), None unless ``monitored``).

    The monitored embeddings are the classifier's own, one plain pass (what the server records and
    the drift reference holds), not the index's: those may be mirror-averaged (``index.flip_tta``)
    or come from another embedder, and would look like drift on every batch-scoring window."""
    predictor, embedder, searcher = models
    classes = predictor.classes
    batch = predictor.fit(images)
    same_input = embedder is predictor or embedder.pixel_size == predictor.pixel_size
    # every class: the full probabilities (drift monitoring) from the same answer as the top k
    answers = predictor.classify(batch, len(classes), batch_size=batch_size)
    position = {c: i for i, c in enumerate(classes)}
    probs = np.zeros((len(images), len(classes)), dtype=np.float32)
    for row, answer in enumerate(answers):
        for entry in answer["top"]:
            probs[row, position[entry["label"]]] = entry["probability"]
    enc = searcher.encode(embedder, batch if same_input else embedder.fit(images), batch_size)
    hits = searcher.search(enc.embeddings, neighbours, enc.class_probs)
    results = []
    for answer, embedding, found in zip(answers, enc.embeddings, hits):
        top = answer["top"][:top_k]
        distances = np.array([h["distance"] for h in found], dtype=np.float64)
        results.append(
            {
                "status": OK,
                "error": None,
                "label": answer["label"],
                "probability": float(answer["probability"]),
                "top_labels": [t["label"] for t in top],
                "top_probabilities": [float(t["probability"]) for t in top],
                "attributes": answer.get("attributes"),
                "embedding": embedding,
                "neighbour_ids": [int(h["id"]) for h in found],
                "neighbour_similarities": [float(s) for s in searcher._similarity(distances)],
                "neighbour_article_types": [h.get("articleType") for h in found],
            }
        )
    monitored_embeddings = predictor.embed(batch, batch_size) if monitored else None
    return results, probs, monitored_embeddings


def score_drop(p: Params, models: Models, drop: Drop, recorder: Recorder | None) -> list[dict[str, Any]]:
    """One result dict per drop entry, in order (status ``ok`` with the predictions, or ``error``)."""
    cfg = p.score
    classes = models[0].classes
    results: list[dict[str, Any]] = []
    entries = drop.entries.to_dict("records")
    with Progress(len(entries), "scored", unit="images", logger=log) as progress:
        for start in range(0, len(entries), cfg.batch_size):
            chunk = entries[start : start + cfg.batch_size]
            rows: list[dict[str, Any]] = []
            good: list[tuple[int, np.ndarray]] = []
            for entry in chunk:
                listed = entry["problem"] if isinstance(entry["problem"], str) else None
                image, problem = (None, listed) if listed else decode(entry["path"], entry["file"], p.serve.max_pixels)
                rows.append({"status": ERROR, "error": problem})
                if image is not None:
                    good.append((len(rows) - 1, image))
            if good:
                images = [img for _, img in good]
                scored, probs, emb = score_images(
                    models, images, cfg.top_k, cfg.neighbours, cfg.batch_size, monitored=recorder is not None
                )
                for (i, _), result in zip(good, scored):
                    rows[i] = result
                if recorder is not None:
                    recorder(images, probs, classes, emb, [chunk[i]["id"] for i, _ in good])
            results += rows
            progress.update(len(chunk))
    return results


def describe_pair(bundle: ModelBundle) -> dict[str, Any]:
    """What the Parquet metadata and the summary say about the pair that scored."""
    return {
        "alias": bundle.alias,
        "classifier": dict(bundle.classifier),
        "index": {k: v for k, v in bundle.index.items() if k in ("name", "version", "run_id", "backend", "n_items")},
        "label_column": bundle.predictor.spec.label_column,
        "classes": bundle.classes,
    }


def run_batch_score(p: Params, data_dir: str, out: str, alias: str | None) -> dict[str, Any]:
    """Score the drop in ``data_dir`` with the pair holding ``alias`` (default ``score.alias``)
    into the Parquet file ``out``; returns the summary (also written to ``<out>.summary.json``)."""
    from fashionops.serving.downloads import remove_download_dir
    from fashionops.serving.loader import images_dir, load_bundle_from_registry

    alias = alias or p.score.alias
    out_path = Path(out).expanduser().resolve()
    if out_path.is_dir():
        raise DataError(f"{out}: is a directory; --out names the Parquet file to write")
    drop = list_drop(data_dir)
    n_listed_bad = int(drop.entries["problem"].notna().sum())
    log.info("%s: %d entries (%s layout, %d listed without an image)", drop.root, len(drop), drop.layout, n_listed_bad)
    bundle = load_bundle_from_registry(p.register, p.tracking, alias, images_dir(p))
    try:
        pair = describe_pair(bundle)
        log.info(
            "scoring with @%s: %s v%s + %s v%s",
            alias,
            pair["classifier"].get("name"),
            pair["classifier"].get("version"),
            pair["index"].get("name"),
            pair["index"].get("version"),
        )
        run_params = {
            "data_dir": str(drop.root),
            "layout": drop.layout,
            "out": str(out_path),
            "alias": alias,
            "classifier_version": pair["classifier"].get("version"),
            "index_version": pair["index"].get("version"),
            **{f"score.{k}": v for k, v in p.score.model_dump().items()},
            "serve.max_pixels": p.serve.max_pixels,
        }
        with scoring_run(p, pair, run_params) as run:
            recorder = Recorder(p, str(pair["classifier"].get("version"))) if p.score.record else None
            models = bulk_models(bundle, p.score.jit)  # traced before the clock starts: seconds = scoring
            t0 = time.perf_counter()
            results = score_drop(p, models, drop, recorder)
            seconds = time.perf_counter() - t0
            write_scores(scores_table(drop, results, pair), out_path)
            summary = summarise(drop, results, pair, out_path, seconds)
            summary["recorded"] = None if recorder is None else recorder.rows
            if recorder is not None and recorder.error:
                summary["record_error"] = recorder.error
            summary["mlflow_run_id"] = run.info.run_id
            summary["mlflow_experiment_id"] = run.info.experiment_id
            summary["summary_file"] = str(summary_path(out_path))
            bad = bad_images(drop, results)
            log_results(summary, bad, label_counts(results), out_path, None if recorder is None else recorder.rows)
    finally:
        if bundle.cleanup_dir is not None:
            remove_download_dir(bundle.cleanup_dir)
    write_json(summary_path(out_path), summary)
    for row in bad.head(10).itertuples():
        log.warning("not scored: %s", row.error)
    if len(bad) > 10:
        log.warning("... and %d more not scored (status=error rows of %s)", len(bad) - 10, out_path)
    log.info("scored %d/%d images into %s", summary["scored"], summary["images"], out_path)
    return summary
