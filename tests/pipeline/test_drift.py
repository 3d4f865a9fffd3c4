"""Drift monitoring end to end on real catalogue images: a registered tiny pair, windows recorded
through `record_observations` exactly as the server records them (the classifier's encode with
probabilities), `run_drift` and the `fashionops drift` command against the pair's reference.

Windows (one source each in one observation log), 80 images the model never saw:
same distribution (the 10 classes it knows, 8 each), only footwear, the same images darkened to
35 % and the same images at twice their size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _workspace import REPO
from PIL import Image

PER_CLASS = 8
WINDOW_SOURCES = ("same", "footwear", "dark", "large")


def _load(path):
    from fashionops.data.imaging import load_rgb

    return load_rgb(path)


@pytest.fixture(scope="module")
def drift_env(tiny_pipeline, small_catalogue, shared_catalogue, shared_styles, tmp_path_factory):
    """Params with an own MLflow store holding the tiny pair as @champion, and an observation log
    holding the four windows; returns (params, overrides for the CLI)."""
    from fashionops.config import load_params
    from fashionops.inference.predictor import Predictor
    from fashionops.monitoring import record_observations
    from fashionops.registry.register import run_register

    tmp = tmp_path_factory.mktemp("drift")
    shutil.copytree(tiny_pipeline.paths.reports_dir, tmp / "reports")
    p0 = tiny_pipeline
    overrides = [
        f"paths.raw_dir={p0.paths.raw_dir}",
        f"paths.prepared_dir={p0.paths.prepared_dir}",
        f"paths.classifier_dir={p0.paths.classifier_dir}",
        f"paths.index_dir={p0.paths.index_dir}",
        f"paths.facts={p0.paths.facts}",
        f"paths.reports_dir={tmp / 'reports'}",
        f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
        f"tracking.artifact_location={tmp / 'artifacts'}",
        f"monitor.store={tmp / 'monitoring/observations.sqlite'}",
        f"monitor.reference_dir={tmp / 'monitoring/reference'}",
        f"monitor.report_dir={tmp / 'reports/drift'}",
        "monitor.reference_splits=[train, val, test]",
        "monitor.reference_size=300",
        "monitor.min_window=40",
    ]
    p = load_params(REPO / "params.yaml", overrides)
    res = run_register(p.register, p.paths, p.tracking, embedder_dir=p.index.embedder_dir)
    assert res["decision"] in ("champion", "promoted"), res

    # 80 unseen images of the model's 10 classes, 8 each; 80 unseen footwear images
    known = set(pd.read_csv(small_catalogue / "styles.csv")["id"])
    styles = shared_styles[~shared_styles["id"].isin(known)]
    styles = styles[[(shared_catalogue / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    classes = Predictor.from_dir(p.paths.classifier_dir).classes
    same = styles[styles["articleType"].isin(classes)].groupby("articleType").sample(n=PER_CLASS, random_state=1)
    footwear = styles[styles["masterCategory"] == "Footwear"].sample(n=len(same), random_state=1)
    load = lambda ids: [_load(shared_catalogue / "images" / f"{i}.jpg") for i in ids]  # noqa: E731
    same_images = load(same["id"])
    windows = {
        "same": same_images,
        "footwear": load(footwear["id"]),
        "dark": [(img.astype(np.float32) * 0.35).astype(np.uint8) for img in same_images],
        "large": [
            np.asarray(Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.BILINEAR))
            for img in same_images
        ],
    }
    predictor = Predictor.from_dir(p.paths.classifier_dir)
    for source, images in windows.items():
        enc = predictor.encode(predictor.fit(images), with_probs=True)
        n = record_observations(
            p.monitor,
            images=images,
            probabilities=enc.class_probs,
            classes=predictor.classes,
            embeddings=enc.embeddings,
            source=source,
            model_version=res["classifier"]["version"],
        )
        assert n == len(images)
    return p, overrides


def _drift(p, source, tmp_path, **kw):
    from fashionops.monitoring.drift import run_drift

    return run_drift(
        p, last=kw.get("last"), since=None, source=source, alias="champion", report_dir=str(tmp_path / source)
    )


def _statuses(tmp_path, source) -> dict[str, str]:
    result = json.loads((tmp_path / source / "drift.json").read_text())
    return {s["name"]: s["status"] for s in result["signals"]}


def test_same_distribution_reports_no_drift(drift_env, tmp_path):
    p, _ = drift_env
    summary = _drift(p, "same", tmp_path)
    assert summary["verdict"] == "ok", summary
    assert set(summary["signals"].values()) == {"ok"}, summary["signals"]
    result = json.loads((tmp_path / "same/drift.json").read_text())
    for s in result["signals"]:  # every verdict names its statistic, threshold and test
        assert s["statistic"] and s["test"] and s["threshold"] > 0 and s["value"] is not None
    page = (tmp_path / "same/drift.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page and "http" not in page  # offline
    assert "Jensen-Shannon distance" in page and "Kolmogorov-Smirnov" in page
    # the reference is cached once per classifier version
    assert [f.name for f in Path(p.monitor.reference_dir).glob("*.parquet")] == [
        f"{p.register.classifier_name}-v{result['reference']['version']}.parquet"
    ]


@pytest.mark.parametrize(
    ("source", "expected", "unrelated"),
    [
        ("footwear", "class_distribution", ["image_size"]),
        ("dark", "image_brightness", ["image_size"]),
        ("large", "image_size", ["image_brightness", "image_colourfulness"]),
    ],
)
def test_a_shifted_window_is_detected_by_the_right_signal(drift_env, tmp_path, source, expected, unrelated):
    from fashionops.monitoring.drift import DriftDetected

    p, _ = drift_env
    with pytest.raises(DriftDetected, match=expected):
        _drift(p, source, tmp_path)
    statuses = _statuses(tmp_path, source)  # the reports are written before the error
    assert statuses[expected] == "drift", statuses
    for name in unrelated:
        assert statuses[name] == "ok", statuses
    assert (tmp_path / source / "drift.html").is_file()


def test_too_few_observations_is_insufficient_data_not_an_alarm(drift_env, tmp_path):
    p, _ = drift_env
    summary = _drift(p, "footwear", tmp_path, last=10)
    assert summary["verdict"] == "insufficient_data"
    assert set(summary["signals"].values()) == {"insufficient_data"}


def test_drift_run_is_logged_to_mlflow(drift_env, tmp_path):
    from mlflow.tracking import MlflowClient

    from fashionops.tracking import tracking_uri

    p, _ = drift_env
    summary = _drift(p, "same", tmp_path)
    run = MlflowClient(tracking_uri(p.tracking)).get_run(summary["mlflow_run_id"])
    assert run.data.tags["fashionops.drift_verdict"] == "ok"
    assert "class_distribution/value" in run.data.metrics and "embedding/value" in run.data.metrics
    arts = [a.path for a in MlflowClient(tracking_uri(p.tracking)).list_artifacts(run.info.run_id, "drift")]
    assert sorted(arts) == ["drift/drift.html", "drift/drift.json"]


def test_cli_exits_1_naming_the_drifted_signal(drift_env, tmp_path):
    _, overrides = drift_env
    args = [
        sys.executable,
        "-m",
        "fashionops.cli",
        "drift",
        "--params",
        str(REPO / "params.yaml"),
        "--source",
        "large",
        "--report-dir",
        str(tmp_path / "cli"),
    ]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "image_size" in proc.stderr and "drift detected" in proc.stderr
    assert json.loads((tmp_path / "cli/drift.json").read_text())["verdict"] == "drift"


@pytest.mark.slow  # two flow runs, each a `fashionops drift` subprocess (~40 s)
def test_drift_report_flow_fails_with_the_reason(drift_env, tmp_path, prefect_api):
    from fashionops.config import dump_params

    p, _ = drift_env
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(dump_params(p))
    sys.path.insert(0, str(REPO / "flows"))
    try:
        import drift_report
    finally:
        sys.path.remove(str(REPO / "flows"))
    ok = drift_report.drift_report(source="same", workspace=str(ws), return_state=True)
    assert ok.is_completed(), ok.message
    assert ok.result()["verdict"] == "ok"
    state = drift_report.drift_report(
        source="dark", report_dir=str(tmp_path / "dark"), workspace=str(ws), return_state=True
    )
    assert state.is_failed()
    assert "drift detected" in state.message and "image_brightness" in state.message, state.message
    assert json.loads((tmp_path / "dark/drift.json").read_text())["verdict"] == "drift"


def test_drift_report_deploys_with_its_form(prefect_api):
    """The deployment's form: the window (last, since, source), the alias, the report folder."""
    from prefect.client.orchestration import get_client

    sys.path.insert(0, str(REPO / "flows"))
    try:
        import drift_report
    finally:
        sys.path.remove(str(REPO / "flows"))
    fl = drift_report.drift_report
    dep_id = fl.to_deployment(name="test-drift", description=fl.description, cron="0 6 * * *").apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
        props = dep.parameter_openapi_schema["properties"]
        assert {"last", "since", "source", "alias", "report_dir", "workspace"} <= set(props)
        assert "integer" in json.dumps(props["last"]) and props["since"]["description"]
        assert props["alias"]["default"] == "champion" and props["report_dir"]["default"] == "reports/drift"
        assert [s.schedule.cron for s in dep.schedules] == ["0 6 * * *"]
        assert client.read_flow(dep.flow_id).name == "drift-report"
