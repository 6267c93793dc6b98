"""Shared fixtures: an isolated embedkit cache per test session, and each pytest-xdist worker's
share of the CPU cores."""

from __future__ import annotations

import os

import pytest

# Under pytest-xdist, each worker and every `embedkit` run it starts use the worker's share of
# the cores (CI: 2 workers on 2 cores, 1 thread each); more OpenMP threads than cores spin
# against each other's. Set here, before torch is imported, so both read it.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["EMBEDKIT_CACHE"] = str(tmp_path_factory.mktemp("embedkit-cache"))
