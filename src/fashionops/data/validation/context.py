"""The committed Great Expectations **file** context (``paths.gx_dir``, ``gx/``).

It holds a pandas data source (``fashionops``, one dataframe asset per suite), the suites of
:data:`~fashionops.data.validation.expectations.EXPECTATIONS` and their validation definitions.
A run writes nothing into ``gx/``: validation results go to a temp dir and Data Docs to the run's
docs dir (both store paths in ``great_expectations.yml`` are ``${FASHIONOPS_GX_*}`` variables set
per run by :func:`run_suites`). Recreate ``gx/`` with ``fashionops gx-init`` (:func:`init_gx_context`).

The Data Docs of a run say what the stage decided: a suite's status is *Succeeded* unless a
**critical** expectation failed (failed warnings are listed on the page, and under "Show more
info"), the data asset is named with the catalogue it came from, the run with the DVC
experiment, the flow run or the time (:func:`docs_run_name`), and the pages load their scripts
and styles from the site itself (:mod:`~fashionops.data.validation.docs_offline`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from fashionops.data.validation.docs_offline import localize_site
from fashionops.data.validation.expectations import SUITE_ASSETS, suite_expectations
from fashionops.environ import scoped_environ
from fashionops.errors import DataError

DATASOURCE = "fashionops"
BATCH_DEFINITION = "whole_dataframe"
DOCS_SITE = "fashionops_site"
ENV_DOCS = "FASHIONOPS_GX_DATA_DOCS_DIR"
ENV_RESULTS = "FASHIONOPS_GX_RESULTS_DIR"

# great_expectations.yml as committed (byte for byte: init_gx_context writes exactly this).
PROJECT_CONFIG = f"""\
# fashionops Great Expectations file context (GX 1.x). Committed; a run writes nothing here.
# Validation results and Data Docs go where the run points ${{{ENV_RESULTS}}} and
# ${{{ENV_DOCS}}} (a temp dir and validate.report_dir/data_docs).
config_version: 4
analytics_enabled: false
progress_bars:
  globally: false
  metric_calculations: false
config_variables_file_path: uncommitted/config_variables.yml
plugins_directory: plugins/
stores:
  expectations_store:
    class_name: ExpectationsStore
    store_backend:
      class_name: TupleFilesystemStoreBackend
      base_directory: expectations/
  validation_results_store:
    class_name: ValidationResultsStore
    store_backend:
      class_name: TupleFilesystemStoreBackend
      base_directory: ${{{ENV_RESULTS}}}
  checkpoint_store:
    class_name: CheckpointStore
    store_backend:
      class_name: TupleFilesystemStoreBackend
      suppress_store_backend_id: true
      base_directory: checkpoints/
  validation_definition_store:
    class_name: ValidationDefinitionStore
    store_backend:
      class_name: TupleFilesystemStoreBackend
      base_directory: validation_definitions/
expectations_store_name: expectations_store
validation_results_store_name: validation_results_store
checkpoint_store_name: checkpoint_store
data_docs_sites:
  {DOCS_SITE}:
    class_name: SiteBuilder
    show_how_to_buttons: false
    store_backend:
      class_name: TupleFilesystemStoreBackend
      base_directory: ${{{ENV_DOCS}}}
    site_index_builder:
      class_name: DefaultSiteIndexBuilder
"""


def _quiet_gx() -> None:
    # No usage statistics from a pipeline (and no network here).
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@contextmanager
def _store_dirs(results: Path, docs: Path) -> Iterator[None]:
    """Point the context's result store and Data Docs site at run-specific directories."""
    with scoped_environ({ENV_RESULTS: str(results) + os.sep, ENV_DOCS: str(docs) + os.sep}):
        yield


def init_gx_context(gx_dir: str | Path) -> Path:
    """(Re)create the committed GX file context in ``gx_dir``: config, data source, suites,
    validation definitions. Deterministic apart from GX's generated ids; run it only when the
    expectation records change, then commit ``gx/``.
    """
    _quiet_gx()
    import great_expectations as gx

    gx_dir = Path(gx_dir).resolve()
    tmp_root = Path(tempfile.mkdtemp(prefix="gx-init-"))
    try:
        work = tmp_root / "gx"
        work.mkdir()
        (work / "great_expectations.yml").write_text(PROJECT_CONFIG)
        (work / ".gitignore").write_text("uncommitted/\n")
        for sub in ("expectations", "validation_definitions", "checkpoints"):
            (work / sub).mkdir()
        with _store_dirs(tmp_root / "results", tmp_root / "docs"):
            ctx = gx.get_context(mode="file", context_root_dir=str(work))
            ds = ctx.data_sources.add_pandas(DATASOURCE)
            for suite_name, asset_name in SUITE_ASSETS.items():
                batch_def = ds.add_dataframe_asset(name=asset_name).add_batch_definition_whole_dataframe(
                    BATCH_DEFINITION
                )
                suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name))
                for record in suite_expectations(suite_name):
                    suite.add_expectation(record.to_gx())
                suite.save()
                ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch_def, suite=suite))
        shutil.rmtree(work / "uncommitted", ignore_errors=True)
        if gx_dir.exists():
            shutil.rmtree(gx_dir)
        shutil.move(str(work), str(gx_dir))
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return gx_dir


