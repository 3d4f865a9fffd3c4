"""A logging handler that keeps every record it gets: what a relayed command logged, at which level."""

from __future__ import annotations

import logging


class RecordList(logging.Handler):
    """Collects the records emitted to it (DEBUG and up) in ``records``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
