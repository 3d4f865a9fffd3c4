"""Registry aliases: the classifier and the visual-search index promoted as a pair.

Two registered models: ``register.classifier_name`` (``fashion-classifier``) and
``register.index_name`` (``fashion-visual-search``). Aliases ``champion``, ``previous`` and
``challenger`` exist on both and always point at a **pair**: a visual-search version is built with
one classifier version (tag ``classifier_version``) and the classifier version names its index
(tag ``paired_index_version``). Every alias change goes through :func:`move_aliases`, which
snapshots the aliases first and puts them back if any step fails, so the two ``champion``
aliases never point at an unpaired classifier and index. :func:`promote` and :func:`rollback` are
a reviewer's decisions (``promotion_reason`` / ``rollback_reason`` tags).
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
from collections.abc import Callable
from typing import Any

from fashionops.config import RegisterConfig, TrackingConfig
from fashionops.errors import FashionOpsError
from fashionops.tracking import configure, tracking_uri

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
METRIC_TAG = "metric."
FINGERPRINT_TAG = "split_fingerprint"
PAIR_TAG = "paired_index_version"  # on a classifier version
CLASSIFIER_TAG = "classifier_version"  # on an index version

StepHook = Callable[[str], None] | None


class RegistryError(FashionOpsError):
    """A registry operation could not be done; aliases are as they were before it."""


# --------------------------------------------------------------------------- small helpers
def registry_client(tracking: TrackingConfig) -> Any:
    """An ``MlflowClient`` on the configured store (tracking and registry alike)."""
    from mlflow import MlflowClient

    configure(tracking)
    return MlflowClient(tracking_uri=tracking_uri(tracking), registry_uri=tracking_uri(tracking))


def now() -> str:
    """UTC now, ISO 8601 to the second (the ``*_at`` tags)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def user() -> str:
    """Who made a manual decision (the ``*_by`` tags)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return os.environ.get("USER", "unknown")


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """Version an alias points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def model_version(client: Any, name: str, version: str | int) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"{name} version {version} does not exist") from None


def call_hook(hook: StepHook, name: str) -> None:
    if hook is not None:
        hook(name)


# --------------------------------------------------------------------------- alias transactions
def move_aliases(client: Any, moves: list[tuple[str, str, str | None]], hook: StepHook = None) -> None:
    """Apply ``(model, alias, version or None to delete)`` in order; on any failure restore every
    touched alias to its snapshot and re-raise. Callers order the moves so that the ``champion``
    pair changes last."""
    snapshot = {(name, alias): alias_version(client, name, alias) for name, alias, _ in moves}
    try:
        for name, alias, version in moves:
            if version is None:
                if snapshot[(name, alias)] is not None:
                    client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, str(version))
            call_hook(hook, f"alias:{name}@{alias}")
    except BaseException as exc:
        failures = []
        for (name, alias), old in snapshot.items():
            try:
                if old is None:
                    if alias_version(client, name, alias) is not None:
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


def swap_moves(
    cfg: RegisterConfig, client: Any, cls_version: str, idx_version: str
) -> list[tuple[str, str, str | None]]:
    """Moves that make ``(cls_version, idx_version)`` champion; the old pair becomes ``previous``."""
    cname, iname = cfg.classifier_name, cfg.index_name
    old_c, old_i = alias_version(client, cname, CHAMPION), alias_version(client, iname, CHAMPION)
    moves: list[tuple[str, str, str | None]] = []
    if old_c is not None and old_i is not None and (old_c, old_i) != (cls_version, idx_version):
        moves += [(cname, PREVIOUS, old_c), (iname, PREVIOUS, old_i)]
    moves += [(cname, CHAMPION, cls_version), (iname, CHAMPION, idx_version)]
    # A challenger that just won is no longer a challenger.
    if alias_version(client, cname, CHALLENGER) == cls_version:
        moves += [(cname, CHALLENGER, None), (iname, CHALLENGER, None)]
    return moves


def alias_state(cfg: RegisterConfig, tracking: TrackingConfig) -> dict[str, dict[str, str | None]]:
    """``{alias: {"classifier": version, "index": version}}`` for champion, previous, challenger."""
    client = registry_client(tracking)
    return {
        alias: {
            "classifier": alias_version(client, cfg.classifier_name, alias),
            "index": alias_version(client, cfg.index_name, alias),
        }
        for alias in (CHAMPION, PREVIOUS, CHALLENGER)
    }


