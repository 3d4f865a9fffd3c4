"""Data validation with Great Expectations 1.x: catalogue metadata and per-image facts.

Modules, one job each:

* :mod:`.expectations`: the ONE table of expectation records (suite, GX type, kwargs, default
  severity, descriptions, how culprits are reported) and everything derived from it;
* :mod:`.examples`: the culprits of a failed expectation (which ids, files, columns);
* :mod:`.facts`: per-image facts (exists, decodes, truncated, size, mode, sha256);
* :mod:`.context`: the committed GX file context ``gx/`` (create it, run the suites on it);
* :mod:`.stage`: :func:`run_validate`, the ``validate`` stage, and its summary.
"""

from fashionops.data.validation.context import init_gx_context
from fashionops.data.validation.expectations import (
    DEFAULT_SEVERITY,
    EXPECTATIONS,
    Expectation,
    expectations_markdown,
)
from fashionops.data.validation.facts import FACT_COLUMNS, duplicate_groups, gather_facts, image_facts
from fashionops.data.validation.stage import run_validate

__all__ = [
    "DEFAULT_SEVERITY",
    "EXPECTATIONS",
    "FACT_COLUMNS",
    "Expectation",
    "duplicate_groups",
    "expectations_markdown",
    "gather_facts",
    "image_facts",
    "init_gx_context",
    "run_validate",
]
