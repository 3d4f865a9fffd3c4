"""Promotion history: every alias move of the classifier/index pair, append-only, kept in MLflow.

Each :class:`~fashionops.registry.transaction.RegistryTransaction` that moves an alias (``register``,
``promote``, ``rollback``, the index refresh) records ONE event: time (UTC), action, decision,
actor (``flow run <id>`` inside a Prefect flow, else the OS user), reason, every alias of both
models that changed (``from -> to`` version) and the metric comparison behind the decision.

Where it lives (the same on every backend: a SQLite file, a tracking server with PostgreSQL):

* an experiment ``<register.classifier_name>.alias-history`` with one run per event: params (the
  event's fields, immutable in MLflow), tags (``action``, ``actor``, ..., ``event``: the whole
  event as JSON). A run is never changed after it ends, so the experiment is the append-only log,
  browsable in the MLflow UI;
* model-version tags, journaled with the moves (restored when the moves are undone):
  ``alias_history.last`` (one-line summary of the latest event that moved an alias to or from the
  version) and ``alias_history.last_run_id``; the registered models get the same two tags once the
  moves are committed.

A transaction opens its event run (``RUNNING``) before its journal, names it in the journal
(``journal.event_run``) and ends it after the moves: ``FINISHED`` with ``outcome=committed``, or
``FAILED`` with ``outcome=reverted`` when the moves were undone, by the process itself or, after a
kill, by whoever repairs the journal. Only finished (committed) events are the history, so an undone
or killed move never shows as a move. :func:`print_history` (``fashionops history``) prints it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fashionops.config import RegisterConfig, TrackingConfig
from fashionops.errors import FashionOpsError
from fashionops.registry.aliases import (
    canonical_metric_name,
    model_version,
    now,
    reader_client,
    user,
    version_metric,
)
from fashionops.run_lineage import flow_run_id
from fashionops.tracking import tracking_unreachable

log = logging.getLogger(__name__)

HISTORY_SUFFIX = ".alias-history"
LAST_TAG, LAST_RUN_TAG = "alias_history.last", "alias_history.last_run_id"
EVENT_TAG, OUTCOME_TAG, NOTE_TAG = "event", "outcome", "outcome_note"
JOURNAL_EVENT_TAG = "journal.event_run"  # on the registry lock: the event of the open journal
COMMITTED, REVERTED = "committed", "reverted"
REASON_MAX = 1000  # characters of a reason kept (a tag holds 8000, the whole event must fit)
PAGE = 1000  # runs per search page


# --------------------------------------------------------------------------- building an event
def history_experiment(cfg: RegisterConfig) -> str:
    """The experiment that holds the alias history of ``cfg``'s pair of registered models."""
    return cfg.classifier_name + HISTORY_SUFFIX


def actor() -> str:
    """Who moves aliases: ``flow run <id>`` inside a Prefect flow (or a stage it started), else the
    OS user name."""
    run = flow_run_id()
    return f"flow run {run}" if run else user()


def compare_versions(
    client: Any, cfg: RegisterConfig, candidate: str | None, champion: str | None
) -> dict[str, Any] | None:
    """The selection metric (``register.selection_metric``) of classifier ``candidate`` against
    ``champion`` as their ``metric.*`` tags hold it; None without a champion or a candidate."""
    if candidate is None or champion is None or candidate == champion:
        return None
    metric = canonical_metric_name(cfg.selection_metric)
    cand_mv = model_version(client, cfg.classifier_name, candidate)
    champ_mv = model_version(client, cfg.classifier_name, champion)
    split = "split_fingerprint"
    return {
        "metric": metric,
        "candidate_version": str(candidate),
        "candidate": version_metric(cand_mv, metric),
        "champion_version": str(champion),
        "champion": version_metric(champ_mv, metric),
        "same_split": cand_mv.tags.get(split) is not None and cand_mv.tags.get(split) == champ_mv.tags.get(split),
    }


