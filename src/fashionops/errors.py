"""Exceptions the command line turns into a one-line message and exit status 1."""

from __future__ import annotations

import difflib
import errno
import io
import re
from pathlib import PurePath
from urllib.parse import urlsplit


class FashionOpsError(Exception):
    """Base class: an expected failure with a message a user can act on."""


class ConfigError(FashionOpsError):
    """A params file, preset or override is invalid; the message names the key."""


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean X?)`` for the choice closest to ``word``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class DataError(FashionOpsError):
    """Bad input data; the message names the file/row/id and what is wrong."""


class ValidationFailed(FashionOpsError):
    """A critical Great Expectations expectation failed."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM): unwinds like Ctrl-C so cleanups run, then exit 143.

    A ``BaseException`` so that ``except Exception`` handlers on the way do not swallow it.
    """


# What a failing OSError most likely means for a command, by errno (the one-line error's tail).
_OS_ERROR_HINTS: dict[int, str] = {
    errno.ENOSPC: "writing: the disk is full",
    errno.EDQUOT: "writing: the disk quota is used up",
    errno.EFBIG: "writing: the file is over the size limit",
    errno.EROFS: "writing: the file system is read-only; point paths.* at a writable place",
    errno.EACCES: "not allowed to read or write there",
    errno.EPERM: "not allowed to read or write there",
    errno.ENOTDIR: "a folder on the path is a regular file",
    errno.EISDIR: "a file was expected, there is a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENOENT: "reading: it does not exist",
}


def _path_in_traceback(exc: BaseException) -> str | None:
    """The file being read or written when ``exc`` was raised: an open file object (``.name``) or a
    ``Path`` local of the innermost frame that has one (write/flush errors carry no file name)."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            name = getattr(value, "name", None)
            if isinstance(value, io.IOBase) and isinstance(name, str):
                return name
        for value in frame.f_locals.values():
            if isinstance(value, PurePath):
                return str(value)
    return None


def os_error_message(exc: OSError, command: str) -> str:
    """One line for an ``OSError`` that ended ``command``: ``<path>: <strerror> (<what it was doing>)``.

    File-system errors without a file name (a failed ``write``) name the file being written when
    the traceback shows one; other errors (a refused connection) name no file.
    """
    hint = _OS_ERROR_HINTS.get(exc.errno or 0)
    path = exc.filename
    if path is None and hint is not None:
        path = _path_in_traceback(exc)
    reason = exc.strerror or str(exc) or type(exc).__name__
    if path is None:
        return f"{reason} (fashionops {command}{': ' + hint if hint else ''})"
    where = f"{path} -> {exc.filename2}" if exc.filename2 is not None else str(path)
    return f"{where}: {reason} (fashionops {command}: {hint or 'reading or writing it'})"


# --------------------------------------------------------------------------- tracking server
# What MLflow's REST client says when it never got an answer from the server (it wraps the
# requests/urllib3 error into ``MlflowException("API request to <url> failed with exception ...")``).
_UNREACHABLE_REASONS: tuple[tuple[str, str], ...] = (
    ("Connection refused", "connection refused"),
    ("Name or service not known", "host name not resolved"),
    ("Temporary failure in name resolution", "host name not resolved"),
    ("No route to host", "no route to host"),
    ("Network is unreachable", "network unreachable"),
    ("timed out", "timed out"),
    ("timeout exception", "timed out"),
    ("Connection reset", "connection reset"),
    ("Connection aborted", "connection lost"),
    ("RemoteDisconnected", "connection lost"),
    ("Failed to establish a new connection", "no connection"),
    ("too many 502 error responses", "bad gateway"),
    ("too many 503 error responses", "service unavailable"),
    ("too many 504 error responses", "gateway timeout"),
)
_API_URL = re.compile(r"API request to (\S+?) failed")


class TrackingUnreachable(FashionOpsError):
    """The MLflow tracking server did not answer (stopped, wrong URL, network down): a retry later
    can succeed, so the flows treat it as transient."""

    def __init__(self, url: str, reason: str, doing: str, outcome: str = "") -> None:
        self.url, self.reason = url, reason
        tail = f"; {outcome}" if outcome else ""
        super().__init__(
            f"MLflow tracking server {url} is unreachable ({reason}) during {doing}{tail}; "
            "start it (or fix MLFLOW_TRACKING_URI) and run again"
        )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def unreachable_server(exc: BaseException) -> tuple[str, str] | None:
    """``(server URL, reason)`` when ``exc`` (or what it was raised from) is MLflow's REST client
    getting no answer from the tracking server; None for any other failure (a server that
    answered with an error, or network trouble of something else, e.g. a download)."""
    for err in _chain(exc):
        if isinstance(err, TrackingUnreachable):
            return err.url, err.reason
        text = str(err)
        api = _API_URL.search(text)
        if api is None:
            continue
        reason = next((why for needle, why in _UNREACHABLE_REASONS if needle in text), None)
        if reason is None:
            return None  # the request failed otherwise (e.g. too many 500s: the server answered)
        parts = urlsplit(api.group(1))
        return f"{parts.scheme}://{parts.netloc}", reason
    return None
