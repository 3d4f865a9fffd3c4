"""The ``fashionops`` commands of what happens after deployment: ``score`` (batch scoring of a
catalogue drop), ``drift`` (monitoring), ``sweep`` (hyperparameter search) and ``history`` (every
alias move). Thin callers of library functions, like the stage commands in :mod:`fashionops.cli`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from fashionops.cli_format import positive_int
from fashionops.config import Params

AddCommand = Callable[[str, Callable[[Params, argparse.Namespace], Any], str], argparse.ArgumentParser]


def cmd_score(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.batch.score import run_batch_score

    return run_batch_score(p, data_dir=a.data, out=a.out, alias=a.alias)


def cmd_drift(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.monitoring.drift import run_drift

    return run_drift(p, last=a.last, since=a.since, source=a.source, alias=a.alias, report_dir=a.report_dir)


def cmd_sweep(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.tuning.sweep import run_sweep

    return run_sweep(p, trials=a.trials, timeout_s=a.timeout, params_path=a.params, overrides=a.overrides)


def cmd_history(p: Params, a: argparse.Namespace) -> Any:
    from fashionops.registry.history import print_history

    return print_history(p.register, p.tracking, model=a.model, limit=a.limit, as_json=a.json)


def add_operation_commands(add: AddCommand) -> None:
    """Add ``score``, ``drift``, ``sweep`` and ``history`` with ``add`` (``--params``/``--set`` included)."""
    sp = add("score", cmd_score, "score a catalogue drop with a registered pair; writes a Parquet file")
    sp.add_argument("--data", required=True, help="catalogue drop: Kaggle layout (styles.csv + images/) or a folder")
    sp.add_argument("--out", required=True, help="the Parquet file to write (replaced atomically)")
    sp.add_argument("--alias", help="registry alias of the classifier + index pair (default: score.alias, champion)")

    sp = add("drift", cmd_drift, "compare what the models saw with the training reference; exit 1 on drift")
    sp.add_argument("--last", type=positive_int, help="window: the last N observations (default: all in --since)")
    sp.add_argument(
        "--since", help="window: observations at or after this ISO time, e.g. 2026-12-01T00:00 (default: any time)"
    )
    sp.add_argument("--source", help="window: only observations of this source, e.g. serve or score (default: all)")
    sp.add_argument("--alias", help="the registered pair whose training data is the reference (default: score.alias)")
    sp.add_argument("--report-dir", help="where drift.html and drift.json go (default: monitor.report_dir)")

    sp = add("sweep", cmd_sweep, "Optuna sweep over params.yaml's sweep.space; the best trial becomes a DVC experiment")
    sp.add_argument("--trials", type=positive_int, help="number of trials (default: sweep.trials)")
    sp.add_argument("--timeout", type=float, help="seconds after which no new trial starts (default: sweep.timeout_s)")

    sp = add("history", cmd_history, "every alias move (register, promote, rollback): when, who, why, metrics")
    sp.add_argument("--model", help="only this registered model (default: both of the pair)")
    sp.add_argument("--limit", type=positive_int, help="only the latest N moves (default: all)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
