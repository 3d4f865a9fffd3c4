"""Per-backend measurements for ``benchmarks/bench_index.py``: tuning, latency, recall, memory, re-scoring.

:func:`measure_backend` takes one data set that is already projected and has its exact ground
truth, and one ANN backend: it tunes the backend to the recall target (``tune_index``), saves the
index to a temporary directory, times single-thread held-out queries, measures recall@10 against
exact search in the index space and in the raw space, optionally re-scores C candidates exactly on
the raw vectors, finds the search knob the held-out queries need for the target (the tuner's
queries are indexed items, easier than new images), and loads the saved index in a fresh process
to see what it costs in memory there.
Every data set sees every backend with the same vectors, projection, ground truth and queries.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fashionops.search.backends import BACKENDS, AnnBackend, AnnIndex
from fashionops.search.exact import recall_at_k
from fashionops.search.tuning import search_k_for_target, tune_index
from fashionops.search.vectors import l2_normalise

REPO = Path(__file__).resolve().parents[1]
K = 10  # recall@10 and the k of every timed query
RESCORE_SEARCH_K_RULE = (
    "the tuned search knob, at least C (so that C candidates come back): HNSW ef = max(ef, C); "
    "Annoy inspects the tuned search_k nodes for its C candidates"
)

MEMORY_NOTES = {
    "peak_rss_delta_mb": "peak RSS of the benchmark process during build + tuning, minus its RSS before; it "
    "includes the tuner's transient copies of the index-space vectors (see index_space_vectors_mb) and every "
    "structure tried",
    "index_size_mb": "bytes the saved index takes on disk",
    "loaded_rss_delta_mb": "RSS increase of a fresh process that loads the saved index (after a warm-up that "
    "imported the backend's library)",
    "loaded_rss_delta_after_queries_mb": "the same after it answered the held-out queries (a memory-mapped "
    "index only counts the pages the queries touched)",
    "rescore.raw_vectors_mb": "the raw vectors re-scoring reads (kept in memory or memory-mapped beside the index)",
}


def rss_bytes() -> int:
    """Resident memory of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 1e6


def machine() -> dict[str, Any]:
    """The machine, its load and the ANN libraries' versions (recorded with every run)."""
    import psutil
    import torch

    versions = {}
    for dist in ("annoy", "hnswlib", "faiss-cpu"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "load_avg_1m_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "ann_libraries": versions,
        "note": "shared machine: other jobs ran concurrently; load average recorded per run",
    }


