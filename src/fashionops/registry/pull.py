"""Deploy: download both models of an alias, as a checked pair, with a manifest of every file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fashionops.atomic import staged_dir
from fashionops.config import RegisterConfig, TrackingConfig
from fashionops.registry.aliases import (
    CLASSIFIER_TAG,
    METRIC_TAG,
    RegistryError,
    alias_version,
    model_version,
    now,
    registry_client,
)
from fashionops.tracking import tracking_uri

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pull(cfg: RegisterConfig, tracking: TrackingConfig, alias: str, dest: str | Path) -> dict[str, Any]:
    """Download both models of ``alias`` into ``dest/classifier`` and ``dest/visual_search``
    with ``dest/manifest.json`` (versions, run ids, metrics, sha256 of every file).

    Both aliases are resolved to versions first and checked to be a pair, so a promotion
    during the download cannot mix two pairs. ``dest`` must be absent, empty, or an earlier pull
    (replaced). Returns the manifest.
    """
    import mlflow

    client = registry_client(tracking)
    entries: dict[str, Any] = {}
    for role, name in (("classifier", cfg.classifier_name), ("index", cfg.index_name)):
        version = alias_version(client, name, alias)
        if version is None:
            raise RegistryError(f"no @{alias} on {name} in {tracking_uri(tracking)}")
        mv = model_version(client, name, version)
        entries[role] = {
            "name": name,
            "version": str(mv.version),
            "run_id": mv.run_id,
            "source": mv.source,
            "metrics": {k[len(METRIC_TAG) :]: float(v) for k, v in mv.tags.items() if k.startswith(METRIC_TAG)},
            "tags": {k: v for k, v in mv.tags.items() if not k.startswith(METRIC_TAG)},
        }
    built_with = entries["index"]["tags"].get(CLASSIFIER_TAG)
    if built_with != entries["classifier"]["version"]:
        raise RegistryError(
            f"@{alias} is not a pair: {cfg.index_name} v{entries['index']['version']} was built "
            f"with classifier v{built_with}, not v{entries['classifier']['version']}"
        )
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
