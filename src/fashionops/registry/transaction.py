"""Registry transactions: a lock and a journal that make every alias change all-or-nothing.

The classifier and index aliases (``champion``, ``previous``, ``challenger``) live on two
registered models, so a pair move is several MLflow calls. Every writer (``register``,
``promote``, ``rollback``, the index refresh) runs them in a :class:`RegistryTransaction`:

* **lock**: a registered model named ``<register.classifier_name>.lock``. Creating a registered
  model fails when the name exists, on every MLflow backend (SQLite, a SQL database, a tracking
  server), so creating it is the compare-and-set; deleting it releases. Its tags name the holder
  (``holder.host``, ``holder.pid``, ``holder.command``, ``holder.started_at``, a ``heartbeat``
  refreshed at each step). The decision (compare with ``@champion``) is taken inside the lock,
  so two racing registers serialise and the second decides against the first one's result.
* **journal**: before the first alias moves, the lock's tags record every alias of both models
  (``journal.aliases``), the old values of the version tags it will change (``journal.tags``)
  and the intended moves; ``journal.state`` goes ``open`` -> ``committed``. A failure in the
  process restores the journal's snapshot at once.
* **recovery**: a lock whose holder is dead (same host, pid gone) or silent for
  :data:`STALE_S` is stale. The next writer restores an ``open`` journal's snapshot (a killed
  process leaves the old state, never a mix; a ``committed`` one is kept), then deletes the lock
  and competes to create it again. Only the process that creates ``<lock>.break-<token>`` may
  break a given stale lock. Waiting for a live holder gives up after :data:`WAIT_S`.
* **tracking server down** mid-transaction: nothing is restored or released (it cannot be); the
  open journal and the lock stay for the next writer, which restores them once this process has
  ended, and loaders read the journal's snapshot meanwhile.
* **history**: :meth:`RegistryTransaction.apply` opens the moves' alias-history event run before
  the journal (``journal.event_run``) and ends it ``committed`` after the moves, or ``reverted``
  when they are undone, here or by the journal repair (:mod:`fashionops.registry.history`).
* **readers** (:func:`fashionops.registry.aliases.resolve_pair`) never write: while a journal is
  open they read the pair from its snapshot, so a loader never sees half a move. Loaders (``serve``
  start and its poller, ``pull``, deploy-smoke) first call :func:`repair_stale_lock`, which rolls a
  dead holder's open journal back, so the raw aliases are whole again without waiting for a writer.

Test hook: ``FASHIONOPS_REGISTER_FAULT="kill:<step>"`` makes ``fashionops register/promote/
rollback`` SIGKILL itself right after step ``<step>``; ``"pause:<step>"`` writes
``$FASHIONOPS_REGISTER_PAUSE_FILE.reached`` there and waits until
``$FASHIONOPS_REGISTER_PAUSE_FILE`` exists. Steps, in order: ``logged``,
``registered-classifier``, ``registered`` (register only), ``locked``, ``compared`` (register,
when there is a champion), ``journal``, ``alias:<model>@<alias>`` after each single alias move,
``aliases``, ``committed``, ``released``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from fashionops.config import RegisterConfig
from fashionops.errors import unreachable_server
from fashionops.pids import pid_alive, start_ticks
from fashionops.registry.aliases import (
    ALIASES,
    RegistryError,
    StepHook,
    alias_version,
    call_hook,
    now,
)
from fashionops.registry.history import (
    COMMITTED,
    JOURNAL_EVENT_TAG,
    REVERTED,
    close_event,
    new_event,
    open_event,
    settle_journal_event,
    tag_models,
    version_tags,
)

log = logging.getLogger(__name__)

WAIT_S = 300.0  # how long a writer waits for a live holder
STALE_S = 1800.0  # a holder silent this long is presumed dead (any host)
MARKER_STALE_S = 60.0  # breaking a lock takes a few calls; a break marker older than this is abandoned
POLL_S = 0.2
FAULT_ENV, PAUSE_FILE_ENV = "FASHIONOPS_REGISTER_FAULT", "FASHIONOPS_REGISTER_PAUSE_FILE"
PAUSE_MAX_S = 600.0

Move = tuple[str, str, str | None]  # (model, alias, version or None to delete)
TagChange = tuple[str, str, str, str]  # (model, version, key, new value)


def lock_name(cfg: RegisterConfig) -> str:
    """The registered model that is the lock of this classifier/index pair of models."""
    return f"{cfg.classifier_name}.lock"


# --------------------------------------------------------------------------- lock records
class LockRecord:
    """A lock (or break marker) as read from the registry."""

    def __init__(self, name: str, tags: dict[str, str], created_ms: int | None) -> None:
        self.name, self.tags = name, tags
        self.token = tags.get("holder.token") or f"created-{created_ms}"
        self.host = tags.get("holder.host", "")
        self.pid = int(tags.get("holder.pid", "0") or 0)
        self.state = tags.get("journal.state", "none")
        self.heartbeat = float(tags.get("heartbeat") or (created_ms or 0) / 1000)

    def stale(self, max_silence_s: float = STALE_S) -> bool:
        """Dead holder on this host, or no heartbeat for ``max_silence_s``."""
        if time.time() - self.heartbeat > max_silence_s:
            return True
        if self.pid and self.host == socket.gethostname():
            started = self.tags.get("holder.pid_start", "")
            return not pid_alive(self.pid, int(started) if started.isdigit() else None)
        return False

    def describe(self) -> str:
        return (
            f"pid {self.pid or '?'} on {self.host or '?'} ({self.tags.get('holder.command', '?')}, "
            f"since {self.tags.get('holder.started_at', '?')})"
        )

    def snapshot(self) -> dict[str, str | None]:
        """``{"model@alias": version or None}`` as it was before the transaction."""
        return dict(json.loads(self.tags.get("journal.aliases", "{}")))

    def old_tags(self) -> list[list[str | None]]:
        """``[model, version, key, old value or None]`` of every version tag the transaction sets."""
        return list(json.loads(self.tags.get("journal.tags", "[]")))


def read_lock(client: Any, name: str) -> LockRecord | None:
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return LockRecord(name, dict(rm.tags or {}), getattr(rm, "creation_timestamp", None))


def open_journal(client: Any, cfg: RegisterConfig) -> LockRecord | None:
    """The lock of ``cfg``'s models when its journal is open (aliases may be half moved), else None."""
    record = read_lock(client, lock_name(cfg))
    return record if record is not None and record.state == "open" else None