def alias_moves(snapshot: dict[str, str | None], moves: list[tuple[str, str, str | None]]) -> list[dict[str, Any]]:
    """Each alias that ``moves`` change, ``{"model", "alias", "from", "to"}`` (versions or None), in
    the order of its first move; an alias left where it was is not a move."""
    final: dict[tuple[str, str], str | None] = {}
    for model, alias, target in moves:
        final[(model, alias)] = None if target is None else str(target)
    out = []
    for (model, alias), target in final.items():
        before = snapshot.get(f"{model}@{alias}")
        if before != target:
            out.append({"model": model, "alias": alias, "from": before, "to": target})
    return out


def new_event(
    command: str,
    info: dict[str, Any] | None,
    cfg: RegisterConfig,
    snapshot: dict[str, str | None],
    moves: list[tuple[str, str, str | None]],
) -> dict[str, Any] | None:
    """The event of a transaction about to make ``moves`` from ``snapshot``; None when no alias
    changes (a no-op is not a move). ``info`` (from the caller): ``action``, ``decision``,
    ``reason``, ``comparison`` and any extra fields (``pipeline_run_id``, ...)."""
    changed = alias_moves(snapshot, moves)
    if not changed:
        return None
    info = dict(info or {})
    reason = str(info.pop("reason", "") or "")
    event = {
        "time": now(),
        "action": str(info.pop("action", command)),
        "decision": str(info.pop("decision", "")),
        "actor": actor(),
        "user": user(),
        "reason": reason[:REASON_MAX],
        "models": {"classifier": cfg.classifier_name, "index": cfg.index_name},
        "moves": changed,
        "comparison": info.pop("comparison", None),
        **info,
    }
    return event


def describe_move(move: dict[str, Any]) -> str:
    """``@champion v1 -> v3`` (``-`` where the alias did not / does not exist)."""
    old = f"v{move['from']}" if move["from"] is not None else "-"
    new = f"v{move['to']}" if move["to"] is not None else "-"
    return f"@{move['alias']} {old} -> {new}"


def describe_comparison(comparison: dict[str, Any] | None) -> str:
    """``test/macro_f1 0.8612 (v3) vs 0.8500 (v1), min_delta 0.005``; ``""`` without one."""
    if not comparison:
        return ""

    def value(key: str) -> str:
        v = comparison.get(key)
        return "n/a" if v is None else f"{float(v):.4f}"

    text = (
        f"{comparison.get('metric')} {value('candidate')} (v{comparison.get('candidate_version')}) vs "
        f"{value('champion')} (v{comparison.get('champion_version')})"
    )
    if comparison.get("min_delta") is not None:
        text += f", min_delta {comparison['min_delta']}"
    if comparison.get("rescored"):
        text += ", champion re-scored on this split"
    elif comparison.get("same_split") is False:
        text += ", different test splits"
    return text


def summary(event: dict[str, Any], model: str | None = None) -> str:
    """One line for a tag: time, action (decision), the moves (of ``model`` only if given), actor."""
    moves = [m for m in event["moves"] if model is None or m["model"] == model]
    decision = f" ({event['decision']})" if event.get("decision") else ""
    moved = ", ".join(describe_move(m) for m in moves)
    text = f"{event['time']} {event['action']}{decision}: {moved} by {event['actor']}"
    return text + (f": {event['reason']}" if event.get("reason") else "")


