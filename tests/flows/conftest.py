"""Shared by the flow smoke tests: one Prefect test harness for the whole session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API and database, started once and shared by every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
