"""A command's output as log records: the level each line was written at, multi-line records
kept together, progress-bar frames and repeated warnings out of the way.

A flow relays every output line of its stage subprocesses (DVC, the ``fashionops`` CLI, the
libraries they use) to its run logger. :class:`Relay` turns those lines into records:

* level: fashionops' own log lines (``12:00:01 WARNING name: ...``, :mod:`fashionops.logs`) and
  other ``logging`` output (``WARNING: ...``, DVC's ``ERROR: ...``) keep theirs; the CLI's
  ``error: ...`` is ERROR; a Python warning (``file.py:12: UserWarning: ...``) is WARNING; a
  traceback is ERROR; anything else INFO;
* one record per message: the indented lines after a warning or an error (a warning's source
  line, a traceback, an error's list of items) and the traceback after a logged error stay in its record;
* a command's JSON result (the CLI prints it indented, one key a line) becomes one line: the
  scalars as they are, long lists and tables as ``<N entries>`` (the full result is in the
  stage's files under ``reports/``);
* progress-bar frames (``42%|####  | 42/100 [...]``), blank lines and ANSI colour codes never
  reach the log at INFO: frames go to DEBUG, so do warnings repeated word for word.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

Emit = Callable[[int, str], None]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
# fashionops.logs: "12:00:01 WARNING name: msg"; logging's default and DVC's: "WARNING: msg"
_LOGGED = re.compile(r"^(?:\d\d:\d\d:\d\d(?:[.,]\d+)? )?(DEBUG|INFO|WARNING|ERROR|CRITICAL)(:? )")
_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
_CLI = re.compile(r"^(error|warning): ")
_PY_WARNING = re.compile(r"^\S.*:\d+: [A-Za-z]*Warning: ")
_OPEN = re.compile(r"^(ERROR|WARNING|CRITICAL): ")  # DVC: its message's lines follow unindented
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
# a tqdm frame: "Epoch 0:  42%|####      | 42/100 [00:01<00:02, 3.7it/s]" or "| 3/? [00:00<?, ?it/s]"
_BAR = re.compile(r"\|\s*\d+/(?:\d+|\?)\s*\[[^\]]*(?:it/s|s/it|\?it/s|/s)[^\]]*\]?")
MAX_JSON_LINES = 20000  # a longer "{ ... }" is relayed line by line
JSON_WIDTH = 1500  # the one-line JSON result is shortened until it fits


def clean(line: str) -> str:
    """``line`` without ANSI escape codes and trailing whitespace."""
    return _ANSI.sub("", line).rstrip()


def line_level(line: str) -> int:
    """The logging level one output line was written at (INFO when it does not say)."""
    found = _LOGGED.match(line)
    if found:
        if found.group(2) == " " and ":" not in line[:60]:
            return logging.INFO  # "ERROR rate fell" is prose, not a level
        return _LEVELS[found.group(1)]
    found = _CLI.match(line)
    if found:
        return logging.ERROR if found.group(1) == "error" else logging.WARNING
    if _PY_WARNING.match(line):
        return logging.WARNING
    if line.startswith(_TRACEBACK):
        return logging.ERROR
    if is_progress_frame(line):
        return logging.DEBUG
    return logging.INFO


def is_progress_frame(line: str) -> bool:
    """Whether ``line`` is a frame of a progress bar (tqdm, Lightning's, MLflow's downloads)."""
    return bool(_BAR.search(line))


def _starts_record(line: str) -> bool:
    return bool(_LOGGED.match(line) or _CLI.match(line) or _PY_WARNING.match(line))


def shorten(obj: Any, max_items: int) -> Any:
    """``obj`` with lists/dicts longer than ``max_items`` replaced by ``"<N entries>"`` and
    floats rounded to 4 significant digits."""
    if isinstance(obj, dict):
        if len(obj) > max_items:
            return f"<{len(obj)} entries>"
        return {k: shorten(v, max_items) for k, v in obj.items()}
    if isinstance(obj, list):
        if len(obj) > max_items:
            return f"<{len(obj)} entries>"
        return [shorten(v, max_items) for v in obj]
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    return obj


def one_line_json(obj: Any, width: int = JSON_WIDTH) -> str:
    """A command's JSON result as one readable line of at most about ``width`` characters."""
    text = ""
    for max_items in (24, 12, 6, 2, 0):
        text = json.dumps(shorten(obj, max_items), separators=(", ", ": "), default=str)
        if len(text) <= width:
            break
    return text


