"""The champion pair under faults (issue 18, item 1): real ``fashionops register`` / ``promote`` /
``rollback`` processes killed at each step, two racing registers, a stale lock from another host,
and every loader refusing an unpaired alias.

Each case gets its own registered models (``make_case``): two real pairs re-registered from the
sources of one real register on the tiny pipeline (cheap: no re-logging), ``@champion`` = v2 and
``@previous`` = v1. Candidates differ only by their metrics file. Faults come from the CLI's test
hook ``$FASHIONOPS_REGISTER_FAULT`` (``fashionops.registry.transaction``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
_SESSION = uuid.uuid4().hex[:8]
_counter = itertools.count()
ALIASES = ("champion", "previous", "challenger")


# --------------------------------------------------------------------------- fixtures
def _own_reports(params, dest: Path) -> None:
    """Own reports folder: links to the pipeline's reports, its own register/result.json."""
    pipeline_reports = Path(params.paths.reports_dir)
    dest.mkdir(parents=True)
    for sub in pipeline_reports.iterdir():
        if sub.is_dir() and sub.name != "register":
            (dest / sub.name).symlink_to(sub, target_is_directory=True)
    params.paths.reports_dir = str(dest)


@pytest.fixture(scope="module")
def seed(tiny_pipeline, tmp_path_factory):
    """One real register on the tiny pipeline; every case re-registers its two logged models."""
    from fashionops.registry.aliases import registry_client
    from fashionops.registry.register import run_register

    tmp = tmp_path_factory.mktemp("registry_faults")
    p = tiny_pipeline.model_copy(deep=True)
    p.register.classifier_name, p.register.index_name = f"faults-seed-c-{_SESSION}", f"faults-seed-i-{_SESSION}"
    _own_reports(p, tmp / "seed-reports")
    res = run_register(p.register, p.paths, p.tracking, embedder_dir=p.index.embedder_dir, run_config=p.flat())
    client = registry_client(p.tracking)
    cls_mv = client.get_model_version(p.register.classifier_name, res["classifier"]["version"])
    idx_mv = client.get_model_version(p.register.index_name, res["index"]["version"])
    metric = p.register.selection_metric
    return SimpleNamespace(
        params=p,
        tmp=tmp,
        cls=cls_mv,
        idx=idx_mv,
        client=client,
        metric=metric,
        base=res["metrics"],
        m0=float(res["metrics"][metric]),
        fingerprint=res["split_fingerprint"],
    )


def make_case(seed):
    """Own model names with two real pairs: v1 (metric m0-0.2) @previous, v2 (m0-0.1) @champion."""
    n = next(_counter)
    client = seed.client
    p = seed.params.model_copy(deep=True)
    cname, iname = f"faults-c{n}-{_SESSION}", f"faults-i{n}-{_SESSION}"
    p.register.classifier_name, p.register.index_name = cname, iname
    client.create_registered_model(cname)
    client.create_registered_model(iname)
    for k, delta in ((1, -0.2), (2, -0.1)):
        tags = {"split_fingerprint": seed.fingerprint, f"metric.{seed.metric}": str(seed.m0 + delta)}
        cv = client.create_model_version(
            cname, seed.cls.source, run_id=seed.cls.run_id, tags=tags, model_id=getattr(seed.cls, "model_id", None)
        ).version
        iv = client.create_model_version(
            iname,
            seed.idx.source,
            run_id=seed.idx.run_id,
            tags={"classifier_version": str(cv)},
            model_id=getattr(seed.idx, "model_id", None),
        ).version
        client.set_model_version_tag(cname, cv, "paired_index_version", str(iv))
        assert (str(cv), str(iv)) == (str(k), str(k))
    for alias, v in (("previous", "1"), ("champion", "2")):
        client.set_registered_model_alias(cname, alias, v)
        client.set_registered_model_alias(iname, alias, v)
    case = SimpleNamespace(params=p, cls=cname, idx=iname, dir=seed.tmp / f"case-{n}", client=client)
    case.dir.mkdir()
    return case


def candidate_params(seed, case, delta: float, name: str) -> Path:
    """A params file for `fashionops register` of a candidate whose metric is m0 + ``delta``."""
    from fashionops.config import dump_params

    p = case.params.model_copy(deep=True)
    _own_reports(p, case.dir / f"{name}-reports")
    metrics = case.dir / f"{name}-metrics.json"
    metrics.write_text(json.dumps(dict(seed.base, **{seed.metric: seed.m0 + delta})))
    p.register.metrics_path = str(metrics)
    path = case.dir / f"{name}.yaml"
    path.write_text(dump_params(p))
    return path


