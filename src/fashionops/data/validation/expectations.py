"""The expectations of the validate stage: ONE table (:data:`EXPECTATIONS`) of records.

Everything about an expectation is derived from its record: the GX suites that
:func:`~fashionops.data.validation.context.init_gx_context` writes into ``gx/`` (type, kwargs,
``meta.name``, description, severity), the default severities and the check of
``validate.severity`` overrides, the per-run ``$PARAMETER`` values, how its culprits are
reported, and the docs table (below, and in README.md: :func:`expectations_markdown`). Adding an
expectation = adding a record, then ``fashionops gx-init`` and committing ``gx/``.

Suite values that depend on ``params.yaml`` are ``$PARAMETER`` placeholders named after the
``validate`` key that fills them per run, so changing params never rewrites ``gx/``.
Expectations added to the committed suites by hand run too; without a ``meta.name`` they are
reported under their GX type and are critical.

Expectations (stable names, in the expectation's ``meta.name``; default severity; override with
``validate.severity: {name: critical|warning}``):

"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fashionops.config import ValidateConfig
from fashionops.data.validation import examples
from fashionops.errors import DataError

Severity = Literal["critical", "warning"]

METADATA_SUITE = "catalogue_metadata"
FACTS_SUITE = "image_facts"
# Suite -> the dataframe asset (of the ``fashionops`` pandas data source) it validates.
SUITE_ASSETS: dict[str, str] = {METADATA_SUITE: "catalogue", FACTS_SUITE: "image_facts"}


def _par(name: str) -> dict[str, str]:
    """A ``$PARAMETER`` placeholder filled per run with ``validate.<name>``."""
    return {"$PARAMETER": name}


@dataclass(frozen=True)
class Expectation:
    """One expectation of a suite, with everything derived from it."""

    name: str  # stable name (``meta.name``): summary.json keys, ``validate.severity`` keys
    suite: str  # METADATA_SUITE (the catalogue frame) or FACTS_SUITE (per-image facts)
    gx_type: str  # class in ``great_expectations.expectations``
    kwargs: Mapping[str, Any]  # its arguments; ``_par(key)`` values are filled per run
    severity: Severity  # default severity
    description: str  # shown in Data Docs (stored in gx/ as "fashionops `name`: description")
    checks: str  # what it checks, for the docs table (markdown)
    culprits: examples.Culprits = examples.column_values  # how failures are reported

    @property
    def gx_description(self) -> str:
        """The description stored in the GX suite."""
        return f"fashionops `{self.name}`: {self.description}"

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Names of the ``$PARAMETER`` placeholders in :attr:`kwargs`."""
        return tuple(v["$PARAMETER"] for v in self.kwargs.values() if isinstance(v, Mapping) and "$PARAMETER" in v)

    def parameters(self, cfg: ValidateConfig) -> dict[str, Any]:
        """Values of this expectation's placeholders for a run: the ``validate`` keys of the same name."""
        values = {key: getattr(cfg, key) for key in self.placeholders}
        return {key: list(v) if isinstance(v, list) else v for key, v in values.items()}

    def to_gx(self) -> Any:
        """The GX expectation object, as written into the committed suite."""
        import great_expectations.expectations as gxe

        return getattr(gxe, self.gx_type)(
            **copy.deepcopy(dict(self.kwargs)),
            meta={"name": self.name},
            description=self.gx_description,
            severity=self.severity,
        )


