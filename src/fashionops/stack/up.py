"""``fashionops stack up|down|status``: start the stack in order, stop it in reverse order.

``up`` is idempotent: a service whose recorded process still runs is left alone ("already
running"), the others are started and waited for (each wait has ``stack.ready_timeout_s``).
``down`` stops exactly the recorded processes (pid and start time must both match), worker first,
PostgreSQL last.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fashionops.config import Params
from fashionops.stack import processes, setup
from fashionops.stack.processes import StackError
from fashionops.stack.services import (
    MlflowServer,
    ObjectStore,
    Postgres,
    PrefectServer,
    PrefectWorker,
    Service,
    port_open,
)
from fashionops.stack.settings import StackSettings

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0


def services(settings: StackSettings) -> list[Service]:
    """The stack's services in start order (``down`` stops them in reverse)."""
    return [
        Postgres(settings),
        ObjectStore(settings),
        MlflowServer(settings),
        PrefectServer(settings),
        PrefectWorker(settings, setup.work_pool_name(settings.root)),
    ]


def up(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Start every service that is not running, set up what they need, write ``.stack/env``."""
    settings = StackSettings.from_config(params.stack, root)
    stack = services(settings)  # checks prefect.yaml before anything starts
    for folder in (settings.dir, settings.logs, settings.pids):
        folder.mkdir(parents=True, exist_ok=True)
    settings.credentials()
    states: dict[str, str] = {}
    for service in stack:
        if isinstance(service, PrefectWorker) and processes.running(settings.pids, service.name) is None:
            # (re)apply the work pool and deployments before a worker polls for them
            setup.apply_deployments(settings, service.pool, params.index.refresh_cron, params.monitor.cron)
        states[service.name] = _ensure_running(service, settings)
        if isinstance(service, Postgres):
            setup.create_databases(settings)
        elif isinstance(service, ObjectStore):
            if states[service.name] == "started":
                service.replay()
            setup.create_buckets(settings)
    remote = setup.configure_dvc_remote(settings)
    env_file = settings.write_env_file()
    if all(state == "already running" for state in states.values()):
        log.info("the stack is already running (%s)", settings.dir)
    log.info("stack up: `source %s` to use it", env_file)
    return {
        "services": _describe(stack, states),
        "env_file": str(env_file),
        "dvc_remote": remote,
        "use": f"source {env_file}",
    }


def down(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Stop the processes ``up`` recorded, in reverse start order; nothing else is signalled."""
    settings = StackSettings.from_config(params.stack, root)
    stopped: dict[str, str] = {}
    for service in reversed(_services_or_known(settings)):
        record = processes.load_record(settings.pids, service.name)
        if record is None:
            stopped[service.name] = "not started"
            continue
        was_running = processes.stop(record, service.stop_signal, STOP_TIMEOUT_S, whole_group=service.stop_whole_group)
        processes.record_path(settings.pids, service.name).unlink(missing_ok=True)
        stopped[service.name] = "stopped" if was_running else "was not running"
    if all(state != "stopped" for state in stopped.values()):
        log.info("no stack process was running (%s)", settings.dir)
    return {"services": stopped, "dir": str(settings.dir)}


def status(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Each service: running (pid) or stopped, its URL and log file."""
    settings = StackSettings.from_config(params.stack, root)
    stack = _services_or_known(settings)
    states = {s.name: "running" if processes.running(settings.pids, s.name) else "stopped" for s in stack}
    env_file = settings.env_file if settings.env_file.is_file() else None
    return {"services": _describe(stack, states), "env_file": str(env_file) if env_file else None}


def _ensure_running(service: Service, settings: StackSettings) -> str:
    """``"already running"`` or ``"started"`` (then ready), else a one-line :class:`StackError`."""
    record = processes.running(settings.pids, service.name)
    if record is not None:
        log.info("%s already running (pid %d)", service.name, record.pid)
        state = "already running"
    else:
        if service.port is not None and port_open(service.port):
            raise StackError(
                f"{service.name}: port {service.port} on 127.0.0.1 is taken by a process this stack did not start; "
                f"choose another with --set stack.{_port_key(service)}=PORT"
            )
        service.prepare()
        record = processes.start(
            service.name,
            service.command(),
            settings.pids,
            service.log_file,
            service.env(),
            settings.root,
            service.user(),
        )
        state = "started"
    processes.wait_until(service.ready, record, service.ready_what, settings.config.ready_timeout_s)
    if state == "started":
        log.info("%s ready%s", service.name, f" on {service.url}" if service.url else "")
    return state


def _port_key(service: Service) -> str:
    return {"postgres": "postgres_port", "s3": "s3_port", "mlflow": "mlflow_port"}.get(service.name, "prefect_port")


def _services_or_known(settings: StackSettings) -> list[Service]:
    """The services; without ``prefect.yaml`` (down/status from elsewhere) the worker's pool is
    unknown, which only its readiness check needs."""
    try:
        return services(settings)
    except StackError:
        return [*services_without_worker(settings), PrefectWorker(settings, pool="")]


def services_without_worker(settings: StackSettings) -> list[Service]:
    return [Postgres(settings), ObjectStore(settings), MlflowServer(settings), PrefectServer(settings)]


def _describe(stack: list[Service], states: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for service in stack:
        record = processes.load_record(service.settings.pids, service.name)
        out[service.name] = {
            "state": states.get(service.name, "unknown"),
            "pid": record.pid if record is not None and states.get(service.name) != "stopped" else None,
            "url": service.url,
            "log": str(service.log_file),
        }
    return out
