"""Registry with paired aliases on the tiny real pipeline: promotion, challenger, injected failure,
re-scoring on another split, manual promote/rollback, index refresh, pull and the deploy job.

Candidates differ only by their metrics file (a COPY of the evaluate stage's metrics.json with
another ``test/macro_f1``). The registered-model names are this module's own, so other tests
sharing the tiny pipeline's MLflow store are not disturbed.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Names of this session's own (a store reused across sessions starts clean too).
_SESSION = uuid.uuid4().hex[:8]
CLS, IDX = f"test-reg-classifier-{_SESSION}", f"test-reg-search-{_SESSION}"
_counter = itertools.count()


class Injected(RuntimeError):
    """The failure a test injects into run_register."""


@pytest.fixture(scope="module")
def make_params(tiny_pipeline, tmp_path_factory):
    """``make_params(macro_f1=None)``: the tiny pipeline's params with this module's model names,
    its own reports folder (links to the pipeline's reports and MLflow run file, its own
    register/result.json), and (if given) a metrics copy whose test/macro_f1 is replaced."""
    tmp = tmp_path_factory.mktemp("registry")
    pipeline_reports = Path(tiny_pipeline.paths.reports_dir)
    base = json.loads((pipeline_reports / "evaluate" / "metrics.json").read_text())

    def make(macro_f1: float | None = None):
        n = next(_counter)
        p = tiny_pipeline.model_copy(deep=True)
        p.register.classifier_name, p.register.index_name = CLS, IDX
        reports = tmp / f"candidate-{n}" / "reports"
        reports.mkdir(parents=True)
        for sub in pipeline_reports.iterdir():
            if sub.is_dir() and sub.name != "register":
                (reports / sub.name).symlink_to(sub, target_is_directory=True)
        p.paths.reports_dir = str(reports)
        if macro_f1 is not None:
            metrics = {**base, "test/macro_f1": macro_f1}
            (tmp / f"metrics-{n}.json").write_text(json.dumps(metrics))
            p.register.metrics_path = str(tmp / f"metrics-{n}.json")
        return p

    make.base = base
    make.tmp = tmp
    return make


def register(params, on_step=None):
    """The register stage as `fashionops register` calls it."""
    from fashionops.registry.register import run_register

    return run_register(
        params.register,
        params.paths,
        params.tracking,
        embedder_dir=params.index.embedder_dir,
        run_config=params.flat(),
        on_step=on_step,
    )


def aliases(params):
    from fashionops.registry.aliases import alias_state

    return alias_state(params.register, params.tracking)


@pytest.fixture(scope="module")
def registered(make_params):
    """Three candidates in order: A (the real metric), B (better by 0.1), C (between A and B)."""
    m0 = make_params.base["test/macro_f1"]
    results = {}
    for key, value in (("A", None), ("B", m0 + 0.1), ("C", m0 + 0.05)):
        results[key] = register(make_params(value))
    return results


def _client(params):
    from fashionops.registry.aliases import registry_client

    return registry_client(params.tracking)


def _pair(result):
    return {"classifier": result["classifier"]["version"], "index": result["index"]["version"]}


def test_better_candidate_moves_champion_on_both(registered, make_params):
    a, b = registered["A"], registered["B"]
    assert a["decision"] == "promoted" and a["champion_metric"] is None
    assert b["decision"] == "promoted"
    assert b["candidate_metric"] == pytest.approx(make_params.base["test/macro_f1"] + 0.1)
    assert b["champion_metric"] == pytest.approx(make_params.base["test/macro_f1"])
    assert b["champion_rescored"] is False
    # The result file is the returned dict.
    saved = json.loads(_result_path(b, make_params).read_text())
    assert saved["decision"] == "promoted" and saved["classifier"] == b["classifier"]
    params = make_params()
    client = _client(params)
    cls_mv = client.get_model_version(CLS, b["classifier"]["version"])
    idx_mv = client.get_model_version(IDX, b["index"]["version"])
    assert cls_mv.tags["paired_index_version"] == b["index"]["version"]
    assert idx_mv.tags["classifier_version"] == b["classifier"]["version"]
    assert float(cls_mv.tags["metric.test/macro_f1"]) == pytest.approx(b["candidate_metric"])
    assert cls_mv.tags["split_fingerprint"] == b["split_fingerprint"]
    assert cls_mv.run_id == b["run_id"] == idx_mv.run_id
    # The pipeline run (reopened from paths.run_file) carries the model card and the evaluate reports.
    run_file = json.loads(params.paths.run_file.read_text())
    assert b["run_id"] == run_file["run_id"]
    artifacts = {f.path for f in client.list_artifacts(b["run_id"])}
    assert "model_card.md" in artifacts and "evaluate" in artifacts
    run = client.get_run(b["run_id"])
    assert "test/macro_f1" in run.data.metrics and "train.epochs" in run.data.params
    # The card describes the training that made the weights (its spec and its run's params).
    card = Path(client.download_artifacts(b["run_id"], "model_card.md", str(make_params.tmp))).read_text()
    spec = json.loads((Path(params.paths.classifier_dir) / "model_spec.json").read_text())
    assert card.startswith(f"# {CLS}\n")
    assert (
        f"Classifier of `{params.prepare.label}` on Fashion Product Images (Small), {spec['backbone']} "
        f"(pretrained: {params.train.pretrained}, attention: none, head: linear), {params.train.epochs} epoch(s), "
        f"batch {params.train.batch_size}, lr {params.train.lr}, balance: {params.prepare.balance}."
    ) in card


def _result_path(result, make_params):
    # candidate-<n>/reports/register/result.json: the file whose content has this classifier version
    for path in sorted(make_params.tmp.glob("candidate-*/reports/register/result.json")):
        data = json.loads(path.read_text())
        if data["classifier"] == result["classifier"]:
            return path
    raise AssertionError("no result file written")


def test_worse_candidate_becomes_challenger(registered, make_params):
    b, c = registered["B"], registered["C"]
    assert c["decision"] == "challenger"
    assert c["champion_metric"] == pytest.approx(b["candidate_metric"])
    state = c["aliases"]
    assert state["champion"] == _pair(b)
    assert state["challenger"] == _pair(c)
    assert state["previous"] == _pair(registered["A"])


@pytest.mark.parametrize("where", ["after-registration", "between-champion-aliases"])
def test_failure_after_registration_leaves_aliases_unchanged(registered, make_params, where):
    """A much better candidate whose registration fails after the versions exist (and, in the
    second case, after the classifier's champion alias already moved): aliases as before."""
    from fashionops.registry.aliases import RegistryError

    fail_at = {"after-registration": "registered", "between-champion-aliases": f"alias:{IDX}@champion"}[where]

    params = make_params(make_params.base["test/macro_f1"] + 0.5)
    before = aliases(params)
    steps = []

    def hook(step):
        steps.append(step)
        if step == fail_at:
            raise Injected(f"injected at {step}")

    with pytest.raises(RegistryError, match="aliases unchanged"):
        register(params, on_step=hook)
    assert fail_at in steps
    assert aliases(params) == before
    assert not (params.paths.reports("register") / "result.json").exists()
    client = _client(params)
    newest = max(client.search_model_versions(f"name = '{CLS}'"), key=lambda mv: int(mv.version))
    assert "injected" in newest.tags["register_error"]
    assert not newest.aliases


def test_champion_rescored_when_its_split_differs(registered, make_params):
    """The champion's metric came from another split (fingerprint tag differs): it is re-scored
    on this split by loading it; the same weights score what evaluate measured."""
    params = make_params(-1.0)  # a candidate no real score loses to
    client = _client(params)
    champion = registered["B"]["classifier"]["version"]
    client.set_model_version_tag(CLS, champion, "split_fingerprint", "another-split")
    try:
        res = register(params)
    finally:
        client.set_model_version_tag(CLS, champion, "split_fingerprint", registered["B"]["split_fingerprint"])
    assert res["champion_rescored"] is True
    # B holds the tiny pipeline's own weights, so re-scoring reproduces evaluate's real number,
    # not the +0.1 written into B's metrics copy.
    assert res["champion_metric"] == pytest.approx(make_params.base["test/macro_f1"], abs=1e-9)
    assert res["decision"] == "challenger"
    assert res["aliases"]["champion"] == _pair(registered["B"])


def test_manual_promote_and_rollback(registered, make_params):
    from fashionops.registry.aliases import RegistryError, promote, rollback

    params = make_params()
    reg, trk = params.register, params.tracking
    b, c = _pair(registered["B"]), _pair(registered["C"])
    assert aliases(params)["champion"] == b
    out = promote(reg, trk, int(c["classifier"]), reason="reviewer: better on shoes")
    state = aliases(params)
    assert out["decision"] == "promoted"
    assert state["champion"] == c  # the paired index came along (found via tags)
    assert state["previous"] == b
    client = _client(params)
    for name, version in ((CLS, c["classifier"]), (IDX, c["index"])):
        assert client.get_model_version(name, version).tags["promotion_reason"] == "reviewer: better on shoes"

    out = rollback(reg, trk, reason="canary errors")
    state = aliases(params)
    assert out["decision"] == "rolled_back"
    assert state["champion"] == b and state["previous"] == c
    assert client.get_model_version(IDX, b["index"]).tags["rollback_reason"] == "canary errors"

    with pytest.raises(RegistryError, match="does not exist"):
        promote(reg, trk, 9999, reason="typo")
    assert aliases(params)["champion"] == b


def test_register_index_for_keeps_the_pair(registered, make_params):
    from fashionops.registry.register import register_index_for

    params = make_params()
    args = (params.register, params.index, params.paths, params.tracking, params.paths.index_dir)
    champ = aliases(params)["champion"]
    # An index rebuilt for the champion classifier: the index champion follows.
    res = register_index_for(*args, champ["classifier"])
    state = aliases(params)
    assert res["moved_aliases"] == ["champion"]
    assert state["champion"] == {"classifier": champ["classifier"], "index": res["index"]["version"]}
    client = _client(params)
    assert client.get_model_version(IDX, res["index"]["version"]).tags["classifier_version"] == champ["classifier"]
    assert client.get_model_version(CLS, champ["classifier"]).tags["paired_index_version"] == res["index"]["version"]
    # For a classifier that is not the champion, no champion alias moves.
    old = registered["A"]["classifier"]["version"]
    res2 = register_index_for(*args, old)
    assert "champion" not in res2["moved_aliases"]
    assert aliases(params)["champion"] == state["champion"]
    assert client.get_model_version(CLS, old).tags["paired_index_version"] == res2["index"]["version"]


def test_pull_predict_and_deploy_smoke_in_fresh_process(registered, make_params, tmp_path, shared_catalogue):
    from fashionops.config import dump_params
    from fashionops.inference.predict import predict_images
    from fashionops.registry.pull import pull, verify_pull

    params = make_params()
    state = aliases(params)["champion"]
    manifest = pull(params.register, params.tracking, "champion", tmp_path / "pulled")
    assert manifest["classifier"]["version"] == state["classifier"]
    assert manifest["index"]["version"] == state["index"]
    assert any(k.endswith("weights.pt") for k in manifest["files"])
    assert verify_pull(tmp_path / "pulled") == []

    images = [str(p) for p in sorted((shared_catalogue / "images").glob("*.jpg"))[:3]]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    lines = list(predict_images(params, [images[0], str(bad), images[1]], model_uri=str(tmp_path / "pulled"), k=2))
    classes = json.loads((Path(params.paths.classifier_dir) / "model_spec.json").read_text())["classes"]
    assert [ln["file"] for ln in lines] == [images[0], str(bad), images[1]]
    assert "not an image" in lines[1]["error"]
    for ln in (lines[0], lines[2]):
        assert ln["label"] in classes and len(ln["top_labels"]) == len(ln["top_probabilities"]) == 2
        assert ln["top_labels"][0] == ln["label"]
    json.dumps(lines)  # JSON-able

    # The deploy job: a fresh process that only knows the tracking URI.
    params_file = tmp_path / "params.yaml"
    params_file.write_text(dump_params(params))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "deploy_smoke.py"), "--params", str(params_file), "--images", *images],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("\n{") + 1 :])
    # compare resolved paths: ../shared may be reached through a symlink
    assert [Path(r["file"]).resolve() for r in report["classifier"]] == [Path(i).resolve() for i in images]
    assert all(r["label"] in classes for r in report["classifier"])
    assert all(len(r["ids"]) == 3 for r in report["visual_search"])
    # The same model in-process gives the same labels as the fresh process.
    in_process = list(predict_images(params, images, k=1))
    assert [ln["label"] for ln in in_process] == [r["label"] for r in report["classifier"]]