def version_tags(event: dict[str, Any], run_id: str) -> list[tuple[str, str, str, str]]:
    """``(model, version, key, value)`` tags for every version an alias moved to or from."""
    tags: list[tuple[str, str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for move in event["moves"]:
        for version in (move["from"], move["to"]):
            if version is None or (move["model"], version) in seen:
                continue
            seen.add((move["model"], version))
            text = summary(event, move["model"])[:5000]
            tags += [(move["model"], version, LAST_TAG, text), (move["model"], version, LAST_RUN_TAG, run_id)]
    return tags


# --------------------------------------------------------------------------- the event runs
def _artifact_location(client: Any) -> str | None:
    """Next to a SQLite store (never ``./mlruns`` of whatever directory a command runs in); a
    server chooses its own."""
    uri = str(getattr(client, "tracking_uri", "") or "")
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(unquote(urlsplit(uri).path))
    return (db.parent / "alias-history").resolve().as_uri()


def experiment_id(client: Any, cfg: RegisterConfig, create: bool) -> str | None:
    """The history experiment's id (created when ``create``); None when it does not exist."""
    from mlflow.exceptions import MlflowException

    from fashionops.tracking import EXPERIMENT_TAGS

    name = history_experiment(cfg)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    if not create:
        return None
    try:
        return str(client.create_experiment(name, artifact_location=_artifact_location(client), tags=EXPERIMENT_TAGS))
    except MlflowException:
        exp = client.get_experiment_by_name(name)  # created concurrently
        if exp is None:
            raise
        return str(exp.experiment_id)


def open_event(client: Any, cfg: RegisterConfig, event: dict[str, Any]) -> str:
    """Start the event's run (``RUNNING``: not history yet); returns its id."""
    from mlflow.entities import Param, RunTag

    exp = experiment_id(client, cfg, create=True)
    moves = "; ".join(f"{m['model']} {describe_move(m)}" for m in event["moves"])
    tags = {
        "mlflow.runName": f"{event['action']}-{event['time'][:19].replace(':', '')}",
        "mlflow.user": event["user"],
        "action": event["action"],
        "decision": event["decision"],
        "actor": event["actor"],
        "classifier_name": cfg.classifier_name,
        "index_name": cfg.index_name,
        "mlflow.note.content": summary(event)[:5000],
    }
    run = client.create_run(exp, tags=tags)
    run_id = str(run.info.run_id)
    doc = {**event, "run_id": run_id}
    params = {
        "time": event["time"],
        "action": event["action"],
        "decision": event["decision"],
        "actor": event["actor"],
        "reason": event["reason"][:500] or "-",
        "moves": moves[:5000],
        "comparison": describe_comparison(event.get("comparison"))[:500] or "-",
    }
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(EVENT_TAG, json.dumps(doc, sort_keys=True, default=str))],
    )
    return run_id


def close_event(client: Any, run_id: str, outcome: str, note: str = "") -> None:
    """End a still-running event run: ``committed`` -> FINISHED (part of the history), anything
    else -> FAILED; a run that already ended is left alone (append-only)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return  # never created (the writer died first)
    if run.info.status != "RUNNING":
        return
    client.set_tag(run_id, OUTCOME_TAG, outcome)
    if note:
        client.set_tag(run_id, NOTE_TAG, note)
    client.set_terminated(run_id, "FINISHED" if outcome == COMMITTED else "FAILED")


def settle_journal_event(client: Any, lock_tags: dict[str, str], outcome: str, note: str) -> None:
    """End the event run named by a (stale) lock's journal, if any, as ``outcome``."""
    run_id = lock_tags.get(JOURNAL_EVENT_TAG)
    if run_id:
        try:
            close_event(client, run_id, outcome, note)
        except Exception:  # the aliases matter more than their history
            log.warning("could not end alias-history event run %s", run_id, exc_info=True)


def tag_models(client: Any, event: dict[str, Any], run_id: str) -> None:
    """The latest event's summary on each registered model it moved (best effort: the event run
    and the journaled version tags are the record)."""
    for model in dict.fromkeys(m["model"] for m in event["moves"]):
        try:
            client.set_registered_model_tag(model, LAST_TAG, summary(event, model)[:5000])
            client.set_registered_model_tag(model, LAST_RUN_TAG, run_id)
        except Exception:  # a tag is a convenience; the event run is the record
            log.warning("could not tag registered model %s with its alias history", model, exc_info=True)


