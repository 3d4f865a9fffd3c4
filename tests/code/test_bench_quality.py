"""benchmarks/bench_quality.py: the seed summary and the results file (no training here)."""

from __future__ import annotations

import json
import statistics

import pytest

from benchmarks import bench_quality


def _run(acc: float, f1: float, seconds: float) -> dict:
    scores = {"accuracy": acc, "macro_f1": f1, "macro_auprc": 0.9, "log_loss": 0.4}
    return {"train": {"seconds": seconds}, **{f"{s}_{v}": scores for s in ("val", "test") for v in ("plain", "flip")}}


def test_seed_summary_is_mean_and_sample_spread():
    runs = [_run(0.91, 0.86, 600), _run(0.93, 0.88, 620), _run(0.92, 0.84, 610)]
    summary = bench_quality.summarise_seeds(runs, "flip")
    acc = summary["test/accuracy"]
    assert acc["mean"] == pytest.approx(0.92) and acc["min"] == 0.91 and acc["max"] == 0.93
    assert acc["std"] == pytest.approx(statistics.stdev([0.91, 0.93, 0.92]), abs=1e-6)
    assert summary["train/seconds"]["mean"] == pytest.approx(610)
    assert bench_quality.spread([0.5])["std"] == 0.0


def test_results_file_keeps_other_entries(tmp_path):
    path = tmp_path / "quality.json"
    bench_quality.record(path, "a", {"x": 1})
    bench_quality.record(path, "b", {"x": 2})
    bench_quality.record(path, "a", {"x": 3})
    data = json.loads(path.read_text())
    assert data["a"]["x"] == 3 and data["b"]["x"] == 2 and "machine" in data["a"]
