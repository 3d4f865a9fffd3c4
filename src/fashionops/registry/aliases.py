"""Registry aliases: the classifier and the visual-search index promoted as a pair.

Two registered models: ``register.classifier_name`` (``fashion-classifier``) and
``register.index_name`` (``fashion-visual-search``). Aliases ``champion``, ``previous`` and
``challenger`` exist on both and always point at a **pair**: a visual-search version is built with
one classifier version (tag ``classifier_version``) and the classifier version names its index
(tag ``paired_index_version``). Every alias change runs in a
:class:`~fashionops.registry.transaction.RegistryTransaction` (a registry lock and a journal), so
a killed process or a concurrent writer never leaves an unpaired alias behind. Every loader
resolves an alias with :func:`resolve_pair`, which reads the journal's snapshot while a move is
under way and refuses an unpaired alias. :func:`promote` and :func:`rollback` are a reviewer's
decisions (``promotion_reason`` / ``rollback_reason`` tags); every move is also an event of the alias
history (:mod:`fashionops.registry.history`).
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
import time
from collections.abc import Callable
from typing import Any

from fashionops.config import RegisterConfig, TrackingConfig
from fashionops.errors import FashionOpsError, unreachable_server
from fashionops.tracking import configure, limit_http_retries, tracking_uri

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
ALIASES = (CHAMPION, PREVIOUS, CHALLENGER)
METRIC_TAG = "metric."  # + a metrics.json name: metric.test/macro_f1
FINGERPRINT_TAG = "split_fingerprint"
PAIR_TAG = "paired_index_version"  # on a classifier version
CLASSIFIER_TAG = "classifier_version"  # on an index version

StepHook = Callable[[str], None] | None
Moves = list[tuple[str, str, str | None]]


class RegistryError(FashionOpsError):
    """A registry operation could not be done; aliases are as they were before it."""


class AliasNotSet(RegistryError):
    """Neither model has the alias."""


# --------------------------------------------------------------------------- metric tags
def canonical_metric_name(name: str) -> str:
    """A test metric named as before issue #19 (``test_macro_f1``) -> today's ``test/macro_f1``;
    any other name unchanged (``register.selection_metric`` and old metrics files keep working)."""
    return "test/" + name[len("test_") :] if name.startswith("test_") else name


def legacy_metric_name(name: str) -> str:
    """The name versions registered before issue #19 carry: ``test/macro_f1`` -> ``test_macro_f1``."""
    return name.replace("/", "_")


def version_metric(mv: Any, name: str) -> float | None:
    """The version's ``metric.<name>`` tag, else its legacy tag (``metric.test_macro_f1``: a champion
    registered before the names had ``/``); None when it has neither."""
    for key in (name, legacy_metric_name(name)):
        value = mv.tags.get(METRIC_TAG + key)
        if value is not None:
            return float(value)
    return None


# --------------------------------------------------------------------------- small helpers
def registry_client(tracking: TrackingConfig) -> Any:
    """An ``MlflowClient`` on the configured store (tracking and registry alike); creates the
    experiment if needed (writers)."""
    configure(tracking)
    return reader_client(tracking)


