"""Serving benchmark: latency p50/p99 and throughput of /classify and /search on a real server.

The server runs in its own process (``fashionops serve`` on a free 127.0.0.1 port, models from
``--model-dir`` + ``--index-dir``, i.e. ``serve.source=local``); the load comes from this process:

1. sequential: one client, ``--requests`` uploads per endpoint (and search by item id) -> the
   per-request latency a single user sees;
2. concurrent: ``--clients`` threads (default 20), each with its own connection, for
   ``--duration`` seconds (default 30) alternating classify / search-by-upload / search-by-id ->
   throughput, latency under load and the error count (must be 0).

Models: ``models/classifier`` + ``models/index`` when they exist (a trained pipeline). Otherwise
``--build-proxy`` builds a stand-in pair under ``benchmarks/.work/serve``: the default architecture
(EfficientNet-Lite0 with its ImageNet weights, untrained head, ``train.*`` defaults) saved as a model
directory, and the real ``index`` stage run over ``--proxy-items`` catalogue images. Latency does not
depend on training, only on the architecture, input size and index size; the results say which
models were used.

    .venv/bin/python benchmarks/bench_serve.py --build-proxy

Results: ``benchmarks/results/serve.json`` (records the machine, CPU count and load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DEFAULT_DATA = Path(os.environ.get("FASHION_DATA", REPO.parent / "shared" / "data" / "fashion-product-images-small"))


PROXY_MARKER = "PROXY.txt"
PROXY_NOTE = "proxy: EfficientNet-Lite0 ImageNet weights, untrained head; real index stage"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_proxy(work: Path, catalogue: Path, n_items: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """A stand-in classifier + index (see module doc); returns (model_dir, index_dir, raw_dir)."""
    import pandas as pd

    from fashionops.config import load_params
    from fashionops.models.factory import build_model, model_spec, save_model
    from fashionops.search.stage import run_index

    raw = work / "raw"
    styles = pd.read_csv(catalogue / "styles.csv", on_bad_lines="skip")
    styles = styles[[(catalogue / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    rows = styles.sample(n=min(n_items, len(styles)), random_state=seed)
    (raw / "images").mkdir(parents=True, exist_ok=True)
    for i in rows["id"]:
        dst = raw / "images" / f"{i}.jpg"
        if not dst.exists():
            os.link(catalogue / "images" / f"{i}.jpg", dst) if _same_fs(catalogue, raw) else dst.write_bytes(
                (catalogue / "images" / f"{i}.jpg").read_bytes()
            )
    rows.to_csv(raw / "styles.csv", index=False)
    params = load_params(
        REPO / "params.yaml",
        [
            f"paths.raw_dir={raw}",
            f"paths.classifier_dir={work / 'classifier'}",
            f"paths.index_dir={work / 'index'}",
            f"paths.reports_dir={work / 'reports'}",
            f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"tracking.artifact_location={work / 'mlflow'}",
            "index.tune_queries=200",
        ],
    )
    classes = sorted(str(c) for c in rows["articleType"].value_counts().index[:20])
    spec = model_spec(params.train, classes, "articleType", (params.prepare.image_height, params.prepare.image_width))
    save_model(params.paths.classifier_dir, build_model(spec), spec)
    run_index(params.index, params.paths, params.tracking, label=params.prepare.label)
    (work / PROXY_MARKER).write_text(PROXY_NOTE + "\n")
    return Path(params.paths.classifier_dir), Path(params.paths.index_dir), raw


def _same_fs(a: Path, b: Path) -> bool:
    b.mkdir(parents=True, exist_ok=True)
    return os.stat(a).st_dev == os.stat(b).st_dev


def start_server(model_dir: Path, index_dir: Path, raw_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "fashionops.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--set",
        "serve.source=local",
        "--set",
        f"paths.classifier_dir={model_dir}",
        "--set",
        f"paths.index_dir={index_dir}",
        "--set",
        f"paths.raw_dir={raw_dir}",
        "--set",
        "index.embedder_dir=null",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("FASHIONOPS_API_TOKEN", None)
    log = log_path.open("w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> dict:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see its log")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout_s} s")


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


def summarize(lat: list[float], errors: int, seconds: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n": len(lat),
        "errors": errors,
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "mean_ms": float(np.mean(lat)) * 1000 if lat else None,
    }
    if seconds:
        out["throughput_rps"] = len(lat) / seconds
    return out


def do_request(client, url: str, kind: str, photo: tuple[str, bytes], item_id: int) -> bool:
    if kind == "classify":
        r = client.post(f"{url}/classify", files={"file": (photo[0], photo[1], "image/jpeg")})
    elif kind == "search":
        r = client.post(f"{url}/search", files={"file": (photo[0], photo[1], "image/jpeg")})
    else:
        r = client.post(f"{url}/search", json={"item_id": item_id})
    return r.status_code == 200 and ("label" in r.json() if kind == "classify" else bool(r.json()["results"]))


def sequential(url: str, photos: list, ids: list[int], n: int) -> dict[str, Any]:
    import httpx

    out = {}
    with httpx.Client(timeout=30) as client:
        for kind in ("classify", "search", "search_by_id"):
            for i in range(5):  # warm-up
                do_request(client, url, kind, photos[i % len(photos)], ids[i % len(ids)])
            lat, errors = [], 0
            for i in range(n):
                t0 = time.perf_counter()
                ok = do_request(client, url, kind, photos[i % len(photos)], ids[i % len(ids)])
                lat.append(time.perf_counter() - t0)
                errors += not ok
            out[kind] = summarize(lat, errors)
    return out


def concurrent(url: str, photos: list, ids: list[int], clients: int, duration: float) -> dict[str, Any]:
    import httpx

    kinds = ("classify", "search", "search_by_id")
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    errors: dict[str, int] = {k: 0 for k in kinds}
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(w: int) -> None:
        rnd = random.Random(w)
        with httpx.Client(timeout=60) as client:
            start.wait()
            i = w
            while time.perf_counter() < stop_at[0]:
                kind = kinds[i % 3]
                t0 = time.perf_counter()
                try:
                    ok = do_request(client, url, kind, photos[rnd.randrange(len(photos))], ids[rnd.randrange(len(ids))])
                except Exception as exc:  # noqa: BLE001 - counted, never fatal: the run must report them
                    ok = False
                    with lock:
                        failures.append(f"{kind}: {type(exc).__name__}: {exc}"[:200])
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        lat[kind].append(dt)
                    else:
                        errors[kind] += 1
                i += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    start.wait()
    for t in threads:
        t.join(timeout=duration + 120)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {k: summarize(lat[k], errors[k], seconds) for k in kinds}
    total = sum(len(v) for v in lat.values())
    out["all"] = {
        "requests": total,
        "errors": sum(errors.values()),
        "seconds": seconds,
        "throughput_rps": total / seconds,
        "clients": clients,
        "failures": failures[:10],
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=str(REPO / "models/classifier"))
    ap.add_argument("--index-dir", default=str(REPO / "models/index"))
    ap.add_argument("--raw-dir", default=str(REPO / "data/raw"), help="catalogue with images/ (served images)")
    ap.add_argument("--build-proxy", action="store_true", help="build a stand-in pair when the models are missing")
    ap.add_argument("--proxy-items", type=int, default=2000)
    ap.add_argument("--catalogue", default=str(DEFAULT_DATA), help="source catalogue for --build-proxy")
    ap.add_argument("--requests", type=int, default=200, help="sequential requests per endpoint")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/serve.json"))
    args = ap.parse_args()

    model_dir, index_dir, raw_dir = Path(args.model_dir), Path(args.index_dir), Path(args.raw_dir)
    # a pair built by --build-proxy says so, wherever it is passed from
    models = (
        (model_dir.parent / PROXY_MARKER).read_text().strip()
        if (model_dir.parent / PROXY_MARKER).is_file()
        else "trained"
    )
    if not ((model_dir / "model_spec.json").is_file() and (index_dir / "index_meta.json").is_file()):
        if not args.build_proxy:
            raise SystemExit(f"no models at {model_dir} + {index_dir}: run the pipeline or pass --build-proxy")
        work = REPO / "benchmarks/.work/serve"
        t0 = time.perf_counter()
        model_dir, index_dir, raw_dir = build_proxy(work, Path(args.catalogue), args.proxy_items)
        print(f"built proxy models in {time.perf_counter() - t0:.0f} s under {work}", flush=True)
        models = PROXY_NOTE

    import pandas as pd

    items = pd.read_parquet(index_dir / "items.parquet")
    ids = [int(i) for i in items["id"].sample(min(200, len(items)), random_state=0)]
    photos = [(f"{i}.jpg", (raw_dir / "images" / f"{i}.jpg").read_bytes()) for i in ids]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the server's access log is large: kept out of the results, in the temp dir
    import tempfile

    log_path = Path(tempfile.gettempdir()) / "fashionops_bench_serve.server.log"
    print(f"server log: {log_path}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    proc = start_server(model_dir, index_dir, raw_dir, port, log_path)
    try:
        t0 = time.perf_counter()
        health = wait_ready(url, proc, timeout_s=300)
        startup_s = time.perf_counter() - t0
        print(f"server up in {startup_s:.1f} s ({health['items']} items); sequential...", flush=True)
        seq = sequential(url, photos, ids, args.requests)
        print(json.dumps(seq, indent=1), flush=True)
        print(f"{args.clients} clients for {args.duration:g} s...", flush=True)
        conc = concurrent(url, photos, ids, args.clients, args.duration)
        print(json.dumps(conc, indent=1), flush=True)
        alive = wait_ready(url, proc, timeout_s=10)["status"] == "ok"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg(),
        },
        "models": models,
        "model_dir": str(model_dir),
        "index_dir": str(index_dir),
        "n_items": len(items),
        "server": {
            "startup_s": startup_s,
            "alive_after_load": alive,
            "process": "fashionops serve (uvicorn, 1 worker)",
        },
        "sequential_1_client": seq,
        "concurrent": conc,
        "targets": {
            "classify_p50_ms": 30,
            "search_p50_ms": 40,
            "classify_p50_met": seq["classify"]["p50_ms"] <= 30,
            "search_p50_met": seq["search"]["p50_ms"] <= 40,
            "no_errors_under_load": conc["all"]["errors"] == 0,
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if conc["all"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