@contextmanager
def single_thread() -> Iterator[None]:
    """BLAS, OpenMP and torch limited to one thread (the timed query loops)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


QUERY_THREADS_NOTE = (
    "queries one at a time from one thread; BLAS, OpenMP (FAISS's pool included) and torch limited "
    "to 1 thread around the timed loops (threadpoolctl; each backend's query_thread_pools lists "
    "them); Annoy answers in the calling thread"
)


def limited_pools() -> list[str]:
    """The native thread pools loaded now, as the timed loops see them (each should say 1 thread)."""
    from threadpoolctl import threadpool_info

    with single_thread():
        return sorted(
            {f"{p['internal_api']} {Path(p['filepath']).name}: {p['num_threads']} thread(s)" for p in threadpool_info()}
        )


def percentiles(times_ms: list[float]) -> dict[str, float]:
    """p50 and p99 of per-query times."""
    return {"query_p50_ms": float(np.percentile(times_ms, 50)), "query_p99_ms": float(np.percentile(times_ms, 99))}


def exact_latency(
    vectors: np.ndarray, queries: np.ndarray, max_queries: int = 200, budget_s: float = 30.0
) -> dict[str, float]:
    """Single-thread brute force (torch float32 mat-vec + topk) p50/p99 in ms, over the raw vectors.

    Timing only, so the vectors are not re-normalised (a 5 GB copy at 1M x 1280); stops after
    ``max_queries`` or ``budget_s`` seconds, whichever comes first.
    """
    import torch

    v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    times: list[float] = []
    started = time.perf_counter()
    with single_thread():
        for q in l2_normalise(queries[:max_queries]):
            t0 = time.perf_counter()
            torch.topk(v @ torch.from_numpy(q), K)
            times.append((time.perf_counter() - t0) * 1000)
            if time.perf_counter() - started > budget_s:
                break
    return {
        "exact_p50_ms": float(np.percentile(times, 50)),
        "exact_p99_ms": float(np.percentile(times, 99)),
        "exact_queries_timed": len(times),
        "exact_threads": 1,
    }


def make_backend(name: str, options: dict[str, Any]) -> AnnBackend:
    """The registered backend ``name`` built with the constructor options it accepts (others dropped)."""
    cls = BACKENDS[name]
    accepted = inspect.signature(cls).parameters
    return cls(**{key: value for key, value in options.items() if key in accepted and value is not None})


@dataclass
class DataSet:
    """One data set as every backend sees it: raw and index-space vectors, queries, exact answers."""

    raw: np.ndarray  # (n, D) the vectors as embedded/generated
    raw_queries: np.ndarray  # (q, D) held-out queries
    index_vectors: np.ndarray  # (n, d) what the index holds (projected, or raw)
    index_queries: np.ndarray  # (q, d)
    project: Callable[[np.ndarray], np.ndarray]  # one raw query (1, D) -> (1, d)
    exact_dist: np.ndarray  # (q, K) exact distances in the index space
    exact_dist_raw: np.ndarray  # (q, K) exact distances in the raw space
    raw_norms: np.ndarray | None = None  # row norms of ``raw`` (re-scoring), computed when first needed

    def norms(self) -> np.ndarray:
        if self.raw_norms is None:
            self.raw_norms = np.sqrt(np.einsum("ij,ij->i", self.raw, self.raw)).astype(np.float32)
        return self.raw_norms


def recall_on_rows(
    vectors: np.ndarray, queries: np.ndarray, approx: np.ndarray, exact_dist: np.ndarray, metric: str
) -> float:
    """``recall_at_k`` over only the rows the answers name: the same number without its copies of all the
    vectors (two of 5 GB each at 1M x 1280)."""
    rows, positions = np.unique(approx[approx >= 0], return_inverse=True)
    remapped = np.full(approx.shape, -1, dtype=np.int64)
    remapped[approx >= 0] = positions
    return recall_at_k(vectors[rows], queries, remapped, exact_dist, metric)


def time_queries(index: AnnIndex, data: DataSet, search_k: int) -> list[float]:
    """Per-query ms for project + ANN query, single thread."""
    times = []
    with single_thread():
        for q in data.raw_queries:
            t0 = time.perf_counter()
            index.query(data.project(q[None, :])[0], K, search_k)
            times.append((time.perf_counter() - t0) * 1000)
    return times


def rescored(index: AnnIndex, data: DataSet, candidates: int, search_k: int) -> tuple[np.ndarray, list[float]]:
    """Top-K after exact cosine re-scoring of ``candidates`` ANN answers on the raw vectors; per-query ms."""
    norms = data.norms()
    out = np.full((len(data.raw_queries), K), -1, dtype=np.int64)
    times = []
    with single_thread():
        for i, q in enumerate(data.raw_queries):
            t0 = time.perf_counter()
            ids, _ = index.query(data.project(q[None, :])[0], candidates, search_k)
            cand = np.asarray(ids, dtype=np.int64)
            sims = (data.raw[cand] @ q) / np.maximum(norms[cand], 1e-12)  # the query's norm does not change the order
            top = cand[np.argsort(-sims, kind="stable")[:K]]
            times.append((time.perf_counter() - t0) * 1000)
            out[i, : len(top)] = top
    return out, times


def load_footprint(
    name: str,
    options: dict[str, Any],
    path: str,
    dim: int,
    metric: str,
    structure: int,
    queries: np.ndarray,
    search_k: int,
) -> dict[str, float]:
    """RSS increase from loading the saved index, then after querying it (run in a fresh process)."""
    ann = make_backend(name, options)
    # warm-up on a throwaway index, so the baseline already holds the backend's library
    with tempfile.TemporaryDirectory() as tmp:
        tiny = ann.build(np.random.default_rng(0).standard_normal((64, dim)).astype(np.float32), metric, structure, 0)
        saved = tiny.save(Path(tmp) / ann.index_file)
        tiny.unload()
        ann.load(saved, dim, metric).query(queries[0], K, search_k)
    gc.collect()
    base = rss_bytes()
    t0 = time.perf_counter()
    index = ann.load(path, dim, metric)
    load_s = time.perf_counter() - t0
    loaded = rss_bytes()
    index.knn(queries, K, search_k)
    return {
        "loaded_rss_delta_mb": (loaded - base) / 1e6,
        "loaded_rss_delta_after_queries_mb": (rss_bytes() - base) / 1e6,
        "load_s": load_s,
    }


def _load_footprint_main() -> None:
    """Entry point of the fresh process: arguments as JSON in argv[1], the result as JSON on stdout."""
    spec = json.loads(sys.argv[1])
    spec["queries"] = np.load(spec["queries"])
    print(json.dumps(load_footprint(**spec)))


def load_footprint_fresh(
    name: str,
    options: dict[str, Any],
    path: str,
    dim: int,
    metric: str,
    structure: int,
    queries: np.ndarray,
    search_k: int,
) -> dict[str, float]:
    """:func:`load_footprint` in a new interpreter: nothing inherited from this process's heap."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "queries.npy", queries)
        spec = {
            "name": name,
            "options": options,
            "path": path,
            "dim": dim,
            "metric": metric,
            "structure": structure,
            "queries": str(Path(tmp) / "queries.npy"),
            "search_k": search_k,
        }
        code = "from benchmarks.ann_measure import _load_footprint_main; _load_footprint_main()"
        path_env = os.pathsep.join([str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": path_env},
        )
    if done.returncode != 0:
        raise RuntimeError(f"measuring the loaded index failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def held_out_search_k(
    index: AnnIndex, ann: AnnBackend, data: DataSet, target: float, n_trees: int, metric: str
) -> dict[str, Any]:
    """The smallest search knob at which the held-out queries reach ``target`` recall@10.

    The tuner measures recall on indexed items (self excluded); new images can need more search,
    more so for a graph index, whose search walks straight to an indexed item's own neighbours.
    """
    trials: list[dict[str, Any]] = []
    cap = ann.default_max_search_k(len(data.index_vectors), K)
    nothing = np.full(len(data.index_queries), -1, dtype=np.int64)  # held-out queries: no self to exclude
    found = search_k_for_target(
        index,
        data.index_vectors,
        data.index_queries,
        nothing,
        data.exact_dist,
        K,
        target,
        cap,
        metric,
        trials,
        n_trees,
        (ann.structure_knob, ann.search_knob),
    )
    search_k, recall = found if found is not None else (cap, trials[-1]["recall"])
    return {
        "target": target,
        "reached": found is not None,
        "search_k": int(search_k),
        "recall_at_10": recall,
        **percentiles(time_queries(index, data, search_k)),
        "trials": trials,
    }


def measure_backend(
    name: str,
    options: dict[str, Any],
    data: DataSet,
    structure: tuple[int, int],
    target: float,
    held_out_target: float,
    n_jobs: int,
    rescore: int = 0,
    tune_queries: int = 500,
    seed: int = 42,
    metric: str = "angular",
) -> dict[str, Any]:
    """Tune backend ``name`` on ``data`` to ``target`` (structure = (start, max)) and measure it (see module doc).

    ``held_out``: the search knob the held-out queries need for ``held_out_target`` (the data set's
    recall target, without the tuning margin) and its latency, beside the tuned one.
    """
    ann = make_backend(name, options)
    knobs = (ann.structure_knob, ann.search_knob)  # what the backend calls n_trees and search_k
    out: dict[str, Any] = {
        "structure_knob": knobs[0],
        "search_knob": knobs[1],
        "settings": ann.settings(),
        "build_threads": n_jobs,
        "load_avg_1m_at_start": os.getloadavg()[0],
    }
    gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        index, tuned = tune_index(
            data.index_vectors,
            metric,
            structure[0],
            structure[1],
            K,
            target,
            tune_queries,
            seed,
            n_jobs=n_jobs,
            backend=ann,
        )
        tune_s = time.perf_counter() - t0
    out.update(
        {
            "n_trees": tuned.n_trees,
            "search_k": tuned.search_k,
            "tuned_recall_at_10": tuned.recall,
            "target_reached": tuned.reached,
            "build_s": tuned.build_s,
            "tune_total_s": tune_s,
            "peak_rss_delta_mb": mem.delta_mb,
            "index_space_vectors_mb": data.index_vectors.nbytes / 1e6,
        }
    )
    print(
        f"  {name}: {knobs[0]}={tuned.n_trees} {knobs[1]}={tuned.search_k} tuned recall {tuned.recall:.4f}, "
        f"build {tuned.build_s:.1f}s, tuning {tune_s:.1f}s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        saved = index.save(Path(tmp) / ann.index_file)
        out["index_size_mb"] = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 1e6
        out.update(percentiles(time_queries(index, data, tuned.search_k)))
        out["query_thread_pools"] = limited_pools()  # after the backend's library is loaded
        approx, _ = index.knn(data.index_queries, K, tuned.search_k)
        out["recall_at_10"] = recall_on_rows(data.index_vectors, data.index_queries, approx, data.exact_dist, metric)
        out["recall_at_10_vs_raw_exact"] = recall_on_rows(
            data.raw, data.raw_queries, approx, data.exact_dist_raw, metric
        )
        if rescore:
            sk = max(tuned.search_k, rescore)  # enough search to return all the candidates
            top, times = rescored(index, data, rescore, sk)
            out["rescore"] = {
                "candidates": rescore,
                "search_k": sk,
                "search_k_rule": RESCORE_SEARCH_K_RULE,
                "raw_vectors_mb": data.raw.nbytes / 1e6,
                "recall_at_10_vs_raw_exact": recall_on_rows(
                    data.raw, data.raw_queries, top, data.exact_dist_raw, metric
                ),
                **percentiles(times),
            }
        out["held_out"] = held_out_search_k(index, ann, data, held_out_target, tuned.n_trees, metric)
        index.unload()
        del index
        gc.collect()
        out.update(
            load_footprint_fresh(
                name,
                options,
                str(saved),
                data.index_vectors.shape[1],
                metric,
                tuned.n_trees,
                data.index_queries,
                tuned.search_k,
            )
        )
    out["load_avg_1m_at_end"] = os.getloadavg()[0]
    out["trials"] = tuned.trials
    return out
