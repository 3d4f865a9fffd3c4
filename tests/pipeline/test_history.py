"""Promotion history on the tiny real pipeline (real catalogue images, a real SQLite MLflow store):
register / promote / rollback each record one event (time, actor, reason, metric comparison, the
moves of both models) as a run of the history experiment and as version/model tags;
`fashionops history` prints them (table, --model, --limit, --json); the web page links to
``/history``, which a real uvicorn serves with ``/api/history``; a move that is undone, in-process
or after a kill, leaves no "moved" event.

Candidates differ only by a metrics copy (as in test_registry.py); the registered-model names are
this module's own, so the other tests sharing the tiny pipeline's store are not disturbed.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
_SESSION = uuid.uuid4().hex[:8]
CLS, IDX = f"test-hist-classifier-{_SESSION}", f"test-hist-search-{_SESSION}"
FLOW_RUN = str(uuid.uuid4())
_counter = itertools.count()


def _make_params(tiny_pipeline, tmp: Path, macro_f1: float | None = None):
    """The tiny pipeline's params with this module's model names, its own reports folder and (if
    given) a metrics copy whose test/macro_f1 is replaced."""
    n = next(_counter)
    p = tiny_pipeline.model_copy(deep=True)
    p.register.classifier_name, p.register.index_name = CLS, IDX
    pipeline_reports = Path(tiny_pipeline.paths.reports_dir)
    reports = tmp / f"candidate-{n}" / "reports"
    reports.mkdir(parents=True)
    for sub in pipeline_reports.iterdir():
        if sub.is_dir() and sub.name != "register":
            (reports / sub.name).symlink_to(sub, target_is_directory=True)
    p.paths.reports_dir = str(reports)
    if macro_f1 is not None:
        base = json.loads((pipeline_reports / "evaluate" / "metrics.json").read_text())
        (tmp / f"metrics-{n}.json").write_text(json.dumps({**base, "test/macro_f1": macro_f1}))
        p.register.metrics_path = str(tmp / f"metrics-{n}.json")
    return p


def _register(p):
    from fashionops.registry.register import run_register

    return run_register(p.register, p.paths, p.tracking, embedder_dir=p.index.embedder_dir, run_config=p.flat())


def _cli(p, *args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess:
    """``fashionops <args>`` in a fresh process on this module's registry pair."""
    sets = [
        f"tracking.tracking_uri={p.tracking.tracking_uri}",
        f"tracking.artifact_location={p.tracking.artifact_location}",
        f"register.classifier_name={CLS}",
        f"register.index_name={IDX}",
    ]
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FASHIONOPS_FLOW_RUN_ID")}
    cmd = [sys.executable, "-m", "fashionops.cli", args[0], "--params", str(REPO / "params.yaml")]
    cmd += [x for s in sets for x in ("--set", s)] + list(args[1:])
    return subprocess.run(cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=300)


def _client(p):
    from fashionops.registry.aliases import registry_client

    return registry_client(p.tracking)


def _history(p, model=None, limit=None):
    from fashionops.registry.history import load_history

    return load_history(p.register, p.tracking, model, limit)


