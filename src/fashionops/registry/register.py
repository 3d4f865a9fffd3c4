"""MLflow Model Registry: the classifier and the visual-search index, registered and promoted as a pair.

Two registered models: ``register.classifier_name`` (``fashion-classifier``) and
``register.index_name`` (``fashion-visual-search``), both custom pyfuncs (see ``pyfunc_models``).
Aliases ``champion``, ``previous`` and ``challenger`` exist on both and always point at a
**pair**: a visual-search version is built with one classifier version (tag
``classifier_version``) and the classifier version names its index (tag
``paired_index_version``). Every alias change goes through :func:`_move_aliases`, which
snapshots the aliases first and puts them back if any step fails, so the two ``champion``
aliases never point at an unpaired classifier and index.

Model-version tags: ``split_fingerprint`` (hash of the test split's ids and labels), one
``metric.<name>`` per evaluate metric, ``classifier_version`` / ``paired_index_version``,
and ``promotion_reason`` / ``rollback_reason`` for manual decisions.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fashionops import tracking
from fashionops.atomic import staged_dir, write_json
from fashionops.config import Params
from fashionops.errors import FashionOpsError

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
METRIC_TAG = "metric."
FINGERPRINT_TAG = "split_fingerprint"
PAIR_TAG = "paired_index_version"  # on a classifier version
CLASSIFIER_TAG = "classifier_version"  # on an index version
MANIFEST = "manifest.json"

StepHook = Callable[[str], None] | None


class RegistryError(FashionOpsError):
    """A registry operation could not be done; aliases are as they were before it."""


# --------------------------------------------------------------------------- small helpers
def _client(params: Params) -> Any:
    from mlflow import MlflowClient

    tracking.configure(params)
    return MlflowClient(tracking_uri=tracking.tracking_uri(params), registry_uri=tracking.tracking_uri(params))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return os.environ.get("USER", "unknown")


def _alias_version(client: Any, name: str, alias: str) -> str | None:
    """Version an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _version(client: Any, name: str, version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"{name} version {version} does not exist") from None


def _step(hook: StepHook, name: str) -> None:
    if hook is not None:
        hook(name)



def higher_is_better(metric: str) -> bool:
    """Losses and errors are minimised; everything else (F1, accuracy, recall, ...) maximised."""
    m = metric.lower()
    return not any(word in m for word in ("loss", "error", "latency", "mse", "mae"))


def _is_better(candidate: float, champion: float, metric: str, min_delta: float) -> bool:
    if higher_is_better(metric):
        return candidate >= champion + min_delta and candidate > champion
    return candidate <= champion - min_delta and candidate < champion


# --------------------------------------------------------------------------- alias transactions
def _move_aliases(client: Any, moves: list[tuple[str, str, str | None]], hook: StepHook = None) -> None:
    """Apply ``(model, alias, version or None to delete)`` in order; on any failure restore every
    touched alias to its snapshot and re-raise. Callers order the moves so that the ``champion``
    pair changes last."""
    snapshot = {(name, alias): _alias_version(client, name, alias) for name, alias, _ in moves}
    try:
        for name, alias, version in moves:
            if version is None:
                if snapshot[(name, alias)] is not None:
                    client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, str(version))
            _step(hook, f"alias:{name}@{alias}")
    except BaseException as exc:
        failures = []
        for (name, alias), old in snapshot.items():
            try:
                if old is None:
                    if _alias_version(client, name, alias) is not None:
                        client.delete_registered_model_alias(name, alias)
                else:
                    client.set_registered_model_alias(name, alias, old)
            except Exception as restore_exc:  # noqa: BLE001 - keep restoring the others
                failures.append(f"{name}@{alias}: {restore_exc}")
        if failures:
            raise RegistryError(
                f"alias update failed ({exc}) and restoring failed for {', '.join(failures)}; "
                "fix those aliases by hand (fashionops promote/rollback)"
            ) from exc
        raise


