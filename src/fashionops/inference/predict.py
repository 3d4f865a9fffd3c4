"""Batch prediction with a deployed classifier: the registry alias, a model URI, or a pull directory."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fashionops.config import Params
from fashionops.errors import DataError, FashionOpsError

BATCH = 32


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an image file to score, from the file system and its first bytes
    (PIL reads only the header), or None. Cheap: no decode, no model."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory, not an image file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    try:
        with Image.open(path):
            return None
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify the format)"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"


def check_image_files(images: Iterable[str | Path]) -> None:
    """Raise one ``DataError`` naming every input that is missing, unreadable or not an image
    (``x.jpg: no such file``; several joined with ``; ``). Commands call it before loading a model."""
    bad = [f"{image}: {problem}" for image in images if (problem := _file_problem(Path(image))) is not None]
    if bad:
        raise DataError("; ".join(bad))


def resolve_model_uri(params: Params, model_uri: str | None = None) -> str:
    """The classifier of the ``@champion`` pair by default (``models:/<classifier_name>/<version>``);
    a ``fashionops pull`` directory means its ``classifier/`` model; any other directory or URI is
    used as is."""
    if not model_uri:
        from fashionops.registry.aliases import AliasNotSet, reader_client, resolve_pair

        try:  # the classifier of the @champion pair (refused if the alias is not a pair)
            version = resolve_pair(reader_client(params.tracking), params.register, "champion")[0]
        except AliasNotSet:
            return f"models:/{params.register.classifier_name}@champion"  # the load error names it
        return f"models:/{params.register.classifier_name}/{version}"
    p = Path(model_uri)
    if p.is_dir():
        if (p / "manifest.json").is_file() and (p / "classifier" / "MLmodel").is_file():
            return str((p / "classifier").resolve())
        if (p / "MLmodel").is_file():
            return str(p.resolve())
        raise DataError(f"{model_uri}: a directory but neither an MLflow model nor a `fashionops pull` directory")
    return model_uri


def load_classifier(params: Params, model_uri: str | None = None) -> Any:
    """Load the classifier pyfunc; errors name the URI and the tracking store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from fashionops import tracking

    uri = resolve_model_uri(params, model_uri)
    tracking.configure(params.tracking)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise FashionOpsError(
            f"cannot load model {uri} (tracking store {tracking.tracking_uri(params.tracking)}): "
            f"{str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None


def predict_images(
    params: Params, images: Iterable[str | Path], model_uri: str | None = None, k: int = 3
) -> Iterator[dict[str, Any]]:
    """Classify image files; yields one JSON-able dict per image, in order:
    ``{"file", "label", "probability", "top_labels": [...], "top_probabilities": [...],
    "attributes": {name: {"label", "probability"}}}`` (the pyfunc's output names, ``k`` of each top
    list; ``attributes``: every attribute the model tags, the primary label first), or
    ``{"file", "error"}`` for a file that is not a readable image (the others are still scored).
    """
    from mlflow.exceptions import MlflowException

    from fashionops.data.imaging import load_rgb
    from fashionops.registry.pyfunc import images_frame

    if k < 1:
        raise DataError(f"k must be >= 1 (got {k})")
    model = load_classifier(params, model_uri)
    primary = str((model.metadata.metadata or {}).get("label_column") or "label")
    pending: list[tuple[str, Any]] = []

    def flush() -> Iterator[dict[str, Any]]:
        if not pending:
            return
        try:
            out = model.predict(images_frame([img for _, img in pending]), params={"top_k": k})
        except MlflowException as exc:  # the model's own input errors (ModelInputError)
            raise DataError(exc.message) from None
        for (name, _), row in zip(pending, out.to_dict("records")):
            yield {
                "file": name,
                "label": row["label"],
                "probability": round(float(row["probability"]), 6),
                "top_labels": list(row["top_labels"]),
                "top_probabilities": [round(float(p), 6) for p in row["top_probabilities"]],
                "attributes": {
                    name: {"label": tag["label"], "probability": round(float(tag["probability"]), 6)}
                    for name, tag in _attributes(row, primary).items()
                },
            }
        pending.clear()

    for image in images:
        name = str(image)
        try:
            # Decoded here so that one bad file is reported alone instead of failing its batch.
            pending.append((name, load_rgb(image, max_pixels=params.serve.max_pixels)))
        except FashionOpsError as exc:
            yield from flush()
            yield {"file": name, "error": str(exc)}
            continue
        if len(pending) >= BATCH:
            yield from flush()
    yield from flush()


def _attributes(row: dict[str, Any], primary: str) -> dict[str, Any]:
    """The row's ``attributes``; a model registered before they existed (it runs its own logged
    copy of the pyfunc) gives its primary label alone, named by its metadata's ``label_column``."""
    tags = row.get("attributes")
    if isinstance(tags, dict) and tags:
        return tags
    return {primary: {"label": row["label"], "probability": row["probability"]}}
