"""The one logging configuration of fashionops commands.

Library modules only create module loggers (``logging.getLogger(__name__)``) and never configure
handlers; the ``fashionops`` CLI calls :func:`configure_logging` once. Levels mean: DEBUG for
detail a developer asks for, INFO for what a stage did (counts, timings, where it wrote),
WARNING for something the user should look at that did not stop the run, ERROR for a failure.
Inside a Prefect flow run the stage subprocess' lines keep their level name, so the flow can
map them back onto its own logger.
"""

from __future__ import annotations

import logging
import os

LEVEL_ENV = "FASHIONOPS_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Chatty third-party loggers that speak INFO about their internals.
QUIET = ("alembic", "mlflow.store.db.utils", "urllib3", "git", "PIL", "matplotlib", "numexpr", "httpx")


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
        root.addHandler(handler)
    logging.getLogger("fashionops").setLevel(chosen)
    numeric = chosen if isinstance(chosen, int) else logging.getLevelName(chosen)  # "DEBUG" -> 10
    root.setLevel(logging.DEBUG if numeric == logging.DEBUG else logging.WARNING)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