def _create(client: Any, name: str, tags: dict[str, str], description: str) -> bool:
    """Create the registered model ``name``: True if this call created it (the compare-and-set)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags=tags, description=description)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    return True


def _delete_quietly(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _holder_tags(command: str) -> dict[str, str]:
    pid = os.getpid()
    return {
        "holder.token": uuid.uuid4().hex,
        "holder.host": socket.gethostname(),
        "holder.pid": str(pid),
        "holder.pid_start": str(start_ticks(pid) or ""),
        "holder.command": command,
        "holder.started_at": now(),
        "heartbeat": f"{time.time():.3f}",
        "journal.state": "none",
    }


# --------------------------------------------------------------------------- restore and break
def restore_snapshot(client: Any, record: LockRecord) -> None:
    """Put every alias and version tag of ``record``'s journal back as it was before."""
    for key, version in record.snapshot().items():
        model, alias = key.rsplit("@", 1)
        if version is None:
            if alias_version(client, model, alias) is not None:
                client.delete_registered_model_alias(model, alias)
        elif alias_version(client, model, alias) != version:
            client.set_registered_model_alias(model, alias, version)
    for tag_model, tag_version, tag, old in record.old_tags():
        where = (str(tag_model), str(tag_version), str(tag))
        if old is None:
            try:
                client.delete_model_version_tag(*where)
            except Exception:  # noqa: BLE001 - absent already
                pass
        else:
            client.set_model_version_tag(*where, old)


def break_stale_lock(client: Any, stale: LockRecord) -> None:
    """Roll back a dead holder's open journal, then delete its lock; only one process does it."""
    marker = f"{stale.name}.break-{stale.token}"
    tags = _holder_tags(f"break {stale.name}")
    if not _create(client, marker, tags, "fashionops: breaking a stale registry lock"):
        other = read_lock(client, marker)
        if other is not None and other.stale(MARKER_STALE_S):
            _delete_quietly(client, marker)  # its breaker died; the next look tries again
        return
    try:
        current = read_lock(client, stale.name)
        if current is None or current.token != stale.token:
            return  # broken and released meanwhile
        if current.state == "open":
            log.warning(
                "registry lock %s: holder %s died mid-transaction; restoring aliases", stale.name, current.describe()
            )
            restore_snapshot(client, current)
            note = "holder died mid-move; aliases restored from the journal"
            settle_journal_event(client, current.tags, REVERTED, note)
        else:
            log.warning(
                "registry lock %s: removing the stale lock of %s (state %s)",
                stale.name,
                current.describe(),
                current.state,
            )
            # committed: the moves stand, the event too; anything else: nothing moved
            outcome = COMMITTED if current.state == "committed" else REVERTED
            settle_journal_event(client, current.tags, outcome, f"ended by the journal repair (state {current.state})")
        _delete_quietly(client, stale.name)
    finally:
        _delete_quietly(client, marker)


