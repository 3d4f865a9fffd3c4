"""The MLflow tracking server stopped in the middle of a pipeline run (issue 15).

A real ``mlflow server`` process (SQLite store, proxied local artifacts, a free port on 127.0.0.1)
tracks a real tiny workspace (git + DVC, 300 real images): the stages run as the training-pipeline
flow runs them (``run_stage``: ``dvc repro --single-item``, the environment carrying
``MLFLOW_TRACKING_URI`` as ``.stack/env`` does), and the first register makes the first champion.
Then a better candidate registers and the server is stopped (SIGTERM) at a chosen step of it
(the registry's test hook ``FASHIONOPS_REGISTER_FAULT=pause:<step>``): register must fail soon,
with one line ``error: ...`` naming the server and saying it is unreachable, the failure must be
transient for the flow (its retry condition), the aliases must be as they were once the server is
back (same store, same port), and the retry must promote the candidate with every alias paired.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "pipeline"))
from _workspace import TINY, catalogue_subset, make_workspace  # noqa: E402

ALIASES = ("champion", "previous", "challenger")
_case = itertools.count(1)
# MLflow's own HTTP retries take ~4 minutes per call to a stopped server; with the project's
# defaults (fashionops.tracking.HTTP_DEFAULTS) the register fails in well under a minute.
NO_HANG_S = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on SQLite + a local artifacts folder (proxied), startable again on the
    same store and port."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self, timeout_s: float = 240) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        args = [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
        ]
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"mlflow server did not come up: {(self.root / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the server's process group (the mlflow CLI and its uvicorn), as a stop does."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # its uvicorn child too
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        self.proc = None
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", self.port)) != 0, "the server still answers"


def stage_env(server: MlflowServer, **extra: str) -> dict[str, str]:
    from fashionops.orchestration.runner import stage_env as runner_env

    env = {k: v for k, v in runner_env().items() if not k.startswith(("FASHIONOPS_REGISTER", "MLFLOW_"))}
    return {**env, "MLFLOW_TRACKING_URI": server.url, **extra}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, shared_catalogue):
    """A server and a workspace whose pipeline ran through register once (the first champion)."""
    from fashionops.orchestration.overrides import apply_overrides, flow_overrides, workspace_params
    from fashionops.orchestration.runner import STAGES, ensure_raw_data, run_stage

    tmp = tmp_path_factory.mktemp("server_faults")
    server = MlflowServer(tmp / "mlflow-server", free_port())
    server.start()
    try:
        catalogue = catalogue_subset(shared_catalogue, tmp / "catalogue")
        ws = make_workspace(tmp / "ws")
        tiny = {key: value for key, value in TINY.items() if key != "overrides"}
        apply_overrides(ws, flow_overrides(**tiny, extra=TINY["overrides"]))
        env = stage_env(server)
        ensure_raw_data(ws, source=str(catalogue), env=env)
        for stage in STAGES:
            run_stage(stage, ws, env=env)
        cfg = workspace_params(ws).register
        metrics = json.loads((ws / "reports" / "evaluate" / "metrics.json").read_text())
        yield SimpleNamespace(server=server, ws=ws, tmp=tmp, cfg=cfg, metrics=metrics)
    finally:
        server.stop()


def client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def raw_aliases(p) -> dict[str, tuple[str | None, str | None]]:
    from fashionops.registry.aliases import alias_version

    c = client(p.server)
    return {a: (alias_version(c, p.cfg.classifier_name, a), alias_version(c, p.cfg.index_name, a)) for a in ALIASES}


def seen_by_loaders(p) -> dict[str, tuple[str, str] | None]:
    from fashionops.registry.aliases import AliasNotSet, resolve_pair

    seen: dict[str, tuple[str, str] | None] = {}
    for alias in ALIASES:
        try:
            seen[alias] = resolve_pair(client(p.server), p.cfg, alias)
        except AliasNotSet:
            seen[alias] = None
    return seen


def assert_all_paired(p) -> dict[str, tuple[str | None, str | None]]:
    state = raw_aliases(p)
    c = client(p.server)
    for alias, (cv, iv) in state.items():
        if cv is None and iv is None:
            continue
        assert cv is not None and iv is not None, f"@{alias} half set: {state}"
        assert c.get_model_version(p.cfg.index_name, iv).tags["classifier_version"] == cv, (alias, state)
        assert c.get_model_version(p.cfg.classifier_name, cv).tags["paired_index_version"] == iv, (alias, state)
    return state


def better_candidate(p, n: int) -> None:
    """Make the next register's candidate better than any champion so far: the same models, the
    selection metric raised (``register.metrics_path``: a params change, so DVC reruns register)."""
    from fashionops.orchestration.overrides import apply_overrides

    metric = p.cfg.selection_metric
    path = p.tmp / f"candidate-{n}-metrics.json"
    path.write_text(json.dumps(dict(p.metrics, **{metric: float(p.metrics[metric]) + 0.1 * n})))
    apply_overrides(p.ws, [f"register.metrics_path={path}"])


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.parametrize("step", ["journal", "logged"])
def test_server_stopped_during_register_fails_in_one_line_keeps_aliases_and_a_retry_succeeds(pipeline, step):
    from fashionops.orchestration.failures import StageFailed, is_transient
    from fashionops.orchestration.runner import run_stage
    from fashionops.registry.transaction import lock_name, read_lock

    p = pipeline
    n = next(_case)
    before = assert_all_paired(p)
    assert before["champion"][0] is not None
    better_candidate(p, n)
    pause = p.tmp / f"pause-{n}"
    env = stage_env(p.server, FASHIONOPS_REGISTER_FAULT=f"pause:{step}", FASHIONOPS_REGISTER_PAUSE_FILE=str(pause))

    outcome: dict[str, BaseException] = {}

    def register() -> None:  # what the flow's `register` task runs
        try:
            run_stage("register", p.ws, env=env)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=register, daemon=True)
    thread.start()
    reached = Path(f"{pause}.reached")
    deadline = time.monotonic() + 300
    while not reached.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reached.exists(), f"register never reached step {step}: {outcome}"

    p.server.stop()
    stopped = time.monotonic()
    pause.write_text("go")
    thread.join(timeout=NO_HANG_S)
    print(f"register failed {time.monotonic() - stopped:.1f} s after the server stopped")
    assert not thread.is_alive(), f"register still waits for the stopped server after {NO_HANG_S} s"

    failure = outcome.get("error")
    assert isinstance(failure, StageFailed), failure
    output = "\n".join(failure.tail)
    assert "Traceback" not in output, output
    errors = [line for line in failure.tail if line.startswith("error:")]
    assert len(errors) == 1, output
    assert p.server.url in errors[0] and "is unreachable" in errors[0], errors[0]
    assert "fashionops register" in errors[0], errors[0]
    print(errors[0])
    # The flow's retry condition: transient, so Prefect retries the task.
    assert failure.transient and is_transient(failure), failure

    p.server.start()  # same store, same port
    # No alias had moved yet at either step: loaders (the journal's snapshot while one is open)
    # and the raw aliases alike show the pairs as they were.
    assert seen_by_loaders(p) == {a: (v if v[0] is not None else None) for a, v in before.items()}
    assert raw_aliases(p) == before
    if step == "journal":  # the dead register's open journal waits for the next writer
        assert read_lock(client(p.server), lock_name(p.cfg)).state == "open"

    # The flow's retry: the same task again (the pause file exists now, so the hook lets it pass).
    result = run_stage("register", p.ws, env=env)
    assert result["status"] == "ran", result
    registered = json.loads((p.ws / "reports" / "register" / "result.json").read_text())
    assert registered["decision"] == "promoted", registered
    new = (registered["classifier"]["version"], registered["index"]["version"])
    after = assert_all_paired(p)
    assert after["champion"] == new and after["previous"] == before["champion"], after
    assert read_lock(client(p.server), lock_name(p.cfg)) is None


def test_a_registry_command_against_a_stopped_server_fails_in_one_line_and_is_transient(tmp_path):
    """Fast: nothing listens on the port; the command must not retry for minutes, and its one
    line must be what the flow's failure classification calls transient."""
    from fashionops.orchestration.failures import StageFailed

    url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FASHIONOPS_REGISTER"))}
    env["MLFLOW_TRACKING_URI"] = url
    proc = subprocess.run(
        [sys.executable, "-m", "fashionops.cli", "rollback", "--params", str(REPO / "params.yaml"), "--reason", "t"],
        capture_output=True,
        text=True,
        env=env,
        timeout=NO_HANG_S,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: MLflow tracking server {url} is unreachable (connection refused) during fashionops "
        "rollback; start it (or fix MLFLOW_TRACKING_URI) and run again"
    ], proc.stderr[-3000:]
    failure = StageFailed.from_output("register", proc.returncode, proc.stderr.splitlines())
    assert failure.transient and url in failure.message
