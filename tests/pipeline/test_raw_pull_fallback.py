"""A fresh clone whose ``data/raw.dvc`` data is on no DVC remote imports the catalogue without an
ERROR in the run log (issue #19): the expected fallback is one INFO line saying why. Real git, DVC
and ``fashionops import`` on the 300-image catalogue."""

from __future__ import annotations

import logging

import pytest
from _workspace import dvc, git, make_workspace

from fashionops.orchestration.runner import ensure_raw_data, stage_env
from log_records import RecordList


def _import_logged(ws, env) -> tuple[dict, list[tuple[int, str]]]:
    logger = logging.getLogger("test.raw_pull")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = RecordList()
    logger.addHandler(handler)
    try:
        result = ensure_raw_data(ws, env=env, log=logger)
    finally:
        logger.removeHandler(handler)
    return result, [(r.levelno, r.getMessage()) for r in handler.records]


@pytest.mark.slow  # three imports of 300 images
def test_expected_pull_fallback_logs_no_error(tmp_path, catalogue_300):
    env = {**stage_env(), "FASHION_DATA": str(catalogue_300)}
    env.pop("FASHIONOPS_DVC_REMOTE", None)
    origin = make_workspace(tmp_path / "origin")
    ensure_raw_data(origin, source=str(catalogue_300), env=env)
    git("add", "-A", cwd=origin)
    git("commit", "-q", "-m", "catalogue", cwd=origin)

    # no remote at all: not even an attempt to pull
    bare = tmp_path / "clone"
    git("clone", "-q", str(origin), str(bare), cwd=tmp_path)
    result, records = _import_logged(bare, env)
    assert result["imported"] is True and (bare / "data" / "raw" / "styles.csv").is_file()
    assert not [m for lvl, m in records if lvl >= logging.WARNING], records
    assert [m for lvl, m in records if "no DVC remote" in m and lvl == logging.INFO], records

    # a default remote that does not hold the data: DVC's ERROR is not relayed, our reason is
    clone = tmp_path / "clone-remote"
    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    dvc("remote", "add", "-d", "team", str(tmp_path / "empty-remote"), cwd=clone)
    result, records = _import_logged(clone, env)
    assert result["imported"] is True
    assert not [m for lvl, m in records if lvl >= logging.WARNING], records
    reason = [m for lvl, m in records if "not pulled from DVC remote 'team'" in m]
    assert len(reason) == 1 and "importing the catalogue" in reason[0], records