def repair_stale_lock(client: Any, cfg: RegisterConfig) -> bool:
    """What a loader (``serve`` start and its poller, ``pull``, deploy-smoke) does first: when the
    lock's holder is dead, roll its open journal back and remove the lock, so the raw aliases are
    whole again without waiting for the next writer. A live holder is left alone; a reader without
    write access to the registry only logs (it still reads the journal's snapshot). True if repaired."""
    try:
        record = read_lock(client, lock_name(cfg))
        if record is None or not record.stale():
            return False
        break_stale_lock(client, record)
        return read_lock(client, lock_name(cfg)) is None
    except Exception:  # a read-only reader still reads the journal's snapshot
        log.warning("could not repair the stale registry lock %s", lock_name(cfg), exc_info=True)
        return False


# --------------------------------------------------------------------------- the transaction
class RegistryTransaction:
    """``with RegistryTransaction(client, cfg, "register", on_step) as txn: ...; txn.apply(moves)``.

    Entering takes the lock (recovering a stale one first); :meth:`apply` journals and moves;
    leaving releases the lock unless a journal is open that could not be restored (then the next
    writer restores it).
    """

    def __init__(
        self, client: Any, cfg: RegisterConfig, command: str, on_step: StepHook = None, wait_s: float = WAIT_S
    ) -> None:
        self.client, self.cfg, self.command, self.on_step, self.wait_s = client, cfg, command, on_step, wait_s
        self.name = lock_name(cfg)
        self.tags: dict[str, str] = {}
        self.journal_open = False
        self.event_run: str | None = None  # the alias-history event of apply

    # lock ------------------------------------------------------------------
    def __enter__(self) -> RegistryTransaction:
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            self.tags = _holder_tags(self.command)
            if _create(self.client, self.name, self.tags, "fashionops registry lock and journal (see transaction.py)"):
                break
            holder = read_lock(self.client, self.name)
            if holder is None:
                continue  # released since we tried
            if holder.stale():
                break_stale_lock(self.client, holder)
                continue
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"registry lock {self.name} is held by {holder.describe()}; gave up after {self.wait_s:.0f}s "
                    f"(if that process is gone for good, delete the registered model {self.name})"
                )
            if not told:
                log.info("waiting for registry lock %s held by %s", self.name, holder.describe())
                told = True
            time.sleep(POLL_S)
        self.step("locked")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.journal_open:
            return  # not restored: leave the journal to the next writer
        try:
            if self.holds():
                _delete_quietly(self.client, self.name)
        except Exception as release_exc:
            if exc is None or unreachable_server(release_exc) is None:
                raise
            # The server is gone: the lock stays; once this process has ended it is stale and
            # the next writer breaks it. The original error is the one to report.
            log.warning("registry lock %s not released: the tracking server does not answer", self.name)
            return
        if exc_type is None:
            self.step("released")

    def holds(self) -> bool:
        current = read_lock(self.client, self.name)
        return current is not None and current.token == self.tags["holder.token"]

    def _fence(self) -> None:
        if not self.holds():
            raise RegistryError(
                f"lost registry lock {self.name} (presumed dead after {STALE_S:.0f}s of silence); "
                "nothing more moved by this process"
            )

    def _tag(self, key: str, value: str) -> None:
        self.client.set_registered_model_tag(self.name, key, value)

    def step(self, name: str) -> None:
        """Heartbeat, then the step hook (progress, fault injection)."""
        try:
            self._tag("heartbeat", f"{time.time():.3f}")
        except Exception:
            log.debug("heartbeat failed", exc_info=True)
        call_hook(self.on_step, name)

    # journal ---------------------------------------------------------------
    def apply(
        self, moves: list[Move], tags: list[TagChange] | None = None, event: dict[str, Any] | None = None
    ) -> None:
        """Journal every alias of both models and the old values of ``tags``, then set the tags and
        make the moves (``step`` after each); on any failure restore the journal's snapshot.
        ``event`` (``action``, ``decision``, ``reason``, ``comparison``, ...) describes the moves in
        the alias history (:mod:`fashionops.registry.history`), recorded when they commit."""
        tags = list(tags or [])
        client, cfg = self.client, self.cfg
        snapshot = {
            f"{model}@{alias}": alias_version(client, model, alias)
            for model in (cfg.classifier_name, cfg.index_name)
            for alias in ALIASES
        }
        history_event = new_event(self.command, event, cfg, snapshot, moves)
        if history_event is not None:
            self._fence()
            self.event_run = open_event(client, cfg, history_event)
            self._tag(JOURNAL_EVENT_TAG, self.event_run)
            tags += version_tags(history_event, self.event_run)
        old = [[m, v, k, client.get_model_version(m, v).tags.get(k)] for m, v, k, _ in tags]
        self._fence()
        self._tag("journal.aliases", json.dumps(snapshot))
        self._tag("journal.tags", json.dumps(old))
        self._tag("journal.moves", json.dumps(moves))
        self._tag("journal.state", "open")  # last: a journal is open only once complete
        self.journal_open = True
        self.step("journal")
        try:
            for model, version, key, value in tags:
                self._fence()
                client.set_model_version_tag(model, version, key, value)
            for model, alias, target in moves:
                self._fence()
                if target is None:
                    if alias_version(client, model, alias) is not None:
                        client.delete_registered_model_alias(model, alias)
                else:
                    client.set_registered_model_alias(model, alias, str(target))
                self.step(f"alias:{model}@{alias}")
            self.step("aliases")
            self._fence()
            self._tag("journal.state", "committed")
            self.journal_open = False
        except BaseException as exc:
            self._undo(exc)
            raise
        if history_event is not None and self.event_run is not None:
            self._commit_event(history_event, self.event_run)
        self.step("committed")

    def _commit_event(self, event: dict[str, Any], run_id: str) -> None:
        try:
            close_event(self.client, run_id, COMMITTED)
            tag_models(self.client, event, run_id)
        except Exception:  # the moves are committed; only their history entry lags
            log.warning(
                "aliases moved, but alias-history event run %s could not be ended: it is not in "
                "`fashionops history` until it is (a lock left behind is repaired and ends it)",
                run_id,
                exc_info=True,
            )

    def _undo(self, exc: BaseException) -> None:
        if unreachable_server(exc) is not None:
            # Nothing can be read or restored while the server does not answer: the journal stays
            # open (loaders read its snapshot) and the next writer restores it.
            log.warning("registry lock %s: tracking server unreachable; the journal stays open", self.name)
            return
        if not self.holds():
            self.journal_open = False  # whoever broke the lock restored the journal
            return
        record = read_lock(self.client, self.name)
        try:
            if record is not None:
                restore_snapshot(self.client, record)
            self._tag("journal.state", "rolled_back")
            self.journal_open = False
            if self.event_run is not None:
                settle_journal_event(
                    self.client, {JOURNAL_EVENT_TAG: self.event_run}, REVERTED, f"moves undone: {exc!s:.300}"
                )
        except Exception as restore_exc:  # noqa: BLE001 - reported with the original error
            raise RegistryError(
                f"alias update failed ({exc}) and restoring failed ({restore_exc}); the next "
                f"register/promote/rollback restores them from the journal in {self.name}"
            ) from exc


# --------------------------------------------------------------------------- fault injection
def fault_hook_from_env() -> StepHook:
    """The test hook of ``$FASHIONOPS_REGISTER_FAULT`` (see the module docstring), or None."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    action, _, target = spec.partition(":")
    if action not in ("kill", "pause") or not target:
        raise RegistryError(f"${FAULT_ENV}={spec!r}: expected kill:<step> or pause:<step>")
    pause_file = os.environ.get(PAUSE_FILE_ENV, "")
    if action == "pause" and not pause_file:
        raise RegistryError(f"${FAULT_ENV}={spec!r} needs ${PAUSE_FILE_ENV}")

    def hook(step: str) -> None:
        if step != target:
            return
        if action == "kill":
            log.warning("test hook: SIGKILL at step %s", step)
            os.kill(os.getpid(), signal.SIGKILL)
        Path(pause_file + ".reached").write_text(step)
        deadline = time.monotonic() + PAUSE_MAX_S
        while not Path(pause_file).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    return hook
