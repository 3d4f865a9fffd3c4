"""The training reference drift is measured against: what the registered classifier sees on its
own data, computed once per classifier version and cached.

A stratified sample (by label, ``monitor.reference_size`` images, default 1000) of the prepared
data's ``monitor.reference_splits`` (default the held-out ``val`` + ``test``: on its training
images a model is more confident than on anything new, which would read as a confidence drop on
every production window). Each image is read from its ORIGINAL raw file
(``paths.raw_dir/images/<id>.jpg``, not the resized prepared cache), so its facts are those of
the real catalogue sizes, and scored as the server scores an upload: the classifier's
``encode`` with probabilities (PIL resize to its input size), the embedding projected as every
observation is (:mod:`fashionops.monitoring.projection`).

Cache: ``monitor.reference_dir/<classifier name>-v<version>.parquet`` (columns of the
observation log; ``projection`` a list column), rebuilt when ``projection_dim`` changed.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fashionops.atomic import atomic_path
from fashionops.config import Params
from fashionops.data.catalogue import stratified_sample
from fashionops.errors import FashionOpsError
from fashionops.monitoring.facts import image_facts
from fashionops.monitoring.projection import project
from fashionops.progress import Progress

log = logging.getLogger(__name__)

BATCH = 64


def reference_path(p: Params, name: str, version: str) -> Path:
    return Path(p.monitor.reference_dir) / f"{name}-v{version}.parquet"


def load_reference(p: Params, name: str, version: str) -> pd.DataFrame:
    """The cached reference of classifier ``name`` v``version``, built first when missing."""
    path = reference_path(p, name, version)
    if path.is_file():
        frame = pd.read_parquet(path)
        dims = {len(v) for v in frame["projection"]}
        if dims == {p.monitor.projection_dim}:
            return _with_arrays(frame)
        log.info("%s: projection_dim changed; rebuilding the reference", path)
    from fashionops.registry.aliases import registry_client

    client = registry_client(p.tracking)  # also points mlflow.artifacts at the store
    with tempfile.TemporaryDirectory(prefix="fashionops-reference-") as tmp:
        import mlflow

        mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp)
        del client
        specs = sorted(Path(tmp).rglob("model_spec.json"))
        if not specs:
            raise FashionOpsError(f"models:/{name}/{version} has no model_spec.json: not a fashionops classifier")
        frame = build_reference(p, specs[0].parent)
    frame["model_version"] = str(version)
    _write(frame, path)
    log.info("reference of %s v%s: %d images -> %s", name, version, len(frame), path)
    return _with_arrays(frame)


def sample_ids(p: Params) -> pd.DataFrame:
    """``id``, ``label`` of the stratified reference sample of the prepared data's reference splits."""
    index_path = Path(p.paths.prepared_dir) / "index.parquet"
    if not index_path.is_file():
        raise FashionOpsError(f"{index_path}: no prepared data for the drift reference (run `fashionops prepare`)")
    index = pd.read_parquet(index_path, columns=["id", "label", "split", "is_copy"])
    rows = index[index["split"].isin(p.monitor.reference_splits) & ~index["is_copy"].astype(bool)]
    rows = rows.drop_duplicates("id")
    if rows.empty:
        splits = p.monitor.reference_splits
        raise FashionOpsError(f"{index_path}: no images in splits {splits} (monitor.reference_splits)")
    # the label proportions kept (largest remainder), seeded: the same sample every time
    picked = stratified_sample(rows, p.monitor.reference_size, by="label", seed=0)
    return picked.sort_values("id").reset_index(drop=True)


def build_reference(p: Params, model_dir: Path) -> pd.DataFrame:
    """Score the reference sample with the classifier in ``model_dir`` (see the module docstring)."""
    from fashionops.data.imaging import load_rgb
    from fashionops.inference.predictor import Predictor

    predictor = Predictor.from_dir(model_dir).require_classifier(str(model_dir))
    classes = predictor.classes
    ids = sample_ids(p)
    images_dir = Path(p.paths.raw_dir) / "images"
    rows: list[dict[str, object]] = []
    with Progress(len(ids), "reference images scored", unit="images", logger=log) as progress:
        for start in range(0, len(ids), BATCH):
            chunk = ids.iloc[start : start + BATCH]
            images, kept = [], []
            for image_id in chunk["id"]:
                try:
                    images.append(load_rgb(images_dir / f"{image_id}.jpg"))
                    kept.append(image_id)
                except (OSError, FashionOpsError) as exc:
                    log.warning("reference: skipping image %s (%s)", image_id, exc)
            if images:
                enc = predictor.encode(predictor.fit(images), with_probs=True)
                probs = enc.class_probs if enc.class_probs is not None else predictor.predict_proba(images)
                proj = project(enc.embeddings, p.monitor.projection_dim)
                for i, image_id in enumerate(kept):
                    facts = image_facts(images[i])._asdict()
                    best = int(np.argmax(probs[i]))
                    rows.append(
                        {
                            "item_id": str(image_id),
                            "predicted": classes[best],
                            "confidence": float(probs[i, best]),
                            **facts,
                            "projection": proj[i].astype(np.float32).tolist(),
                        }
                    )
            progress.update(len(chunk))
    if not rows:
        raise FashionOpsError(f"{images_dir}: none of the {len(ids)} reference images could be read")
    return pd.DataFrame(rows)


def _write(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _with_arrays(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["projection"] = [np.asarray(v, dtype=np.float32) for v in frame["projection"]]
    return frame
