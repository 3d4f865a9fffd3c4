"""Batch scoring (``fashionops score``, the ``batch-scoring`` flow) on real catalogue images with a
registered @champion pair of the tiny real pipeline: both drop layouts, bad files listed with their
reason, the Parquet checked against the model's own predictions, MLflow, drift recording, and
the flow on the Prefect test harness."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _workspace import REPO
from PIL import Image

from fashionops.batch.drop import list_drop
from fashionops.batch.mlflow_log import experiment_name
from fashionops.batch.score import run_batch_score, summary_path
from fashionops.config import dump_params
from fashionops.errors import FashionOpsError

_SESSION = uuid.uuid4().hex[:8]
CLS, IDX = f"test-score-classifier-{_SESSION}", f"test-score-search-{_SESSION}"
# the bad entries of the Kaggle drop: id -> a word its reason must contain
BAD = {"990001": "truncated", "990002": "not an image", "990003": "too large", "990004": "missing"}
PALETTE_ID = "990005"  # a palette-mode PNG named .jpg: converted and scored, not refused


def _env() -> dict[str, str]:
    """This interpreter's environment without a tracking URI left by another test."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


@pytest.fixture(scope="module")
def scoring_params(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline's pair registered under this module's names (first: @champion), a
    private reports folder and observation log."""
    from fashionops.registry.register import run_register

    tmp = tmp_path_factory.mktemp("scoring")
    p = tiny_pipeline.model_copy(deep=True)
    p.register.classifier_name, p.register.index_name = CLS, IDX
    reports = tmp / "reports"
    reports.mkdir()
    for sub in Path(tiny_pipeline.paths.reports_dir).iterdir():
        if sub.is_dir() and sub.name != "register":
            (reports / sub.name).symlink_to(sub, target_is_directory=True)
    p.paths.reports_dir = str(reports)
    p.monitor.store = str(tmp / "observations.sqlite")
    p.score.top_k, p.score.neighbours, p.score.batch_size = 3, 4, 8  # several batches on a small drop
    env = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        result = run_register(p.register, p.paths, p.tracking, run_config=p.flat())
    finally:
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
    assert result["decision"] == "promoted"
    (tmp / "params.yaml").write_text(dump_params(p))
    return p, tmp / "params.yaml", result


@pytest.fixture(scope="module")
def kaggle_drop(tmp_path_factory, tiny_pipeline, shared_catalogue, shared_styles):
    """A Kaggle-layout drop: 8 catalogue items of the index, 4 other real images, a truncated
    JPEG, a text file named .jpg, a 4.2-megapixel image (over serve.max_pixels), a styles.csv row
    without its image and a palette-mode image."""
    dest = tmp_path_factory.mktemp("kaggle_drop")
    images = dest / "images"
    images.mkdir()
    indexed = pd.read_parquet(Path(tiny_pipeline.paths.index_dir) / "items.parquet")["id"].astype(int)
    inside = list(indexed.iloc[[0, 5, 10, 50, 100, 150, 200, 250]])
    others = [int(i) for i in shared_styles["id"] if int(i) not in set(indexed)][:4]
    rows = shared_styles.set_index("id").loc[inside + others].reset_index()
    src = shared_catalogue / "images"
    for image_id in inside + others:
        (images / f"{image_id}.jpg").write_bytes((src / f"{image_id}.jpg").read_bytes())
    template = rows.iloc[0]
    real = (src / f"{inside[0]}.jpg").read_bytes()
    (images / "990001.jpg").write_bytes(real[: len(real) // 2])
    (images / "990002.jpg").write_text("this is not an image\n")
    Image.open(src / f"{inside[1]}.jpg").convert("RGB").resize((2100, 2000)).save(images / "990003.jpg", "JPEG")
    Image.open(src / f"{inside[2]}.jpg").convert("P").save(images / f"{PALETTE_ID}.jpg", "PNG")
    extra = pd.DataFrame([{**template.to_dict(), "id": int(i)} for i in [*BAD, PALETTE_ID]])
    pd.concat([rows, extra]).to_csv(dest / "styles.csv", index=False)
    return dest, [str(i) for i in inside], [str(i) for i in others]


@pytest.fixture(scope="module")
def folder_drop(tmp_path_factory, shared_catalogue, shared_styles):
    """A plain folder: real images in nested folders (one PNG), a text file, an empty .jpg and a
    hidden file (left out)."""
    dest = tmp_path_factory.mktemp("folder_drop")
    ids = [int(i) for i in shared_styles["id"].iloc[1000:1006]]
    src = shared_catalogue / "images"
    (dest / "tops" / "new").mkdir(parents=True)
    (dest / "shoes").mkdir()
    for n, image_id in enumerate(ids[:5]):
        folder = dest / ("tops/new" if n < 2 else "shoes")
        (folder / f"{image_id}.jpg").write_bytes((src / f"{image_id}.jpg").read_bytes())
    Image.open(src / f"{ids[5]}.jpg").save(dest / f"{ids[5]}.png", "PNG")
    (dest / "notes.txt").write_text("delivery notes\n")
    (dest / "empty.jpg").write_bytes(b"")
    (dest / ".hidden.jpg").write_bytes((src / f"{ids[0]}.jpg").read_bytes())
    return dest


@pytest.fixture(scope="module")
def kaggle_scored(scoring_params, kaggle_drop, tmp_path_factory):
    """``fashionops score`` run as a user runs it, on the Kaggle drop."""
    _, params_file, _ = scoring_params
    out = tmp_path_factory.mktemp("kaggle_out") / "drop.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fashionops.cli",
            "score",
            "--params",
            str(params_file),
            "--data",
            str(kaggle_drop[0]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout), pq.read_table(out), out, proc.stderr


def test_kaggle_drop_scored_with_bad_files_listed(kaggle_scored, kaggle_drop, scoring_params):
    summary, table, out, stderr = kaggle_scored
    p, _, registered = scoring_params
    df = table.to_pandas()
    _, inside, others = kaggle_drop
    assert list(df["id"]) == [*inside, *others, *BAD, PALETTE_ID]  # styles.csv order, every row
    bad = df[df["status"] == "error"].set_index("id")
    assert set(bad.index) == set(BAD)
    for image_id, word in BAD.items():
        assert word in bad.loc[image_id, "error"] and f"{image_id}.jpg" in bad.loc[image_id, "error"]
        assert pd.isna(bad.loc[image_id, "label"]) and bad.loc[image_id, "embedding"] is None
    ok = df[df["status"] == "ok"]
    assert len(ok) == len(inside) + len(others) + 1 and ok["error"].isna().all()
    assert summary["images"] == len(df) and summary["scored"] == len(ok) and summary["failed"] == len(BAD)
    assert summary["classifier"] == {"name": CLS, "version": registered["classifier"]["version"]}
    assert summary["index"] == {"name": IDX, "version": registered["index"]["version"]}
    assert (df["classifier_version"] == registered["classifier"]["version"]).all()
    assert sum(summary["labels"].values()) == len(ok)
    assert json.loads(summary_path(out).read_text())["mlflow_run_id"] == summary["mlflow_run_id"]
    # styles.csv's columns come along (the truth of a later evaluation)
    assert {"articleType", "gender", "baseColour", "productDisplayName"} <= set(df.columns)
    assert not [c for c in df.columns if c.startswith("predicted_")]  # a single-head model: `label` only
    assert "not scored: " in stderr and "too large" in stderr  # the bad files are also logged


def test_parquet_rows_match_the_models_own_predictions(kaggle_scored, kaggle_drop, scoring_params):
    from fashionops.inference.predict import predict_images
    from fashionops.models.spec import ModelSpec
    from fashionops.search.searcher import IndexSearcher

    _, table, _, _ = kaggle_scored
    p, _, registered = scoring_params
    df = table.to_pandas().set_index("id")
    root, inside, others = kaggle_drop
    ids = [inside[0], inside[3], others[0], PALETTE_ID]
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    uri = f"models:/{CLS}/{registered['classifier']['version']}"
    expected = list(predict_images(p, [root / "images" / f"{i}.jpg" for i in ids], model_uri=uri, k=p.score.top_k))
    for image_id, want in zip(ids, expected):
        row = df.loc[image_id]
        assert row["label"] == want["label"] == row["top_labels"][0]
        assert list(row["top_labels"]) == want["top_labels"]
        # score.jit: a frozen trace, checked against the eager module to 1e-4
        np.testing.assert_allclose(row["top_probabilities"], want["top_probabilities"], atol=1e-4)
        assert row["probability"] == pytest.approx(want["probability"], abs=1e-4)
    searcher = IndexSearcher.load(p.paths.index_dir)
    ok = df[df["status"] == "ok"]
    for _, row in ok.iterrows():
        assert len(row["embedding"]) == searcher.dim
        assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-4)
        assert len(row["neighbour_ids"]) == p.score.neighbours == len(row["neighbour_article_types"])
        assert len(row["top_labels"]) == p.score.top_k
    # an image of an indexed item finds that item, as good as identical
    for image_id in inside:
        row = ok.loc[image_id]
        assert int(image_id) in list(row["neighbour_ids"])
        assert max(row["neighbour_similarities"]) == pytest.approx(1.0, abs=1e-3)
    meta = json.loads(table.schema.metadata[b"fashionops"])
    assert meta["classes"] == ModelSpec.read(p.paths.classifier_dir).classes
    assert meta["label_column"] == p.prepare.label


def test_mlflow_run_of_the_scoring(kaggle_scored, scoring_params):
    from mlflow.tracking import MlflowClient

    from fashionops.tracking import tracking_uri

    summary, _, _, _ = kaggle_scored
    p, _, registered = scoring_params
    client = MlflowClient(tracking_uri(p.tracking))
    run = client.get_run(summary["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == experiment_name(p)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["n_failed"] == len(BAD) and run.data.metrics["n_scored"] == summary["scored"]
    assert run.data.params["alias"] == "champion" and run.data.params["score.top_k"] == str(p.score.top_k)
    assert run.data.tags["fashionops.classifier_version"] == registered["classifier"]["version"]
    assert run.data.tags["fashionops.index_version"] == registered["index"]["version"]
    files = {f.path for f in client.list_artifacts(run.info.run_id, "scoring")}
    names = {"summary.json", "bad_images.csv", "label_distribution.csv", "drop.parquet"}
    assert {f"scoring/{n}" for n in names} <= files
    bad = pd.read_csv(client.download_artifacts(run.info.run_id, "scoring/bad_images.csv"), dtype={"id": str})
    assert set(bad["id"]) == set(BAD)


def test_folder_drop_recorded_for_drift_and_failure_keeps_previous_file(scoring_params, folder_drop, tmp_path):
    p, _, _ = scoring_params
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    drop = list_drop(folder_drop)
    assert drop.layout == "folder" and ".hidden.jpg" not in set(drop.entries["id"])
    out = tmp_path / "folder.parquet"
    before = _observations(p.monitor.store)
    summary = run_batch_score(p, str(folder_drop), str(out), alias=None)
    df = pq.read_table(out).to_pandas().set_index("id")
    assert sorted(df.index) == sorted(drop.entries["id"]) and len(df) == 8
    assert df.loc["notes.txt", "status"] == "error" and "not an image" in df.loc["notes.txt", "error"]
    assert df.loc["empty.jpg", "status"] == "error" and "empty" in df.loc["empty.jpg", "error"]
    assert (df.drop(index=["notes.txt", "empty.jpg"])["status"] == "ok").all()
    assert df.loc[[i for i in df.index if i.startswith("tops/new/")], "folder"].eq("tops/new").all()
    assert summary["scored"] == 6 and summary["failed"] == 2 and summary["layout"] == "folder"
    # what the model saw went to the observation log, one row per scored image
    assert summary["recorded"] == 6
    rows = _observations(p.monitor.store)[len(before) :]
    assert sorted(r[1] for r in rows) == sorted(df.index[df["status"] == "ok"]) and {r[0] for r in rows} == {"score"}
    # a scoring that cannot start leaves the previous file as it was
    data = out.read_bytes()
    with pytest.raises(FashionOpsError, match="no-such-alias"):
        run_batch_score(p, str(folder_drop), str(out), alias="no-such-alias")
    assert out.read_bytes() == data
    with pytest.raises(FashionOpsError, match="no such directory"):
        run_batch_score(p, str(tmp_path / "missing"), str(out), alias=None)


def _observations(store: str) -> list[tuple[str, str]]:
    if not Path(store).is_file():
        return []
    with sqlite3.connect(store) as db:
        return db.execute("SELECT source, item_id FROM observations ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def scoring_flow():
    sys.path.insert(0, str(REPO / "flows"))
    try:
        import batch_scoring

        yield batch_scoring.batch_scoring
    finally:
        sys.path.remove(str(REPO / "flows"))


@pytest.mark.slow
def test_batch_scoring_flow_on_the_prefect_harness(
    prefect_api, scoring_flow, scoring_params, folder_drop, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _, params_file, registered = scoring_params
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(params_file.read_text())
    state = scoring_flow(data_dir=str(folder_drop), workspace=str(ws), top_k=2, record=False, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    out = Path(summary["out"])
    assert out.parent == ws / "scores" and out.name.startswith(folder_drop.name)
    df = pq.read_table(out).to_pandas()
    assert df["top_labels"].dropna().map(len).eq(2).all() and summary["recorded"] is None
    assert summary["failed"] == 2 and summary["classifier"]["version"] == registered["classifier"]["version"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    by_key = {a.key: a for a in arts}
    assert {"batch-scoring-summary", "batch-scoring-run", f"registered-{CLS}"} <= set(by_key)
    assert summary["mlflow_run_id"] in by_key["batch-scoring-run"].data
    assert "failed (listed with their reason)" in json.dumps(by_key["batch-scoring-summary"].data)
    # a bad drop fails the flow with the command's own reason
    bad = scoring_flow(data_dir=str(tmp_path / "missing"), workspace=str(ws), return_state=True)
    assert bad.is_failed() and "no such directory" in bad.message


def test_batch_scoring_deployment_form(prefect_api, scoring_flow):
    from prefect.client.orchestration import get_client

    deployment = scoring_flow.to_deployment(name="test-batch-scoring", parameters={"workspace": str(REPO)})
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(deployment.apply())
    schema = dep.parameter_openapi_schema
    props = schema["properties"]
    assert schema["required"] == ["data_dir"]
    assert {"data_dir", "out", "alias", "top_k", "neighbours", "batch_size", "record", "workspace"} == set(props)
    assert props["top_k"]["type"] == "integer" and props["top_k"]["minimum"] == 1
    assert props["alias"]["default"] == "champion" and props["record"]["type"] == "boolean"
    assert all(prop.get("description") for prop in props.values())


def test_multi_attribute_model_scores_every_attribute(tiny_pipeline, shared_styles, folder_drop, tmp_path):
    """A multi-head classifier (the tiny model's trained backbone + untrained extra heads, so the
    tiny index still pairs with it): each extra attribute gets a label and a probability column,
    the same as ``Predictor.classify`` answers, eager and traced."""
    import torch

    from fashionops.batch.output import scores_table
    from fashionops.batch.score import bulk_models, decode, describe_pair, score_drop
    from fashionops.models.factory import WEIGHTS_FILE, build_model, save_model
    from fashionops.models.spec import ModelSpec
    from fashionops.serving.loader import load_bundle_from_dirs

    single = ModelSpec.read(tiny_pipeline.paths.classifier_dir)
    extras = {name: sorted(str(v) for v in shared_styles[name].dropna().unique()) for name in ("gender", "baseColour")}
    spec = single.updated(attributes=extras)
    module = build_model(spec, pretrained="none")
    weights = torch.load(Path(tiny_pipeline.paths.classifier_dir) / WEIGHTS_FILE, weights_only=True)
    module.load_state_dict(weights, strict=False)
    (tmp_path / "multi").mkdir()
    save_model(tmp_path / "multi", module, spec)
    bundle = load_bundle_from_dirs(tmp_path / "multi", tiny_pipeline.paths.index_dir, tmp_path)
    p = tiny_pipeline.model_copy(deep=True)
    drop = list_drop(folder_drop)
    ok = drop.entries[~drop.entries["file"].isin(["notes.txt", "empty.jpg"])]
    want = bundle.predictor.classify([decode(f, f, None)[0] for f in ok["path"]], 1)
    for jit in (False, True):
        models = bulk_models(bundle, jit)
        assert models[0].is_scripted == jit
        df = scores_table(drop, score_drop(p, models, drop, None), describe_pair(bundle)).to_pandas()
        df = df.set_index("id").loc[list(ok["id"])]
        assert "predicted_articleType" not in df.columns  # the primary attribute is `label`
        for name in extras:
            assert list(df[f"predicted_{name}"]) == [w["attributes"][name]["label"] for w in want]
            got = df[f"predicted_{name}_probability"].to_numpy()
            np.testing.assert_allclose(got, [w["attributes"][name]["probability"] for w in want], atol=1e-4)
        assert list(df["label"]) == [w["label"] for w in want]
