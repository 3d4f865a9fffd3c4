"""Prefect flow ``batch-scoring``: the registered @champion pair (classifier + index) scores a new
catalogue drop with ``fashionops score``: labels with probabilities, embeddings and nearest
catalogue items into a Parquet file, bad images listed with their reason, one MLflow run.

The logic lives in :mod:`fashionops.orchestration.scoring` (and :mod:`fashionops.batch`); this
file only wires it into a flow. No workspace lock: scoring writes only its own output file, the
MLflow store and the observation log (all safe beside a running pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

# First: it sets this project's Prefect defaults, read when prefect is first imported.
from fashionops.orchestration.tasks import RETRIES, log_lines, publish_links  # isort: skip
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from fashionops.orchestration.runner import stage_env
from fashionops.orchestration.scoring import (
    default_out,
    run_scoring,
    score_defaults,
    score_overrides,
    scoring_links,
    summary_table,
)

FORM_DEFAULTS = score_defaults(Path(__file__).resolve().parents[1] / "params.yaml")


@task(name="score", **RETRIES)
def score_task(
    workspace: str, data_dir: str, out: str, alias: str | None, overrides: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """``fashionops score`` in the workspace, its output in this task's log."""
    return run_scoring(workspace, data_dir, out, alias, overrides, env=env, log=log_lines())


@flow(name="batch-scoring", log_prints=True)
def batch_scoring(
    data_dir: str,
    out: str = "",
    alias: str = FORM_DEFAULTS["alias"],
    top_k: Annotated[int, Field(ge=1)] = FORM_DEFAULTS["top_k"],
    neighbours: Annotated[int, Field(ge=1)] = FORM_DEFAULTS["neighbours"],
    batch_size: Annotated[int, Field(ge=1)] = FORM_DEFAULTS["batch_size"],
    record: bool = FORM_DEFAULTS["record"],
    workspace: str = ".",
) -> dict[str, Any]:
    """Score a catalogue drop with a registered classifier + index pair.

    Args:
        data_dir: The drop: a Kaggle layout (styles.csv + images/) or a folder of images.
        out: The Parquet file to write (empty: scores/<drop>-<UTC time>.parquet in the workspace).
        alias: Registry alias of the classifier + index pair that scores.
        top_k: Most probable labels kept per image.
        neighbours: Nearest catalogue items kept per image.
        batch_size: Images per forward pass.
        record: Append what the model saw to the drift-monitoring log.
        workspace: The project checkout (with params.yaml) to run in.
    """
    logger = get_run_logger()
    ws = str(Path(workspace).resolve())
    values = {"top_k": top_k, "neighbours": neighbours, "batch_size": batch_size, "record": record}
    overrides = score_overrides(values, FORM_DEFAULTS)
    out = out or default_out(data_dir)
    env = stage_env(flow_run_id=flow_run.id)
    # a value left as the form showed it: the workspace's params.yaml decides
    summary = score_task(ws, data_dir, out, None if alias == FORM_DEFAULTS["alias"] else alias, overrides, env)
    create_table_artifact(
        table=summary_table(summary),
        key="batch-scoring-summary",
        description=f"fashionops score of {data_dir} (bad images: the Parquet's status=error rows)",
    )
    publish_links(scoring_links(summary))
    logger.info("== batch-scoring finished: %d scored, %d failed ==", summary["scored"], summary["failed"])
    return summary


if __name__ == "__main__":
    batch_scoring(data_dir=".")
