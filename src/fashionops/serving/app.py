"""Visual-search web app and API over a classifier/index pair (the champion models).

``fashionops serve`` runs ``run_serve``: a FastAPI app with

- ``POST /classify``: multipart upload (field ``file``) -> label, top-k probabilities, model version;
- ``POST /search``: upload (field ``file``) or ``item_id`` (form or JSON) -> top-k similar items;
- ``GET /items/{id}``, ``GET /items/{id}/image``: catalogue metadata and image;
- ``GET /health``: model versions, aliases and where they came from; ``POST /reload``;
- ``/``: a small web page (``fashionops/static``); ``/docs``: OpenAPI docs.

The models live in a ``ModelBundle``: classifier module + spec, Annoy searcher, versions and the
catalogue image directory. A bundle is loaded from the MLflow registry by alias, from a directory
written by ``fashionops pull`` (``serve.model_dir``) or from ``train.out_dir`` + ``index.out_dir``
(local development). A reload builds a whole new bundle first and then swaps one reference, so a
request always sees a matching classifier/index pair.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from fashionops.config import Params
from fashionops.errors import DataError, FashionOpsError

log = logging.getLogger("fashionops.serving.app")

STATIC_DIR = Path(__file__).parent / "static"
MAX_K = 50
# Multipart framing (boundaries, part headers, small fields) on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
PUBLIC_PATHS = ("/", "/health", "/docs", "/redoc", "/openapi.json", "/favicon.ico")


class ServeError(FashionOpsError):
    """The server cannot load or use its models; the message says why."""


# --------------------------------------------------------------------------- model bundle


@dataclass
class ModelBundle:
    """One consistent classifier/index pair and everything a request needs to use it.

    Immutable once built (the app swaps whole bundles). ``slots`` bounds concurrent forward
    passes to what the cores can run without oversubscription (cores // torch threads).
    """

    module: Any  # the classifier
    spec: dict[str, Any]
    searcher: Any
    embedder: Any  # the model the index was built with (often the classifier itself)
    embedder_spec: dict[str, Any]
    images_dir: Path
    source: str  # registry | dir | local
    alias: str | None
    classifier: dict[str, Any]  # name, version, run_id, ... (what /health shows)
    index: dict[str, Any]
    fingerprint: str  # identity of the pair; a poll reloads when it changes
    cleanup_dir: Path | None = None  # a download directory this bundle owns
    loaded_at: float = field(default_factory=time.time)
    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(_inference_slots()),
                                              repr=False)
    _items: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        items = self.searcher.items
        self._items = {int(r["id"]): r for r in items.to_dict(orient="records")}
        self.images_dir = Path(self.images_dir).resolve()

    @property
    def classes(self) -> list[str]:
        return list(self.spec.get("classes") or [])

    @property
    def n_items(self) -> int:
        return len(self._items)

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports about this pair."""
        return {
            "source": self.source,
            "alias": self.alias,
            "classifier": self.classifier,
            "index": self.index,
            "fingerprint": self.fingerprint,
            "loaded_at": self.loaded_at,
            "items": self.n_items,
            "classes": len(self.classes),
            "label_column": self.spec.get("label_column"),
            "jit": _is_scripted(self.module),
        }

    def fit(self, image: np.ndarray, spec: dict[str, Any] | None = None) -> np.ndarray:
        """Resize an upload to a model's input size (as the training cache was made)."""
        from fashionops.data.imaging import resize_rgb

        spec = spec or self.spec
        h, w = int(spec.get("input_height") or 80), int(spec.get("input_width") or 60)
        # a writable copy: torch warns on (and must not share) read-only numpy buffers
        return np.array(resize_rgb(image, h, w), copy=True)

    def classify(self, image: np.ndarray, k: int) -> dict[str, Any]:
        """(H, W, 3) uint8 -> predicted label, its probability and the top-k classes."""
        import torch

        from fashionops.inference.preprocess import preprocess_batch

        batch = preprocess_batch(self.fit(image)[None], self.spec)
        x = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(np.asarray(batch))
        with self.slots, torch.inference_mode():
            probs = torch.softmax(self.module(x).float(), dim=1)[0].numpy()
        classes = self.classes or [str(i) for i in range(len(probs))]
        order = np.argsort(-probs)[: max(1, min(k, len(probs)))]
        top = [{"label": classes[i], "probability": float(probs[i])} for i in order]
        return {"label": top[0]["label"], "probability": top[0]["probability"], "top": top}

    def search_image(self, image: np.ndarray, k: int) -> list[dict[str, Any]]:
        """Top-k catalogue items most similar to an image (encoded as the index's items were)."""
        with self.slots:
            enc = self.searcher.encode(self.embedder, self.embedder_spec, self.fit(image, self.embedder_spec)[None])
        return self._rows(self.searcher.search(enc.embeddings, k, enc.class_probs)[0])

    def search_item(self, item_id: int, k: int) -> list[dict[str, Any]]:
        """Top-k items most similar to a catalogue item, the item itself left out."""
        if item_id not in self._items:
            raise KeyError(item_id)
        # search_by_id leaves the query item out itself
        return self._rows(self.searcher.search_by_id(item_id, k))

    def item(self, item_id: int) -> dict[str, Any] | None:
        """Catalogue metadata of an indexed item, or None."""
        row = self._items.get(item_id)
        if row is None:
            return None
        return self._item_json(row)

    def image_path(self, item_id: int) -> Path | None:
        """The catalogue image of an indexed item; never a path outside ``images_dir``."""
        if item_id not in self._items:
            return None
        path = (self.images_dir / f"{int(item_id)}.jpg").resolve()
        if not path.is_relative_to(self.images_dir) or not path.is_file():
            return None
        return path

    @staticmethod
    def _item_json(row: dict[str, Any]) -> dict[str, Any]:
        item_id = int(row["id"])
        out = {
            "id": item_id,
            "name": _clean(row.get("productDisplayName")),
            "masterCategory": _clean(row.get("masterCategory")),
            "subCategory": _clean(row.get("subCategory")),
            "articleType": _clean(row.get("articleType")),
            "image_url": f"/items/{item_id}/image",
            "item_url": f"/items/{item_id}",
        }
        return out

    def _rows(self, result: Any) -> list[dict[str, Any]]:
        """Normalise a searcher result (DataFrame or list of dicts) to item JSON + distance."""
        if hasattr(result, "to_dict"):
            records = result.to_dict(orient="records")
        else:
            records = list(result)
        rows = []
        for rec in records:
            item_id = int(rec["id"])
            meta = dict(self._items.get(item_id, {}))
            meta.update({k: v for k, v in rec.items() if k != "distance"})
            row = self._item_json(meta)
            row["distance"] = float(rec["distance"])
            rows.append(row)
        return rows


def _is_scripted(module: Any) -> bool:
    import torch

    return isinstance(module, torch.jit.ScriptModule)


def _inference_slots() -> int:
    """How many forward passes may run at once: cores // torch intra-op threads (at least 1)."""
    import torch

    return max(1, (os.cpu_count() or 1) // max(1, torch.get_num_threads()))


def set_torch_threads(n: int) -> None:
    """Intra-op (and, if still possible, inter-op) threads for this serving process.

    One thread per forward pass and several passes in parallel serves small images best: a
    multi-threaded pass on a busy machine spends its time waiting for its own threads.
    """
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already fixed once parallel work has run in this process
        pass


def _clean(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _sha_files(paths: list[Path]) -> str:
    """Cheap identity of files: name, size and mtime (weights are large; no full hash)."""
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
            if p.suffix == ".json":
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _local_fingerprint(model_dir: Path, index_dir: Path) -> str:
    return "local:" + _sha_files(
        [model_dir / "model_spec.json", model_dir / "weights.pt",
         index_dir / "index_meta.json", index_dir / "index.ann", index_dir / "items.parquet"]
    )


def _find_dir(root: Path, marker: str) -> Path:
    """The unique directory under ``root`` holding ``marker`` (shallowest wins)."""
    hits = sorted(root.rglob(marker), key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise ServeError(f"{root}: no {marker} found (not a model/index directory)")
    return hits[0].parent


def _check_pair(module: Any, spec: dict[str, Any], searcher: Any, index_dir: Path) -> None:
    """Refuse a classifier/index pair whose embeddings cannot belong together."""
    from fashionops.search.index import embed_arrays

    h = int(spec.get("input_height") or 80)
    w = int(spec.get("input_width") or 60)
    probe = np.full((1, h, w, 3), 255, dtype=np.uint8)
    dim = int(np.asarray(embed_arrays(module, spec, probe)).shape[-1])
    meta = dict(getattr(searcher, "meta", {}) or {})
    index_dim = int(meta.get("dim") or getattr(searcher, "dim", dim))
    if dim != index_dim:
        raise ServeError(
            f"classifier embeds to {dim} dimensions but the index at {index_dir} has {index_dim}: "
            "not a matching pair"
        )
    # The index records what embedded it; a different architecture/input means another model.
    recorded = meta.get("embedding_model") or {}
    for key, value in recorded.items():
        if key in spec and spec[key] != value:
            raise ServeError(
                f"index at {index_dir} was built with {key}={value!r} but the classifier has "
                f"{key}={spec[key]!r}: not a matching pair"
            )


def _compile(module: Any, spec: dict[str, Any], methods: list[str]) -> Any:
    """TorchScript-trace and freeze ``methods`` for batch-1 CPU inference; eager on any doubt.

    At 80x60 a forward pass is mostly Python overhead of many small layers; a frozen trace
    roughly halves it. The trace is checked against the eager module on a probe image.
    """
    import torch

    h = int(spec.get("input_height") or 80)
    w = int(spec.get("input_width") or 60)
    # traced on a pair (a query and its mirror image go through together) and checked on 1 and 2
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace_module(module, {m: x for m in methods}, check_trace=False)
            frozen = torch.jit.freeze(traced.eval(), preserved_attrs=[m for m in methods if m != "forward"])
            for m in methods:
                for probe in (x[:1], x):
                    for want, got in zip(_as_tuple(getattr(module, m)(probe)), _as_tuple(getattr(frozen, m)(probe))):
                        if want.shape != got.shape or not torch.allclose(want, got, atol=1e-4, rtol=1e-3):
                            raise ValueError(f"traced {m} differs from eager on a batch of {len(probe)}")
    except Exception as exc:
        log.warning("TorchScript trace failed (%s); serving the eager module", exc)
        return module
    return frozen


_IMAGE_FIELD = {"type": "string", "format": "binary"}


def _object_schema(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """``{"schema": ...}`` of an OpenAPI object with ``properties`` (for ``openapi_extra`` bodies)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"schema": schema}


def _request_body(content: dict[str, Any]) -> dict[str, Any]:
    """A required OpenAPI request body with one schema per media type."""
    return {"requestBody": {"required": True, "content": content}}


def _as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two model directories hold byte-identical weights and spec."""
    if a.resolve() == b.resolve():
        return True
    for name in ("model_spec.json", "weights.pt"):
        fa, fb = a / name, b / name
        if not (fa.is_file() and fb.is_file()) or fa.stat().st_size != fb.stat().st_size:
            return False
        if hashlib.sha256(fa.read_bytes()).digest() != hashlib.sha256(fb.read_bytes()).digest():
            return False
    return True


def load_bundle_from_dirs(
    model_dir: str | Path,
    index_dir: str | Path,
    images_dir: str | Path,
    *,
    embedder_dir: str | Path | None = None,
    jit: bool = False,
    source: str = "local",
    alias: str | None = None,
    classifier: dict[str, Any] | None = None,
    index: dict[str, Any] | None = None,
    fingerprint: str | None = None,
) -> ModelBundle:
    """Load a classifier directory and an index directory into a checked ``ModelBundle``.

    ``embedder_dir``: the model the index embeds with (default: the classifier); loaded once
    when it is the same model. ``jit``: serve frozen TorchScript traces (checked against eager).
    """
    from fashionops.models.factory import load_model
    from fashionops.search.index import IndexSearcher

    model_dir, index_dir = Path(model_dir), Path(index_dir)
    embedder_dir = Path(embedder_dir) if embedder_dir else model_dir
    if not (model_dir / "model_spec.json").is_file():
        raise ServeError(f"{model_dir}: no model_spec.json (train the classifier or pull a model first)")
    if not (index_dir / "index_meta.json").is_file() and not (index_dir / "index.ann").is_file():
        raise ServeError(f"{index_dir}: no index (run `fashionops index` or pull a model first)")
    module, spec = load_model(model_dir)
    if spec.get("task", "classifier") != "classifier":
        raise ServeError(f"{model_dir}: a {spec.get('task')} model cannot classify; serve a classifier")
    module.eval()
    if _same_weights(model_dir, embedder_dir):
        embedder, embedder_spec = module, spec
    else:
        embedder, embedder_spec = load_model(embedder_dir)
        embedder.eval()
    searcher = IndexSearcher.load(index_dir)
    _check_pair(embedder, embedder_spec, searcher, index_dir)
    if jit:
        # what the index's query encoding calls (IndexSearcher.encode)
        embed_methods = ["embed_with_logits" if searcher.rerank and hasattr(embedder, "embed_with_logits")
                         else "embed"]
        if embedder is module:
            module = embedder = _compile(module, spec, ["forward", *embed_methods])
        else:
            module = _compile(module, spec, ["forward"])
            embedder = _compile(embedder, embedder_spec, embed_methods)
    return ModelBundle(
        module=module, spec=dict(spec), searcher=searcher, embedder=embedder,
        embedder_spec=dict(embedder_spec), images_dir=Path(images_dir),
        source=source, alias=alias,
        classifier=classifier or {"version": "local", "path": str(model_dir.resolve())},
        index={**(index or {"version": "local", "path": str(index_dir.resolve())}),
               **{k: searcher.meta.get(k) for k in ("n_items", "n_trees", "search_k", "metric", "dim")
                  if k in searcher.meta}},
        fingerprint=fingerprint or _local_fingerprint(model_dir, index_dir),
    )


def _read_manifest(pull_dir: Path) -> dict[str, Any]:
    for name in ("manifest.json", "MANIFEST.json"):
        path = pull_dir / name
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def _manifest_entry(manifest: dict[str, Any], role: str, fallback_name: str) -> dict[str, Any]:
    """What /health shows of ``role`` (classifier/index) from a pull manifest."""
    entry = manifest.get(role)
    entry = dict(entry) if isinstance(entry, dict) else {}
    entry.setdefault("name", fallback_name)
    # Artifact locations and local paths mean nothing to a client.
    return {k: entry[k] for k in ("name", "version", "run_id", "uri", "metrics") if k in entry}


def _pull_dirs(pull_dir: Path, manifest: dict[str, Any]) -> tuple[Path, Path, Path]:
    """(classifier model dir, index dir, embedder model dir) inside a ``registry.pull`` directory.

    Layout: ``classifier/`` (pyfunc; the model dir is an artifact holding ``model_spec.json``) and
    ``visual_search/`` (pyfunc; artifacts: the index dir and the embedder's model dir).
    """
    cls_root = pull_dir / str((manifest.get("classifier") or {}).get("dir", "classifier"))
    idx_root = pull_dir / str((manifest.get("index") or {}).get("dir", "visual_search"))
    for root in (cls_root, idx_root):
        if not root.resolve().is_relative_to(pull_dir.resolve()) or not root.is_dir():
            raise ServeError(f"{pull_dir}: expected {root.name}/ from `fashionops pull` (not a pull directory)")
    return (_find_dir(cls_root, "model_spec.json"), _find_dir(idx_root, "index_meta.json"),
            _find_dir(idx_root, "model_spec.json"))


def load_bundle_from_pull(pull_dir: str | Path, images_dir: str | Path, params: Params | None = None,
                          *, source: str = "dir", cleanup: bool = False, jit: bool = False) -> ModelBundle:
    """Load a directory written by ``fashionops pull`` (both models + ``manifest.json``).

    Refuses a directory whose files no longer match the manifest, or whose index was not built
    with its classifier version (a hand-assembled mismatched pair).
    """
    pull_dir = Path(pull_dir)
    if not pull_dir.is_dir():
        raise ServeError(f"serve.model_dir {pull_dir}: no such directory (run `fashionops pull` first)")
    manifest = _read_manifest(pull_dir)
    if manifest.get("files"):
        from fashionops.registry.register import verify_pull

        bad = verify_pull(pull_dir)
        if bad:
            raise ServeError(f"{pull_dir}: {len(bad)} files differ from manifest.json (e.g. {bad[0]}); pull again")
    cls_entry, idx_entry = manifest.get("classifier") or {}, manifest.get("index") or {}
    built_with = (idx_entry.get("tags") or {}).get("classifier_version")
    if built_with is not None and str(built_with) != str(cls_entry.get("version")):
        raise ServeError(f"{pull_dir}: index v{idx_entry.get('version')} was built with classifier "
                         f"v{built_with}, not v{cls_entry.get('version')}: not a matching pair")
    model_dir, index_dir, embedder_dir = _pull_dirs(pull_dir, manifest)
    reg = params.register if params else None
    cls_info = _manifest_entry(manifest, "classifier", reg.classifier_name if reg else "fashion-classifier")
    idx_info = _manifest_entry(manifest, "index", reg.index_name if reg else "fashion-visual-search")
    alias = manifest.get("alias")
    bundle = load_bundle_from_dirs(
        model_dir, index_dir, images_dir, embedder_dir=embedder_dir, jit=jit, source=source, alias=alias,
        classifier=cls_info, index=idx_info, fingerprint=_pull_fingerprint(pull_dir, manifest),
    )
    if cleanup:
        bundle.cleanup_dir = pull_dir
    return bundle


def _pull_fingerprint(pull_dir: Path, manifest: dict[str, Any]) -> str:
    """Identity of a pull directory: its manifest (versions + file hashes)."""
    if not manifest:
        raise ServeError(f"{pull_dir}: no manifest.json (not a `fashionops pull` directory)")
    return "dir:" + hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def registry_fingerprint(params: Params, alias: str) -> str | None:
    """``name:version|name:version`` of the alias in the registry, or None if it is not set."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from fashionops.tracking import tracking_uri

    uri = tracking_uri(params)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parts = []
    for name in (params.register.classifier_name, params.register.index_name):
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        parts.append(f"{name}:{mv.version}")
    return "registry:" + "|".join(parts)


def load_bundle_from_registry(params: Params, alias: str, images_dir: str | Path) -> ModelBundle:
    """Download both models of ``alias`` (via ``registry.pull``) and load them."""
    from fashionops.registry.register import pull

    before = registry_fingerprint(params, alias)
    if before is None:
        raise ServeError(
            f"registry: no @{alias} for {params.register.classifier_name} and {params.register.index_name} "
            "(run `fashionops register`, or set serve.model_dir / serve.source=local)"
        )
    dest = Path(tempfile.mkdtemp(prefix="fashionops-serve-"))
    try:
        pull(params, alias=alias, dest=str(dest))
        bundle = load_bundle_from_pull(dest, images_dir, params, source="registry", cleanup=True,
                                       jit=params.serve.jit)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    bundle.alias = alias
    # The poll compares registry fingerprints; a promotion during the pull shows up next poll.
    bundle.fingerprint = before
    return bundle


def _images_dir(params: Params) -> Path:
    return Path(params.serve.images_dir or Path(params.data.raw_dir) / "images")


def resolve_source(params: Params) -> str:
    """Which source ``serve.source`` means now: ``dir``, ``registry`` or ``local``."""
    s = params.serve
    if s.source != "auto":
        return s.source
    if s.model_dir:
        return "dir"
    try:
        if registry_fingerprint(params, s.alias) is not None:
            return "registry"
    except Exception as exc:  # an unreachable store falls back to local outputs in dev
        log.warning("registry not usable (%s); trying local model outputs", exc)
    if (Path(params.train.out_dir) / "model_spec.json").is_file():
        log.warning("no @%s in the registry: serving local %s + %s",
                    s.alias, params.train.out_dir, params.index.out_dir)
        return "local"
    return "registry"  # the error message names the alias


def current_fingerprint(params: Params, source: str) -> str | None:
    """What a load from ``source`` would load now, cheaply (for the reload poll)."""
    if source == "registry":
        return registry_fingerprint(params, params.serve.alias)
    if source == "dir":
        d = Path(params.serve.model_dir or "")
        manifest = _read_manifest(d) if d.is_dir() else {}
        return _pull_fingerprint(d, manifest) if manifest else None
    return _local_fingerprint(Path(params.train.out_dir), Path(params.index.out_dir))


def load_bundle(params: Params, source: str | None = None) -> ModelBundle:
    """Load the pair ``serve`` is configured for (see ``resolve_source``)."""
    source = source or resolve_source(params)
    images = _images_dir(params)
    if source == "dir":
        if not params.serve.model_dir:
            raise ServeError("serve.source=dir needs serve.model_dir (a `fashionops pull` directory)")
        return load_bundle_from_pull(params.serve.model_dir, images, params, jit=params.serve.jit)
    if source == "registry":
        return load_bundle_from_registry(params, params.serve.alias, images)
    return load_bundle_from_dirs(params.train.out_dir, params.index.out_dir, images,
                                 embedder_dir=params.index.embedder_dir, jit=params.serve.jit)


class BundleHolder:
    """The serving bundle: readers take ``current`` once; reloads build then swap the reference."""

    def __init__(self, bundle: ModelBundle, loader: Callable[[], ModelBundle],
                 fingerprint: Callable[[], str | None] | None = None) -> None:
        self.current = bundle
        self._loader = loader
        self._fingerprint = fingerprint
        self._reload_lock = threading.Lock()
        self.last_error: str | None = None
        self.reloads = 0

    def reload(self, force: bool = True) -> dict[str, Any]:
        """Load a new pair and swap it in; on failure keep serving the old one and raise."""
        with self._reload_lock:
            old = self.current
            if not force and self._fingerprint is not None:
                fp = self._fingerprint()
                if fp is None or fp == old.fingerprint:
                    return {"reloaded": False, "fingerprint": old.fingerprint}
            try:
                new = self._loader()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise
            changed = new.fingerprint != old.fingerprint
            self.current = new  # one reference assignment: atomic for readers
            self.last_error = None
            self.reloads += 1
            if old.cleanup_dir and old.cleanup_dir != new.cleanup_dir:
                shutil.rmtree(old.cleanup_dir, ignore_errors=True)
            log.info("reloaded models: %s -> %s", old.fingerprint, new.fingerprint)
            return {"reloaded": True, "changed": changed, "previous": old.fingerprint,
                    "fingerprint": new.fingerprint}

    def poll_forever(self, interval_s: float, stop: threading.Event) -> None:
        """Reload when the source's fingerprint changes; errors are logged, never fatal."""
        while not stop.wait(interval_s):
            try:
                result = self.reload(force=False)
                if result.get("reloaded"):
                    log.info("poll picked up new models: %s", result["fingerprint"])
            except Exception as exc:
                log.warning("reload poll failed (still serving %s): %s", self.current.fingerprint, exc)


# --------------------------------------------------------------------------- app


def _upload_limit_middleware(app: Any, max_bytes: int) -> Callable:
    """ASGI wrapper: a request body over the limit gets 413 while it is read, never buffered whole."""
    limit = max_bytes + MULTIPART_OVERHEAD
    mb = max_bytes / 1024 / 1024

    async def middleware(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            resp = JSONResponse({"detail": f"upload too large: {int(declared)} bytes (limit {mb:g} MB)"}, 413)
            await resp(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise UploadTooLarge(f"upload too large: more than {mb:g} MB")
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, counting_receive, tracking_send)
        except UploadTooLarge as exc:
            if started:
                raise
            await JSONResponse({"detail": str(exc)}, 413)(scope, receive, send)

    return middleware


class UploadTooLarge(Exception):
    """A streamed request body passed ``serve.max_upload_mb``."""


def create_app(params: Params, bundle: ModelBundle | None = None,
               loader: Callable[[], ModelBundle] | None = None,
               fingerprint: Callable[[], str | None] | None = None) -> Any:
    """The FastAPI app. ``bundle``/``loader`` default to ``load_bundle(params)`` (tests pass their own).

    A bearer token is required on the API when the env var named by ``serve.token_env`` is set.
    """
    from contextlib import asynccontextmanager

    from fashionops.data.imaging import load_rgb

    cfg = params.serve
    if bundle is None or loader is None:
        source = resolve_source(params)
        loader = loader or (lambda: load_bundle(params, source))
        fingerprint = fingerprint or (lambda: current_fingerprint(params, source))
        bundle = bundle or loader()
    holder = BundleHolder(bundle, loader, fingerprint)
    token = os.environ.get(cfg.token_env) if cfg.token_env else None
    max_bytes = int(cfg.max_upload_mb * 1024 * 1024)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        poller = None
        if cfg.reload_poll_s > 0:
            poller = threading.Thread(target=holder.poll_forever, args=(cfg.reload_poll_s, stop),
                                      name="fashionops-reload-poll", daemon=True)
            poller.start()
        yield
        stop.set()

    app = FastAPI(
        title="fashionops visual search",
        version="1",
        description="Classify a fashion product photo and find similar catalogue items.",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.stop_poll = stop

    def bad_request(exc: DataError) -> HTTPException:
        text = str(exc)
        # load_rgb says "image too large" for a pixel bomb: that is a size limit, not bad syntax.
        return HTTPException(413 if "too large" in text else 400, text)

    async def read_request(request: Request) -> dict[str, Any]:
        """Form (multipart/urlencoded) or JSON body -> {"file": bytes|None, name, fields...}."""
        ctype = request.headers.get("content-type", "")
        out: dict[str, Any] = {"file": None, "filename": None}
        if ctype.startswith("application/json"):
            try:
                body = await request.json()
            except ValueError:
                raise HTTPException(400, "body is not valid JSON") from None
            if not isinstance(body, dict):
                raise HTTPException(400, "JSON body must be an object")
            out.update({k: v for k, v in body.items() if k in ("item_id", "k")})
            return out
        if ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
            try:
                form = await request.form(max_files=1, max_fields=10)
            except UploadTooLarge:
                raise
            except HTTPException:
                raise
            except Exception as exc:
                raise HTTPException(400, f"cannot parse the form: {exc}") from None
            for key in ("item_id", "k"):
                if isinstance(form.get(key), str) and form.get(key) != "":
                    out[key] = form.get(key)
            upload = form.get("file")
            if isinstance(upload, UploadFile):
                data = await upload.read(max_bytes + 1)
                await upload.close()
                if len(data) > max_bytes:
                    raise HTTPException(413, f"upload too large: more than {cfg.max_upload_mb:g} MB")
                # the name only labels error messages; keep it short and printable
                name = "".join(ch for ch in (upload.filename or "upload") if ch.isprintable())[:100]
                out["file"], out["filename"] = data, name or "upload"
            elif upload is not None:
                raise HTTPException(400, "field 'file' must be a file upload")
            return out
        if ctype:
            raise HTTPException(415, f"unsupported content type {ctype!r}: use multipart/form-data or JSON")
        return out

    def parse_k(value: Any) -> int:
        if value is None:
            return cfg.top_k
        try:
            k = int(value)
        except (TypeError, ValueError):
            raise HTTPException(422, f"k must be an integer (got {value!r})") from None
        if not 1 <= k <= MAX_K:
            raise HTTPException(422, f"k must be between 1 and {MAX_K} (got {k})")
        return k

    def parse_item_id(value: Any) -> int:
        if isinstance(value, bool):
            raise HTTPException(422, "item_id must be an integer")
        try:
            return int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise HTTPException(422, f"item_id must be an integer (got {value!r})") from None

    async def decode(data: bytes, name: str) -> np.ndarray:
        try:
            return await run_in_threadpool(load_rgb, data, max_pixels=cfg.max_pixels, name=name)
        except DataError as exc:
            raise bad_request(exc) from None

    k_field = {"type": "integer", "minimum": 1, "maximum": MAX_K}
    upload_body = _request_body({"multipart/form-data": _object_schema(
        {"file": _IMAGE_FIELD | {"description": "image file"}, "k": k_field}, required=["file"])})
    search_body = _request_body({
        "multipart/form-data": _object_schema({
            "file": _IMAGE_FIELD | {"description": "query image"},
            "item_id": {"type": "integer", "description": "or a catalogue item id"},
            "k": k_field,
        }),
        "application/json": _object_schema({"item_id": {"type": "integer"}, "k": {"type": "integer"}},
                                           required=["item_id"]),
    })

    @app.post("/classify", summary="Classify an uploaded product photo", openapi_extra=upload_body)
    async def classify(request: Request) -> dict[str, Any]:
        b = holder.current
        req = await read_request(request)
        if req["file"] is None:
            raise HTTPException(422, "no image: send a multipart form with the image in field 'file'")
        k = parse_k(req["k"] if req.get("k") is not None else request.query_params.get("k"))
        image = await decode(req["file"], req["filename"])
        result = await run_in_threadpool(b.classify, image, k)
        result["model"] = {**b.classifier, "alias": b.alias, "source": b.source}
        return result

    @app.post("/search", summary="Find similar catalogue items (upload or item_id)", openapi_extra=search_body)
    async def search(request: Request) -> dict[str, Any]:
        b = holder.current
        req = await read_request(request)
        item_id = req.get("item_id", request.query_params.get("item_id"))
        k = parse_k(req["k"] if req.get("k") is not None else request.query_params.get("k"))
        if req["file"] is not None:
            image = await decode(req["file"], req["filename"])
            results = await run_in_threadpool(b.search_image, image, k)
            query: dict[str, Any] = {"type": "upload", "filename": req["filename"]}
        elif item_id is not None:
            iid = parse_item_id(item_id)
            if b.item(iid) is None:
                raise HTTPException(404, f"unknown item id {iid}")
            results = await run_in_threadpool(b.search_item, iid, k)
            query = {"type": "item", "item": b.item(iid)}
        else:
            raise HTTPException(422, "nothing to search for: send an image in field 'file' or an item_id")
        return {"query": query, "results": results, "model": {**b.index, "alias": b.alias, "source": b.source}}

    @app.get("/items/{item_id}", summary="Catalogue item metadata")
    def get_item(item_id: int) -> dict[str, Any]:
        item = holder.current.item(item_id)
        if item is None:
            raise HTTPException(404, f"unknown item id {item_id}")
        return item

    @app.get("/items/{item_id}/image", summary="Catalogue item image (JPEG)", response_class=FileResponse)
    def get_item_image(item_id: int) -> FileResponse:
        path = holder.current.image_path(item_id)
        if path is None:
            raise HTTPException(404, f"no image for item id {item_id}")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/health", summary="Model versions, aliases and status")
    def health() -> dict[str, Any]:
        return {"status": "ok", **holder.current.describe(), "reloads": holder.reloads,
                "last_reload_error": holder.last_error, "auth": bool(token),
                "reload_poll_s": cfg.reload_poll_s}

    @app.post("/reload", summary="Load the current models of the source and swap them in")
    def reload(force: bool = True) -> dict[str, Any]:
        try:
            result = holder.reload(force=force)
        except Exception as exc:
            raise HTTPException(409, f"reload failed, still serving {holder.current.fingerprint}: {exc}") from None
        return {**result, **holder.current.describe()}

    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    app.add_middleware(_Guard, max_bytes=max_bytes, token=token)
    return app


def _authorized(scope: dict, token: str) -> bool:
    """Bearer token in ``Authorization``, or the ``fashionops_token`` cookie (for <img> loads)."""
    from starlette.requests import HTTPConnection

    conn = HTTPConnection(scope)
    header = conn.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else conn.cookies.get("fashionops_token", "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


class _Guard:
    """Pure ASGI middleware (no task groups, so errors from ``receive`` stay unwrapped):
    the optional bearer token, then the streamed upload limit."""

    def __init__(self, app: Any, max_bytes: int, token: str | None) -> None:
        self._app = app
        self._limited = _upload_limit_middleware(app, max_bytes)
        self._token = token

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self._token and not (path in PUBLIC_PATHS or path.startswith("/static/")) \
                and not _authorized(scope, self._token):
            resp = JSONResponse({"detail": "missing or wrong bearer token"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        await self._limited(scope, receive, send)


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0,
                    timeout_s: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread (tests, tools); yields its base URL.

    ``port=0`` picks a free port. The server is stopped when the block exits.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="fashionops-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ServeError(f"uvicorn did not start on {host}:{port} within {timeout_s:g} s")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)


def run_serve(params: Params, host: str | None = None, port: int | None = None) -> None:
    """Load the models and serve the app with uvicorn until interrupted (``fashionops serve``)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if params.serve.torch_threads:
        set_torch_threads(params.serve.torch_threads)
    app = create_app(params)
    b = app.state.holder.current
    log.info("serving %s (%s) on http://%s:%s", b.fingerprint, b.source, host or params.serve.host,
             port or params.serve.port)
    uvicorn.run(app, host=host or params.serve.host, port=port or params.serve.port, log_level="info")
    return None
