"""The committed Great Expectations **file** context (``paths.gx_dir``, ``gx/``).

It holds a pandas data source (``fashionops``, one dataframe asset per suite), the suites of
:data:`~fashionops.data.validation.expectations.EXPECTATIONS` and their validation definitions.
A run writes nothing into ``gx/``: validation results go to a temp dir and Data Docs to the run's
docs dir (both store paths in ``great_expectations.yml`` are ``${FASHIONOPS_GX_*}`` variables set
per run by :func:`run_suites`). Recreate ``gx/`` with ``fashionops gx-init`` (:func:`init_gx_context`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

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


def run_suites(
    gx_dir: Path,
    frames: Mapping[str, pd.DataFrame],
    parameters: Mapping[str, Any],
    result_format: Mapping[str, Any],
    docs_dir: Path,
) -> dict[str, Any]:
    """Run each suite's validation definition on its frame (``frames[suite]``) and build Data Docs.

    Returns the GX validation result per suite. The new Data Docs replace ``docs_dir`` whole;
    ``gx_dir`` is only read.
    """
    check_gx_dir(gx_dir)
    _quiet_gx()
    import great_expectations as gx

    with tempfile.TemporaryDirectory(prefix="gx-run-") as tmp:
        docs_tmp = Path(tmp) / "data_docs"
        with _store_dirs(Path(tmp) / "results", docs_tmp):
            ctx = gx.get_context(mode="file", context_root_dir=str(gx_dir))
            results = {
                suite: ctx.validation_definitions.get(suite).run(
                    batch_parameters={"dataframe": frame},
                    expectation_parameters=dict(parameters),
                    result_format=dict(result_format),
                )
                for suite, frame in frames.items()
            }
            ctx.build_data_docs(site_names=[DOCS_SITE])
        # Swap the new Data Docs in whole.
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        shutil.move(str(docs_tmp), str(docs_dir))
    return results
