"""Data validation with Great Expectations 1.x: catalogue metadata and per-image facts.

The committed GX **file** context in ``validate.gx_dir`` (``gx/``) holds a pandas data source
(``fashionops``, dataframe assets ``catalogue`` and ``image_facts``), two suites and their
validation definitions. Suite values that depend on ``params.yaml`` (gender set, year range,
required columns, minimum size, image modes) are ``$PARAMETER`` placeholders filled per run,
so changing params never rewrites ``gx/``. A run writes nothing into ``gx/``: validation
results go to a temp dir and Data Docs to ``validate.report_dir/data_docs`` (both store paths in
``great_expectations.yml`` are ``${FASHIONOPS_GX_*}`` variables set per run). Recreate ``gx/``
with ``python -m fashionops.data.validate init-gx [GX_DIR]``.

Expectations (stable names, in the expectation's ``meta.name``; default severity; override
with ``validate.severity: {name: critical|warning}``):

=========================  ==================  ==========================================================
name                       default severity    checks
=========================  ==================  ==========================================================
``required_columns``       critical            ``validate.required_columns`` are all in ``styles.csv``
``row_count``              critical            the catalogue has at least one row
``id_integer``             critical            ``id`` is an integer column
``id_unique``              critical            no ``id`` appears twice
``label_present``          critical            the ``prepare.label`` column is non-null and non-blank
``year_in_range``          warning             ``year`` in [``year_min``, ``year_max``] (missing allowed)
``gender_in_set``          warning             ``gender`` in ``validate.genders``
``image_exists``           critical            ``images/{id}.jpg`` exists
``image_decodes``          critical            the file fully decodes (PIL ``load()``, truncation not allowed)
``image_not_truncated``    critical            the decoder did not report a truncated file
``image_min_width``        warning             width >= ``validate.min_width``
``image_min_height``       warning             height >= ``validate.min_height``
``image_mode``             warning             PIL mode in ``validate.image_modes``
``image_unique_content``   warning             no two ids share the same bytes (sha256); ~600 groups on the real data
=========================  ==================  ==========================================================

Expectations added to the committed suites by hand run too; without a ``meta.name`` they are
reported under their GX type and are critical.

Outputs of :func:`run_validate`: ``validate.report_dir/summary.json`` (always, also on failure:
numbers for ``dvc metrics show``: rows, images_ok/missing/undecodable/unlisted, duplicate
groups/images, critical_failures, warnings, ``failures.<name>`` unexpected counts, seconds; and as
lists, which ``dvc metrics show`` skips: ``failed_critical``, ``failed_warning``,
``examples.<name>``), ``validate.report_dir/data_docs/index.html``
(always) and ``validate.facts_path`` (parquet, **only when no critical expectation failed**; a
stale one is removed on failure so ``prepare`` never reads facts of a catalogue that failed).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from fashionops.atomic import atomic_path, write_json
from fashionops.config import Params
from fashionops.data.catalogue import load_catalogue
from fashionops.errors import DataError, ValidationFailed

DATASOURCE = "fashionops"
BATCH_DEFINITION = "whole_dataframe"
METADATA_SUITE = "catalogue_metadata"
FACTS_SUITE = "image_facts"
DOCS_SITE = "fashionops_site"
ENV_DOCS = "FASHIONOPS_GX_DATA_DOCS_DIR"
ENV_RESULTS = "FASHIONOPS_GX_RESULTS_DIR"

DEFAULT_SEVERITY: dict[str, str] = {
    "required_columns": "critical",
    "row_count": "critical",
    "id_integer": "critical",
    "id_unique": "critical",
    "label_present": "critical",
    "year_in_range": "warning",
    "gender_in_set": "warning",
    "image_exists": "critical",
    "image_decodes": "critical",
    "image_not_truncated": "critical",
    "image_min_width": "warning",
    "image_min_height": "warning",
    "image_mode": "warning",
    "image_unique_content": "warning",
}

FACT_COLUMNS: list[str] = [
    "id", "file", "exists", "bytes", "decodes", "truncated", "width", "height", "mode", "format",
    "sha256", "error",
]


# ---------------------------------------------------------------------------------------------
# Per-image facts


def image_facts(image_id: int, file: str) -> dict[str, Any]:
    """Facts about one image file: existence, size, full decode, truncation, geometry, sha256.

    ``decodes``/``truncated`` are None when the file does not exist (only ``image_exists``
    fails for it); ``error`` holds the decoder's message.
    """
    from PIL import Image, ImageFile

    # Never let PIL paper over a cut-off file.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    row: dict[str, Any] = dict.fromkeys(FACT_COLUMNS)
    row.update(id=int(image_id), file=file, exists=False)
    try:
        data = Path(file).read_bytes()
    except FileNotFoundError:
        row["error"] = "file not found"
        return row
    except OSError as exc:  # a directory, no permission, ...
        row.update(exists=Path(file).exists(), error=f"unreadable: {exc}", decodes=False, truncated=False)
        return row
    row.update(exists=True, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), truncated=False)
    if not data:
        row.update(decodes=False, error="empty file (0 bytes)")
        return row
    try:
        with Image.open(io.BytesIO(data)) as im:
            row.update(width=im.width, height=im.height, mode=im.mode, format=im.format)
            im.load()
        row["decodes"] = True
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        msg = str(exc) or type(exc).__name__
        if msg.startswith("cannot identify image file"):
            msg = "cannot identify image file (not an image PIL can read)"
        row.update(decodes=False, error=msg, truncated="truncated" in msg.lower())
    return row


def _facts_chunk(items: list[tuple[int, str]]) -> list[dict[str, Any]]:
    return [image_facts(i, f) for i, f in items]


def gather_facts(catalogue: pd.DataFrame, workers: int = 2) -> pd.DataFrame:
    """Per-image facts table (one row per catalogue row, :data:`FACT_COLUMNS`) using ``workers`` processes."""
    items = list(zip(catalogue["id"].astype("int64").tolist(), catalogue["file"].astype(str).tolist()))
    if workers <= 1 or len(items) < 64:
        rows = _facts_chunk(items)
    else:
        # Large chunks: per-task overhead dominates for 5 KB thumbnails. fork is cheapest on
        # Linux (nothing to re-import); elsewhere the platform default.
        size = max(64, len(items) // (workers * 8) + 1)
        chunks = [items[i: i + size] for i in range(0, len(items), size)]
        method = "fork" if sys.platform.startswith("linux") else None
        with mp.get_context(method).Pool(workers) as pool:
            rows = [r for part in pool.map(_facts_chunk, chunks) for r in part]
    df = pd.DataFrame(rows, columns=FACT_COLUMNS)
    return df.astype({
        "id": "int64", "file": "string", "exists": "bool", "bytes": "Int64", "decodes": "boolean",
        "truncated": "boolean", "width": "Int64", "height": "Int64", "mode": "string",
        "format": "string", "sha256": "string", "error": "string",
    })


def duplicate_groups(facts: pd.DataFrame) -> tuple[int, int]:
    """(number of groups of byte-identical images, images in those groups)."""
    sizes = facts["sha256"].dropna().value_counts()
    dup = sizes[sizes > 1]
    return int(len(dup)), int(dup.sum())


# ---------------------------------------------------------------------------------------------
# GX context


def _suites_spec() -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """(name, expectation class, kwargs) per suite; params-dependent values are $PARAMETERs."""
    par = lambda name: {"$PARAMETER": name}  # noqa: E731
    return {
        METADATA_SUITE: [
            ("required_columns", "ExpectTableColumnsToMatchSet",
             {"column_set": par("required_columns"), "exact_match": False}),
            ("row_count", "ExpectTableRowCountToBeBetween", {"min_value": 1}),
            ("id_integer", "ExpectColumnValuesToBeInTypeList", {"column": "id", "type_list": ["int64", "Int64"]}),
            ("id_unique", "ExpectColumnValuesToBeUnique", {"column": "id"}),
            ("label_present", "ExpectColumnValuesToNotBeNull", {"column": "label"}),
            ("year_in_range", "ExpectColumnValuesToBeBetween",
             {"column": "year", "min_value": par("year_min"), "max_value": par("year_max")}),
            ("gender_in_set", "ExpectColumnValuesToBeInSet", {"column": "gender", "value_set": par("genders")}),
        ],
        FACTS_SUITE: [
            ("image_exists", "ExpectColumnValuesToBeInSet", {"column": "exists", "value_set": [True]}),
            ("image_decodes", "ExpectColumnValuesToBeInSet", {"column": "decodes", "value_set": [True]}),
            ("image_not_truncated", "ExpectColumnValuesToBeInSet", {"column": "truncated", "value_set": [False]}),
            ("image_min_width", "ExpectColumnValuesToBeBetween", {"column": "width", "min_value": par("min_width")}),
            ("image_min_height", "ExpectColumnValuesToBeBetween", {"column": "height", "min_value": par("min_height")}),
            ("image_mode", "ExpectColumnValuesToBeInSet", {"column": "mode", "value_set": par("image_modes")}),
            ("image_unique_content", "ExpectColumnValuesToBeUnique", {"column": "sha256"}),
        ],
    }


DESCRIPTIONS: dict[str, str] = {
    "required_columns": "fashionops `required_columns`: the columns in validate.required_columns are present",
    "row_count": "fashionops `row_count`: the catalogue is not empty",
    "id_integer": "fashionops `id_integer`: id is an integer column",
    "id_unique": "fashionops `id_unique`: every id appears once",
    "label_present": "fashionops `label_present`: the prepare.label column (as `label`) is set and not blank",
    "year_in_range": "fashionops `year_in_range`: year within [validate.year_min, validate.year_max]",
    "gender_in_set": "fashionops `gender_in_set`: gender in validate.genders",
    "image_exists": "fashionops `image_exists`: the image file exists",
    "image_decodes": "fashionops `image_decodes`: the image fully decodes",
    "image_not_truncated": "fashionops `image_not_truncated`: the image file is not truncated",
    "image_min_width": "fashionops `image_min_width`: width >= validate.min_width",
    "image_min_height": "fashionops `image_min_height`: height >= validate.min_height",
    "image_mode": "fashionops `image_mode`: PIL mode in validate.image_modes",
    "image_unique_content": "fashionops `image_unique_content`: no byte-identical copies under other ids (warning)",
}

_PROJECT_CONFIG = f"""\
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


