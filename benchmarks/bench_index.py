"""Annoy vs exact brute-force search: build time, peak memory, query p50/p99, recall@10.

Two data sets:
* real catalogue embeddings: the trained model in ``--model-dir`` (default models/classifier) on
  the catalogue in ``--raw-dir``. Without a trained model, ``--proxy-pretrained`` embeds with the
  untrained-head default model (ImageNet EfficientNet-Lite0 features; real image embeddings, not
  the fine-tuned ones) and says so in the results; otherwise that part is skipped.
* ``--n`` synthetic vectors of the same dimension (default 1,000,000), from one or both generators
  (``--generators``): ``densified`` (``benchmarks.vectors.densified_vectors``: drawn around the real
  embeddings, calibrated to be exactly as hard for Annoy as them at the catalogue's size; needs the
  real embeddings) and ``clustered`` (``benchmarks.vectors.clustered_vectors``: Zipf-sized isotropic
  Gaussian clusters on a 64-d latent manifold lifted to D dims; 8x harder than the real embeddings
  at the catalogue's size, the pessimistic case).

Both go through what the ``index`` stage does: optional SVD projection to ``--index-dim`` (``none`` to skip),
``tune_index`` with the ``--backend`` ANN backend (default annoy; smallest search_k reaching the
recall target on 500 self-excluded items), then
held-out queries measure recall@10 (vs exact in the index space and in the raw space) and
single-query latency. Exact search is a float32 matrix product (torch) over all vectors.

    .venv/bin/python benchmarks/bench_index.py --n 100000 --real-limit 5000 --proxy-pretrained

Results: ``benchmarks/results/index.json`` (merged per data set; records the machine and load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # benchmarks.* when run as a script

from benchmarks.vectors import clustered_vectors, densified_vectors  # noqa: E402
from fashionops.config import IndexConfig  # noqa: E402
from fashionops.search.backends import BACKENDS, DEFAULT_BACKEND, get_backend  # noqa: E402
from fashionops.search.exact import exact_knn, recall_at_k  # noqa: E402
from fashionops.search.tuning import tune_index  # noqa: E402
from fashionops.search.vectors import fit_projection, l2_normalise  # noqa: E402


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self) -> PeakRSS:
        import psutil

        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 1e6


def machine() -> dict[str, Any]:
    import psutil
    import torch

    return {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "load_avg_1m_at_start": os.getloadavg()[0], "python": platform.python_version(),
            "note": "shared machine: other jobs ran concurrently; load average recorded per run"}


def exact_latency(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> dict[str, float]:
    """Single-query brute force (torch float32 mat-vec + topk) p50/p99 in ms."""
    import torch

    v = torch.from_numpy(l2_normalise(vectors))
    times = []
    for q in l2_normalise(queries[:200]):
        t0 = time.perf_counter()
        sims = v @ torch.from_numpy(q)
        torch.topk(sims, k)
        times.append((time.perf_counter() - t0) * 1000)
    return {"exact_p50_ms": float(np.percentile(times, 50)), "exact_p99_ms": float(np.percentile(times, 99))}


def bench(name: str, vectors: np.ndarray, queries: np.ndarray, index_dim: int | None, n_trees: int,
          max_trees: int, target: float, seed: int = 42, backend: str = DEFAULT_BACKEND) -> dict[str, Any]:
    """One data set through projection -> tune -> held-out measurement (results under ``backend``)."""
    out: dict[str, Any] = {"name": name, "n": int(len(vectors)), "dim": int(vectors.shape[1]),
                           "index_dim": index_dim or int(vectors.shape[1]), "recall_target": target,
                           "tuned_for": min(1.0, target + IndexConfig().recall_margin),
                           "n_held_out_queries": int(len(queries)), "load_avg_1m": os.getloadavg()[0]}
    print(f"[{name}] n={len(vectors)} dim={vectors.shape[1]} index_dim={index_dim}", flush=True)
    t0 = time.perf_counter()
    projection = None
    if index_dim:
        sample = vectors[np.random.default_rng(seed).choice(len(vectors), min(len(vectors), 50_000), replace=False)]
        projection = fit_projection(sample, index_dim, seed)
        out["projection_fit_s"] = time.perf_counter() - t0
        out["projection_explained_variance"] = projection.explained_variance
        iv = np.concatenate([projection.apply(vectors[i:i + 100_000]) for i in range(0, len(vectors), 100_000)])
        iq = projection.apply(queries)
    else:
        iv, iq = vectors, queries
    out["exact"] = exact_latency(vectors, queries)
    t0 = time.perf_counter()
    ex_idx_raw, ex_d_raw = exact_knn(vectors, queries, 10)
    ex_idx, ex_d = (ex_idx_raw, ex_d_raw) if projection is None else exact_knn(iv, iq, 10)
    out["exact"]["ground_truth_s"] = time.perf_counter() - t0
    print(f"[{name}] exact done {out['exact']}", flush=True)

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        # tuned for target + the stage's default margin, as `fashionops index` does (sampling noise)
        margin = IndexConfig().recall_margin
        index, tuned = tune_index(iv, "angular", n_trees, max_trees, 10, min(1.0, target + margin), 500, seed,
                                  backend=backend)
        tune_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = index.save(Path(tmp) / get_backend(backend).index_file)
        size_mb = path.stat().st_size / 1e6
        times = []
        for q in queries:
            t0 = time.perf_counter()
            x = projection.apply(q[None, :])[0] if projection is not None else q
            index.query(x, 10, tuned.search_k)
            times.append((time.perf_counter() - t0) * 1000)
        ap, _ = index.knn(iq, 10, tuned.search_k)
        index.unload()
    out[backend] = {
        "n_trees": tuned.n_trees, "search_k": tuned.search_k, "tuned_recall_at_10": tuned.recall,
        "target_reached": tuned.reached, "build_s": tuned.build_s, "tune_total_s": tune_s,
        "peak_rss_delta_mb": mem.delta_mb, "index_size_mb": size_mb,
        "query_p50_ms": float(np.percentile(times, 50)), "query_p99_ms": float(np.percentile(times, 99)),
        "recall_at_10": recall_at_k(iv, iq, ap, ex_d),
        "recall_at_10_vs_raw_exact": recall_at_k(vectors, queries, ap, ex_d_raw),
        "trials": tuned.trials,
    }
    print(f"[{name}] {backend} {({k: v for k, v in out[backend].items() if k != 'trials'})}", flush=True)
    return out


def real_embeddings(args: argparse.Namespace) -> tuple[np.ndarray, str] | None:
    """Catalogue embeddings from the trained model, or the pretrained proxy, or None."""
    from fashionops.inference.predictor import Predictor
    from fashionops.search.items import catalogue_items, embed_catalogue

    cache = Path(args.embeddings_cache) if args.embeddings_cache else None
    if cache is not None and cache.is_file():
        meta = json.loads(cache.with_suffix(".json").read_text())
        return np.load(cache), meta["source"]
    raw = Path(args.raw_dir)
    if not (raw / "styles.csv").is_file():
        print(f"no catalogue at {raw}; real-embedding part skipped", flush=True)
        return None
    model_dir = Path(args.model_dir)
    if (model_dir / "model_spec.json").is_file():
        predictor = Predictor.from_dir(model_dir)
        source = f"trained model {model_dir}"
    elif args.proxy_pretrained:
        from fashionops.config import TrainConfig
        from fashionops.models.factory import build_model, model_spec

        spec = model_spec(TrainConfig(), ["a", "b"], "articleType", (80, 60))
        predictor = Predictor(build_model(spec).eval(), spec)
        source = "PROXY: ImageNet EfficientNet-Lite0 features (no trained model in models/classifier)"
    else:
        print(f"no trained model in {model_dir}; real-embedding part skipped (try --proxy-pretrained)", flush=True)
        return None
    cat = catalogue_items(raw)
    if args.real_limit and len(cat) > args.real_limit:
        cat = cat.sample(n=args.real_limit, random_state=0).sort_values("id")
    t0 = time.perf_counter()
    # the index stage's encoding (mirror averaging when index.flip_tta is on by default)
    vectors = embed_catalogue(cat, predictor, 128, flip_tta=IndexConfig().flip_tta)[0].embeddings
    print(f"embedded {len(vectors)} images in {time.perf_counter() - t0:.1f}s ({source})", flush=True)
    if cache is not None:
        np.save(cache, vectors)
        cache.with_suffix(".json").write_text(json.dumps({"source": source}))
    return vectors, source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (0: skip)")
    ap.add_argument("--dim", type=int, default=None, help="synthetic dimension (default: real one, else 1280)")
    ap.add_argument("--index-dim", default="256", help="SVD projection dimension before Annoy, or 'none'")
    ap.add_argument("--model-dir", default=str(REPO / "models/classifier"))
    ap.add_argument("--raw-dir", default=str(REPO / "data/raw"))
    ap.add_argument("--real-limit", type=int, default=0, help="embed only this many catalogue items (0: all)")
    ap.add_argument("--proxy-pretrained", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--embeddings-cache", help="reuse/save the real embeddings here (.npy)")
    ap.add_argument("--trees", type=int, default=50)
    ap.add_argument("--max-trees", type=int, default=200)
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries")
    ap.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS), help="ANN backend")
    ap.add_argument("--generators", default="densified,clustered",
                    help="synthetic generators, comma-separated: densified (needs real embeddings), clustered")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/index.json"))
    args = ap.parse_args(argv)
    index_dim = None if str(args.index_dim).lower() == "none" else int(args.index_dim)

    out_path = Path(args.out)
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    results["machine"] = machine()
    suffix = f"dim{index_dim or 'raw'}"
    dim = args.dim or 1280
    anchors = None
    if not args.skip_real:
        real = real_embeddings(args)
        if real is None:
            results[f"real_{suffix}"] = {"skipped": "no trained model in models/classifier"}
        else:
            vectors, source = real
            anchors = vectors
            dim = args.dim or vectors.shape[1]
            rng = np.random.default_rng(0)
            held = rng.choice(len(vectors), size=min(args.queries, len(vectors) // 10), replace=False)
            mask = np.ones(len(vectors), bool)
            mask[held] = False
            res = bench("real", vectors[mask], vectors[held], index_dim, args.trees, args.max_trees, 0.95,
                        backend=args.backend)
            res["source"] = source
            res["targets"] = {"recall_at_10": 0.95, "p50_ms": 1.0}
            results[f"real_{suffix}"] = res
    targets = {"recall_at_10": 0.90, "p50_ms": 2.0, "build_s": 600}
    for generator in [g.strip() for g in args.generators.split(",") if g.strip()] if args.n else []:
        total = args.n + args.queries
        if generator == "densified":
            if anchors is None:
                print("densified generator skipped: it needs the real embeddings (no --skip-real, a trained model)")
                continue
            print(f"generating {args.n} densified {anchors.shape[1]}-d vectors", flush=True)
            allv = densified_vectors(anchors, total, seed=1)
            described = "benchmarks.vectors.densified_vectors(real catalogue embeddings, neighbours=10, noise=1.5)"
            key = f"densified_{args.n}_{suffix}"
        elif generator == "clustered":
            print(f"generating {args.n} clustered {dim}-d vectors", flush=True)
            allv = clustered_vectors(total, dim, n_clusters=1000, seed=1)
            described = "benchmarks.vectors.clustered_vectors(n_clusters=1000, latent_dim=64, spread=0.35, noise=0.02)"
            key = f"synthetic_{args.n}_{suffix}"
        else:
            ap.error(f"unknown generator {generator!r} (densified, clustered)")
        res = bench(generator, allv[: args.n], allv[args.n:], index_dim, args.trees, args.trees, 0.90,
                    backend=args.backend)
        del allv
        res["generator"] = described
        res["targets"] = targets
        results[key] = res
        _write(out_path, results)  # after each data set: a long run keeps what it measured
    _write(out_path, results)
    print(f"wrote {out_path}")
    return 0


def _write(out_path: Path, results: dict[str, Any]) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=float))
    os.replace(tmp, out_path)


if __name__ == "__main__":
    sys.exit(main())