# --------------------------------------------------------------------------- reading
def read_history(
    client: Any, cfg: RegisterConfig, model: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Committed events of ``cfg``'s pair, oldest first; with ``model``: those that moved one of
    its aliases, with only its moves; ``limit``: the latest ``limit`` of them."""
    if model is not None and model not in (cfg.classifier_name, cfg.index_name):
        raise FashionOpsError(
            f"--model {model!r}: not one of the registered pair ({cfg.classifier_name}, {cfg.index_name}; "
            "register.classifier_name / register.index_name)"
        )
    exp = experiment_id(client, cfg, create=False)
    if exp is None:
        return []
    events: list[dict[str, Any]] = []
    token = None
    while True:
        page = client.search_runs(
            [exp],
            filter_string=f"attributes.status = 'FINISHED' and tags.{OUTCOME_TAG} = '{COMMITTED}'",
            order_by=["attributes.start_time ASC"],
            max_results=PAGE,
            page_token=token,
        )
        for run in page:
            text = run.data.tags.get(EVENT_TAG)
            if not text:
                continue
            event = json.loads(text)
            if model is not None:
                event["moves"] = [m for m in event["moves"] if m["model"] == model]
                if not event["moves"]:
                    continue
            events.append(event)
        token = page.token
        if not token:
            break
    events.sort(key=lambda e: str(e.get("time", "")))  # start times of one second may tie
    return events[-limit:] if limit else events


def format_table(events: list[dict[str, Any]]) -> str:
    """The events as a table, oldest first: one row per alias move, the event's time, action,
    actor on its first row; its reason and metric comparison on indented lines below."""
    if not events:
        return "no alias moves recorded (moves made before the alias history existed are not in it)"
    width = max(len(m["model"]) for e in events for m in e["moves"])
    head = f"{'TIME (UTC)':<20} {'ACTION':<22} {'MODEL':<{width}} {'ALIAS':<11} {'FROM -> TO':<12} ACTOR"
    lines = [head, "-" * len(head)]
    for event in events:
        action = event["action"] + (f" ({event['decision']})" if event.get("decision") else "")
        for i, move in enumerate(event["moves"]):
            old = f"v{move['from']}" if move["from"] is not None else "-"
            new = f"v{move['to']}" if move["to"] is not None else "-"
            first = i == 0
            lines.append(
                f"{(event['time'][:19].replace('T', ' ') if first else ''):<20} {(action if first else ''):<22} "
                f"{move['model']:<{width}} {move['alias']:<11} {old + ' -> ' + new:<12} "
                f"{event['actor'] if first else ''}".rstrip()
            )
        if event.get("reason"):
            lines.append(f"{'':<20} reason: {event['reason']}")
        comparison = describe_comparison(event.get("comparison"))
        if comparison:
            lines.append(f"{'':<20} metric: {comparison}")
    return "\n".join(lines)


def load_history(
    register_cfg: RegisterConfig, tracking_cfg: TrackingConfig, model: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """:func:`read_history` on the configured store; one-line error when the server does not answer."""
    try:
        return read_history(reader_client(tracking_cfg), register_cfg, model, limit)
    except Exception as exc:
        unreachable = tracking_unreachable(exc, "fashionops history")
        if unreachable is not None:
            raise unreachable from exc
        raise


def print_history(
    register_cfg: RegisterConfig, tracking_cfg: TrackingConfig, model: str | None, limit: int | None, as_json: bool
) -> None:
    """``fashionops history``: print the alias moves of the pair (or of ``model``), oldest first,
    as a table or (``as_json``) a JSON list of events."""
    events = load_history(register_cfg, tracking_cfg, model, limit)
    # the command's output (a table or JSON on stdout), not a log record
    sys.stdout.write((json.dumps(events, indent=2, default=str) if as_json else format_table(events)) + "\n")
