"""Shared fixtures: an isolated embedkit cache per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    import os

    os.environ["EMBEDKIT_CACHE"] = str(tmp_path_factory.mktemp("embedkit-cache"))
