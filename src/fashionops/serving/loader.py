"""Loading a ``ModelBundle`` from where ``serve`` is told to find its models, and knowing cheaply
when that source has changed.

Sources (``serve.source``; ``resolve_source`` decides ``auto``):

- ``registry``: both models of ``serve.alias`` from the MLflow registry, downloaded with
  ``registry.pull`` into a temp dir the bundle owns;
- ``dir``: a directory written by ``fashionops pull`` (``serve.model_dir``), checked against its
  ``manifest.json``;
- ``local``: ``paths.classifier_dir`` + ``paths.index_dir`` (development).

Every load checks that the classifier and the index belong together (:func:`check_pair`). A
*fingerprint* names what a source holds now (registry versions, the pull manifest, or file
sizes and times); the reload poll compares it with the served bundle's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fashionops.config import Params, RegisterConfig, TrackingConfig
from fashionops.errors import FashionOpsError
from fashionops.inference.predictor import Predictor
from fashionops.models.factory import WEIGHTS_FILE
from fashionops.models.spec import SPEC_FILE
from fashionops.search.searcher import IndexSearcher
from fashionops.search.store import META_FILE, index_files
from fashionops.serving.bundle import ModelBundle
from fashionops.serving.downloads import new_download_dir, remove_download_dir
from fashionops.serving.torchscript import compiled_for_serving

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.json", "MANIFEST.json")
# index_meta.json keys /health shows (each backend's knobs: Annoy n_trees, HNSW hnsw_m/ef_search)
INDEX_META_SHOWN = ("n_items", "backend", "n_trees", "hnsw_m", "ef_search", "search_k", "metric", "dim")


class ServeError(FashionOpsError):
    """The server cannot load or use its models; the message says why."""


# --------------------------------------------------------------------------- which source
def images_dir(params: Params) -> Path:
    """The catalogue images served at ``/items/{id}/image``."""
    return Path(params.serve.images_dir or Path(params.paths.raw_dir) / "images")


def resolve_source(params: Params) -> str:
    """Which source ``serve.source`` means now: ``dir``, ``registry`` or ``local``."""
    s = params.serve
    if s.source != "auto":
        return s.source
    if s.model_dir:
        return "dir"
    try:
        if registry_fingerprint(params.register, params.tracking, s.alias) is not None:
            return "registry"
    except Exception as exc:  # noqa: BLE001 - an unreachable store falls back to local outputs in dev
        log.warning("registry not usable (%s); trying local model outputs", exc)
    if (Path(params.paths.classifier_dir) / SPEC_FILE).is_file():
        log.warning(
            "no @%s in the registry: serving local %s + %s",
            s.alias,
            params.paths.classifier_dir,
            params.paths.index_dir,
        )
        return "local"
    return "registry"  # the error message names the alias


def load_bundle(params: Params, source: str | None = None) -> ModelBundle:
    """Load the pair ``serve`` is configured for (see :func:`resolve_source`)."""
    source = source or resolve_source(params)
    images = images_dir(params)
    if source == "dir":
        if not params.serve.model_dir:
            raise ServeError("serve.source=dir needs serve.model_dir (a `fashionops pull` directory)")
        return load_bundle_from_pull(params.serve.model_dir, images, params.register, jit=params.serve.jit)
    if source == "registry":
        return load_bundle_from_registry(
            params.register, params.tracking, params.serve.alias, images, jit=params.serve.jit
        )
    return load_bundle_from_dirs(
        params.paths.classifier_dir,
        params.paths.index_dir,
        images,
        embedder_dir=params.index.embedder_dir,
        jit=params.serve.jit,
    )


def current_fingerprint(params: Params, source: str) -> str | None:
    """What a load from ``source`` would load now, cheaply (for the reload poll)."""
    if source == "registry":
        return registry_fingerprint(params.register, params.tracking, params.serve.alias)
    if source == "dir":
        d = Path(params.serve.model_dir or "")
        manifest = _read_manifest(d) if d.is_dir() else {}
        return _pull_fingerprint(d, manifest) if manifest else None
    return local_fingerprint(Path(params.paths.classifier_dir), Path(params.paths.index_dir))


# --------------------------------------------------------------------------- local directories
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
    cleanup_dir: Path | None = None,
) -> ModelBundle:
    """Load a classifier directory and an index directory into a checked ``ModelBundle``.

    ``embedder_dir``: the model the index embeds with (default: the classifier); loaded once
    when it is the same model. ``jit``: serve frozen TorchScript traces (checked against eager).
    """
    model_dir, index_dir = Path(model_dir), Path(index_dir)
    embedder_dir = Path(embedder_dir) if embedder_dir else model_dir
    if not (model_dir / SPEC_FILE).is_file():
        raise ServeError(f"{model_dir}: no {SPEC_FILE} (train the classifier or pull a model first)")
    if not (index_dir / META_FILE).is_file() and not index_files(index_dir)[0].is_file():
        raise ServeError(f"{index_dir}: no index (run `fashionops index` or pull a model first)")
    predictor = Predictor.from_dir(model_dir)
    if not predictor.spec.is_classifier:
        raise ServeError(f"{model_dir}: a {predictor.task} model cannot classify; serve a classifier")
    embedder = predictor if _same_weights(model_dir, embedder_dir) else Predictor.from_dir(embedder_dir)
    searcher = IndexSearcher.load(index_dir)
    check_pair(embedder, searcher, index_dir)
    if jit:
        predictor, embedder = _compiled(predictor, embedder, searcher)
    return ModelBundle(
        predictor=predictor,
        embedder=embedder,
        searcher=searcher,
        images_dir=Path(images_dir),
        source=source,
        alias=alias,
        classifier=classifier or {"name": model_dir.resolve().name, "version": "local"},
        index={
            **(index or {"name": index_dir.resolve().name, "version": "local"}),
            **{k: searcher.meta[k] for k in INDEX_META_SHOWN if k in searcher.meta},
        },
        fingerprint=fingerprint or local_fingerprint(model_dir, index_dir),
        cleanup_dir=cleanup_dir,
    )


def check_pair(embedder: Predictor, searcher: IndexSearcher, index_dir: Path) -> None:
    """Refuse a classifier/index pair whose embeddings cannot belong together."""
    dim = embedder.embedding_dim()
    if dim != searcher.dim:
        raise ServeError(
            f"classifier embeds to {dim} dimensions but the index at {index_dir} has {searcher.dim}: "
            "not a matching pair"
        )
    # The index records what embedded it; a different architecture/input means another model.
    spec = embedder.spec.model_dump(exclude_unset=True)  # the keys model_spec.json holds
    for key, value in (searcher.meta.get("embedding_model") or {}).items():
        if key in spec and spec[key] != value:
            raise ServeError(
                f"index at {index_dir} was built with {key}={value!r} but the classifier has "
                f"{key}={spec[key]!r}: not a matching pair"
            )


def _compiled(predictor: Predictor, embedder: Predictor, searcher: IndexSearcher) -> tuple[Predictor, Predictor]:
    """TorchScript traces of what requests call: ``forward`` and the index's query encoding."""
    embed = embedder.encoding_method(bool(searcher.rerank))
    if embedder is predictor:
        both = compiled_for_serving(predictor, ["forward", embed])
        return both, both
    return compiled_for_serving(predictor, ["forward"]), compiled_for_serving(embedder, [embed])


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two model directories hold byte-identical weights and spec."""
    if a.resolve() == b.resolve():
        return True
    for name in (SPEC_FILE, WEIGHTS_FILE):
        fa, fb = a / name, b / name
        if not (fa.is_file() and fb.is_file()) or fa.stat().st_size != fb.stat().st_size:
            return False
        if hashlib.sha256(fa.read_bytes()).digest() != hashlib.sha256(fb.read_bytes()).digest():
            return False
    return True


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


def local_fingerprint(model_dir: Path, index_dir: Path) -> str:
    """Identity of a classifier dir + index dir (their files' names, sizes and times)."""
    return "local:" + _sha_files([model_dir / SPEC_FILE, model_dir / WEIGHTS_FILE, *index_files(index_dir)])


# --------------------------------------------------------------------------- `fashionops pull` directories
def _read_manifest(pull_dir: Path) -> dict[str, Any]:
    for name in MANIFEST_NAMES:
        path = pull_dir / name
        if path.is_file():
            return dict(json.loads(path.read_text()))
    return {}


def _manifest_entry(manifest: dict[str, Any], role: str, fallback_name: str) -> dict[str, Any]:
    """What /health shows of ``role`` (classifier/index) from a pull manifest."""
    entry = manifest.get(role)
    entry = dict(entry) if isinstance(entry, dict) else {}
    entry.setdefault("name", fallback_name)
    # Artifact locations and local paths mean nothing to a client.
    return {k: entry[k] for k in ("name", "version", "run_id", "uri", "metrics") if k in entry}


def _find_dir(root: Path, marker: str) -> Path:
    """The unique directory under ``root`` holding ``marker`` (shallowest wins)."""
    hits = sorted(root.rglob(marker), key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise ServeError(f"{root}: no {marker} found (not a model/index directory)")
    return hits[0].parent


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
    return (_find_dir(cls_root, SPEC_FILE), _find_dir(idx_root, META_FILE), _find_dir(idx_root, SPEC_FILE))


def _pull_fingerprint(pull_dir: Path, manifest: dict[str, Any]) -> str:
    """Identity of a pull directory: its manifest (versions + file hashes)."""
    if not manifest:
        raise ServeError(f"{pull_dir}: no manifest.json (not a `fashionops pull` directory)")
    return "dir:" + hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_bundle_from_pull(
    pull_dir: str | Path,
    images_dir: str | Path,
    register: RegisterConfig | None = None,
    *,
    source: str = "dir",
    jit: bool = False,
    alias: str | None = None,
    fingerprint: str | None = None,
    cleanup_dir: Path | None = None,
) -> ModelBundle:
    """Load a directory written by ``fashionops pull`` (both models + ``manifest.json``).

    Refuses a directory whose files no longer match the manifest, or whose index was not built
    with its classifier version (a hand-assembled mismatched pair). ``cleanup_dir``: a download
    folder the bundle owns (deleted when a reload replaces the bundle or the server stops).
    """
    pull_dir = Path(pull_dir)
    if not pull_dir.is_dir():
        raise ServeError(f"serve.model_dir {pull_dir}: no such directory (run `fashionops pull` first)")
    manifest = _read_manifest(pull_dir)
    if manifest.get("files"):
        from fashionops.registry.pull import verify_pull

        bad = verify_pull(pull_dir)
        if bad:
            raise ServeError(f"{pull_dir}: {len(bad)} files differ from manifest.json (e.g. {bad[0]}); pull again")
    cls_entry, idx_entry = manifest.get("classifier") or {}, manifest.get("index") or {}
    built_with = (idx_entry.get("tags") or {}).get("classifier_version")
    if built_with is not None and str(built_with) != str(cls_entry.get("version")):
        raise ServeError(
            f"{pull_dir}: index v{idx_entry.get('version')} was built with classifier "
            f"v{built_with}, not v{cls_entry.get('version')}: not a matching pair"
        )
    model_dir, index_dir, embedder_dir = _pull_dirs(pull_dir, manifest)
    own_fingerprint = _pull_fingerprint(pull_dir, manifest)  # also refuses a dir without a manifest
    names = register or RegisterConfig()
    return load_bundle_from_dirs(
        model_dir,
        index_dir,
        images_dir,
        embedder_dir=embedder_dir,
        jit=jit,
        source=source,
        alias=alias or manifest.get("alias"),
        classifier=_manifest_entry(manifest, "classifier", names.classifier_name),
        index=_manifest_entry(manifest, "index", names.index_name),
        fingerprint=fingerprint or own_fingerprint,
        cleanup_dir=cleanup_dir,
    )


# --------------------------------------------------------------------------- the MLflow registry
def registry_fingerprint(register: RegisterConfig, tracking: TrackingConfig, alias: str) -> str | None:
    """``name:version|name:version`` of the alias's pair in the registry, or None if it is not set;
    an unpaired alias raises ``RegistryError`` (``registry.aliases.resolve_pair``)."""
    from fashionops.registry.aliases import AliasNotSet, reader_client, resolve_pair
    from fashionops.registry.transaction import repair_stale_lock

    client = reader_client(tracking)
    repair_stale_lock(client, register)  # a register killed mid-move: its aliases back first
    try:
        cv, iv = resolve_pair(client, register, alias)
    except AliasNotSet:
        return None
    return f"registry:{register.classifier_name}:{cv}|{register.index_name}:{iv}"


def load_bundle_from_registry(
    register: RegisterConfig, tracking: TrackingConfig, alias: str, images_dir: str | Path, *, jit: bool = False
) -> ModelBundle:
    """Download both models of ``alias`` (via ``registry.pull``) and load them."""
    from fashionops.registry.pull import pull

    before = registry_fingerprint(register, tracking, alias)
    if before is None:
        raise ServeError(
            f"registry: no @{alias} for {register.classifier_name} and {register.index_name} "
            "(run `fashionops register`, or set serve.model_dir / serve.source=local)"
        )
    root = new_download_dir()  # records this process as its owner (swept once it is gone)
    dest = root / "pull"
    try:
        pull(register, tracking, alias=alias, dest=str(dest))
        # The poll compares registry fingerprints; a promotion during the pull shows up next poll.
        return load_bundle_from_pull(
            dest, images_dir, register, source="registry", jit=jit, alias=alias, fingerprint=before, cleanup_dir=root
        )
    except BaseException:
        remove_download_dir(root)
        raise