def init_gx_context(gx_dir: str | Path) -> Path:
    """(Re)create the committed GX file context in ``gx_dir``: config, data source, suites,
    validation definitions. Deterministic apart from GX's generated ids; run it only when the
    suites in this module change, then commit ``gx/``.
    """
    _quiet_gx()
    import great_expectations as gx
    import great_expectations.expectations as gxe

    gx_dir = Path(gx_dir).resolve()
    tmp_root = Path(tempfile.mkdtemp(prefix="gx-init-"))
    try:
        work = tmp_root / "gx"
        work.mkdir()
        (work / "great_expectations.yml").write_text(_PROJECT_CONFIG)
        (work / ".gitignore").write_text("uncommitted/\n")
        for sub in ("expectations", "validation_definitions", "checkpoints"):
            (work / sub).mkdir()
        with _gx_env(tmp_root / "results", tmp_root / "docs"):
            ctx = gx.get_context(mode="file", context_root_dir=str(work))
            ds = ctx.data_sources.add_pandas(DATASOURCE)
            for suite_name, spec in _suites_spec().items():
                asset = ds.add_dataframe_asset(name="catalogue" if suite_name == METADATA_SUITE else "image_facts")
                batch_def = asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)
                suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name))
                for name, cls, kwargs in spec:
                    exp = getattr(gxe, cls)(
                        **kwargs, meta={"name": name}, description=DESCRIPTIONS[name],
                        severity=DEFAULT_SEVERITY[name],
                    )
                    suite.add_expectation(exp)
                suite.save()
                ctx.validation_definitions.add(
                    gx.ValidationDefinition(name=suite_name, data=batch_def, suite=suite)
                )
        shutil.rmtree(work / "uncommitted", ignore_errors=True)
        if gx_dir.exists():
            shutil.rmtree(gx_dir)
        shutil.move(str(work), str(gx_dir))
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return gx_dir


