"""Headline metrics (issue #19): what ``dvc metrics show`` and the pipeline's MLflow run list.

On the flow-run workspace (``trained_workspace``: every stage run by DVC on 300 real images):
the files ``dvc.yaml`` declares as metrics hold at most 40 flat numeric scalars, each named
``<group>/<name>``, none of them a setting; the MLflow run the register stage logged into carries
the same names, each once, and no setting as a metric. A champion registered under the names used
before (``metric.test_macro_f1``) still compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _workspace import dvc, mlflow_client

MAX_HEADLINE = 40
GROUPS = {"validate", "data", "train", "test", "retrieval", "index"}
# Settings and identifiers are params/outs, never metrics (whatever the stage's name for them).
SETTING_WORDS = (
    "n_trees",
    "search_k",
    "recall_target",
    "dim",
    "seed",
    "fraction",
    "hnsw",
    "ef_",
    "workers",
    "batch_size",
    "queries",
    "run_id",
    "margin",
)


def _is_setting(name: str) -> bool:
    return any(word in name.lower() for word in SETTING_WORDS)


def _declared_metrics(ws: Path) -> dict[str, dict]:
    """``dvc metrics show --json`` of the workspace: {file: its values}; no file may fail to read."""
    shown = json.loads(dvc("metrics", "show", "--json", cwd=ws).stdout)
    files = shown[""]["data"]
    errors = {f: entry["error"] for f, entry in files.items() if "error" in entry}
    assert not errors, errors
    return {f: entry["data"] for f, entry in files.items()}


@pytest.mark.slow
def test_dvc_metrics_are_at_most_40_namespaced_scalars_and_no_settings(trained_workspace):
    ws, _ = trained_workspace
    files = _declared_metrics(ws)
    assert sorted(files) == sorted(
        f"reports/{s}/metrics.json" for s in ("validation", "prepare", "train", "evaluate", "index")
    )
    names = []
    for path, values in files.items():
        for name, value in values.items():
            # flat keys: DVC shows `test/accuracy`, the name MLflow gets (nested JSON would show `test.accuracy`)
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (path, name, value)
            group, _, rest = name.partition("/")
            assert group in GROUPS and rest and "/" not in rest, (path, name)
            assert not _is_setting(name), (path, name)
            names.append(name)
    assert len(names) == len(set(names)) <= MAX_HEADLINE, names
    assert {
        "validate/passed",
        "data/images",
        "train/best_val_macro_f1",
        "train/seconds",
        "test/accuracy",
        "test/macro_f1",
        "test/macro_auprc",
        "retrieval/p_at_5",
        "index/recall_at_10",
        "index/query_p50_ms",
    } <= set(names)
    assert files["reports/validation/metrics.json"]["validate/passed"] == 1

    # the full reports stay beside them as plain outputs (what the Prefect artifacts and benchmarks read)
    for stage in ("validation", "prepare", "train", "evaluate", "index"):
        assert (ws / "reports" / stage / "summary.json").is_file(), stage
    table = dvc("metrics", "show", cwd=ws).stdout
    assert "test/macro_f1" in table and "class_counts" not in table and "n_trees" not in table


@pytest.mark.slow
def test_the_registered_run_logs_the_metrics_file_names_once_and_no_settings(trained_workspace):
    ws, _ = trained_workspace
    headline = {name for values in _declared_metrics(ws).values() for name in values}
    result = json.loads((ws / "reports/register/result.json").read_text())
    client = mlflow_client(ws)
    logged = client.get_run(result["run_id"]).data.metrics
    assert headline <= set(logged), headline - set(logged)  # the same names as in DVC
    for name in logged:
        assert not _is_setting(name), name
        # grouped like the metrics files, the per-epoch curves too (val/loss); Lightning's epoch counter
        assert "/" in name or name == "epoch", name
    # no metric twice under two names (index_ann_recall_at_10 beside ann_recall_at_10, test_ beside test/)
    flat = [name.replace("/", "_") for name in logged]
    assert len(flat) == len(set(flat)), sorted(logged)
    prefixed = [
        (a, b) for a in logged for b in logged if b != a and b.endswith("_" + a) and "/" not in b[: -len(a)]
    ]  # index_x beside x
    assert not prefixed, prefixed
    # the per-epoch curves keep one value per epoch
    epochs = len((ws / "reports/train/history.csv").read_text().splitlines()) - 1
    assert {"train/loss", "val/loss", "val/accuracy", "val/macro_f1", "train/lr"} <= set(logged)
    assert not [name for name in logged if name.startswith("lr-")]  # no second learning-rate curve
    assert len(client.get_metric_history(result["run_id"], "val/loss")) == epochs


@pytest.mark.slow
def test_a_champion_registered_under_the_old_metric_names_is_compared_not_rescored(tiny_pipeline, tmp_path):
    """A champion pair tagged ``metric.test_macro_f1`` (registered before the ``/`` names) on the same
    split: the register stage reads that tag for ``register.selection_metric: test/macro_f1``."""
    import uuid

    from fashionops.registry.aliases import registry_client
    from fashionops.registry.register import run_register

    p = tiny_pipeline.model_copy(deep=True)
    tag = uuid.uuid4().hex[:8]
    cname, iname = f"names-c-{tag}", f"names-i-{tag}"
    p.register.classifier_name, p.register.index_name = cname, iname
    reports = tmp_path / "reports"
    reports.mkdir()
    for sub in Path(tiny_pipeline.paths.reports_dir).iterdir():
        if sub.is_dir() and sub.name != "register":
            (reports / sub.name).symlink_to(sub, target_is_directory=True)
    p.paths.reports_dir = str(reports)

    def register():
        return run_register(p.register, p.paths, p.tracking, embedder_dir=p.index.embedder_dir, run_config=p.flat())

    first = register()
    assert p.register.selection_metric == "test/macro_f1" and first["decision"] == "promoted"
    m0 = first["candidate_metric"]
    client = registry_client(p.tracking)
    cls_mv = client.get_model_version(cname, first["classifier"]["version"])
    idx_mv = client.get_model_version(iname, first["index"]["version"])
    assert cls_mv.tags["metric.test/macro_f1"] == str(m0) and "metric.test_macro_f1" not in cls_mv.tags
    # the same models re-registered as an old-style champion, better by 0.5 under the old tag name
    legacy = client.create_model_version(
        cname,
        cls_mv.source,
        run_id=cls_mv.run_id,
        tags={"split_fingerprint": first["split_fingerprint"], "metric.test_macro_f1": str(m0 + 0.5)},
        model_id=getattr(cls_mv, "model_id", None),
    ).version
    legacy_idx = client.create_model_version(
        iname,
        idx_mv.source,
        run_id=idx_mv.run_id,
        tags={"classifier_version": str(legacy)},
        model_id=getattr(idx_mv, "model_id", None),
    ).version
    client.set_model_version_tag(cname, legacy, "paired_index_version", str(legacy_idx))
    client.set_registered_model_alias(cname, "champion", legacy)
    client.set_registered_model_alias(iname, "champion", legacy_idx)

    second = register()
    assert second["champion_rescored"] is False  # read from the legacy tag, not re-scored
    assert second["champion_metric"] == pytest.approx(m0 + 0.5)
    assert second["decision"] == "challenger"