def _swap_moves(params: Params, client: Any, cls_version: str, idx_version: str) -> list[tuple[str, str, str | None]]:
    """Moves that make ``(cls_version, idx_version)`` champion; the old pair becomes ``previous``."""
    cname, iname = params.register.classifier_name, params.register.index_name
    old_c, old_i = _alias_version(client, cname, CHAMPION), _alias_version(client, iname, CHAMPION)
    moves: list[tuple[str, str, str | None]] = []
    if old_c is not None and old_i is not None and (old_c, old_i) != (cls_version, idx_version):
        moves += [(cname, PREVIOUS, old_c), (iname, PREVIOUS, old_i)]
    moves += [(cname, CHAMPION, cls_version), (iname, CHAMPION, idx_version)]
    # A challenger that just won is no longer a challenger.
    if _alias_version(client, cname, CHALLENGER) == cls_version:
        moves += [(cname, CHALLENGER, None), (iname, CHALLENGER, None)]
    return moves


def alias_state(params: Params) -> dict[str, dict[str, str | None]]:
    """``{alias: {"classifier": version, "index": version}}`` for champion, previous, challenger."""
    client = _client(params)
    reg = params.register
    return {
        alias: {"classifier": _alias_version(client, reg.classifier_name, alias),
                "index": _alias_version(client, reg.index_name, alias)}
        for alias in (CHAMPION, PREVIOUS, CHALLENGER)
    }


# --------------------------------------------------------------------------- metrics and split
def metrics_path(params: Params) -> Path:
    """The evaluate metrics the register stage reads (``register.metrics_path`` overrides)."""
    return Path(params.register.metrics_path or Path(params.evaluate.out_dir) / "metrics.json")


def read_metrics(path: str | Path) -> dict[str, float]:
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path} not found; run `fashionops evaluate` first")
    data = json.loads(path.read_text())
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _test_split(params: Params) -> Any:
    import pandas as pd

    index_path = Path(params.prepare.out_dir) / "index.parquet"
    if not index_path.is_file():
        raise RegistryError(f"{index_path} not found; run `fashionops prepare` first")
    df = pd.read_parquet(index_path)
    test = df[df["split"] == "test"]
    if "is_copy" in test.columns:
        test = test[~test["is_copy"].astype(bool)]
    if test.empty:
        raise RegistryError(f"{index_path}: the test split is empty")
    return test.sort_values("id")