EXPECTATIONS: tuple[Expectation, ...] = (
    # -- catalogue metadata (styles.csv with the prepare.label column as `label`) --
    Expectation(
        "required_columns",
        METADATA_SUITE,
        "ExpectTableColumnsToMatchSet",
        {"column_set": _par("required_columns"), "exact_match": False},
        "critical",
        "the columns in validate.required_columns are present",
        "`validate.required_columns` are all in `styles.csv`",
        examples.missing_columns,
    ),
    Expectation(
        "row_count",
        METADATA_SUITE,
        "ExpectTableRowCountToBeBetween",
        {"min_value": 1},
        "critical",
        "the catalogue is not empty",
        "the catalogue has at least one row",
        examples.row_count,
    ),
    Expectation(
        "id_integer",
        METADATA_SUITE,
        "ExpectColumnValuesToBeInTypeList",
        {"column": "id", "type_list": ["int64", "Int64"]},
        "critical",
        "id is an integer column",
        "`id` is an integer column",
        examples.id_dtype,
    ),
    Expectation(
        "id_unique",
        METADATA_SUITE,
        "ExpectColumnValuesToBeUnique",
        {"column": "id"},
        "critical",
        "every id appears once",
        "no `id` appears twice",
        examples.duplicate_ids,
    ),
    Expectation(
        "label_present",
        METADATA_SUITE,
        "ExpectColumnValuesToNotBeNull",
        {"column": "label"},
        "critical",
        "the prepare.label column (as `label`) is set and not blank",
        "the `prepare.label` column is non-null and non-blank",
    ),
    Expectation(
        "year_in_range",
        METADATA_SUITE,
        "ExpectColumnValuesToBeBetween",
        {"column": "year", "min_value": _par("year_min"), "max_value": _par("year_max")},
        "warning",
        "year within [validate.year_min, validate.year_max]",
        "`year` in [`validate.year_min`, `validate.year_max`] (missing allowed)",
    ),
    Expectation(
        "gender_in_set",
        METADATA_SUITE,
        "ExpectColumnValuesToBeInSet",
        {"column": "gender", "value_set": _par("genders")},
        "warning",
        "gender in validate.genders",
        "`gender` in `validate.genders`",
    ),
    # -- per-image facts (facts.gather_facts: one row per catalogue row) --
    Expectation(
        "image_exists",
        FACTS_SUITE,
        "ExpectColumnValuesToBeInSet",
        {"column": "exists", "value_set": [True]},
        "critical",
        "the image file exists",
        "`images/{id}.jpg` exists",
        examples.image_errors,
    ),
    Expectation(
        "image_decodes",
        FACTS_SUITE,
        "ExpectColumnValuesToBeInSet",
        {"column": "decodes", "value_set": [True]},
        "critical",
        "the image fully decodes",
        "the file fully decodes (PIL `load()`, truncation not allowed)",
        examples.image_errors,
    ),
    Expectation(
        "image_not_truncated",
        FACTS_SUITE,
        "ExpectColumnValuesToBeInSet",
        {"column": "truncated", "value_set": [False]},
        "critical",
        "the image file is not truncated",
        "the decoder did not report a truncated file",
        examples.image_errors,
    ),
    Expectation(
        "image_min_width",
        FACTS_SUITE,
        "ExpectColumnValuesToBeBetween",
        {"column": "width", "min_value": _par("min_width")},
        "warning",
        "width >= validate.min_width",
        "width >= `validate.min_width`",
        examples.image_values,
    ),
    Expectation(
        "image_min_height",
        FACTS_SUITE,
        "ExpectColumnValuesToBeBetween",
        {"column": "height", "min_value": _par("min_height")},
        "warning",
        "height >= validate.min_height",
        "height >= `validate.min_height`",
        examples.image_values,
    ),
    Expectation(
        "image_mode",
        FACTS_SUITE,
        "ExpectColumnValuesToBeInSet",
        {"column": "mode", "value_set": _par("image_modes")},
        "warning",
        "PIL mode in validate.image_modes",
        "PIL mode in `validate.image_modes`",
        examples.image_values,
    ),
    Expectation(
        "image_unique_content",
        FACTS_SUITE,
        "ExpectColumnValuesToBeUnique",
        {"column": "sha256"},
        "warning",
        "no byte-identical copies under other ids (warning)",
        "no two ids share the same bytes (sha256); ~600 groups on the real data",
        examples.duplicate_content,
    ),
)

BY_NAME: dict[str, Expectation] = {e.name: e for e in EXPECTATIONS}
DEFAULT_SEVERITY: dict[str, str] = {e.name: e.severity for e in EXPECTATIONS}


def suite_expectations(suite: str) -> list[Expectation]:
    """The records of ``suite``, in suite order."""
    return [e for e in EXPECTATIONS if e.suite == suite]


def expectation_parameters(cfg: ValidateConfig) -> dict[str, Any]:
    """The ``$PARAMETER`` values of every expectation for a run with ``cfg``."""
    return {key: value for e in EXPECTATIONS for key, value in e.parameters(cfg).items()}


def severities(overrides: Mapping[str, str]) -> dict[str, str]:
    """Default severities with ``validate.severity`` applied; an unknown name is a ``DataError``."""
    unknown = sorted(set(overrides) - set(DEFAULT_SEVERITY))
    if unknown:
        raise DataError(
            f"validate.severity: unknown expectation name(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_SEVERITY)}"
        )
    return {**DEFAULT_SEVERITY, **overrides}


def culprits_of(name: str) -> examples.Culprits:
    """How failures of expectation ``name`` are reported (``column=value`` for hand-added ones)."""
    record = BY_NAME.get(name)
    return record.culprits if record else examples.column_values


def expectations_markdown() -> str:
    """The docs table of :data:`EXPECTATIONS` (markdown; README.md holds a copy, checked by a test)."""
    lines = ["| name | suite | default severity | checks |", "| --- | --- | --- | --- |"]
    for e in EXPECTATIONS:
        checks = e.checks.replace("|", "\\|")
        lines.append(f"| `{e.name}` | `{e.suite}` | {e.severity} | {checks} |")
    return "\n".join(lines) + "\n"


__doc__ = f"{__doc__}{expectations_markdown()}"
