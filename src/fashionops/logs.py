"""The one logging configuration of fashionops commands.

Library modules only create module loggers (``logging.getLogger(__name__)``) and never configure
handlers; the ``fashionops`` CLI calls :func:`configure_logging` once. Levels mean: DEBUG for
detail a developer asks for, INFO for what a stage did (counts, timings, where it wrote),
WARNING for something the user should look at that did not stop the run, ERROR for a failure.
Inside a Prefect flow run the stage subprocess' lines keep their level name, so the flow can
map them back onto its own logger (:mod:`fashionops.orchestration.relay`).

Progress: live bars only on a terminal (:mod:`fashionops.progress`); with stderr a pipe or a
file, MLflow's download bars are off too. Lightning prints its INFO lines through a console
handler of its own as well as ours: :func:`adopt_library_handlers` drops its handler, so each
line is printed once, in our format; adverts and internal steps are not printed.
"""

from __future__ import annotations

import logging
import os

from fashionops.progress import live

LEVEL_ENV = "FASHIONOPS_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Chatty third-party loggers that speak INFO about their internals.
QUIET = ("alembic", "mlflow.store.db.utils", "urllib3", "git", "PIL", "matplotlib", "numexpr", "httpx")
# Library INFO lines a user can do nothing about: an advert, an internal step.
CHATTER = ("💡 Tip:", "to estimate number of stepping batches")
# Loggers of libraries that add a console handler of their own on import.
SELF_HANDLED = ("lightning", "lightning.pytorch", "lightning.fabric")


class _DropChatter(logging.Filter):
    """Drops :data:`CHATTER` records."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in CHATTER)


class _StderrHandler(logging.StreamHandler):
    """Our stderr handler (its own class, so configuring twice adds no second one)."""


def configure_logging(level: str | int | None = None) -> None:
    """Log to stderr at ``level`` (else ``$FASHIONOPS_LOG_LEVEL``, else INFO); idempotent."""
    chosen = level if level is not None else os.environ.get(LEVEL_ENV, "INFO")
    if isinstance(chosen, str):
        chosen = chosen.upper()
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(_DropChatter())
        root.addHandler(handler)
    logging.getLogger("fashionops").setLevel(chosen)
    numeric = chosen if isinstance(chosen, int) else logging.getLevelName(chosen)  # "DEBUG" -> 10
    root.setLevel(logging.DEBUG if numeric == logging.DEBUG else logging.WARNING)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not live():  # a log file or a flow's relay: no bar frames from MLflow's downloads
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    adopt_library_handlers()


def adopt_library_handlers() -> None:
    """Once :func:`configure_logging` has run, remove the console handlers libraries add to their
    own loggers on import (Lightning): their records reach our handler, printed once. Call it
    after importing such a library; without our handler it leaves them as they are."""
    if not any(isinstance(h, _StderrHandler) for h in logging.getLogger().handlers):
        return
    for name in SELF_HANDLED:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