def split_fingerprint(params: Params) -> str:
    """Hash of the test split (ids and labels): two metrics are comparable only when it matches."""
    test = _test_split(params)
    text = "\n".join(f"{i}:{label}" for i, label in zip(test["id"].astype(int), test["label"].astype(str)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def score_model(params: Params, model_uri: str, metric: str) -> float:
    """Score a registered classifier on this pipeline's test split (``data/prepared``) with the
    evaluate stage's own metric definitions, so the number compares with ``metrics.json``."""
    import math

    import mlflow
    import numpy as np

    from fashionops.evaluation.stage import classification_metrics
    from fashionops.registry.pyfunc import images_frame

    name = metric[len("test_"):] if metric.startswith("test_") else metric
    test = _test_split(params)
    images = np.load(Path(params.prepare.out_dir) / "images.npy", mmap_mode="r")
    model = mlflow.pyfunc.load_model(model_uri)
    preds: list[str] = []
    rows = test["row"].to_numpy()
    for start in range(0, len(rows), 256):
        batch = np.asarray(images[rows[start:start + 256]])
        preds += [str(x) for x in model.predict(images_frame(batch))["label"]]
    truth = test["label"].astype(str).tolist()
    classes = sorted(set(truth) | set(preds))
    pos = {c: i for i, c in enumerate(classes)}
    # Without probabilities: the label-based metrics (accuracy, F1, precision, recall, ...).
    scores = classification_metrics([pos[t] for t in truth], [pos[p] for p in preds], None, len(classes))
    value = scores.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RegistryError(
            f"register.selection_metric {metric!r}: cannot re-score the champion on a new split "
            f"(re-scorable: {', '.join('test_' + k for k in sorted(scores))})"
        )
    return float(value)


def _version_metric(mv: Any, metric: str) -> float | None:
    value = mv.tags.get(METRIC_TAG + metric)
    return float(value) if value is not None else None


# --------------------------------------------------------------------------- register stage
def _log_pipeline_artifacts(params: Params, metrics: dict[str, float], fingerprint: str) -> None:
    """Params, metrics, reports and the model card into the (reopened) pipeline run."""
    import mlflow

    tracking.log_params_flat(params)
    if metrics:
        mlflow.log_metrics(metrics)
    tracking.log_metrics_file(Path(params.index.report_dir) / "metrics.json")
    val = Path(params.validate.report_dir)
    tracking.log_artifacts_if_present([val / "summary.json", val / "data_docs"], "validation")
    ev = Path(params.evaluate.out_dir)
    tracking.log_artifacts_if_present(
        sorted(p for p in ev.glob("*") if p.suffix in {".png", ".csv", ".md", ".json"}), "evaluate")
    prep = Path(params.prepare.out_dir)
    tracking.log_artifacts_if_present([prep / "labels.json", prep / "class_weights.json",
                                       Path(params.train.out_dir) / "model_spec.json"], "model")
    tags = tracking.run_tags(params)
    card = tracking.model_card(params, metrics, tags, {"split_fingerprint": fingerprint})
    mlflow.log_text(card, "model_card.md")


def run_register(params: Params, on_step: StepHook = None) -> dict[str, Any]:
    """Register the classifier and its index from this pipeline run; promote the pair if better.

    Steps: log both pyfuncs into the pipeline run, register them, tag the pair, compare with
    ``@champion`` on ``register.selection_metric`` (re-scoring the champion when its metric came
    from another test split), then move aliases: better by ``register.min_delta`` (and
    ``register.promote``) -> ``champion`` on both, the old pair -> ``previous``; otherwise the pair
    -> ``challenger``. ``on_step(name)`` is called after each step (progress, fault injection);
    if anything raises after registration the aliases are left exactly as they were.
    Writes ``register.out_path`` atomically and returns the same dict.
    """
    import mlflow

    from fashionops.registry.pyfunc import log_classifier, log_visual_search

    reg = params.register
    metric = reg.selection_metric
    metrics = read_metrics(metrics_path(params))
    if metric not in metrics:
        raise RegistryError(
            f"register.selection_metric {metric!r} not in {metrics_path(params)} "
            f"(has: {', '.join(sorted(metrics)) or 'nothing'})"
        )
    fingerprint = split_fingerprint(params)
    embedder_dir = params.index.embedder_dir or params.train.out_dir
    client = _client(params)

    with tracking.pipeline_run(params) as run:
        _log_pipeline_artifacts(params, metrics, fingerprint)
        cls_info = log_classifier(params.train.out_dir, "classifier")
        idx_info = log_visual_search(params.index.out_dir, embedder_dir, "visual_search")
        run_id = run.info.run_id
    _step(on_step, "logged")

    common = {FINGERPRINT_TAG: fingerprint, "pipeline_run_id": run_id, "registered_at": _now(),
              **{k: v for k, v in tracking.run_tags(params).items()}}
    cls_mv = mlflow.register_model(cls_info.model_uri, reg.classifier_name, tags={
        **common, **{METRIC_TAG + k: str(v) for k, v in metrics.items()}})
    idx_mv = mlflow.register_model(idx_info.model_uri, reg.index_name, tags={**common, CLASSIFIER_TAG: str(cls_mv.version)})
    cv, iv = str(cls_mv.version), str(idx_mv.version)
    try:
        client.set_model_version_tag(reg.classifier_name, cv, PAIR_TAG, iv)
        _step(on_step, "registered")

        candidate = metrics[metric]
        champ_c = _alias_version(client, reg.classifier_name, CHAMPION)
        champion_value: float | None = None
        rescored = False
        if champ_c is not None:
            champ_mv = _version(client, reg.classifier_name, champ_c)
            champion_value = _version_metric(champ_mv, metric)
            if champion_value is None or champ_mv.tags.get(FINGERPRINT_TAG) != fingerprint:
                champion_value = score_model(params, f"models:/{reg.classifier_name}/{champ_c}", metric)
                rescored = True
            _step(on_step, "compared")

        if champ_c is None:
            better, why = True, "no champion yet"
        else:
            better = _is_better(candidate, champion_value, metric, reg.min_delta)  # type: ignore[arg-type]
            why = (f"{metric} {candidate:.4f} vs champion v{champ_c} {champion_value:.4f} "
                   f"({'re-scored on this split' if rescored else 'same split'}; min_delta {reg.min_delta})")
        if better and reg.promote:
            decision = "promoted"
            moves = _swap_moves(params, client, cv, iv)
        else:
            decision = "challenger"
            if better:
                why += "; register.promote is false"
            moves = [(reg.classifier_name, CHALLENGER, cv), (reg.index_name, CHALLENGER, iv)]
        _move_aliases(client, moves, on_step)
        _step(on_step, "aliases")
    except BaseException as exc:
        # The new versions stay registered (for inspection) but carry no alias.
        for name, version in ((reg.classifier_name, cv), (reg.index_name, iv)):
            try:
                client.set_model_version_tag(name, version, "register_error", str(exc)[:500] or type(exc).__name__)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        if isinstance(exc, Exception) and not isinstance(exc, FashionOpsError):
            raise RegistryError(f"register failed after registering {reg.classifier_name} v{cv} / "
                                f"{reg.index_name} v{iv}; aliases unchanged: {exc}") from exc
        raise

    client.set_model_version_tag(reg.classifier_name, cv, "decision", decision)
    result = {
        "decision": decision,
        "reason": why,
        "selection_metric": metric,
        "candidate_metric": candidate,
        "champion_metric": champion_value,
        "champion_rescored": rescored,
        "previous_champion": champ_c,
        "min_delta": reg.min_delta,
        "split_fingerprint": fingerprint,
        "run_id": run_id,
        "classifier": {"name": reg.classifier_name, "version": cv, "uri": f"models:/{reg.classifier_name}/{cv}"},
        "index": {"name": reg.index_name, "version": iv, "uri": f"models:/{reg.index_name}/{iv}"},
        "aliases": alias_state(params),
        "metrics": metrics,
    }
    write_json(reg.out_path, result)
    return result


# --------------------------------------------------------------------------- manual decisions
def paired_index_version(params: Params, classifier_version: str | int) -> str:
    """The visual-search version built with this classifier version (latest pairing wins)."""
    client = _client(params)
    reg = params.register
    mv = _version(client, reg.classifier_name, classifier_version)
    if mv.tags.get(PAIR_TAG):
        return str(mv.tags[PAIR_TAG])
    hits = client.search_model_versions(f"name = '{reg.index_name}' and tags.{CLASSIFIER_TAG} = '{mv.version}'")
    if not hits:
        raise RegistryError(f"{reg.classifier_name} v{mv.version} has no paired {reg.index_name} version "
                            "(register an index for it first: register_index_for)")
    return str(max(int(h.version) for h in hits))


def promote(params: Params, version: int | str, reason: str) -> dict[str, Any]:
    """A reviewer's decision: make classifier ``version`` and its paired index the champion pair.

    The old champion pair becomes ``previous``; ``reason`` is stored as ``promotion_reason``.
    """
    client = _client(params)
    reg = params.register
    cv = str(_version(client, reg.classifier_name, version).version)
    iv = paired_index_version(params, cv)
    _version(client, reg.index_name, iv)
    before = alias_state(params)
    if before[CHAMPION] == {"classifier": cv, "index": iv}:
        return {"decision": "unchanged", "reason": f"v{cv} is already the champion", "aliases": before}
    _move_aliases(client, _swap_moves(params, client, cv, iv))
    stamp = {"promotion_reason": reason, "promoted_by": _user(), "promoted_at": _now()}
    for name, v in ((reg.classifier_name, cv), (reg.index_name, iv)):
        for key, value in stamp.items():
            client.set_model_version_tag(name, v, key, value)
    return {"decision": "promoted", "reason": reason, "classifier_version": cv, "index_version": iv,
            "before": before, "aliases": alias_state(params)}


def rollback(params: Params, reason: str) -> dict[str, Any]:
    """Put the ``previous`` pair back as ``champion`` (both models); the demoted pair becomes
    ``previous`` so a rollback can itself be undone. ``reason`` is stored as ``rollback_reason``."""
    client = _client(params)
    reg = params.register
    before = alias_state(params)
    pc, pi = before[PREVIOUS]["classifier"], before[PREVIOUS]["index"]
    if pc is None or pi is None:
        raise RegistryError(f"no @{PREVIOUS} on {reg.classifier_name} and {reg.index_name}: nothing to roll back to")
    built_with = _version(client, reg.index_name, pi).tags.get(CLASSIFIER_TAG)
    if built_with != pc:
        raise RegistryError(f"@{PREVIOUS} is not a pair ({reg.index_name} v{pi} was built with classifier "
                            f"v{built_with}, not v{pc}); use `fashionops promote` instead")
    cc, ci = before[CHAMPION]["classifier"], before[CHAMPION]["index"]
    moves: list[tuple[str, str, str | None]] = []
    if cc is not None and ci is not None:
        moves += [(reg.classifier_name, PREVIOUS, cc), (reg.index_name, PREVIOUS, ci)]
    else:
        moves += [(reg.classifier_name, PREVIOUS, None), (reg.index_name, PREVIOUS, None)]
    moves += [(reg.classifier_name, CHAMPION, pc), (reg.index_name, CHAMPION, pi)]
    _move_aliases(client, moves)
    stamp = {"rollback_reason": reason, "rolled_back_by": _user(), "rolled_back_at": _now()}
    for name, v in ((reg.classifier_name, pc), (reg.index_name, pi)):
        for key, value in stamp.items():
            client.set_model_version_tag(name, v, key, value)
    return {"decision": "rolled_back", "reason": reason, "before": before, "aliases": alias_state(params)}


# --------------------------------------------------------------------------- index refresh
def register_index_for(params: Params, index_dir: str | Path, classifier_version: int | str) -> dict[str, Any]:
    """Register a rebuilt index as a new visual-search version paired with an existing classifier
    version. Its ``champion`` (or ``challenger``) alias moves only when that classifier holds the
    same alias, so the pair stays consistent; the classifier's ``paired_index_version`` follows.

    The embedder logged with the index is the classifier version's own model (downloaded from the
    registry) when ``index.embedder`` is ``classifier``, so queries are embedded in the space the
    index was built in only if ``index_dir`` was built with that same model.
    """
    import mlflow

    from fashionops.registry.pyfunc import CLASSIFIER_ARTIFACT, artifact_dir, log_visual_search

    client = _client(params)
    reg = params.register
    cls_mv = _version(client, reg.classifier_name, classifier_version)
    cv = str(cls_mv.version)
    with tempfile.TemporaryDirectory() as tmp:
        if params.index.embedder == "classifier":
            local = mlflow.artifacts.download_artifacts(f"models:/{reg.classifier_name}/{cv}", dst_path=tmp)
            embedder_dir = artifact_dir(local, CLASSIFIER_ARTIFACT)
        else:
            embedder_dir = Path(params.index.embedder_dir or params.train.out_dir)
        experiment_id = tracking.configure(params)
        tags = {**tracking.run_tags(params), "stage": "index-refresh", CLASSIFIER_TAG: cv}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"index-refresh-c{cv}", tags=tags) as run:
            tracking.log_metrics_file(Path(params.index.report_dir) / "metrics.json")
            info = log_visual_search(index_dir, embedder_dir, "visual_search")
            run_id = run.info.run_id
    idx_mv = mlflow.register_model(info.model_uri, reg.index_name, tags={
        CLASSIFIER_TAG: cv, "pipeline_run_id": run_id, "registered_at": _now(), "stage": "index-refresh"})
    iv = str(idx_mv.version)
    moved = []
    for alias in (CHAMPION, CHALLENGER):
        if _alias_version(client, reg.classifier_name, alias) == cv:
            _move_aliases(client, [(reg.index_name, alias, iv)])
            moved.append(alias)
    client.set_model_version_tag(reg.classifier_name, cv, PAIR_TAG, iv)
    return {"index": {"name": reg.index_name, "version": iv, "run_id": run_id},
            "classifier": {"name": reg.classifier_name, "version": cv},
            "moved_aliases": moved, "aliases": alias_state(params)}


# --------------------------------------------------------------------------- deploy: pull
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pull(params: Params, alias: str, dest: str | Path) -> dict[str, Any]:
    """Download both models of ``alias`` into ``dest/classifier`` and ``dest/visual_search``
    with ``dest/manifest.json`` (versions, run ids, metrics, sha256 of every file).

    Both aliases are resolved to versions first and checked to be a pair, so a promotion
    during the download cannot mix two pairs. ``dest`` must be absent, empty, or an earlier pull
    (replaced). Returns the manifest.
    """
    import mlflow

    client = _client(params)
    reg = params.register
    entries: dict[str, Any] = {}
    for role, name in (("classifier", reg.classifier_name), ("index", reg.index_name)):
        version = _alias_version(client, name, alias)
        if version is None:
            raise RegistryError(f"no @{alias} on {name} in {tracking.tracking_uri(params)}")
        mv = _version(client, name, version)
        entries[role] = {
            "name": name, "version": str(mv.version), "run_id": mv.run_id, "source": mv.source,
            "metrics": {k[len(METRIC_TAG):]: float(v) for k, v in mv.tags.items() if k.startswith(METRIC_TAG)},
            "tags": {k: v for k, v in mv.tags.items() if not k.startswith(METRIC_TAG)},
        }
    built_with = entries["index"]["tags"].get(CLASSIFIER_TAG)
    if built_with != entries["classifier"]["version"]:
        raise RegistryError(f"@{alias} is not a pair: {reg.index_name} v{entries['index']['version']} was built "
                            f"with classifier v{built_with}, not v{entries['classifier']['version']}")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not (dest / MANIFEST).is_file():
        raise RegistryError(f"{dest} exists and is not empty (and not an earlier pull)")
    with staged_dir(dest) as staging:
        for role, sub in (("classifier", "classifier"), ("index", "visual_search")):
            e = entries[role]
            mlflow.artifacts.download_artifacts(f"models:/{e['name']}/{e['version']}", dst_path=str(staging / sub))
            e["dir"] = sub
            e["uri"] = f"models:/{e['name']}/{e['version']}"
        files = {p.relative_to(staging).as_posix(): _sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        manifest = {"alias": alias, "tracking_uri": tracking.tracking_uri(params), "pulled_at": _now(),
                    **entries, "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def verify_pull(dest: str | Path) -> list[str]:
    """Files of a pull directory whose content no longer matches the manifest (empty: intact)."""
    dest = Path(dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    bad = []
    for rel, digest in manifest["files"].items():
        p = dest / rel
        if not p.is_file() or _sha256(p) != digest:
            bad.append(rel)
    return bad
