"""``register`` stage: register the classifier and its index from this pipeline run and promote the
pair if it beats the champion (see :mod:`fashionops.registry.aliases` for the pair rules).

Both models are custom pyfuncs (:mod:`fashionops.registry.pyfunc`). Model-version tags:
``split_fingerprint`` (hash of the test split's ids and labels), one ``metric.<name>`` per metric of
the evaluate stage's ``metrics.json`` (``metric.test/macro_f1``; versions registered before these
names had ``/`` carry ``metric.test_macro_f1``, read as the same metric), ``classifier_version`` /
``paired_index_version``.

:func:`run_register` takes the ``register``, ``paths`` and ``tracking`` sections: it reads the
model, the index, the prepared test split, the evaluate/index/validation reports and the pipeline
run (``paths.run_file``), and writes ``<paths.reports_dir>/register/result.json``.
:func:`register_index_for` registers an index rebuilt for an existing classifier (index refresh).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from fashionops.atomic import write_json
from fashionops.config import IndexConfig, PathsConfig, RegisterConfig, TrackingConfig, flatten
from fashionops.errors import FashionOpsError
from fashionops.registry.aliases import (
    ALIASES,
    CHALLENGER,
    CHAMPION,
    CLASSIFIER_TAG,
    FINGERPRINT_TAG,
    METRIC_TAG,
    PAIR_TAG,
    RegistryError,
    StepHook,
    alias_state,
    alias_version,
    call_hook,
    canonical_metric_name,
    model_version,
    now,
    registry_client,
    swap_moves,
    version_metric,
)
from fashionops.registry.model_card import model_card
from fashionops.registry.transaction import RegistryTransaction
from fashionops.run_lineage import candidate_settings
from fashionops.tracking import (
    configure,
    log_artifacts_if_present,
    log_metrics_file,
    log_params_flat,
    pipeline_run,
    run_tags,
    tracking_unreachable,
)


# --------------------------------------------------------------------------- metrics and split
def higher_is_better(metric: str) -> bool:
    """Losses, errors, times and sizes are minimised; everything else (F1, accuracy, recall, ...)
    maximised."""
    m = metric.lower()
    return not any(word in m for word in ("loss", "error", "latency", "mse", "mae", "_ms", "seconds", "_mb"))


def _is_better(candidate: float, champion: float, metric: str, min_delta: float) -> bool:
    if higher_is_better(metric):
        return candidate >= champion + min_delta and candidate > champion
    return candidate <= champion - min_delta and candidate < champion


def metrics_path(cfg: RegisterConfig, paths: PathsConfig) -> Path:
    """The evaluate metrics the register stage reads (``register.metrics_path`` overrides)."""
    return Path(cfg.metrics_path or paths.reports("evaluate") / "metrics.json")


def read_metrics(path: str | Path) -> dict[str, float]:
    """The numeric top-level values of a metrics file, legacy names (``test_macro_f1``) as today's
    (``test/macro_f1``)."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path} not found; run `fashionops evaluate` first")
    data = json.loads(path.read_text())
    return {
        canonical_metric_name(k): float(v)
        for k, v in data.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _test_split(paths: PathsConfig) -> Any:
    import pandas as pd

    index_path = Path(paths.prepared_dir) / "index.parquet"
    if not index_path.is_file():
        raise RegistryError(f"{index_path} not found; run `fashionops prepare` first")
    df = pd.read_parquet(index_path)
    test = df[df["split"] == "test"]
    if "is_copy" in test.columns:
        test = test[~test["is_copy"].astype(bool)]
    if test.empty:
        raise RegistryError(f"{index_path}: the test split is empty")
    return test.sort_values("id")


def split_fingerprint(paths: PathsConfig) -> str:
    """Hash of the test split (ids and labels): two metrics are comparable only when it matches."""
    test = _test_split(paths)
    text = "\n".join(f"{i}:{label}" for i, label in zip(test["id"].astype(int), test["label"].astype(str)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def score_model(paths: PathsConfig, model_uri: str, metric: str) -> float:
    """Score a registered classifier on this pipeline's test split (``data/prepared``) with the
    evaluate stage's own metric definitions, so the number compares with ``metrics.json``."""
    import math

    import mlflow
    import numpy as np

    from fashionops.evaluation.metrics import classification_metrics, headline_name, raw_metric_key
    from fashionops.registry.pyfunc import images_frame

    name = raw_metric_key(metric)
    test = _test_split(paths)
    images = np.load(Path(paths.prepared_dir) / "images.npy", mmap_mode="r")
    model = mlflow.pyfunc.load_model(model_uri)
    preds: list[str] = []
    rows = test["row"].to_numpy()
    for start in range(0, len(rows), 256):
        batch = np.asarray(images[rows[start : start + 256]])
        preds += [str(x) for x in model.predict(images_frame(batch))["label"]]
    truth = test["label"].astype(str).tolist()
    classes = sorted(set(truth) | set(preds))
    pos = {c: i for i, c in enumerate(classes)}
    # Without probabilities: the label-based metrics (accuracy, F1, precision, recall, ...).
    scores = classification_metrics(
        np.array([pos[t] for t in truth]), np.array([pos[p] for p in preds]), None, len(classes)
    )
    value = scores.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RegistryError(
            f"register.selection_metric {metric!r}: cannot re-score the champion on a new split "
            f"(re-scorable: {', '.join(headline_name(k) for k in sorted(scores))})"
        )
    return float(value)


# --------------------------------------------------------------------------- register stage
def _log_pipeline_artifacts(
    cfg: RegisterConfig, paths: PathsConfig, run_config: dict[str, Any], metrics: dict[str, float], fingerprint: str
) -> str:
    """Params, metrics, reports and the model card into the pipeline run; returns the card (the
    registered versions' description)."""
    import mlflow

    log_params_flat(run_config)
    if metrics:
        mlflow.log_metrics(metrics)
    # the other stages' headline metrics under their metrics.json names (train logs its own);
    # a name the run already has is only logged again with the same value
    for report in (paths.reports("validation"), paths.reports("prepare"), paths.reports("index")):
        log_metrics_file(report / "metrics.json")
    val = paths.reports("validation")
    log_artifacts_if_present([val / "summary.json", val / "data_docs"], "validation")
    ev = paths.reports("evaluate")
    log_artifacts_if_present(
        sorted(p for p in ev.glob("*") if p.suffix in {".png", ".csv", ".md", ".json"}), "evaluate"
    )
    prep, spec_path = Path(paths.prepared_dir), Path(paths.classifier_dir) / "model_spec.json"
    log_artifacts_if_present([prep / "labels.json", prep / "class_weights.json", spec_path], "model")
    tags = run_tags(paths)
    # The card describes the training that made the weights: its spec and the params its run logged.
    run = mlflow.active_run()
    run_params = mlflow.get_run(run.info.run_id).data.params if run is not None else {}
    card = model_card(
        cfg.classifier_name,
        json.loads(spec_path.read_text()),
        run_params,
        metrics,
        tags,
        {"split_fingerprint": fingerprint},
    )
    mlflow.log_text(card, "model_card.md")
    return card


def run_register(
    cfg: RegisterConfig,
    paths: PathsConfig,
    tracking: TrackingConfig,
    *,
    embedder_dir: str | None = None,
    run_config: dict[str, Any] | None = None,
    on_step: StepHook = None,
) -> dict[str, Any]:
    """Register the classifier and its index from this pipeline run; promote the pair if better.

    Steps: log both pyfuncs into the pipeline run, register them, tag the pair, compare with
    ``@champion`` on ``register.selection_metric`` (re-scoring the champion when its metric came
    from another test split), then move aliases: better by ``register.min_delta`` (and
    ``register.promote``) -> ``champion`` on both, the old pair -> ``previous``; otherwise the pair
    -> ``challenger``. The comparison and the moves run inside the registry lock
    (:mod:`fashionops.registry.transaction`), so a concurrent register decides against this one's
    result and a killed process leaves the aliases as they were. ``on_step(name)`` is called after
    each step (progress, fault injection; step names in that module's docstring); if anything
    raises after registration the aliases are left exactly as they were.
    ``embedder_dir`` is ``index.embedder_dir`` (the model logged with the index; None: the
    classifier). ``run_config``: the flattened configuration logged as the run's params (the CLI
    passes all of ``params.yaml``; default: what this function was given).
    Writes ``<paths.reports_dir>/register/result.json`` atomically and returns the same dict.
    """
    import mlflow

    from fashionops.registry.pyfunc import log_classifier, log_visual_search

    if run_config is None:
        run_config = flatten(
            {
                "paths": paths.model_dump(),
                "index": {"embedder_dir": embedder_dir},
                "register": cfg.model_dump(),
                "tracking": tracking.model_dump(),
            }
        )
    metric = canonical_metric_name(cfg.selection_metric)
    metrics = read_metrics(metrics_path(cfg, paths))
    if metric not in metrics:
        raise RegistryError(
            f"register.selection_metric {metric!r} not in {metrics_path(cfg, paths)} "
            f"(has: {', '.join(sorted(metrics)) or 'nothing'})"
        )
    fingerprint = split_fingerprint(paths)
    client = registry_client(tracking)

    # this execution's run: train's, or its own candidate run when it evaluated/indexed otherwise
    with pipeline_run(tracking, paths, stage="register", settings=candidate_settings(run_config)) as run:
        card = _log_pipeline_artifacts(cfg, paths, run_config, metrics, fingerprint)
        cls_info = log_classifier(paths.classifier_dir, "classifier")
        idx_info = log_visual_search(paths.index_dir, embedder_dir or paths.classifier_dir, "visual_search")
        run_id = run.info.run_id
    call_hook(on_step, "logged")

    common = {
        FINGERPRINT_TAG: fingerprint,
        "pipeline_run_id": run_id,
        "registered_at": now(),
        **{k: v for k, v in run_tags(paths).items()},
    }
    cls_mv = mlflow.register_model(
        cls_info.model_uri, cfg.classifier_name, tags={**common, **{METRIC_TAG + k: str(v) for k, v in metrics.items()}}
    )
    client.update_model_version(cfg.classifier_name, str(cls_mv.version), description=card)  # the registry page
    call_hook(on_step, "registered-classifier")  # a classifier version without its index (test hook)
    idx_mv = mlflow.register_model(
        idx_info.model_uri, cfg.index_name, tags={**common, CLASSIFIER_TAG: str(cls_mv.version)}
    )
    cv, iv = str(cls_mv.version), str(idx_mv.version)
    index_card = f"Visual search over the catalogue, paired with {cfg.classifier_name} v{cv}, whose card follows.\n\n"
    client.update_model_version(cfg.index_name, iv, description=index_card + card)
    try:
        client.set_model_version_tag(cfg.classifier_name, cv, PAIR_TAG, iv)
        call_hook(on_step, "registered")
        # Compare and move inside the registry lock: a concurrent register decides after this one.
        with RegistryTransaction(client, cfg, "register", on_step) as txn:
            candidate = metrics[metric]
            champ_c = alias_version(client, cfg.classifier_name, CHAMPION)
            champion_value: float | None = None
            rescored = False
            if champ_c is not None:
                champ_mv = model_version(client, cfg.classifier_name, champ_c)
                champion_value = version_metric(champ_mv, metric)
                if champion_value is None or champ_mv.tags.get(FINGERPRINT_TAG) != fingerprint:
                    champion_value = score_model(paths, f"models:/{cfg.classifier_name}/{champ_c}", metric)
                    rescored = True
                txn.step("compared")

            if champ_c is None:
                better, why = True, "no champion yet"
            else:
                better = _is_better(candidate, champion_value, metric, cfg.min_delta)  # type: ignore[arg-type]
                why = (
                    f"{metric} {candidate:.4f} vs champion v{champ_c} {champion_value:.4f} "
                    f"({'re-scored on this split' if rescored else 'same split'}; min_delta {cfg.min_delta})"
                )
            if better and cfg.promote:
                decision = "promoted"
                moves = swap_moves(cfg, client, cv, iv)
            else:
                decision = "challenger"
                if better:
                    why += "; register.promote is false"
                moves = [(cfg.classifier_name, CHALLENGER, cv), (cfg.index_name, CHALLENGER, iv)]
            comparison = None
            if champ_c is not None:
                comparison = {
                    "metric": metric,
                    "candidate_version": cv,
                    "candidate": candidate,
                    "champion_version": champ_c,
                    "champion": champion_value,
                    "min_delta": cfg.min_delta,
                    "rescored": rescored,
                    "better": bool(better),
                }
            event = {
                "action": "register",
                "decision": decision,
                "reason": why,
                "comparison": comparison,
                "pipeline_run_id": run_id,
            }
            txn.apply(moves, [(cfg.classifier_name, cv, "decision", decision)], event)
    except BaseException as exc:
        registered = f"{cfg.classifier_name} v{cv} / {cfg.index_name} v{iv}"
        unreachable = tracking_unreachable(
            exc,
            "fashionops register",
            f"{registered} registered without aliases; aliases unchanged (an alias move cut short is rolled "
            "back from the registry journal by the next register, promote or rollback)",
        )
        if unreachable is not None:  # tagging the versions would only fail (and wait) again
            raise unreachable from exc
        # The new versions stay registered (for inspection) but carry no alias.
        for name, version in ((cfg.classifier_name, cv), (cfg.index_name, iv)):
            try:
                client.set_model_version_tag(name, version, "register_error", str(exc)[:500] or type(exc).__name__)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        if isinstance(exc, Exception) and not isinstance(exc, FashionOpsError):
            raise RegistryError(f"register failed after registering {registered}; aliases unchanged: {exc}") from exc
        raise

    result = {
        "decision": decision,
        "reason": why,
        "selection_metric": metric,
        "candidate_metric": candidate,
        "champion_metric": champion_value,
        "champion_rescored": rescored,
        "previous_champion": champ_c,
        "min_delta": cfg.min_delta,
        "split_fingerprint": fingerprint,
        "run_id": run_id,
        "classifier": {"name": cfg.classifier_name, "version": cv, "uri": f"models:/{cfg.classifier_name}/{cv}"},
        "index": {"name": cfg.index_name, "version": iv, "uri": f"models:/{cfg.index_name}/{iv}"},
        "aliases": alias_state(cfg, tracking),
        "metrics": metrics,
    }
    write_json(paths.reports("register") / "result.json", result)
    return result


# --------------------------------------------------------------------------- index refresh
def register_index_for(
    cfg: RegisterConfig,
    index: IndexConfig,
    paths: PathsConfig,
    tracking: TrackingConfig,
    index_dir: str | Path,
    classifier_version: int | str,
) -> dict[str, Any]:
    """Register a rebuilt index as a new visual-search version paired with an existing classifier
    version. Each index alias (``champion``, ``previous``, ``challenger``) moves only when that
    classifier holds the same alias, and the classifier's ``paired_index_version`` follows, in one
    registry transaction, so every alias stays a pair.

    The embedder logged with the index is the classifier version's own model (downloaded from the
    registry) when ``index.embedder`` is ``classifier``, so queries are embedded in the space the
    index was built in only if ``index_dir`` was built with that same model. The index build's
    report (``<paths.reports_dir>/index/metrics.json``) is logged with it.
    """
    import mlflow

    from fashionops.registry.pyfunc import CLASSIFIER_ARTIFACT, artifact_dir, log_visual_search

    client = registry_client(tracking)
    cls_mv = model_version(client, cfg.classifier_name, classifier_version)
    cv = str(cls_mv.version)
    with tempfile.TemporaryDirectory() as tmp:
        if index.embedder == "classifier":
            local = mlflow.artifacts.download_artifacts(f"models:/{cfg.classifier_name}/{cv}", dst_path=tmp)
            embedder_dir = artifact_dir(local, CLASSIFIER_ARTIFACT)
        else:
            embedder_dir = Path(index.embedder_dir or paths.classifier_dir)
        experiment_id = configure(tracking)
        tags = {**run_tags(paths), "stage": "index-refresh", CLASSIFIER_TAG: cv}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"index-refresh-c{cv}", tags=tags) as run:
            log_metrics_file(paths.reports("index") / "metrics.json")
            info = log_visual_search(index_dir, embedder_dir, "visual_search")
            run_id = run.info.run_id
    idx_mv = mlflow.register_model(
        info.model_uri,
        cfg.index_name,
        tags={CLASSIFIER_TAG: cv, "pipeline_run_id": run_id, "registered_at": now(), "stage": "index-refresh"},
    )
    iv = str(idx_mv.version)
    with RegistryTransaction(client, cfg, "register-index") as txn:
        # Every alias of this classifier follows, with its pair tag, in one transaction.
        moved = [alias for alias in ALIASES if alias_version(client, cfg.classifier_name, alias) == cv]
        event = {
            "action": "refresh",
            "decision": "index rebuilt",
            "reason": f"{cfg.index_name} v{iv} rebuilt for {cfg.classifier_name} v{cv}",
            "pipeline_run_id": run_id,
        }
        txn.apply([(cfg.index_name, alias, iv) for alias in moved], [(cfg.classifier_name, cv, PAIR_TAG, iv)], event)
    return {
        "index": {"name": cfg.index_name, "version": iv, "run_id": run_id},
        "classifier": {"name": cfg.classifier_name, "version": cv},
        "moved_aliases": moved,
        "aliases": alias_state(cfg, tracking),
    }
