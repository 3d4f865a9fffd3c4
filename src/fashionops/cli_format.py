"""How the ``fashionops`` command line talks: help strings that show defaults, "did you mean" for a
mistyped subcommand or choice, the installed version, positive-integer options and the summary
screen at the end of training. The commands themselves are in :mod:`fashionops.cli`."""

from __future__ import annotations

import argparse
import re
from typing import Any

from fashionops.config import did_you_mean


def installed_version() -> str:
    """The installed ``fashionops`` distribution's version (``unknown`` when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fashionops")
    except PackageNotFoundError:
        return "unknown"


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default (``(default: 5)``) or ``(required)``; an option
    whose default is None or a flag says what happens when it is not given in its own words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = action.help or ""
        if not action.option_strings or "default" in help_ or action.default is argparse.SUPPRESS:
            return help_
        if action.required:
            return f"{help_} (required)"
        if action.nargs == 0 or action.default is None:  # a flag, or a default the text explains
            return help_
        return f"{help_} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped subcommand or choice."""

    def error(self, message: str) -> Any:
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = re.findall(r"'([^']*)'", bad.group(2))
            message += did_you_mean(bad.group(1), choices)
        super().error(message)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, else a one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def print_summary(title: str, metrics: dict[str, Any], outputs: dict[str, str]) -> None:
    """One screen at the end of training: where it ran, how well, where the outputs are."""
    line = "=" * 72
    out = [line, title, line]
    for key in (
        "device",
        "precision",
        "model",
        "epochs_run",
        "best_epoch",
        "best_val_macro_f1",
        "best_val_acc",
        "best_val_loss",
        "seconds",
        "images_per_s",
        "mlflow_run_id",
    ):
        value = metrics.get(key)
        if value is not None:
            out.append(f"  {key:<20} {value:.4f}" if isinstance(value, float) else f"  {key:<20} {value}")
    out.append("  outputs:")
    for key, path in outputs.items():
        out.append(f"    {key:<18} {path}")
    out.append(line)
    print("\n".join(out), flush=True)
