"""hnswlib vs FAISS HNSW (``IndexHNSWFlat``): which library the ``hnsw`` search backend uses (issue 16).

The same data and settings for both: ``clustered_vectors(101_000, 256, n_clusters=1000, seed=1)``,
the first 100,000 indexed, the last 1,000 held out as queries; M=16, ef_construction=200, 2 build
threads; angular search as inner product on the L2-normalised vectors. Each library runs in its own
process (clean memory figures) and reports: build seconds, resident-memory growth over the build and
the serialised index size, recall@10 against exact search for a sweep of ef (batched), single-thread
single-query p50/p99 for each ef of the sweep, the smallest ef reaching recall@10 >= 0.95, and
whether two one-thread builds of 5,000 vectors with one seed are byte-identical (and another seed
gives another graph).

    .venv/bin/python benchmarks/bench_ann_library.py

Results: ``benchmarks/results/ann_library_choice.json`` (load average before and after the run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # benchmarks.* when run as a script

from benchmarks.vectors import clustered_vectors  # noqa: E402
from fashionops.search.exact import exact_knn, recall_at_k  # noqa: E402

N, N_QUERIES, DIM, K = 100_000, 1_000, 256, 10
M, EF_CONSTRUCTION, BUILD_THREADS, TARGET = 16, 200, 2, 0.95
EF_GRID = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
LIBRARIES = ("hnswlib", "faiss")


class HnswlibRunner:
    """hnswlib: ``space="ip"``; ef is a property of the index object (``set_ef``)."""

    def build(self, x: np.ndarray, threads: int, seed: int = 1) -> Any:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=x.shape[1])
        index.init_index(len(x), M=M, ef_construction=EF_CONSTRUCTION, random_seed=seed)
        index.add_items(x, np.arange(len(x)), num_threads=threads)
        return index

    def search(self, index: Any, q: np.ndarray, ef: int, threads: int) -> np.ndarray:
        index.set_ef(ef)
        labels, _ = index.knn_query(q, K, num_threads=threads)
        return np.asarray(labels, dtype=np.int64)

    def serialised(self, index: Any) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            index.save_index(str(Path(tmp) / "index.bin"))
            return (Path(tmp) / "index.bin").read_bytes()


class FaissRunner:
    """FAISS ``IndexHNSWFlat`` (inner product); ef per call via ``SearchParametersHNSW``."""

    def build(self, x: np.ndarray, threads: int, seed: int = 1) -> Any:
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(x.shape[1], M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.hnsw.rng = faiss.RandomGenerator(seed)
        index.add(x)
        return index

    def search(self, index: Any, q: np.ndarray, ef: int, threads: int) -> np.ndarray:
        import faiss

        faiss.omp_set_num_threads(threads)
        _, labels = index.search(q, K, params=faiss.SearchParametersHNSW(efSearch=ef))
        return np.asarray(labels, dtype=np.int64)

    def serialised(self, index: Any) -> bytes:
        import faiss

        return bytes(faiss.serialize_index(index).tobytes())


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def measure(lib: str) -> dict[str, Any]:
    """Everything for one library (run in a fresh process)."""
    runner = HnswlibRunner() if lib == "hnswlib" else FaissRunner()
    data = clustered_vectors(N + N_QUERIES, DIM, n_clusters=1000, seed=1)
    base, queries = np.ascontiguousarray(data[:N]), np.ascontiguousarray(data[N:])
    _, exact_dist = exact_knn(base, queries, K, "angular")
    rss0 = rss_mb()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    index = runner.build(base, BUILD_THREADS)
    build_s, build_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    out: dict[str, Any] = {
        "version": metadata.version("hnswlib" if lib == "hnswlib" else "faiss-cpu"),
        "build_s": round(build_s, 2),
        "build_cpu_s": round(build_cpu_s, 2),
        "build_rss_growth_mb": round(rss_mb() - rss0, 1),
        "serialised_mb": round(len(runner.serialised(index)) / 1e6, 1),
        "raw_vectors_mb": round(base.nbytes / 1e6, 1),
        "sweep": [],
    }
    reached = None
    for ef in EF_GRID:
        ef = max(ef, K)
        recall = recall_at_k(base, queries, runner.search(index, queries, ef, 2), exact_dist, "angular")
        times = []
        for q in queries:
            t = time.perf_counter()
            runner.search(index, q[None, :], ef, 1)
            times.append((time.perf_counter() - t) * 1000)
        out["sweep"].append(
            {
                "ef": ef,
                "recall_at_10": round(recall, 4),
                "p50_ms": round(float(np.percentile(times, 50)), 4),
                "p99_ms": round(float(np.percentile(times, 99)), 4),
            }
        )
        if recall >= TARGET and reached is None:
            reached = out["sweep"][-1]
        elif reached is not None:
            break  # one ef past the target, for the shape of the curve
    out["at_target"] = reached
    small = np.ascontiguousarray(base[:5000])
    a, b, c = (runner.serialised(runner.build(small, 1, seed=s)) for s in (7, 7, 8))
    out["one_thread_build_deterministic"] = a == b
    out["seed_changes_graph"] = a != c
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", choices=LIBRARIES, help="measure one library in this process (internal)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/ann_library_choice.json"))
    args = parser.parse_args()
    if args.lib:
        print(json.dumps(measure(args.lib)))
        return 0
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for lib in LIBRARIES:
        proc = subprocess.run([sys.executable, __file__, "--lib", lib], capture_output=True, text=True, check=True)
        results[lib] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(lib, json.dumps(results[lib], indent=1))
    report = {
        "setup": {
            "data": f"clustered_vectors({N + N_QUERIES}, {DIM}, n_clusters=1000, seed=1)",
            "indexed": N,
            "held_out_queries": N_QUERIES,
            "k": K,
            "metric": "angular (inner product on L2-normalised vectors)",
            "M": M,
            "ef_construction": EF_CONSTRUCTION,
            "build_threads": BUILD_THREADS,
            "query": "single thread, one query per call",
            "recall_target": TARGET,
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_before": [round(v, 2) for v in load_before],
            "load_avg_after": [round(v, 2) for v in os.getloadavg()],
            "wall_s": round(time.perf_counter() - t0, 1),
        },
        "libraries": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
