"""Running a check module of ``tests.support`` under Triton's interpreter, in a subprocess
(Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so the flag cannot be set in a
process that has imported the kernels)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")

# Triton 3.6's interpreter cannot loop over tensor bounds (``range(tl.program_id(0), ...)``):
# the kernels' loops need 3.7 or later there (the compiled kernels run on any supported one).
INTERPRETER_MIN_VERSION = (3, 7)


def _triton_version() -> tuple[int, ...] | None:
    if importlib.util.find_spec("triton") is None:
        return None
    release = importlib.metadata.version("triton").split("+")[0].split(".")[:2]
    return tuple(int(part) for part in release)


needs_triton_interpreter = pytest.mark.skipif(
    (_triton_version() or (0,)) < INTERPRETER_MIN_VERSION,
    reason="needs Triton >= 3.7, whose interpreter loops over tensor bounds",
)


def run_interpreted(module: str, done: str) -> None:
    """Run ``python -m module`` with ``TRITON_INTERPRET=1``; it must exit 0 and print ``done``."""
    finished = subprocess.run(
        [sys.executable, "-m", module],
        env=os.environ | {"TRITON_INTERPRET": "1"}, cwd=Path(__file__).parents[2],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert done in finished.stdout
