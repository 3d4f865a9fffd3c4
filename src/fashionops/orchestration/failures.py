"""What went wrong in a pipeline run, and whether a retry can help.

A stage runs in a subprocess, so its failure arrives as output lines: :func:`error_message` picks
the stage's own error out of them and :func:`classify_failure` decides from them whether the
failure is transient (I/O errors, an unreachable tracking server) or permanent (a failed
validation, a bad parameter). :func:`is_transient` is the flows' retry condition.
"""

from __future__ import annotations

import re

from fashionops.errors import FashionOpsError

# Output that means "try again later": I/O and network trouble, a busy store, a remote tracking
# server that is down. Matched against the stage's output (tracebacks and `error:` lines).
TRANSIENT_PATTERNS: tuple[str, ...] = (
    r"\bOSError\b",
    r"\bIOError\b",
    r"Input/output error",
    r"\bEIO\b",
    r"No space left on device",
    r"ConnectionError",
    r"ConnectionRefusedError",
    r"Connection refused",
    r"Connection reset",
    r"ConnectTimeout",
    r"ReadTimeout",
    r"TimeoutError",
    r"timed out",
    r"Temporary failure",
    r"Max retries exceeded",
    r"Name or service not known",
    r"unreachable",
    r"database is locked",
    r"API request to .* failed",
    r"503 Service Unavailable",
    r"502 Bad Gateway",
    r"Unable to acquire lock",  # DVC's repo lock held by a process outside our workspace lock
)
# Expected failures that no retry can fix, whatever else the output says.
PERMANENT_PATTERNS: tuple[str, ...] = (
    r"invalid configuration",
    r"unknown key",
    r"expectation",
    r"ValidationFailed",
    r"\bDataError\b",
)
# How many of the last output lines a StageFailed keeps.
TAIL_LINES = 50


class PipelineError(FashionOpsError):
    """The orchestration itself failed (lock, overrides, DVC bookkeeping)."""


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

    @classmethod
    def from_output(cls, stage: str, returncode: int, lines: list[str]) -> StageFailed:
        """The failure of ``stage`` from its exit status and output lines."""
        return cls(stage, returncode, error_message(lines), classify_failure(stage, lines), lines[-TAIL_LINES:])


def error_message(lines: list[str]) -> str:
    """The stage's own error: the CLI's ``error: ...`` lines, else the last exception line,
    else DVC's ``ERROR:`` line."""
    errors: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("error: "):
            # The message may continue on indented lines (e.g. one failed expectation per line).
            block = [line[len("error: ") :]]
            for more in lines[i + 1 :]:
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
        return dvc_errors[-1][len("ERROR:") :].strip()
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
