"""The DVC stages in one table: which function each runs and which ``paths`` it reads and writes.

``dvc.yaml`` runs ``fashionops <stage>``; the CLI hands the stage function the config sections its
signature names plus ``paths``. This table is what ``tests/code/test_dvc_deps.py`` checks
``dvc.yaml`` against: the params sections come from the function's signature (and
:data:`KEYWORD_PARAMS`), the source files from its imports, and the data paths from
:attr:`Stage.reads` / :attr:`Stage.writes`, which the test also checks against the ``paths.*``
the stage's own modules use.

A location is a ``PathsConfig`` field (``"prepared_dir"``, ``"run_file"``) or ``"reports:<stage>"``
(``paths.reports(stage)``), optionally followed by ``/`` and a path inside it
(``"reports:train/history.csv"``); :func:`location` resolves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fashionops.config import PathsConfig

REPORTS = "reports:"


@dataclass(frozen=True)
class Stage:
    """One ``dvc.yaml`` stage."""

    entry: str  # "module:function" the stage's command calls
    reads: tuple[str, ...]  # locations it reads (dvc.yaml deps)
    writes: tuple[str, ...]  # locations it writes (dvc.yaml outs, metrics, plots)
    # Deps the code does not read, declared to order the pipeline: prepare runs on a catalogue
    # only once validate has written its facts (they exist only when no critical check failed).
    gates: tuple[str, ...] = ()


STAGES: dict[str, Stage] = {
    "validate": Stage(
        "fashionops.data.validation.stage:run_validate",
        reads=("raw_dir", "gx_dir"),
        writes=("facts", "reports:validation"),
    ),
    "prepare": Stage(
        "fashionops.data.prepare:run_prepare",
        reads=("raw_dir",),
        writes=("prepared_dir", "reports:prepare"),
        gates=("facts",),
    ),
    "train": Stage(
        "fashionops.training.stage:run_train",
        reads=("prepared_dir",),
        # run_file is also read, by `fashionops train --resume` only (never by `dvc repro`)
        writes=("classifier_dir", "reports:train", "run_file"),
    ),
    "evaluate": Stage(
        "fashionops.evaluation.stage:run_evaluate",
        reads=("prepared_dir", "classifier_dir", "reports:train/history.csv", "run_file"),
        writes=("reports:evaluate",),
    ),
    "index": Stage(
        "fashionops.search.stage:run_index",
        reads=("raw_dir", "prepared_dir", "classifier_dir", "run_file"),
        writes=("index_dir", "reports:index"),
    ),
    "register": Stage(
        "fashionops.registry.register:run_register",
        reads=(
            "classifier_dir",
            "index_dir",
            "prepared_dir",
            "run_file",
            "reports:evaluate",
            "reports:index/metrics.json",
            "reports:prepare/metrics.json",
            "reports:validation/metrics.json",
            "reports:validation/summary.json",
            "reports:validation/data_docs",
        ),
        writes=("reports:register",),
    ),
}

# Keyword arguments of stage functions: the param each one is (``label`` is ``prepare.label``),
# or None for arguments that are not params (the CLI's options and hooks).
KEYWORD_PARAMS: dict[str, str | None] = {
    "label": "prepare.label",
    "balance": "prepare.balance",
    "embedder_dir": "index.embedder_dir",
    "resume": None,
    "run_config": None,
    "callbacks": None,  # train: extra Lightning callbacks (a sweep's pruning)
    "on_step": None,
    "data_dir": None,
    "model_uri": None,
}


def location(paths: PathsConfig, name: str) -> Path:
    """The path of a location of :data:`STAGES` (``"reports:train/history.csv"`` ->
    ``reports/train/history.csv``)."""
    head, _, rest = name.partition("/")
    if head.startswith(REPORTS):
        base = paths.reports(head[len(REPORTS) :])
    elif head == "run_file":
        base = paths.run_file
    elif head in PathsConfig.model_fields:
        base = Path(getattr(paths, head))
    else:
        raise ValueError(f"unknown location {name!r}: a paths field, run_file or reports:<stage>")
    return base / rest if rest else base