@pytest.fixture(scope="module")
def moves(tiny_pipeline, tmp_path_factory):
    """Register A (the real metric; first champion), B (better by 0.1: promoted), C (between A and
    B: challenger); promote C by `fashionops promote` inside a "flow run"; roll back in-process."""
    from fashionops.registry.aliases import rollback

    tmp = tmp_path_factory.mktemp("history")
    base = json.loads((Path(tiny_pipeline.paths.reports_dir) / "evaluate" / "metrics.json").read_text())
    m0 = base["test/macro_f1"]
    out = {
        key: _register(_make_params(tiny_pipeline, tmp, value))
        for key, value in (("A", None), ("B", m0 + 0.1), ("C", m0 + 0.05))
    }
    p = _make_params(tiny_pipeline, tmp)
    c = out["C"]["classifier"]["version"]
    proc = _cli(
        p,
        "promote",
        "--version",
        c,
        "--reason",
        "reviewer: better on shoes",
        env={"FASHIONOPS_FLOW_RUN_ID": FLOW_RUN},
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr
    out["rollback"] = rollback(p.register, p.tracking, reason="canary errors")
    out["params"], out["tmp"], out["m0"] = p, tmp, m0
    return out


def test_register_records_decision_and_metric_comparison(moves):
    a, b, c = (moves[k] for k in "ABC")
    events = _history(moves["params"])
    assert [(e["action"], e["decision"]) for e in events] == [
        ("register", "promoted"),
        ("register", "promoted"),
        ("register", "challenger"),
        ("promote", "promoted"),
        ("rollback", "rolled_back"),
    ]
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    first, second, third = events[:3]
    # The first register: no champion to compare with; both models got @champion.
    assert first["reason"] == "no champion yet" and first["comparison"] is None
    assert {(m["model"], m["alias"], m["from"], m["to"]) for m in first["moves"]} == {
        (CLS, "champion", None, a["classifier"]["version"]),
        (IDX, "champion", None, a["index"]["version"]),
    }
    # B beat A: the comparison behind the decision, and A's pair moved to @previous.
    cmp = second["comparison"]
    assert cmp["metric"] == "test/macro_f1" and cmp["better"] is True and cmp["rescored"] is False
    assert cmp["candidate"] == pytest.approx(moves["m0"] + 0.1) and cmp["champion"] == pytest.approx(moves["m0"])
    assert (cmp["candidate_version"], cmp["champion_version"]) == (
        b["classifier"]["version"],
        a["classifier"]["version"],
    )
    assert cmp["min_delta"] == moves["params"].register.min_delta
    assert second["pipeline_run_id"] == b["run_id"]
    got = {(m["model"], m["alias"]): (m["from"], m["to"]) for m in second["moves"]}
    assert got[(CLS, "champion")] == (a["classifier"]["version"], b["classifier"]["version"])
    assert got[(IDX, "previous")] == (None, a["index"]["version"])
    # C lost: only @challenger moved, the reason says why.
    assert third["comparison"]["better"] is False and "vs champion" in third["reason"]
    assert {m["alias"] for m in third["moves"]} == {"challenger"}
    assert all(e["actor"] for e in events[:3])


def test_promote_and_rollback_record_actor_reason_and_tags(moves):
    from fashionops.registry.aliases import user
    from fashionops.registry.history import LAST_RUN_TAG, LAST_TAG, history_experiment

    p, b, c = moves["params"], moves["B"], moves["C"]
    promote, rollback = _history(p)[-2:]
    assert promote["actor"] == f"flow run {FLOW_RUN}" and promote["reason"] == "reviewer: better on shoes"
    assert promote["comparison"]["candidate_version"] == c["classifier"]["version"]
    assert promote["comparison"]["champion_version"] == b["classifier"]["version"]
    assert promote["comparison"]["candidate"] == pytest.approx(moves["m0"] + 0.05)
    assert rollback["actor"] == user() and rollback["reason"] == "canary errors"
    assert {(m["model"], m["alias"], m["to"]) for m in rollback["moves"]} >= {
        (CLS, "champion", b["classifier"]["version"]),
        (IDX, "champion", b["index"]["version"]),
        (CLS, "previous", c["classifier"]["version"]),
    }
    # The versions and the registered models carry the latest event; the event is a finished run.
    client = _client(p)
    mv = client.get_model_version(CLS, b["classifier"]["version"])
    assert mv.tags[LAST_RUN_TAG] == rollback["run_id"] and "rollback" in mv.tags[LAST_TAG]
    assert client.get_model_version(CLS, c["classifier"]["version"]).tags["promoted_by"] == f"flow run {FLOW_RUN}"
    assert client.get_registered_model(IDX).tags[LAST_RUN_TAG] == rollback["run_id"]
    run = client.get_run(rollback["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["reason"] == "canary errors"
    assert client.get_experiment(run.info.experiment_id).name == history_experiment(p.register)


def test_history_command_table_model_filter_limit_and_json(moves):
    p, tmp = moves["params"], moves["tmp"]
    proc = _cli(p, "history", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["TIME", "(UTC)", "ACTION", "MODEL"]
    actions = [line.split()[2] for line in lines[2:] if line[:4].isdigit()]
    assert actions == ["register", "register", "register", "promote", "rollback"]  # oldest first
    assert "reason: reviewer: better on shoes" in proc.stdout and f"flow run {FLOW_RUN}" in proc.stdout
    assert "metric: test/macro_f1" in proc.stdout and "min_delta" in proc.stdout

    proc = _cli(p, "history", "--model", IDX, "--limit", "2", "--json", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    events = json.loads(proc.stdout)
    assert [e["action"] for e in events] == ["promote", "rollback"]
    assert {m["model"] for e in events for m in e["moves"]} == {IDX}

    proc = _cli(p, "history", "--model", "no-such-model", cwd=tmp)
    assert proc.returncode == 1 and "no-such-model" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_undone_move_leaves_no_moved_event(moves):
    """A failure mid-move (in-process) and a kill mid-move (repaired from the journal by the next
    loader) restore the aliases; their event runs end FAILED/reverted and the history is unchanged."""
    from fashionops.registry.aliases import alias_state, promote
    from fashionops.registry.history import OUTCOME_TAG, experiment_id
    from fashionops.registry.transaction import repair_stale_lock

    p, c = moves["params"], moves["C"]["classifier"]["version"]
    before, history_before = alias_state(p.register, p.tracking), _history(p)

    def fail(step: str) -> None:
        if step == f"alias:{CLS}@champion":
            raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected"):
        promote(p.register, p.tracking, c, reason="will fail", on_step=fail)
    assert alias_state(p.register, p.tracking) == before and _history(p) == history_before

    proc = _cli(
        p,
        "promote",
        "--version",
        c,
        "--reason",
        "will be killed",
        cwd=moves["tmp"],
        env={"FASHIONOPS_REGISTER_FAULT": f"kill:alias:{IDX}@champion"},
    )
    assert proc.returncode == -9, proc.stderr
    client = _client(p)
    assert repair_stale_lock(client, p.register)  # the killer is dead: roll its journal back
    assert alias_state(p.register, p.tracking) == before and _history(p) == history_before

    runs = client.search_runs([experiment_id(client, p.register, create=False)], "attributes.status = 'FAILED'")
    assert sorted(r.data.params["reason"] for r in runs) == ["will be killed", "will fail"]
    assert {r.data.tags[OUTCOME_TAG] for r in runs} == {"reverted"}


def test_web_page_links_to_history_served_by_uvicorn(moves, tiny_pipeline, tmp_path):
    from _workspace import serving_copy

    from fashionops.serving.app import create_app, serve_in_thread
    from fashionops.serving.loader import load_bundle

    page = (REPO / "src/fashionops/serving/static/index.html").read_text()
    header = page.split("<header>", 1)[1].split("</header>", 1)[0]
    assert 'href="/history"' in header

    p = serving_copy(tiny_pipeline, tmp_path)
    p.register.classifier_name, p.register.index_name = CLS, IDX
    with serve_in_thread(create_app(p, bundle=load_bundle(p))) as url:
        api = httpx.get(f"{url}/api/history", params={"model": CLS}, timeout=30)
        html = httpx.get(f"{url}/history", timeout=30)
        bad = httpx.get(f"{url}/api/history", params={"model": "nope"}, timeout=30)
    assert api.status_code == 200
    body = api.json()
    assert body["models"] == {"classifier": CLS, "index": IDX}
    assert [e["action"] for e in body["events"]] == ["register", "register", "register", "promote", "rollback"]
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in html.headers["content-security-policy"]  # its stylesheet may load
    assert "reviewer: better on shoes" in html.text and html.text.count('<tr class="event">') == 5
    assert "http" not in html.text.split("<body>", 1)[1]  # nothing from elsewhere: works offline
    assert bad.status_code == 400 and "nope" in bad.json()["detail"]


def test_history_command_says_in_one_line_when_the_server_is_down(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "fashionops.cli", "history", "--params", str(REPO / "params.yaml")]
    cmd += ["--set", "tracking.tracking_uri=http://127.0.0.1:9"]  # nothing listens on the discard port
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable") and "history" in last