def _env(fault: str | None = None, pause_file: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "FASHIONOPS_REGISTER"))}
    if fault:
        env["FASHIONOPS_REGISTER_FAULT"] = fault
    if pause_file:
        env["FASHIONOPS_REGISTER_PAUSE_FILE"] = str(pause_file)
    return env


def fashionops(params_file: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """A real `fashionops` process."""
    return subprocess.run(
        [sys.executable, "-m", "fashionops.cli", args[0], "--params", str(params_file), *args[1:]],
        capture_output=True,
        text=True,
        env=_env(fault),
        timeout=300,
        cwd=REPO,
    )


def case_params_file(case) -> Path:
    from fashionops.config import dump_params

    path = case.dir / "case.yaml"
    path.write_text(dump_params(case.params))
    return path


# --------------------------------------------------------------------------- checks
def raw_state(case) -> dict[str, tuple[str | None, str | None]]:
    from fashionops.registry.aliases import alias_version

    return {a: (alias_version(case.client, case.cls, a), alias_version(case.client, case.idx, a)) for a in ALIASES}


def assert_all_paired(case) -> dict[str, tuple[str | None, str | None]]:
    """Every alias on both models, as the registry holds it, is a pair (both tags agree)."""
    state = raw_state(case)
    for alias, (cv, iv) in state.items():
        if cv is None and iv is None:
            continue
        assert cv is not None and iv is not None, f"@{alias} half set: {state}"
        assert case.client.get_model_version(case.idx, iv).tags["classifier_version"] == cv, (alias, state)
        assert case.client.get_model_version(case.cls, cv).tags["paired_index_version"] == iv, (alias, state)
    return state


def seen_by_loaders(case) -> dict[str, tuple[str, str] | None]:
    """What every loader resolves each alias to (``resolve_pair``: journal snapshot while a move is open)."""
    from fashionops.registry.aliases import AliasNotSet, resolve_pair

    seen: dict[str, tuple[str, str] | None] = {}
    for alias in ALIASES:
        try:
            seen[alias] = resolve_pair(case.client, case.params.register, alias)
        except AliasNotSet:
            seen[alias] = None
    return seen


def no_lock_left(case) -> bool:
    from fashionops.registry.transaction import lock_name, read_lock

    return read_lock(case.client, lock_name(case.params.register)) is None


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


OLD = {"champion": ("2", "2"), "previous": ("1", "1"), "challenger": None}
NEW = {"champion": ("3", "3"), "previous": ("2", "2"), "challenger": None}


def _kill_steps():
    fast = {"alias:{c}@champion", "committed"}
    steps = [
        "logged",
        "registered-classifier",
        "registered",
        "locked",
        "compared",
        "journal",
        "alias:{c}@previous",
        "alias:{i}@previous",
        "alias:{c}@champion",
        "alias:{i}@champion",
        "aliases",
        "committed",
        "released",
    ]
    return [pytest.param(s, marks=() if s in fast else pytest.mark.slow, id=s) for s in steps]


# --------------------------------------------------------------------------- kills
@pytest.mark.parametrize("step", _kill_steps())
def test_register_killed_at_each_step_leaves_pairs_and_rollback_reaches_last_good(seed, step):
    case = make_case(seed)
    step = step.format(c=case.cls, i=case.idx)
    proc = fashionops(candidate_params(seed, case, +0.1, "killed"), "register", fault=f"kill:{step}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]

    done = step in ("committed", "released")
    expected = NEW if done else OLD
    # Before anything repairs the registry, every loader sees one whole pair: the old or the new.
    assert seen_by_loaders(case) == expected
    if step == "registered-classifier":
        # The orphan classifier version has no index: promote refuses it with one line.
        promote = fashionops(case_params_file(case), "promote", "--version", "3", "--reason", "orphan")
        assert promote.returncode == 1
        assert "has no paired" in one_line_error(promote.stderr)

    # The next writer restores (or keeps a committed) journal first; rollback reaches the last good pair.
    proc = fashionops(case_params_file(case), "rollback", "--reason", f"after kill at {step}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = assert_all_paired(case)
    assert state["champion"] == expected["previous"] and state["previous"] == expected["champion"]
    assert no_lock_left(case)
    # Versions of the killed register hold no alias unless it committed.
    held = {v for pair in state.values() for v in pair}
    assert done or "3" not in held


def test_clean_register_after_a_kill_between_the_champion_aliases(seed):
    """The issue's case: killed after the classifier's @champion moved, before the index's."""
    case = make_case(seed)
    proc = fashionops(candidate_params(seed, case, +0.1, "killed"), "register", fault=f"kill:alias:{case.cls}@champion")
    assert proc.returncode == -signal.SIGKILL
    assert raw_state(case)["champion"] == ("3", "2")  # the mix the registry holds for now...
    assert seen_by_loaders(case) == OLD  # ...is never what a loader gets

    proc = fashionops(candidate_params(seed, case, +0.1, "clean"), "register")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((case.dir / "clean-reports" / "register" / "result.json").read_text())
    assert result["decision"] == "promoted" and result["previous_champion"] == "2"
    new = (result["classifier"]["version"], result["index"]["version"])
    state = assert_all_paired(case)
    assert state["champion"] == new and state["previous"] == ("2", "2")
    assert seen_by_loaders(case)["champion"] == new
    assert no_lock_left(case)


def test_a_loader_repairs_the_aliases_of_a_killed_register(seed, tmp_path):
    """A loader (here `fashionops pull`) after the kill rolls the dead holder's journal back first:
    the raw aliases are whole again without waiting for the next writer."""
    case = make_case(seed)
    proc = fashionops(candidate_params(seed, case, +0.1, "killed"), "register", fault=f"kill:alias:{case.cls}@champion")
    assert proc.returncode == -signal.SIGKILL
    assert raw_state(case)["champion"] == ("3", "2")
    proc = fashionops(case_params_file(case), "pull", "--alias", "champion", "--dest", str(tmp_path / "pulled"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = assert_all_paired(case)
    assert (state["champion"], state["previous"]) == (OLD["champion"], OLD["previous"])
    assert no_lock_left(case)
    manifest = json.loads((tmp_path / "pulled" / "manifest.json").read_text())
    assert (manifest["classifier"]["version"], manifest["index"]["version"]) == OLD["champion"]


def test_promote_killed_mid_move_then_rollback(seed):
    """promote gets the same protection; a rollback after a promote reaches the last good pair."""
    case = make_case(seed)
    params_file = case_params_file(case)
    proc = fashionops(
        params_file, "promote", "--version", "1", "--reason", "r", fault=f"kill:alias:{case.cls}@champion"
    )
    assert proc.returncode == -signal.SIGKILL
    assert seen_by_loaders(case) == OLD
    proc = fashionops(params_file, "promote", "--version", "1", "--reason", "reviewer")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert assert_all_paired(case)["champion"] == ("1", "1")
    proc = fashionops(params_file, "rollback", "--reason", "canary")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = assert_all_paired(case)
    assert state["champion"] == ("2", "2") and state["previous"] == ("1", "1")


# --------------------------------------------------------------------------- races
def _wait_for(predicate, what: str, procs, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc, log in procs:
            if proc.poll() is not None:
                raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _start(params_file: Path, log: Path, fault: str | None = None, pause: Path | None = None) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "fashionops.cli", "register", "--params", str(params_file)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=_env(fault, pause),
            cwd=REPO,
        )


def _result(case, name: str) -> dict:
    return json.loads((case.dir / f"{name}-reports" / "register" / "result.json").read_text())


@pytest.mark.parametrize("pause_at", ["alias:{c}@champion", pytest.param("registered", marks=pytest.mark.slow)])
def test_two_racing_registers_serialise(seed, pause_at):
    """A (better) pauses at a step; B runs meanwhile; both finish. B decides against A's result
    when A held the lock first, A decides against B's when A paused before the lock."""
    case = make_case(seed)
    pause_at = pause_at.format(c=case.cls)
    pause = case.dir / "pause"
    a_log, b_log = case.dir / "a.log", case.dir / "b.log"
    a = _start(candidate_params(seed, case, +0.2, "a"), a_log, f"pause:{pause_at}", pause)
    b = None
    try:
        _wait_for(lambda: Path(f"{pause}.reached").exists(), f"A at {pause_at}", [(a, a_log)])
        assert seen_by_loaders(case) == OLD
        b = _start(candidate_params(seed, case, +0.1, "b"), b_log)
        if pause_at == "registered":  # A has not taken the lock: B runs to the end
            assert b.wait(timeout=300) == 0, b_log.read_text()[-3000:]
        else:  # A holds the lock: B waits for it
            _wait_for(lambda: "waiting for registry lock" in b_log.read_text(), "B waiting", [(b, b_log)])
        pause.touch()
        assert a.wait(timeout=300) == 0, a_log.read_text()[-3000:]
        assert b.wait(timeout=300) == 0, b_log.read_text()[-3000:]
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
    ra, rb = _result(case, "a"), _result(case, "b")
    pa = (ra["classifier"]["version"], ra["index"]["version"])
    pb = (rb["classifier"]["version"], rb["index"]["version"])
    state = assert_all_paired(case)
    assert ra["decision"] == "promoted" and state["champion"] == pa
    if pause_at == "registered":
        # B promoted first; A compared with B (not with the old v2) and B became @previous.
        assert rb["decision"] == "promoted"
        assert ra["champion_metric"] == pytest.approx(seed.m0 + 0.1)
        assert state["previous"] == pb and state["challenger"] == (None, None)
        last_good = pb
    else:
        # B compared with A's result (not with the old v2) and lost.
        assert rb["decision"] == "challenger"
        assert rb["champion_metric"] == pytest.approx(seed.m0 + 0.2)
        assert state["previous"] == ("2", "2") and state["challenger"] == pb
        last_good = ("2", "2")
    assert no_lock_left(case)
    proc = fashionops(case_params_file(case), "rollback", "--reason", "after race")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert assert_all_paired(case)["champion"] == last_good


# --------------------------------------------------------------------------- stale and live locks
def _fake_lock(case, *, host: str, pid: int, heartbeat: float, snapshot: dict | None, state: str) -> None:
    from fashionops.registry.transaction import lock_name

    tags = {
        "holder.token": uuid.uuid4().hex,
        "holder.host": host,
        "holder.pid": str(pid),
        "holder.command": "register",
        "holder.started_at": "then",
        "heartbeat": f"{heartbeat:.3f}",
        "journal.state": state,
    }
    if snapshot is not None:
        tags["journal.aliases"] = json.dumps(snapshot)
    case.client.create_registered_model(lock_name(case.params.register), tags=tags)


def test_stale_lock_of_a_silent_host_is_rolled_back_by_the_next_writer(seed):
    from fashionops.registry.aliases import rollback

    case = make_case(seed)
    snapshot = {
        f"{m}@{a}": v
        for m in (case.cls, case.idx)
        for a, v in (("champion", "2"), ("previous", "1"), ("challenger", None))
    }
    _fake_lock(case, host="another-host", pid=1, heartbeat=time.time() - 7200, snapshot=snapshot, state="open")
    case.client.set_registered_model_alias(case.cls, "champion", "1")  # half a move by the dead holder
    assert seen_by_loaders(case) == OLD
    out = rollback(case.params.register, case.params.tracking, reason="after stale lock")
    assert out["before"]["champion"] == {"classifier": "2", "index": "2"}  # restored first
    state = assert_all_paired(case)
    assert state["champion"] == ("1", "1") and state["previous"] == ("2", "2")
    assert no_lock_left(case)


def test_live_holder_makes_a_writer_wait_then_give_up(seed):
    from fashionops.registry.aliases import RegistryError
    from fashionops.registry.transaction import RegistryTransaction

    case = make_case(seed)
    _fake_lock(case, host=os.uname().nodename, pid=os.getpid(), heartbeat=time.time(), snapshot=None, state="none")
    with pytest.raises(RegistryError, match="is held by pid"):
        with RegistryTransaction(case.client, case.params.register, "test", wait_s=0.5):
            pass
    assert raw_state(case)["champion"] == ("2", "2")


# --------------------------------------------------------------------------- loaders refuse
def test_loaders_refuse_a_hand_made_unpaired_alias(seed, tmp_path, shared_catalogue):
    from fashionops.registry.aliases import RegistryError
    from fashionops.serving.loader import registry_fingerprint

    case = make_case(seed)
    case.client.set_registered_model_alias(case.idx, "champion", "1")  # classifier v2 + index v1
    params_file = case_params_file(case)
    images = [str(p) for p in sorted((shared_catalogue / "images").glob("*.jpg"))[:1]]

    smoke = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "deploy_smoke.py"), "--params", str(params_file), "--images", *images],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert smoke.returncode != 0
    assert "Traceback" not in smoke.stderr
    failed = [line for line in smoke.stderr.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "@champion is not a pair" in failed[0], smoke.stderr[-3000:]

    pull = fashionops(params_file, "pull", "--alias", "champion", "--dest", str(tmp_path / "pulled"))
    assert pull.returncode == 1
    assert "@champion is not a pair" in one_line_error(pull.stderr)
    assert not (tmp_path / "pulled").exists()

    with pytest.raises(RegistryError, match="not a pair"):
        registry_fingerprint(case.params.register, case.params.tracking, "champion")

    # rollback reaches the last good pair; @previous is dropped rather than given the unpaired one
    proc = fashionops(params_file, "rollback", "--reason", "unpaired champion")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = assert_all_paired(case)
    assert state["champion"] == ("1", "1") and state["previous"] == (None, None)