def test_deploy_smoke_fails_without_champion(make_params, tmp_path):
    from fashionops.config import dump_params

    params = make_params()
    params.register.classifier_name = "no-such-model"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(dump_params(params))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "deploy_smoke.py"), "--params", str(params_file), "--n", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "FAILED" in proc.stderr


def test_run_tags_trace_code_data_and_orchestration(tmp_path, monkeypatch, make_params):
    """git commit/dirty, DVC hashes of raw and prepared data from dvc.lock, the DVC experiment
    and the Prefect flow-run id exported by the flow."""
    import subprocess as sp

    from fashionops.tracking import run_tags

    params = make_params()
    params.paths.raw_dir, params.paths.prepared_dir = "data/raw", str(tmp_path / "data/prepared")
    sp.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    sp.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
        cwd=tmp_path,
        check=True,
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data/raw.dvc").write_text("outs:\n- md5: aaa111.dir\n  path: raw\n")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  prepare:\n    cmd: fashionops prepare\n    outs:\n"
        "    - path: data/prepared\n      md5: bbb222.dir\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-tiny")
    monkeypatch.setenv("FASHIONOPS_FLOW_RUN_ID", "flow-run-123")
    tags = run_tags(params.paths)
    head = sp.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"] == head and tags["git_dirty"] == "False"
    assert tags["dvc_raw_data_md5"] == "aaa111.dir"
    assert tags["dvc_prepared_md5"] == "bbb222.dir"  # absolute prepared_dir matched to dvc.lock's relative path
    assert tags["dvc_experiment"] == "exp-tiny"
    assert tags["prefect_flow_run_id"] == "flow-run-123"
