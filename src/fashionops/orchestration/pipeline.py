"""Orchestration helpers: run the DVC pipeline stage by stage from a workspace.

Plain functions that the Prefect flows (``flows/``) wrap in tasks; nothing here imports Prefect.

* :func:`workspace_lock` - one pipeline run per workspace at a time (``dvc.lock`` and the stage
  outputs are shared state; DVC's own lock fails at once instead of waiting).
* :func:`flow_overrides` / :func:`apply_overrides` - typed run parameters become
  ``section.key=value`` overrides, validated by ``fashionops.config`` and written into
  ``params.yaml`` with comments kept (what ``dvc exp run -S`` does), so DVC sees them as params.
* :func:`run_stage` - ``dvc repro --single-item <stage>``: DVC decides whether the stage runs
  (changed deps/params) or is skipped; each output line goes to a callback (the run logger).
* :class:`StageFailed` / :func:`is_transient` - what failed, and whether a retry can help
  (I/O errors, an unreachable tracking server) or not (a failed validation, a bad parameter).
* :func:`save_experiment` - ``dvc exp save`` so a run is traceable to code, params and data.
* :func:`collect_reports` and the ``*_markdown``/``*_table`` helpers - what the flow publishes.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fashionops.config import Params, load_params
from fashionops.errors import FashionOpsError

STAGES: tuple[str, ...] = ("validate", "prepare", "train", "evaluate", "index", "register")
LOCK_NAME = "fashionops-pipeline.lock"
# Where the MLflow UI is served (`make mlflow-ui`); only used to build links.
MLFLOW_UI_ENV = "FASHIONOPS_MLFLOW_UI"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"

LogFn = Callable[[str], None]

# Output that means "try again later": I/O and network trouble, a busy store, a remote tracking
# server that is down. Matched against the stage's output (tracebacks and `error:` lines).
TRANSIENT_PATTERNS: tuple[str, ...] = (
    r"\bOSError\b", r"\bIOError\b", r"Input/output error", r"\bEIO\b", r"No space left on device",
    r"ConnectionError", r"ConnectionRefusedError", r"Connection refused", r"Connection reset",
    r"ConnectTimeout", r"ReadTimeout", r"TimeoutError", r"timed out", r"Temporary failure",
    r"Max retries exceeded", r"Name or service not known", r"unreachable", r"database is locked",
    r"API request to .* failed", r"503 Service Unavailable", r"502 Bad Gateway",
    r"Unable to acquire lock",  # DVC's repo lock held by a process outside our workspace lock
)
# Expected failures that no retry can fix, whatever else the output says.
PERMANENT_PATTERNS: tuple[str, ...] = (
    r"invalid configuration", r"unknown key", r"expectation", r"ValidationFailed", r"\bDataError\b",
)


class PipelineError(FashionOpsError):
    """The orchestration itself failed (lock, overrides, DVC bookkeeping)."""


class WorkspaceBusy(PipelineError):
    """Another pipeline run holds the workspace lock."""


class StageFailed(PipelineError):
    """A stage exited non-zero; ``message`` is the stage's own error line(s)."""

    def __init__(self, stage: str, returncode: int, message: str, transient: bool, tail: list[str]):
        self.stage = stage
        self.returncode = returncode
        self.message = message
        self.transient = transient
        self.tail = tail
        kind = "transient failure" if transient else "failed"
        super().__init__(f"stage '{stage}' {kind} (exit {returncode}): {message}")


# ---------------------------------------------------------------------------------------------
# locking


