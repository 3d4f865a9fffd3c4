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


def test_training_cost_times_the_stage_module_with_its_frozen_groups(monkeypatch):
    """cost runs the train stage's own network and LightningModule (its optimiser with it): the
    frozen groups the variant names are frozen in the module that is timed."""
    from benchmarks import bench_train

    timed = []
    real_make_module = bench_train.make_module

    def recording_make_module(cfg, spec, runtime):
        timed.append(real_make_module(cfg, spec, runtime))
        return timed[-1]

    monkeypatch.setattr(bench_train, "make_module", recording_make_module)
    variants = {"tiny": {"input_height": 32, "input_width": 24}, "tiny frozen": {"input_height": 32, "input_width": 24}}
    variants["tiny"]["freeze_groups"] = 0
    speeds = bench_quality.training_cost(steps=1, batch_size=2, variants=variants)
    assert set(speeds) == set(variants) and all(v > 0 for v in speeds.values())
    trainable = [sum(p.requires_grad for p in lit.model.parameters()) for lit in timed]
    total = sum(1 for _ in timed[0].model.parameters())
    assert trainable[0] == total and 0 < trainable[1] < total


def test_a_seed_run_can_come_from_a_lever_run_of_the_same_overrides_and_seed(tmp_path):
    from benchmarks.bench_quality import REPO

    levers = tmp_path / "quality_levers.json"
    bench_quality.record(levers, "epochs4", {"name": "epochs4", "overrides": ["train.epochs=4"], **_run(0.9, 0.8, 1)})
    params = REPO / "params.yaml"  # train.seed 42
    run = bench_quality.lever_run(42, "epochs4", ["train.epochs=4"], params, levers)
    assert run["name"] == "seed42" and run["from_lever"] == "epochs4" and run["val_flip"]["accuracy"] == 0.9
    assert "machine" not in run
    with pytest.raises(SystemExit, match="train.seed 42, not"):
        bench_quality.lever_run(1, "epochs4", ["train.epochs=4"], params, levers)
    with pytest.raises(SystemExit, match="not \\['train.epochs=5'\\]"):
        bench_quality.lever_run(42, "epochs4", ["train.epochs=5"], params, levers)
    with pytest.raises(SystemExit, match="no lever 'other'"):
        bench_quality.lever_run(42, "other", [], params, levers)