class Relay:
    """Turns a command's output lines into ``emit(level, text)`` records (module docstring).

    Feed it the lines of each read (:meth:`feed`), call :meth:`idle` when the command has been
    quiet for a moment (a pending record goes out) and :meth:`close` at the end.
    """

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self._level = logging.INFO
        self._record: list[str] = []  # the pending record's lines
        self._open = False  # the pending record takes unindented continuation lines (same read)
        self._in_traceback = False
        self._after_exception = False  # in a traceback, past its "SomeError: message" line
        self._json: list[str] | None = None
        self._seen_warnings: set[str] = set()

    # -- input -----------------------------------------------------------------------------
    def feed(self, lines: list[str], whole: bool = True) -> None:
        """The complete lines of one read of the command's output; ``whole``: the read ended at
        a line's end (else the next read starts with the rest of the same write)."""
        for raw in lines:
            self._line(clean(raw))
        if whole:
            self._open = False  # "ERROR: ..." takes the following lines of its own write only

    def idle(self) -> None:
        """The command is quiet: send the pending record (a JSON block waits for its end)."""
        if self._json is None:
            self._flush()

    def close(self) -> None:
        """End of output: send whatever is pending."""
        if self._json is not None:
            lines, self._json = self._json, None
            for line in lines:
                self._single(line)
        self._flush()

    # -- one line --------------------------------------------------------------------------
    def _line(self, line: str) -> None:
        if self._json is not None:
            self._json_line(line)
            return
        if self._in_traceback and self._in_traceback_line(line):
            return
        if not line.strip():
            return  # blank lines (and bare escape codes) carry nothing
        if self._record and line.startswith(_TRACEBACK) and self._level >= logging.WARNING:
            self._record.append(line)  # log.exception(...): the traceback of a logged error
            self._in_traceback = True
            return
        if self._record and self._continues(line):
            self._record.append(line)
            return
        self._flush()
        if line in ("{", "["):
            self._json = [line]
            return
        self._start(line)
        if self._level < logging.WARNING and not self._in_traceback:
            self._flush()  # nothing continues an INFO line: no need to wait for the next one

    def _in_traceback_line(self, line: str) -> bool:
        """Take ``line`` into the pending traceback, if it is part of it."""
        chained = line.startswith(_TRACEBACK) or line.startswith(_CHAINED)
        if not line.strip() or line[0].isspace() or chained:
            self._record.append(line)
            self._after_exception = self._after_exception and not chained
            return True
        if self._after_exception:  # the line after "SomeError: message" and its blank lines
            self._flush()
            return False
        self._record.append(line)  # "SomeError: message" ends the traceback, unless chained
        self._after_exception = True
        return True

    def _continues(self, line: str) -> bool:
        """Whether ``line`` (not blank, not in a traceback) belongs to the pending record."""
        if self._level < logging.WARNING or _starts_record(line) or line in ("{", "["):
            return False
        return line[0].isspace() or self._open

    def _start(self, line: str) -> None:
        self._record = [line]
        self._level = line_level(line)
        self._in_traceback = line.startswith(_TRACEBACK)
        self._after_exception = False
        # DVC's "ERROR: ..." messages continue on unindented lines (of the same write)
        self._open = self._level >= logging.WARNING and bool(_OPEN.match(line))

    def _single(self, line: str) -> None:
        if line.strip():
            self.emit(line_level(line), line)

    def _flush(self) -> None:
        if not self._record:
            return
        text = "\n".join(self._record).rstrip()
        level = self._level
        self._record, self._in_traceback, self._after_exception, self._open = [], False, False, False
        if level == logging.WARNING:
            if text in self._seen_warnings:
                level = logging.DEBUG  # said once already
            self._seen_warnings.add(text)
        self.emit(level, text)

    # -- a JSON result -----------------------------------------------------------------------
    def _json_line(self, line: str) -> None:
        assert self._json is not None
        self._json.append(line)
        if line in ("}", "]"):
            lines, self._json = self._json, None
            try:
                obj = json.loads("\n".join(lines))
            except ValueError:
                for one in lines:
                    self._single(one)
                return
            self.emit(logging.INFO, "result: " + one_line_json(obj))
        elif len(self._json) > MAX_JSON_LINES:
            lines, self._json = self._json, None
            for one in lines:
                self._single(one)