class _gx_env:
    """Point the context's result store and Data Docs site at run-specific directories."""

    def __init__(self, results: Path, docs: Path) -> None:
        self.values = {ENV_RESULTS: str(results) + os.sep, ENV_DOCS: str(docs) + os.sep}
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> _gx_env:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        return self

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_gx_dir(gx_dir: Path) -> None:
    if not (gx_dir / "great_expectations.yml").is_file():
        raise DataError(
            f"validate.gx_dir: {gx_dir} has no great_expectations.yml; restore gx/ from git or run "
            f"`python -m fashionops.data.validate init-gx {gx_dir}`"
        )


def _open_context(gx_dir: Path) -> Any:
    _check_gx_dir(gx_dir)
    import great_expectations as gx

    return gx.get_context(mode="file", context_root_dir=str(gx_dir))


# ---------------------------------------------------------------------------------------------
# Running


def _severity(params: Params) -> dict[str, str]:
    unknown = sorted(set(params.validate.severity) - set(DEFAULT_SEVERITY))
    if unknown:
        raise DataError(
            f"validate.severity: unknown expectation name(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_SEVERITY)}"
        )
    return {**DEFAULT_SEVERITY, **params.validate.severity}


def _metadata_frame(catalogue: pd.DataFrame, label: str) -> pd.DataFrame:
    df = catalogue.drop(columns=["file"])
    if label in df.columns:
        text = df[label].astype("string").str.strip()
        df["label"] = text.mask(text == "")  # blank labels count as missing
    else:
        df["label"] = pd.Series(pd.NA, index=df.index, dtype="string")
    return df


