"""Deploy smoke test (`make deploy-smoke`): load both ``@champion`` models by alias in a fresh
process that gets nothing but the tracking URI, and predict on a few real images.

The alias is resolved here first, checked to be a pair (``registry.aliases.resolve_pair``: an
unpaired alias is refused with a one-line error), and the child loads exactly those two versions.

The child process runs in an empty temporary directory with an environment of only
``MLFLOW_TRACKING_URI`` (plus PATH/HOME/locale), imports nothing from this repository itself and
relies on the models' logged code. Prints the predictions as JSON; exits non-zero on any failure.

    python scripts/deploy_smoke.py [--params params.yaml] [--alias champion] [--images a.jpg b.jpg] [--n 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "data" / "fashion-product-images-small" / "images"

# Runs in the fresh process: only mlflow/pandas from the environment, the models bring the rest.
CHILD = r"""
import json, sys
import mlflow, pandas as pd
cfg = json.loads(sys.argv[1])
files = cfg["images"]
frame = pd.DataFrame({"image": [open(f, "rb").read() for f in files]})  # the documented input schema
out = {}
roles = (("classifier", cfg["classifier"], {"top_k": 3}), ("visual_search", cfg["index"], {"top_k": 3}))
for role, name, params in roles:
    model = mlflow.pyfunc.load_model(f"models:/{name}/{cfg['versions'][name]}")
    pred = model.predict(frame, params=params)
    if len(pred) != len(files):
        raise SystemExit(f"{name}: {len(pred)} predictions for {len(files)} images")
    out[role] = [dict(file=f, **{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items()})
                 for f, row in zip(files, pred.to_dict("records"))]
print(json.dumps(out))
"""


def default_images(n: int) -> list[str]:
    """The first ``n`` real catalogue images (sorted by name, so runs are comparable)."""
    data = Path(os.environ.get("FASHION_DATA", SHARED_IMAGES.parent)) / "images"
    files = sorted(data.glob("*.jpg"))[:n]
    if not files:
        raise SystemExit(f"deploy-smoke: no images under {data}; pass --images")
    return [str(f) for f in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--alias", default="champion")
    ap.add_argument("--images", nargs="+", help="image files (default: a few from ../shared/data)")
    ap.add_argument("--n", type=int, default=3, help="how many default images")
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args(argv)

    sys.path.insert(0, str(REPO / "src"))
    from fashionops.config import load_params
    from fashionops.errors import FashionOpsError
    from fashionops.registry.aliases import reader_client, resolve_pair
    from fashionops.registry.transaction import repair_stale_lock
    from fashionops.tracking import tracking_uri

    params = load_params(a.params)
    uri = tracking_uri(params.tracking)  # MLFLOW_TRACKING_URI wins over params
    images = [str(Path(f).resolve()) for f in (a.images or default_images(a.n))]
    missing = [f for f in images if not Path(f).is_file()]
    if missing:
        print(f"deploy-smoke: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:  # the pair the alias names now (an open registry transaction's snapshot while one runs)
        client = reader_client(params.tracking)
        repair_stale_lock(client, params.register)  # a register killed mid-move: its aliases back first
        cls_version, idx_version = resolve_pair(client, params.register, a.alias)
    except FashionOpsError as exc:
        print(f"deploy-smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    cfg = {
        "images": images,
        "alias": a.alias,
        "classifier": params.register.classifier_name,
        "index": params.register.index_name,
        "versions": {params.register.classifier_name: cls_version, params.register.index_name: idx_version},
    }
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
    }
    with tempfile.TemporaryDirectory(prefix="deploy-smoke-") as cwd:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(cfg)],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=a.timeout,
            )
        except subprocess.TimeoutExpired:
            print(f"deploy-smoke: FAILED: no answer within {a.timeout:.0f}s", file=sys.stderr)
            return 1
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        print(f"deploy-smoke: FAILED loading/predicting @{a.alias} from {uri}:\n{tail}", file=sys.stderr)
        return 1
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"deploy-smoke: FAILED: unexpected output:\n{proc.stdout[-2000:]}", file=sys.stderr)
        return 1
    for cls, vs in zip(result["classifier"], result["visual_search"]):
        print(
            f"{Path(cls['file']).name}: {cls['label']} ({cls['probability']:.3f}); "
            f"similar: {', '.join(str(i) for i in vs['ids'])}"
        )
    print(json.dumps({"alias": a.alias, "tracking_uri": uri, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