# --------------------------------------------------------------------------- manual decisions
def paired_index_version(cfg: RegisterConfig, tracking: TrackingConfig, classifier_version: str | int) -> str:
    """The visual-search version built with this classifier version (latest pairing wins)."""
    client = registry_client(tracking)
    mv = model_version(client, cfg.classifier_name, classifier_version)
    if mv.tags.get(PAIR_TAG):
        return str(mv.tags[PAIR_TAG])
    hits = client.search_model_versions(f"name = '{cfg.index_name}' and tags.{CLASSIFIER_TAG} = '{mv.version}'")
    if not hits:
        raise RegistryError(
            f"{cfg.classifier_name} v{mv.version} has no paired {cfg.index_name} version "
            "(register an index for it first: register_index_for)"
        )
    return str(max(int(h.version) for h in hits))


def promote(cfg: RegisterConfig, tracking: TrackingConfig, version: int | str, reason: str) -> dict[str, Any]:
    """A reviewer's decision: make classifier ``version`` and its paired index the champion pair.

    The old champion pair becomes ``previous``; ``reason`` is stored as ``promotion_reason``.
    """
    client = registry_client(tracking)
    cv = str(model_version(client, cfg.classifier_name, version).version)
    iv = paired_index_version(cfg, tracking, cv)
    model_version(client, cfg.index_name, iv)
    before = alias_state(cfg, tracking)
    if before[CHAMPION] == {"classifier": cv, "index": iv}:
        return {"decision": "unchanged", "reason": f"v{cv} is already the champion", "aliases": before}
    move_aliases(client, swap_moves(cfg, client, cv, iv))
    stamp = {"promotion_reason": reason, "promoted_by": user(), "promoted_at": now()}
    for name, v in ((cfg.classifier_name, cv), (cfg.index_name, iv)):
        for key, value in stamp.items():
            client.set_model_version_tag(name, v, key, value)
    return {
        "decision": "promoted",
        "reason": reason,
        "classifier_version": cv,
        "index_version": iv,
        "before": before,
        "aliases": alias_state(cfg, tracking),
    }


def rollback(cfg: RegisterConfig, tracking: TrackingConfig, reason: str) -> dict[str, Any]:
    """Put the ``previous`` pair back as ``champion`` (both models); the demoted pair becomes
    ``previous`` so a rollback can itself be undone. ``reason`` is stored as ``rollback_reason``."""
    client = registry_client(tracking)
    before = alias_state(cfg, tracking)
    pc, pi = before[PREVIOUS]["classifier"], before[PREVIOUS]["index"]
    if pc is None or pi is None:
        raise RegistryError(f"no @{PREVIOUS} on {cfg.classifier_name} and {cfg.index_name}: nothing to roll back to")
    built_with = model_version(client, cfg.index_name, pi).tags.get(CLASSIFIER_TAG)
    if built_with != pc:
        raise RegistryError(
            f"@{PREVIOUS} is not a pair ({cfg.index_name} v{pi} was built with classifier "
            f"v{built_with}, not v{pc}); use `fashionops promote` instead"
        )
    cc, ci = before[CHAMPION]["classifier"], before[CHAMPION]["index"]
    moves: list[tuple[str, str, str | None]] = []
    if cc is not None and ci is not None:
        moves += [(cfg.classifier_name, PREVIOUS, cc), (cfg.index_name, PREVIOUS, ci)]
    else:
        moves += [(cfg.classifier_name, PREVIOUS, None), (cfg.index_name, PREVIOUS, None)]
    moves += [(cfg.classifier_name, CHAMPION, pc), (cfg.index_name, CHAMPION, pi)]
    move_aliases(client, moves)
    stamp = {"rollback_reason": reason, "rolled_back_by": user(), "rolled_back_at": now()}
    for name, v in ((cfg.classifier_name, pc), (cfg.index_name, pi)):
        for key, value in stamp.items():
            client.set_model_version_tag(name, v, key, value)
    return {"decision": "rolled_back", "reason": reason, "before": before, "aliases": alias_state(cfg, tracking)}
