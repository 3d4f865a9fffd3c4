"""The validate stage: run the GX suites on a catalogue and report what failed.

Outputs of :func:`run_validate`: ``<paths.reports_dir>/validation/summary.json`` (always, also on failure:
rows, images_ok/missing/undecodable/unlisted, duplicate groups/images, critical_failures, warnings,
``failures.<name>`` unexpected counts, seconds, ``failed_critical``, ``failed_warning``,
``examples.<name>``), ``metrics.json`` beside it (always: the DVC metrics file, the same names in
MLflow, :func:`headline_metrics`), ``<paths.reports_dir>/validation/data_docs/index.html`` (always) and
``paths.facts`` (parquet, **only when no critical expectation failed**; a stale one is
removed on failure so ``prepare`` never reads facts of a catalogue that failed).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from fashionops.atomic import atomic_path, write_json
from fashionops.config import PathsConfig, ValidateConfig
from fashionops.data.catalogue import load_catalogue
from fashionops.data.validation.context import check_gx_dir, run_suites
from fashionops.data.validation.examples import failure_examples
from fashionops.data.validation.expectations import (
    FACTS_SUITE,
    METADATA_SUITE,
    culprits_of,
    expectation_parameters,
    severities,
)
from fashionops.data.validation.facts import duplicate_groups, gather_facts
from fashionops.data.validation.raw_record import accept_record, restore_accepted_record
from fashionops.errors import ValidationFailed

log = logging.getLogger(__name__)

# Keys of run_validate's return value taken from the full summary.
RESULT_KEYS: tuple[str, ...] = (
    "passed",
    "rows",
    "images_ok",
    "duplicate_groups",
    "critical_failures",
    "warnings",
    "failures",
    "seconds",
    "data_docs",
    "facts_path",
)


def _metadata_frame(catalogue: pd.DataFrame, label: str) -> pd.DataFrame:
    """The catalogue without ``file``, plus a ``label`` column: column ``label`` of it, blanks as missing."""
    df = catalogue.drop(columns=["file"])
    if label in df.columns:
        text = df[label].astype("string").str.strip()
        df["label"] = text.mask(text == "")  # blank labels count as missing
    else:
        df["label"] = pd.Series(pd.NA, index=df.index, dtype="string")
    return df


def _outcomes(
    results: dict[str, Any], severity: dict[str, str], meta: pd.DataFrame, facts: pd.DataFrame, limit: int
) -> list[tuple[str, dict[str, Any]]]:
    """(name, outcome) per expectation result, in suite order; an outcome holds the suite, success,
    severity, unexpected count and culprit examples."""
    outcomes: list[tuple[str, dict[str, Any]]] = []
    for suite_name, suite_result in results.items():
        for res in suite_result.results:
            name = (res.expectation_config.meta or {}).get("name") or res.expectation_config.type
            count, examples = (0, []) if res.success else failure_examples(culprits_of(name), res, meta, facts, limit)
            outcomes.append(
                (
                    name,
                    {
                        "suite": suite_name,
                        "success": bool(res.success),
                        "severity": severity.get(name, "critical"),
                        "unexpected_count": count,
                        "examples": examples,
                    },
                )
            )
    return outcomes


def _failure_lines(outcomes: list[tuple[str, dict[str, Any]]], critical: bool) -> list[str]:
    """One line per failed expectation of that severity: name, suite, count and examples."""
    return [
        f"{name} ({o['suite']}): {o['unexpected_count']} unexpected; e.g. {'; '.join(o['examples']) or '-'}"
        for name, o in outcomes
        if not o["success"] and (o["severity"] == "critical") == critical
    ]


def _unlisted_images(root: Path, catalogue: pd.DataFrame) -> int:
    """Files in ``root/images`` that no catalogue row points to."""
    images_dir = root / "images"
    if not images_dir.is_dir():
        return 0
    listed = set(catalogue["file"].astype(str))
    return sum(1 for p in images_dir.iterdir() if str(p) not in listed)


def headline_metrics(summary: dict[str, Any]) -> dict[str, int]:
    """``metrics.json`` (the DVC metrics file; the same names in MLflow): the verdict as 1/0 (a
    metric is a number), the rows checked, how many critical and warning expectations failed and
    the images that are byte-identical copies. Per-expectation counts and timings stay in
    ``summary.json``."""
    return {
        "validate/passed": int(bool(summary["passed"])),
        "validate/rows": int(summary["rows"]),
        "validate/critical_failures": int(summary["critical_failures"]),
        "validate/warnings": int(summary["warnings"]),
        "validate/duplicate_images": int(summary["duplicate_images"]),
    }


def run_validate(
    cfg: ValidateConfig, paths: PathsConfig, *, label: str, data_dir: str | Path | None = None
) -> dict[str, Any]:
    """Validate a catalogue (``data_dir`` or ``paths.raw_dir``) with the GX suites in ``paths.gx_dir``.

    ``label`` (``prepare.label``) is the column ``label_present`` checks.

    Writes ``<paths.reports_dir>/validation/summary.json`` and ``data_docs/`` always, ``paths.facts``
    only on success. Raises ``ValidationFailed`` naming every failing critical expectation and
    its first ``validate.max_examples`` culprits; warnings are returned in the summary
    (``warnings``, ``warning_messages``) and logged.

    For ``paths.raw_dir``: a pass makes its DVC file (``data/raw.dvc``) the accepted record; a
    failure under ``dvc repro`` puts the accepted record back if the repro re-recorded the
    failing catalogue (:mod:`~fashionops.data.validation.raw_record`).
    """
    if data_dir is not None:
        return _validate(cfg, paths, label=label, data_dir=data_dir)
    try:
        result = _validate(cfg, paths, label=label, data_dir=None)
    except BaseException:
        restore_accepted_record(paths.raw_dir)  # never leave the failing catalogue recorded
        raise
    accept_record(paths.raw_dir)
    return result


def _validate(cfg: ValidateConfig, paths: PathsConfig, *, label: str, data_dir: str | Path | None) -> dict[str, Any]:
    """:func:`run_validate` without the DVC record keeping."""
    started = time.perf_counter()
    severity = severities(cfg.severity)
    root = Path(data_dir or paths.raw_dir).expanduser().resolve()
    gx_dir = Path(paths.gx_dir).expanduser().resolve()
    report_dir = paths.reports("validation").expanduser().resolve()
    facts_path = Path(paths.facts).expanduser().resolve()
    check_gx_dir(gx_dir)  # the helpful error before the slow work

    catalogue = load_catalogue(root, fill_missing=False)
    t0 = time.perf_counter()
    facts = gather_facts(catalogue, cfg.workers)
    facts_s = time.perf_counter() - t0
    meta = _metadata_frame(catalogue, label)
    result_format = {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": ["id"],
        "partial_unexpected_count": cfg.max_examples,
    }

    report_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = report_dir / "data_docs"
    t0 = time.perf_counter()
    results = run_suites(
        gx_dir,
        {METADATA_SUITE: meta, FACTS_SUITE: facts},
        expectation_parameters(cfg),
        result_format,
        docs_dir,
        severity=severity,
        catalogue=root,
    )
    gx_s = time.perf_counter() - t0

    outcomes = _outcomes(results, severity, meta, facts, cfg.max_examples)
    critical = _failure_lines(outcomes, critical=True)
    warnings_ = _failure_lines(outcomes, critical=False)
    by_name = dict(outcomes)  # a name seen twice (hand-added, unnamed) reports its last result
    groups, dup_images = duplicate_groups(facts)
    ok = facts["exists"] & facts["decodes"].fillna(False) & ~facts["truncated"].fillna(False)
    summary: dict[str, Any] = {
        "passed": not critical,
        "rows": int(len(catalogue)),
        "images_ok": int(ok.sum()),
        "images_missing": int((~facts["exists"]).sum()),
        "images_undecodable": int((facts["decodes"] == False).sum()),  # noqa: E712 (nullable)
        "images_unlisted": _unlisted_images(root, catalogue),
        "duplicate_groups": groups,
        "duplicate_images": dup_images,
        "critical_failures": len(critical),
        "warnings": len(warnings_),
        "failures": {n: o["unexpected_count"] for n, o in by_name.items()},
        "seconds": {"facts": round(facts_s, 2), "gx": round(gx_s, 2), "total": round(time.perf_counter() - started, 2)},
        # lists of names and examples: what failed, for the Prefect artifact and the CLI
        "failed_critical": [n for n, o in by_name.items() if not o["success"] and o["severity"] == "critical"],
        "failed_warning": [n for n, o in by_name.items() if not o["success"] and o["severity"] != "critical"],
        "examples": {n: o["examples"] for n, o in by_name.items() if not o["success"]},
    }
    write_json(report_dir / "summary.json", summary)
    write_json(report_dir / "metrics.json", headline_metrics(summary))
    summary.update(
        data_dir=str(root), data_docs=str(docs_dir / "index.html"), facts_path=str(facts_path) if not critical else None
    )
    if critical:
        facts_path.unlink(missing_ok=True)
        raise ValidationFailed(
            f"{len(critical)} critical expectation(s) failed for {root} (summary: {report_dir / 'summary.json'}):\n  "
            + "\n  ".join(critical)
        )
    with atomic_path(facts_path) as tmp_facts:
        facts.to_parquet(tmp_facts, index=False)
    for line in warnings_:
        log.warning("validation warning: %s", line)
    return {k: summary[k] for k in RESULT_KEYS} | {"warning_messages": warnings_}
