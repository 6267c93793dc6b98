"""A third-party plugin package, installed on its own: listed, conformant, usable in a recipe.

The example package ``plugins/embedkit_npy`` (``NpyBackend``, a table in a memory-mapped
``.npy`` file) has its own ``pyproject.toml`` and entry point. It is installed once per module,
offline and non-editable, into a temporary directory that only this module's subprocesses see
(through ``PYTHONPATH``): the test environment itself never gains the package.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedkit import registry

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "embedkit_npy"
RECIPE = ROOT / "recipes" / "tiny" / "token-table.yaml"
SHORT = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=4",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--data.batch_size=4",
    "--data.seq_len=32",
    "--data.train_samples_per_epoch=32",
]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process in which ``embedkit-npy`` is installed."""
    work = tmp_path_factory.mktemp("embedkit-npy")
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    source = work / "source"
    shutil.copytree(
        PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = work / "site-packages"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    assert list(target.glob("embedkit_npy-*.dist-info/entry_points.txt")), "no entry points"
    paths = [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONWARNINGS="ignore")


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def embedkit_exe() -> str:
    exe = shutil.which("embedkit")
    assert exe, "the embedkit console script is not installed"
    return exe


def test_plugin_is_not_part_of_the_main_install():
    assert "NpyBackend" not in [s.short_name for s in registry.specs("EmbeddingBackend")]
    # Not even importable: embedkit's package discovery must leave plugins/embedkit_npy out.
    assert importlib.util.find_spec("embedkit_npy") is None


def test_plugins_command_lists_it_with_its_package(plugin_env, tmp_path):
    result = run(
        [embedkit_exe(), "plugins", "--interface", "EmbeddingBackend"], plugin_env, tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next((ln for ln in result.stdout.splitlines() if "NpyBackend" in ln), "")
    assert "embedkit_npy.backend.NpyBackend" in line, result.stdout
    assert "embedkit-npy" in line, result.stdout
    assert "failed to load" not in result.stdout, result.stdout
    assert "GPUBackend" in result.stdout  # the core tiers are still there


def test_conformance_suite_passes(plugin_env):
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_conformance_backends.py",
            "-k",
            "NpyBackend",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        plugin_env,
        ROOT,
    )
    summary = result.stdout[-3000:] + result.stderr[-2000:]
    assert result.returncode == 0, summary
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) > 0, summary
    assert "skipped" not in result.stdout.strip().splitlines()[-1], summary  # storage tests ran


def test_tiny_recipe_trains_with_it(plugin_env, tmp_path):
    assert RECIPE.is_file(), f"{RECIPE} is missing"
    result = run(
        [
            embedkit_exe(),
            "fit",
            "--config",
            str(RECIPE),
            "--model.decoder.init_args.table_backend=NpyBackend",
            *SHORT,
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ],
        plugin_env,
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "validation perplexity" in output, output[-3000:]
