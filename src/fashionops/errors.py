"""Exceptions the command line turns into a one-line message and exit status 1."""

from __future__ import annotations

import errno
import io
from pathlib import PurePath


class FashionOpsError(Exception):
    """Base class: an expected failure with a message a user can act on."""


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