def _examples(name: str, res: Any, meta: pd.DataFrame, facts: pd.DataFrame, limit: int) -> tuple[int, list[str]]:
    """(unexpected count, up to ``limit`` human-readable culprits) of one expectation result."""
    result = res.result or {}
    if res.exception_info and res.exception_info.get("raised_exception"):
        return 1, [f"could not be evaluated: {str(res.exception_info.get('exception_message'))[:300]}"]
    if name == "required_columns":
        missing = sorted((result.get("details", {}).get("mismatched", {}) or {}).get("missing", []) or [])
        return len(missing), [f"missing column {c!r}" for c in missing[:limit]]
    if name == "row_count":
        return 1, [f"{result.get('observed_value', 0)} rows"]
    if name == "id_integer":
        return 1, [f"id column has dtype {meta['id'].dtype}"]
    count = int(result.get("unexpected_count") or 0)
    ids = [row.get("id") for row in result.get("unexpected_index_list") or []]
    out: list[str] = []
    if name == "id_unique":
        dup = meta[meta["id"].duplicated(keep=False)]
        for image_id, grp in list(dup.groupby("id", sort=True))[:limit]:
            out.append(f"id {image_id} on rows {', '.join(str(i + 2) for i in grp.index)} of styles.csv")
        return count, out
    if name == "image_unique_content":
        dup = facts[facts["sha256"].notna() & facts["sha256"].duplicated(keep=False)]
        groups = sorted(dup.groupby("sha256")["id"].apply(lambda s: sorted(s.tolist())).tolist())
        return count, [f"same bytes: ids {', '.join(map(str, g))}" for g in groups[:limit]]
    if name.startswith("image_"):
        by_id = facts.drop_duplicates("id").set_index("id")
        for image_id in ids[:limit]:
            if image_id in by_id.index:
                row = by_id.loc[image_id]
                what = {
                    "image_min_width": f"width {row['width']}",
                    "image_min_height": f"height {row['height']}",
                    "image_mode": f"mode {row['mode']}",
                }.get(name, row["error"] if pd.notna(row["error"]) else "")
                out.append(f"id {image_id} ({row['file']}: {what})")
            else:
                out.append(f"id {image_id}")
        return count, out
    column = res.expectation_config.kwargs.get("column")
    for row in (result.get("unexpected_index_list") or [])[:limit]:
        value = row.get(column)
        out.append(f"id {row.get('id')} ({column}={value!r})")
    return count, out


