"""Deploy: download both models of an alias, as a checked pair, with a manifest of every file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fashionops.atomic import staged_dir
from fashionops.config import RegisterConfig, TrackingConfig, did_you_mean
from fashionops.registry.aliases import (
    METRIC_TAG,
    AliasNotSet,
    RegistryError,
    model_version,
    now,
    registry_client,
    resolve_pair,
)
from fashionops.registry.transaction import repair_stale_lock
from fashionops.tracking import tracking_uri

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def current_umask() -> int:
    """The process's umask (read from /proc where there is one: setting it to read it is racy)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _aliases(client: Any, name: str) -> list[str]:
    """The aliases registered model ``name`` has (none when it does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return list(client.get_registered_model(name).aliases)
    except MlflowException:
        return []


def pull(cfg: RegisterConfig, tracking: TrackingConfig, alias: str, dest: str | Path) -> dict[str, Any]:
    """Download both models of ``alias`` into ``dest/classifier`` and ``dest/visual_search``
    with ``dest/manifest.json`` (versions, run ids, metrics, sha256 of every file).

    Both aliases are resolved to versions first and checked to be a pair
    (:func:`~fashionops.registry.aliases.resolve_pair`: an unpaired alias is refused), so a
    promotion during the download cannot mix two pairs. ``dest`` must be absent, empty, or an earlier pull
    (replaced); it gets the mode any new folder gets (``0777 & ~umask``). Returns the manifest.
    """
    import mlflow

    client = registry_client(tracking)  # also points mlflow.artifacts at the store
    repair_stale_lock(client, cfg)  # a register killed mid-move: its aliases back first
    try:
        versions = resolve_pair(client, cfg, alias)
    except AliasNotSet:
        raise AliasNotSet(
            f"no @{alias} on {cfg.classifier_name} and {cfg.index_name} in {tracking_uri(tracking)}"
            + did_you_mean(alias, _aliases(client, cfg.classifier_name))
        ) from None
    entries: dict[str, Any] = {}
    for role, name, version in zip(("classifier", "index"), (cfg.classifier_name, cfg.index_name), versions):
        mv = model_version(client, name, version)
        entries[role] = {
            "name": name,
            "version": str(mv.version),
            "run_id": mv.run_id,
            "source": mv.source,
            "metrics": {k[len(METRIC_TAG) :]: float(v) for k, v in mv.tags.items() if k.startswith(METRIC_TAG)},
            "tags": {k: v for k, v in mv.tags.items() if not k.startswith(METRIC_TAG)},
        }
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
        manifest = {
            "alias": alias,
            "tracking_uri": tracking_uri(tracking),
            "pulled_at": now(),
            **entries,
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        # the staging folder is a mkdtemp (0700): give the pull the mode any new folder gets
        staging.chmod(0o777 & ~current_umask())
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
