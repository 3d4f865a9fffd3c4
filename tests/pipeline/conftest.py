"""Fixtures for the orchestration tests: a real git + DVC workspace holding this checkout's
pipeline files, a Prefect test server, and one end-to-end flow run shared by the tests."""

from __future__ import annotations

import os
import sys

import pytest
from _workspace import REPO, TINY, catalogue_subset, make_workspace


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect test server (a real API on a temporary database) for the session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def flow_modules():
    """The two flow modules, imported from flows/ (not a package)."""
    sys.path.insert(0, str(REPO / "flows"))
    try:
        import index_refresh
        import training_pipeline

        yield training_pipeline, index_refresh
    finally:
        sys.path.remove(str(REPO / "flows"))


@pytest.fixture(scope="session")
def catalogue_300(tmp_path_factory, shared_catalogue):
    """300 real images: 30 of each of the 10 largest article types (read-only)."""
    return catalogue_subset(shared_catalogue, tmp_path_factory.mktemp("catalogue_300"))


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory, catalogue_300, prefect_api, flow_modules):
    """The training-pipeline flow run once, end to end, on a fresh workspace that has no data yet
    (so the flow imports the 300-image catalogue first). Returns (workspace, flow summary).
    Read-only for tests: copy it (``copy_workspace``) to change it."""
    training_pipeline = flow_modules[0].training_pipeline
    ws = make_workspace(tmp_path_factory.mktemp("flow") / "ws")
    state = training_pipeline(
        workspace=str(ws),
        source=str(catalogue_300),
        experiment="e2e-first",
        lock_timeout_s=60,
        return_state=True,
        **TINY,
    )
    assert state.is_completed(), f"training-pipeline flow failed: {state.message}"
    return ws, state.result()