@contextmanager
def workspace_lock(workspace: str | Path, timeout_s: float = 3600.0, owner: str = "",
                   log: LogFn | None = None) -> Iterator[Path]:
    """Hold the workspace's pipeline lock (``.dvc/tmp/fashionops-pipeline.lock``) for the block.

    Waits up to ``timeout_s`` seconds (polling) for another run to finish; then raises
    :class:`WorkspaceBusy` naming the holder (``owner`` of the other run, its pid and since when).
    """
    from filelock import FileLock, Timeout

    ws = Path(workspace).resolve()
    tmp = ws / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / LOCK_NAME
    info = tmp / (LOCK_NAME + ".owner")
    lock = FileLock(str(path), timeout=timeout_s)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = info.read_text().strip() if info.is_file() else "unknown"
        if log:
            log(f"workspace {ws} is busy ({holder}); waiting up to {timeout_s:.0f} s")
        try:
            lock.acquire(timeout=timeout_s, poll_interval=0.5)
        except Timeout:
            holder = info.read_text().strip() if info.is_file() else "unknown"
            raise WorkspaceBusy(
                f"another pipeline run holds {path} ({holder}); waited {timeout_s:.0f} s. "
                "Wait for it to finish, or raise the lock timeout."
            ) from None
    try:
        info.write_text(f"owner={owner or '-'} pid={os.getpid()} since={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        yield path
    finally:
        info.unlink(missing_ok=True)
        lock.release()


# ---------------------------------------------------------------------------------------------
# parameters


def flow_overrides(
    label: str | None = None,
    min_images_per_class: int | None = None,
    backbone: str | None = None,
    preset: str | None = None,
    epochs: int | None = None,
    image_height: int | None = None,
    image_width: int | None = None,
    balance: str | None = None,
    promote: bool | None = None,
    data_limit: int | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """``section.key=value`` overrides for the run parameters that are set (None: keep params.yaml)."""
    mapping = (
        ("prepare.label", label), ("prepare.min_images_per_class", min_images_per_class),
        ("train.backbone", backbone), ("train.preset", preset), ("train.epochs", epochs),
        ("prepare.image_height", image_height), ("prepare.image_width", image_width),
        ("prepare.balance", balance), ("register.promote", promote), ("data.limit", data_limit),
    )
    out = [f"{key}={json.dumps(value)}" for key, value in mapping if value is not None]
    return out + list(extra or [])


def apply_overrides(workspace: str | Path, overrides: list[str]) -> dict[str, list[Any]]:
    """Write ``overrides`` into ``<workspace>/params.yaml`` keeping comments and layout.

    Validated first with :func:`fashionops.config.load_params` (a typo or a wrong type raises
    ``ConfigError`` naming the key and nothing is written). Returns ``{"section.key": [old, new]}``
    for the values that actually changed (DVC only reruns stages whose params changed).
    """
    from ruamel.yaml import YAML

    from fashionops.config import parse_override

    path = Path(workspace) / "params.yaml"
    if not overrides:
        return {}
    load_params(path, overrides)  # raises ConfigError before anything is written
    yaml = YAML()  # round-trip: comments, key order and flow style are kept
    yaml.preserve_quotes = True
    yaml.width = 4096
    # Write None as `null` like the file does, not as an empty value.
    yaml.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    data = yaml.load(path.read_text()) if path.is_file() else None
    if data is None:
        from ruamel.yaml.comments import CommentedMap

        data = CommentedMap()
    changed: dict[str, list[Any]] = {}
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        old = node.get(parts[-1], None)
        if old != value or parts[-1] not in node:
            node[parts[-1]] = value
            changed[".".join(parts)] = [_plain(old), value]
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as fh:
            yaml.dump(data, fh)
        os.replace(tmp, path)  # never a half-written params.yaml
    return changed


def _plain(value: Any) -> Any:
    """ruamel's commented containers as plain JSON-able values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def workspace_params(workspace: str | Path) -> Params:
    """The workspace's ``params.yaml`` (paths in it are relative to the workspace)."""
    return load_params(Path(workspace) / "params.yaml")


# ---------------------------------------------------------------------------------------------
# running commands


def stage_env(flow_run_id: str | None = None, experiment: str | None = None) -> dict[str, str]:
    """Environment for stage subprocesses: unbuffered output, this interpreter's scripts on PATH,
    ``FASHIONOPS_FLOW_RUN_ID`` and ``DVC_EXP_NAME`` so MLflow tags the run with them."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if flow_run_id:
        env["FASHIONOPS_FLOW_RUN_ID"] = str(flow_run_id)
    if experiment:
        env["DVC_EXP_NAME"] = experiment
    return env


def run_command(args: list[str], cwd: str | Path, env: dict[str, str] | None = None,
                log: LogFn | None = None) -> tuple[int, list[str]]:
    """Run ``args`` in ``cwd``; stream stdout+stderr line by line to ``log``; (exit status, lines)."""
    lines: list[str] = []
    proc = subprocess.Popen(
        args, cwd=str(cwd), env=env or stage_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1, errors="replace",
    )
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if log:
                log(line)
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
    return proc.wait(), lines


def dvc_command(*args: str) -> list[str]:
    """``dvc ...`` with this interpreter's DVC (no reliance on PATH)."""
    return [sys.executable, "-m", "dvc", *args]


def error_message(lines: list[str]) -> str:
    """The stage's own error: the CLI's ``error: ...`` lines, else the last exception line,
    else DVC's ``ERROR:`` line."""
    errors: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("error: "):
            # The message may continue on indented lines (e.g. one failed expectation per line).
            block = [line[len("error: "):]]
            for more in lines[i + 1:]:
                if more.startswith((" ", "\t")) and more.strip():
                    block.append(more.strip())
                else:
                    break
            errors.append("\n".join(block))
    if errors:
        return "\n".join(errors)
    exc_lines = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Failed)\b.*:", ln)]
    if exc_lines:
        return exc_lines[-1]
    dvc_errors = [ln for ln in lines if ln.startswith("ERROR:")]
    if dvc_errors:
        return dvc_errors[-1][len("ERROR:"):].strip()
    tail = [ln for ln in lines if ln.strip()][-3:]
    return " | ".join(tail) or "no output"


def classify_failure(stage: str, lines: list[str]) -> bool:
    """True when a retry can help: output naming I/O or network trouble, and never for a failed
    validation or an invalid parameter (the same data and params fail the same way again)."""
    text = "\n".join(lines)
    message = error_message(lines)
    if stage == "validate" and any(ln.startswith("error: ") for ln in lines):
        return False  # `fashionops validate` exits 1 with `error: ...` for a failed expectation
    if any(re.search(p, message, re.IGNORECASE) for p in PERMANENT_PATTERNS) and not any(
        re.search(p, message) for p in TRANSIENT_PATTERNS
    ):
        return False
    return any(re.search(p, text) for p in TRANSIENT_PATTERNS)


def is_transient(exc: BaseException | None) -> bool:
    """Whether a failure is worth retrying (used by the flows' retry condition)."""
    if isinstance(exc, StageFailed):
        return exc.transient
    if isinstance(exc, (FashionOpsError, ValueError, TypeError, KeyError)):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def run_stage(stage: str, workspace: str | Path, env: dict[str, str] | None = None,
              log: LogFn | None = None, force: bool = False) -> dict[str, Any]:
    """Run one ``dvc.yaml`` stage through DVC (``dvc repro --single-item``).

    DVC skips a stage whose deps, params and outs match ``dvc.lock`` (``status: "skipped"``) or
    restores it from its run cache (``"restored"``); else it runs the command (``"ran"``).
    Raises :class:`StageFailed` with the stage's error message on a non-zero exit.
    """
    if stage not in STAGES:
        raise PipelineError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    args = ["repro", "--single-item", stage] + (["--force"] if force else [])
    start = time.monotonic()
    code, lines = run_command(dvc_command(*args), cwd=workspace, env=env, log=log)
    seconds = round(time.monotonic() - start, 2)
    if code != 0:
        raise StageFailed(stage, code, error_message(lines), classify_failure(stage, lines), lines[-50:])
    text = "\n".join(lines)
    if f"Running stage '{stage}'" in text:
        status = "ran"
    elif "is cached - skipping run" in text:
        status = "restored"
    elif "didn't change, skipping" in text:
        status = "skipped"
    else:
        status = "unknown"
    return {"stage": stage, "status": status, "seconds": seconds}


def ensure_raw_data(workspace: str | Path, source: str | None = None, force: bool = False,
                    env: dict[str, str] | None = None, log: LogFn | None = None) -> dict[str, Any]:
    """Import the catalogue (``fashionops import``) when ``data/raw.dvc`` is missing, or when
    ``force`` (a new ``source`` or a changed ``data.*`` param); otherwise leave it as it is."""
    params = workspace_params(workspace)
    raw = _resolve(workspace, params.data.raw_dir)
    dvc_file = raw.with_name(raw.name + ".dvc")
    if dvc_file.is_file() and not force and not source:
        if raw.exists():
            return {"imported": False, "dvc_file": str(dvc_file)}
        # A fresh clone: the .dvc file is committed but the data is not here yet; fetch it from
        # the DVC remote, and import from a local source only if that fails.
        code, lines = run_command(dvc_command("pull", str(dvc_file)), cwd=workspace, env=env, log=log)
        if code == 0 and raw.exists():
            return {"imported": False, "pulled": True, "dvc_file": str(dvc_file)}
        if log:
            log(f"dvc pull {dvc_file.name} failed ({error_message(lines)}); importing the catalogue instead")
    args = [sys.executable, "-m", "fashionops.cli", "import"] + (["--source", source] if source else [])
    code, lines = run_command(args, cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed("import", code, error_message(lines), classify_failure("import", lines), lines[-50:])
    return {"imported": True, "dvc_file": str(dvc_file)}


def save_experiment(workspace: str | Path, name: str, env: dict[str, str] | None = None,
                    log: LogFn | None = None, message: str | None = None) -> str | None:
    """Record the workspace (code, ``params.yaml``, ``dvc.lock``, and the uncached metrics and
    plots under ``reports/``) as DVC experiment ``name`` (``dvc exp show`` lists it).

    Needs a git repository with a commit; returns the experiment's name, or None (with a log line
    saying why) when it cannot be saved, so a finished pipeline run is never failed by it.
    """
    args = ["exp", "save", "--force", "-n", name]
    for path in _untracked_pipeline_files(workspace):
        args += ["--include-untracked", path]
    if message:
        args += ["-m", message]
    code, lines = run_command(dvc_command(*args), cwd=workspace, env=env, log=log)
    if code != 0:
        if log:
            log(f"dvc exp save failed: {error_message(lines)}")
        return None
    return name


def _untracked_pipeline_files(workspace: str | Path) -> list[str]:
    """Files git does not track yet that an experiment needs: ``dvc.lock``, ``*.dvc``, the
    ``.gitignore`` files DVC writes, and the uncached metrics/plots under ``reports/``."""
    try:
        out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=str(workspace),
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keep = []
    for path in out.splitlines():
        name = Path(path).name
        if name in ("dvc.lock", ".gitignore") or name.endswith(".dvc") or path.startswith("reports/"):
            keep.append(path)
    return keep


def experiment_name(flow_run_name: str | None, prefix: str = "flow") -> str:
    """A DVC experiment name (a valid git ref part) for a flow run."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", flow_run_name or time.strftime("%Y%m%d-%H%M%S")).strip("-")
    return f"{prefix}-{base}" if base else prefix


# ---------------------------------------------------------------------------------------------
# reports and links


def _resolve(workspace: str | Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(workspace) / p


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def mlflow_ui_url() -> str:
    return os.environ.get(MLFLOW_UI_ENV, DEFAULT_MLFLOW_UI).rstrip("/")


def collect_reports(workspace: str | Path) -> dict[str, Any]:
    """What the stages wrote: validation summary, metrics, per-class rows, the MLflow run
    (``run.json``) and the registration result; missing files are None."""
    params = workspace_params(workspace)
    per_class_path = _resolve(workspace, params.evaluate.out_dir) / "per_class.csv"
    per_class = None
    if per_class_path.is_file():
        with per_class_path.open(newline="") as fh:
            per_class = list(csv.DictReader(fh))
    return {
        "validation": _read_json(_resolve(workspace, params.validate.report_dir) / "summary.json"),
        "metrics": _read_json(_resolve(workspace, params.evaluate.out_dir) / "metrics.json"),
        "per_class": per_class,
        "mlflow_run": _read_json(_resolve(workspace, params.train.out_dir) / "run.json"),
        "register": _read_json(_resolve(workspace, params.register.out_path)),
    }


def validation_markdown(summary: dict[str, Any] | None) -> str:
    """Markdown of ``reports/validation/summary.json``: verdict, counts, then one row per
    expectation (whatever its list is called), failures first."""
    if not summary:
        return "# Data validation\n\nNo validation summary was written."
    lines = ["# Data validation", ""]
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    if scalars:
        lines += ["| field | value |", "| --- | --- |"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in scalars.items()]
        lines.append("")
    for key, value in summary.items():
        rows = _rows(value)
        if not rows:
            if isinstance(value, list) and value:
                lines += [f"**{key}**: " + ", ".join(_cell(v) for v in value), ""]
            elif isinstance(value, dict) and value:
                lines += [f"## {key}", "", "| key | value |", "| --- | --- |"]
                lines += [f"| {k} | {_cell(v)} |" for k, v in value.items()]
                lines.append("")
            continue
        rows = sorted(rows, key=lambda r: _passed(r))
        cols = list(dict.fromkeys(c for r in rows for c in r))[:8]
        lines += [f"## {key}", "", "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def _rows(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return [{"name": k, **v} for k, v in value.items()]
    return []


def _passed(row: dict[str, Any]) -> bool:
    for key in ("success", "passed", "ok"):
        if key in row:
            return bool(row[key])
    return True


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def metrics_table(metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``reports/evaluate/metrics.json`` as rows ``{"metric", "value"}`` (nested keys dotted)."""
    rows: list[dict[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append({"metric": prefix, "value": value})

    walk("", metrics or {})
    return rows


def registry_links(register: dict[str, Any] | None, mlflow_run: dict[str, Any] | None,
                   ui: str | None = None) -> list[dict[str, str]]:
    """Links for the MLflow run and every registered model version in ``result.json``.

    Reads ``{"<role>": {"name": ..., "version": ...}}`` entries or a ``versions`` mapping,
    whichever the register stage wrote; each link is ``{"key", "link", "text"}``.
    """
    ui = (ui or mlflow_ui_url()).rstrip("/")
    links: list[dict[str, str]] = []
    if mlflow_run and mlflow_run.get("run_id"):
        exp = mlflow_run.get("experiment_id", "0")
        links.append({"key": "mlflow-run", "text": f"MLflow run {mlflow_run['run_id']}",
                      "link": f"{ui}/#/experiments/{exp}/runs/{mlflow_run['run_id']}"})
    for name, version in registered_versions(register):
        slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        links.append({"key": f"registered-{slug}", "text": f"{name} version {version}",
                      "link": f"{ui}/#/models/{name}/versions/{version}"})
    return links


def registered_versions(register: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(model name, version) pairs found in the register stage's ``result.json``."""
    found: list[tuple[str, str]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            name, version = value.get("name"), value.get("version")
            if isinstance(name, str) and version is not None and not isinstance(version, (dict, list)):
                found.append((name, str(version)))
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(register or {})
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------------------------------------
# index refresh: the champion embedder on a changed catalogue, no retraining

REFRESH_DIR = ".dvc/tmp/index-refresh"  # git- and DVC-ignored; the registry keeps the result


def fetch_champion(params: Params, dest: str | Path, alias: str = "champion") -> dict[str, Any]:
    """Download the classifier version that holds ``alias`` into ``dest``; returns its version and
    the model directory inside it (``weights.pt``, ``model_spec.json``) to embed with."""
    import shutil

    import mlflow

    from fashionops import tracking
    from fashionops.registry import register as registry
    from fashionops.registry.pyfunc import CLASSIFIER_ARTIFACT, artifact_dir

    tracking.configure(params)
    version = registry.alias_state(params).get(alias, {}).get("classifier")
    if version is None:
        raise PipelineError(
            f"no @{alias} version of {params.register.classifier_name} in {tracking.tracking_uri(params)}: "
            "run the training-pipeline flow first")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    local = Path(mlflow.artifacts.download_artifacts(
        f"models:/{params.register.classifier_name}/{version}", dst_path=str(dest)))
    model_dir = artifact_dir(local, CLASSIFIER_ARTIFACT)
    if not (model_dir / "model_spec.json").is_file():
        raise PipelineError(f"classifier v{version} has no {CLASSIFIER_ARTIFACT}/model_spec.json in {local}")
    # Without the training run's run.json the index build logs into a new MLflow run instead of
    # appending to the champion's training run.
    (model_dir / "run.json").unlink(missing_ok=True)
    return {"name": params.register.classifier_name, "version": str(version), "model_dir": str(model_dir)}


def refresh_overrides(workspace: str | Path, embedder_dir: str | Path) -> list[str]:
    """Overrides that build the index with ``embedder_dir`` into ``REFRESH_DIR`` (the DVC-tracked
    ``models/index`` of the training pipeline stays as DVC recorded it)."""
    out = Path(workspace).resolve() / REFRESH_DIR
    return [f"index.embedder_dir={embedder_dir}", f"train.out_dir={embedder_dir}",
            f"index.out_dir={out / 'index'}", f"index.report_dir={out / 'reports'}"]


def _main(argv: list[str] | None = None) -> int:
    """``python -m fashionops.orchestration.pipeline fetch-champion|register-index ...``: the MLflow steps of the
    index refresh, run in the workspace like the stages (its paths, git commit and store)."""
    import argparse

    from fashionops.registry import register as registry

    parser = argparse.ArgumentParser(prog="python -m fashionops.orchestration.pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("fetch-champion")
    sp.add_argument("--dest", required=True)
    sp.add_argument("--alias", default="champion")
    sp = sub.add_parser("register-index")
    sp.add_argument("--index-dir", required=True)
    sp.add_argument("--classifier-version", required=True)
    for sp in sub.choices.values():
        sp.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        params = load_params("params.yaml", args.overrides)
        if args.command == "fetch-champion":
            result = fetch_champion(params, args.dest, args.alias)
        else:
            result = registry.register_index_for(params, args.index_dir, args.classifier_version)
    except FashionOpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("RESULT " + json.dumps(result, default=str))
    return 0


def result_line(lines: list[str]) -> dict[str, Any]:
    """The JSON that :func:`_main` printed."""
    for line in reversed(lines):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise PipelineError("no result printed: " + error_message(lines))


def run_refresh_step(command: list[str], workspace: str | Path, env: dict[str, str] | None = None,
                     log: LogFn | None = None, name: str = "index-refresh") -> dict[str, Any]:
    """Run ``python -m fashionops.orchestration.pipeline <command>`` in the workspace; its result dict."""
    code, lines = run_command([sys.executable, "-m", "fashionops.orchestration.pipeline", *command], cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed(name, code, error_message(lines), classify_failure(name, lines), lines[-50:])
    return result_line(lines)


def build_refresh_index(workspace: str | Path, embedder_dir: str | Path, env: dict[str, str] | None = None,
                        log: LogFn | None = None) -> dict[str, Any]:
    """``fashionops index`` with the champion embedder, outside DVC (the DVC ``index`` stage
    belongs to the trained classifier); returns the index dir and its metrics."""
    args = [sys.executable, "-m", "fashionops.cli", "index"]
    for override in refresh_overrides(workspace, embedder_dir):
        args += ["--set", override]
    code, lines = run_command(args, cwd=workspace, env=env, log=log)
    if code != 0:
        raise StageFailed("index", code, error_message(lines), classify_failure("index", lines), lines[-50:])
    out = Path(workspace).resolve() / REFRESH_DIR
    return {"index_dir": str(out / "index"), "report_dir": str(out / "reports"),
            "metrics": _read_json(out / "reports" / "metrics.json")}


if __name__ == "__main__":
    sys.exit(_main())