def run_validate(params: Params, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Validate a catalogue (``data_dir`` or ``validate.data_dir``) with the GX suites.

    Writes ``validate.report_dir/summary.json`` and ``data_docs/`` always, ``validate.facts_path``
    only on success. Raises ``ValidationFailed`` naming every failing critical expectation and
    its first ``validate.max_examples`` culprits; warnings are returned in the summary
    (``warnings``) and printed to stderr.
    """
    cfg = params.validate
    started = time.perf_counter()
    severity = _severity(params)
    root = Path(data_dir or cfg.data_dir).expanduser().resolve()
    gx_dir = Path(cfg.gx_dir).expanduser().resolve()
    report_dir = Path(cfg.report_dir).expanduser().resolve()
    facts_path = Path(cfg.facts_path).expanduser().resolve()
    _check_gx_dir(gx_dir)  # the helpful error before the slow work

    catalogue = load_catalogue(root, fill_missing=False)
    t0 = time.perf_counter()
    facts = gather_facts(catalogue, cfg.workers)
    facts_s = time.perf_counter() - t0
    meta = _metadata_frame(catalogue, params.prepare.label)
    expectation_parameters = {
        "required_columns": list(cfg.required_columns),
        "year_min": cfg.year_min,
        "year_max": cfg.year_max,
        "genders": list(cfg.genders),
        "min_width": cfg.min_width,
        "min_height": cfg.min_height,
        "image_modes": list(cfg.image_modes),
    }
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": ["id"],
                     "partial_unexpected_count": cfg.max_examples}

    _quiet_gx()
    report_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = report_dir / "data_docs"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gx-run-") as tmp:
        docs_tmp = Path(tmp) / "data_docs"
        with _gx_env(Path(tmp) / "results", docs_tmp):
            ctx = _open_context(gx_dir)
            results = {
                METADATA_SUITE: ctx.validation_definitions.get(METADATA_SUITE).run(
                    batch_parameters={"dataframe": meta}, expectation_parameters=expectation_parameters,
                    result_format=result_format),
                FACTS_SUITE: ctx.validation_definitions.get(FACTS_SUITE).run(
                    batch_parameters={"dataframe": facts}, expectation_parameters=expectation_parameters,
                    result_format=result_format),
            }
            ctx.build_data_docs(site_names=[DOCS_SITE])
        # Swap the new Data Docs in whole.
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        shutil.move(str(docs_tmp), str(docs_dir))
    gx_s = time.perf_counter() - t0

    expectations: dict[str, dict[str, Any]] = {}
    critical: list[str] = []
    warnings_: list[str] = []
    for suite_name, suite_result in results.items():
        for res in suite_result.results:
            name = (res.expectation_config.meta or {}).get("name") or res.expectation_config.type
            count, examples = (0, []) if res.success else _examples(name, res, meta, facts, cfg.max_examples)
            sev = severity.get(name, "critical")
            expectations[name] = {"suite": suite_name, "success": bool(res.success), "severity": sev,
                                  "unexpected_count": count, "examples": examples}
            if not res.success:
                line = f"{name} ({suite_name}): {count} unexpected; e.g. {'; '.join(examples) or '-'}"
                (critical if sev == "critical" else warnings_).append(line)

    groups, dup_images = duplicate_groups(facts)
    ok = facts["exists"] & facts["decodes"].fillna(False) & ~facts["truncated"].fillna(False)
    listed = set(catalogue["file"].astype(str))
    images_dir = root / "images"
    unlisted = (
        sum(1 for p in images_dir.iterdir() if str(p) not in listed) if images_dir.is_dir() else 0
    )
    summary: dict[str, Any] = {
        "passed": not critical,
        "rows": int(len(catalogue)),
        "images_ok": int(ok.sum()),
        "images_missing": int((~facts["exists"]).sum()),
        "images_undecodable": int((facts["decodes"] == False).sum()),  # noqa: E712 (nullable)
        "images_unlisted": int(unlisted),
        "duplicate_groups": groups,
        "duplicate_images": dup_images,
        "critical_failures": len(critical),
        "warnings": len(warnings_),
        "failures": {n: e["unexpected_count"] for n, e in expectations.items()},
        "seconds": {"facts": round(facts_s, 2), "gx": round(gx_s, 2),
                    "total": round(time.perf_counter() - started, 2)},
        # Lists only below: `dvc metrics show` lists the numbers above and skips these.
        "failed_critical": [n for n, e in expectations.items() if not e["success"] and e["severity"] == "critical"],
        "failed_warning": [n for n, e in expectations.items() if not e["success"] and e["severity"] != "critical"],
        "examples": {n: e["examples"] for n, e in expectations.items() if not e["success"]},
    }
    write_json(report_dir / "summary.json", summary)
    summary.update(data_dir=str(root), data_docs=str(docs_dir / "index.html"),
                   facts_path=str(facts_path) if not critical else None)
    if critical:
        facts_path.unlink(missing_ok=True)
        raise ValidationFailed(
            f"{len(critical)} critical expectation(s) failed for {root} (summary: {report_dir / 'summary.json'}):\n  "
            + "\n  ".join(critical)
        )
    with atomic_path(facts_path) as tmp_facts:
        facts.to_parquet(tmp_facts, index=False)
    for line in warnings_:
        print(f"warning: {line}", file=sys.stderr)
    return {k: summary[k] for k in (
        "passed", "rows", "images_ok", "duplicate_groups", "critical_failures", "warnings", "failures",
        "seconds", "data_docs", "facts_path")} | {"warning_messages": warnings_}




if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "init-gx":
        print(init_gx_context(sys.argv[2] if len(sys.argv) > 2 else "gx"))
    else:
        print("usage: python -m fashionops.data.validate init-gx [GX_DIR]", file=sys.stderr)
        sys.exit(2)