def check_gx_dir(gx_dir: Path) -> None:
    """Raise ``DataError`` (saying how to recreate it) unless ``gx_dir`` holds a GX context."""
    if not (gx_dir / "great_expectations.yml").is_file():
        raise DataError(
            f"paths.gx_dir: {gx_dir} has no great_expectations.yml; restore gx/ from git or run "
            f"`fashionops gx-init --gx-dir {gx_dir}`"
        )


def docs_run_name(now: dt.datetime | None = None) -> str:
    """The run name the Data Docs show: the DVC experiment (``DVC_EXP_NAME``, also the MLflow run's
    name), else the Prefect flow run (``FASHIONOPS_FLOW_RUN_ID``/``PREFECT__FLOW_RUN_ID``), else
    ``validate-<UTC time>``. Path-safe: GX makes it a folder of the site."""
    for env, prefix in (
        ("DVC_EXP_NAME", ""),
        ("FASHIONOPS_FLOW_RUN_ID", "flow-run-"),
        ("PREFECT__FLOW_RUN_ID", "flow-run-"),
    ):
        if os.environ.get(env):
            return prefix + re.sub(r"[^A-Za-z0-9._-]+", "-", os.environ[env]).strip("-")
    now = now or dt.datetime.now(dt.timezone.utc)
    return "validate-" + now.strftime("%Y%m%dT%H%M%SZ")


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when inside it (``data/raw``), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _failed_names(result: Any, severity: Mapping[str, str]) -> dict[str, list[str]]:
    """{"critical": [...], "warning": [...]}: the failed expectations' names by severity
    (``validate.severity`` as resolved by the stage; an unknown name counts as critical)."""
    failed: dict[str, list[str]] = {"critical": [], "warning": []}
    for res in result.results:
        if not res.success:
            name = (res.expectation_config.meta or {}).get("name") or res.expectation_config.type
            failed["critical" if severity.get(name, "critical") == "critical" else "warning"].append(name)
    return failed


def _mark_stored_results(ctx: Any, severity: Mapping[str, str], catalogue: str) -> None:
    """Rewrite the stored results the Data Docs are built from: success = no critical failure,
    the data asset named with its catalogue, the failures by severity among the batch markers."""
    store = ctx.validation_results_store
    for key in store.list_keys():
        result = store.get(key)
        failed = _failed_names(result, severity)
        result.success = not failed["critical"]
        asset = (result.meta.get("active_batch_definition") or {}).get("data_asset_name") or result.suite_name
        spec = dict(result.meta.get("batch_spec") or {})
        spec["data_asset_name"] = f"{asset} ({catalogue})" if catalogue else asset
        result.meta["batch_spec"] = spec
        markers = dict(result.meta.get("batch_markers") or {})
        markers["failed critical expectations"] = ", ".join(failed["critical"]) or "none"
        markers["failed warning expectations"] = ", ".join(failed["warning"]) or "none"
        result.meta["batch_markers"] = markers
        store.set(key, result)


def run_suites(
    gx_dir: Path,
    frames: Mapping[str, pd.DataFrame],
    parameters: Mapping[str, Any],
    result_format: Mapping[str, Any],
    docs_dir: Path,
    *,
    severity: Mapping[str, str] | None = None,
    catalogue: Path | None = None,
) -> dict[str, Any]:
    """Run each suite's validation definition on its frame (``frames[suite]``) and build Data Docs.

    Returns the GX validation result per suite (GX's own ``success``: every expectation passed).
    The Data Docs show ``success`` per ``severity`` (expectation name -> critical|warning) and
    the ``catalogue`` folder as the data asset's source. The new Data Docs replace
    ``docs_dir`` whole; ``gx_dir`` is only read.
    """
    check_gx_dir(gx_dir)
    _quiet_gx()
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    now = dt.datetime.now(dt.timezone.utc)
    run_id = RunIdentifier(run_name=docs_run_name(now), run_time=now)
    with tempfile.TemporaryDirectory(prefix="gx-run-") as tmp:
        docs_tmp = Path(tmp) / "data_docs"
        with _store_dirs(Path(tmp) / "results", docs_tmp):
            ctx = gx.get_context(mode="file", context_root_dir=str(gx_dir))
            results = {
                suite: ctx.validation_definitions.get(suite).run(
                    batch_parameters={"dataframe": frame},
                    expectation_parameters=dict(parameters),
                    result_format=dict(result_format),
                    run_id=run_id,
                )
                for suite, frame in frames.items()
            }
            _mark_stored_results(ctx, severity or {}, _shown_path(catalogue) if catalogue else "")
            ctx.build_data_docs(site_names=[DOCS_SITE])
        localize_site(docs_tmp)
        # Swap the new Data Docs in whole.
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        shutil.move(str(docs_tmp), str(docs_dir))
    return results