def reader_client(tracking: TrackingConfig) -> Any:
    """An ``MlflowClient`` on the configured store that writes nothing (loaders)."""
    from mlflow import MlflowClient

    limit_http_retries()  # a stopped server fails a loader in seconds, not minutes
    uri = tracking_uri(tracking)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def now() -> str:
    """UTC now, ISO 8601 to the second (the ``*_at`` tags)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def user() -> str:
    """The OS user running this process (the ``*_by`` tags use :func:`fashionops.registry.history.actor`,
    which names the Prefect flow run instead when there is one)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return os.environ.get("USER", "unknown")


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """Version an alias points at, or None when the alias (or the model) does not exist.
    A tracking server that does not answer raises (it says nothing about the alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if unreachable_server(exc) is not None:
            raise
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


# --------------------------------------------------------------------------- pairs
def pair_problem(
    client: Any,
    cfg: RegisterConfig,
    cls_version: str | None,
    idx_version: str | None,
    old_tags: dict[tuple[str, str, str], str | None] | None = None,
) -> str | None:
    """Why ``(cls_version, idx_version)`` is not a pair, or None when it is. ``old_tags``
    (``(model, version, key) -> value``) overrides tags that an open transaction is changing."""
    cname, iname = cfg.classifier_name, cfg.index_name
    if cls_version is None or idx_version is None:
        has, lacks = (iname, cname) if cls_version is None else (cname, iname)
        return f"{has} has v{idx_version or cls_version} but {lacks} has none"
    old_tags = old_tags or {}

    def tag(name: str, version: str, key: str) -> str | None:
        if (name, version, key) in old_tags:
            return old_tags[(name, version, key)]
        value = model_version(client, name, version).tags.get(key)
        return None if value is None else str(value)

    built_with = tag(iname, idx_version, CLASSIFIER_TAG)
    if built_with != cls_version:
        return f"{iname} v{idx_version} was built with classifier v{built_with}, not v{cls_version}"
    paired = tag(cname, cls_version, PAIR_TAG)
    if paired != idx_version:
        return f"{cname} v{cls_version} is paired with {iname} v{paired}, not v{idx_version}"
    return None


def resolve_pair(client: Any, cfg: RegisterConfig, alias: str, attempts: int = 3) -> tuple[str, str]:
    """``(classifier version, index version)`` of ``alias``, checked to be a pair; what every loader
    uses. While a transaction is moving aliases, its journal's snapshot is the answer (the state
    it restores if it dies). Raises :class:`AliasNotSet` when neither model has the alias and
    :class:`RegistryError` when the two versions are not a pair. Writes nothing."""
    from fashionops.registry.transaction import open_journal

    cname, iname = cfg.classifier_name, cfg.index_name
    problem = ""
    for attempt in range(attempts):
        journal = open_journal(client, cfg)
        snapshot = journal.snapshot() if journal is not None else {}
        old_tags: dict[tuple[str, str, str], str | None] = {}
        if f"{cname}@{alias}" in snapshot:
            cv, iv = snapshot[f"{cname}@{alias}"], snapshot.get(f"{iname}@{alias}")
            old_tags = {(str(m), str(v), str(k)): o for m, v, k, o in journal.old_tags()} if journal else {}
        else:
            cv, iv = alias_version(client, cname, alias), alias_version(client, iname, alias)
        if cv is None and iv is None:
            raise AliasNotSet(f"no @{alias} on {cname} and {iname}")
        problem = pair_problem(client, cfg, cv, iv, old_tags) or ""
        if not problem:
            return str(cv), str(iv)
        # A transaction may have started or ended between our reads: look again.
        time.sleep(0.2 * (attempt + 1))
    raise RegistryError(f"@{alias} is not a pair: {problem} (fix with `fashionops rollback` or `fashionops promote`)")


def swap_moves(cfg: RegisterConfig, client: Any, cls_version: str, idx_version: str) -> Moves:
    """Moves that make ``(cls_version, idx_version)`` champion; the old champion becomes ``previous``
    when it is a pair (otherwise ``previous`` keeps the last good pair)."""
    cname, iname = cfg.classifier_name, cfg.index_name
    old_c, old_i = alias_version(client, cname, CHAMPION), alias_version(client, iname, CHAMPION)
    moves: Moves = []
    if (
        old_c is not None
        and old_i is not None
        and (old_c, old_i) != (cls_version, idx_version)
        and pair_problem(client, cfg, old_c, old_i) is None
    ):
        moves += [(cname, PREVIOUS, old_c), (iname, PREVIOUS, old_i)]
    moves += [(cname, CHAMPION, cls_version), (iname, CHAMPION, idx_version)]
    # A challenger that just won is no longer a challenger.
    if alias_version(client, cname, CHALLENGER) == cls_version:
        moves += [(cname, CHALLENGER, None), (iname, CHALLENGER, None)]
    return moves


def alias_state(cfg: RegisterConfig, tracking: TrackingConfig) -> dict[str, dict[str, str | None]]:
    """``{alias: {"classifier": version, "index": version}}`` for champion, previous, challenger
    as the registry holds them now (not checked; loaders use :func:`resolve_pair`)."""
    client = reader_client(tracking)
    return {
        alias: {
            "classifier": alias_version(client, cfg.classifier_name, alias),
            "index": alias_version(client, cfg.index_name, alias),
        }
        for alias in ALIASES
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
            "(its register did not finish; register an index for it first: register_index_for)"
        )
    return str(max(int(h.version) for h in hits))


def _stamp(cfg: RegisterConfig, cv: str, iv: str, stamp: dict[str, str]) -> list[tuple[str, str, str, str]]:
    return [
        (name, v, key, value)
        for name, v in ((cfg.classifier_name, cv), (cfg.index_name, iv))
        for key, value in stamp.items()
    ]


def promote(
    cfg: RegisterConfig, tracking: TrackingConfig, version: int | str, reason: str, on_step: StepHook = None
) -> dict[str, Any]:
    """A reviewer's decision: make classifier ``version`` and its paired index the champion pair.

    The old champion pair becomes ``previous``; ``reason`` is stored as ``promotion_reason``.
    """
    from fashionops.registry.history import actor, compare_versions
    from fashionops.registry.transaction import RegistryTransaction

    client = registry_client(tracking)
    cv = str(model_version(client, cfg.classifier_name, version).version)
    iv = paired_index_version(cfg, tracking, cv)
    built_with = model_version(client, cfg.index_name, iv).tags.get(CLASSIFIER_TAG)
    if built_with != cv:
        raise RegistryError(f"{cfg.index_name} v{iv} was built with classifier v{built_with}, not v{cv}")
    with RegistryTransaction(client, cfg, "promote", on_step) as txn:
        before = alias_state(cfg, tracking)
        if before[CHAMPION] == {"classifier": cv, "index": iv}:
            return {"decision": "unchanged", "reason": f"v{cv} is already the champion", "aliases": before}
        tags = _stamp(cfg, cv, iv, {"promotion_reason": reason, "promoted_by": actor(), "promoted_at": now()})
        # A classifier whose register was killed before tagging its index gets the tag now.
        tags.append((cfg.classifier_name, cv, PAIR_TAG, iv))
        comparison = compare_versions(client, cfg, cv, before[CHAMPION]["classifier"])
        event = {"action": "promote", "decision": "promoted", "reason": reason, "comparison": comparison}
        txn.apply(swap_moves(cfg, client, cv, iv), tags, event)
    return {
        "decision": "promoted",
        "reason": reason,
        "classifier_version": cv,
        "index_version": iv,
        "before": before,
        "aliases": alias_state(cfg, tracking),
    }


def rollback(cfg: RegisterConfig, tracking: TrackingConfig, reason: str, on_step: StepHook = None) -> dict[str, Any]:
    """Put the ``previous`` pair back as ``champion`` (both models); the demoted pair becomes
    ``previous`` so a rollback can itself be undone. ``reason`` is stored as ``rollback_reason``."""
    from fashionops.registry.history import actor, compare_versions
    from fashionops.registry.transaction import RegistryTransaction

    client = registry_client(tracking)
    with RegistryTransaction(client, cfg, "rollback", on_step) as txn:
        before = alias_state(cfg, tracking)
        pc, pi = before[PREVIOUS]["classifier"], before[PREVIOUS]["index"]
        if pc is None or pi is None:
            raise RegistryError(
                f"no @{PREVIOUS} on {cfg.classifier_name} and {cfg.index_name}: nothing to roll back to"
            )
        problem = pair_problem(client, cfg, pc, pi)
        if problem:
            raise RegistryError(f"@{PREVIOUS} is not a pair ({problem}); use `fashionops promote` instead")
        cc, ci = before[CHAMPION]["classifier"], before[CHAMPION]["index"]
        moves: Moves = []
        if cc is not None and ci is not None and pair_problem(client, cfg, cc, ci) is None:
            moves += [(cfg.classifier_name, PREVIOUS, cc), (cfg.index_name, PREVIOUS, ci)]
        else:
            moves += [(cfg.classifier_name, PREVIOUS, None), (cfg.index_name, PREVIOUS, None)]
        moves += [(cfg.classifier_name, CHAMPION, pc), (cfg.index_name, CHAMPION, pi)]
        stamp = {"rollback_reason": reason, "rolled_back_by": actor(), "rolled_back_at": now()}
        comparison = compare_versions(client, cfg, pc, cc)
        event = {"action": "rollback", "decision": "rolled_back", "reason": reason, "comparison": comparison}
        txn.apply(moves, _stamp(cfg, pc, pi, stamp), event)
    return {"decision": "rolled_back", "reason": reason, "before": before, "aliases": alias_state(cfg, tracking)}
