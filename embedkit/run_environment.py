"""What a run ran on: embedkit's version, git commit and source hash, package versions, the
device."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

PACKAGES = (
    "torch", "triton", "lightning", "torchmetrics", "jsonargparse", "numpy", "zarr", "tokenizers",
)  # fmt: skip


def version(package: str) -> str | None:
    """The installed version of ``package``; None when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run's numbers depend on (None: not installed);
    torch's as it reports itself, with its build (e.g. ``2.11.0+cu130``), which the installed
    distribution's metadata may leave out."""
    return {name: version(name) for name in PACKAGES} | {"torch": torch.__version__}


def git_state() -> dict[str, Any]:
    """``git_commit`` and ``git_dirty`` (tracked files changed) of the embedkit source tree
    when it is a git checkout; both None otherwise, or when git is missing."""
    source = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    # The package must be tracked by the checkout: an installed copy inside another repository
    # (a virtual environment in a project folder) is not that repository's commit.
    if shutil.which("git") is None or git("ls-files", "--error-unmatch", "__init__.py") is None:
        return {"git_commit": None, "git_dirty": None}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
    }


SOURCE_PACKAGES = ("embedkit", "embedkit_dense", "embedkit_l3", "embedkit_moe", "embedkit_scone")


def source_hash(packages: tuple[str, ...] = SOURCE_PACKAGES) -> str:
    """SHA-256 of the Python sources of embedkit and its bundled plugins (each file's path
    within its package and bytes, in sorted order): which code ran, also where the checkout's
    git metadata is missing or stale (a copied working tree)."""
    digest = hashlib.sha256()
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def describe_device(trainer: L.Trainer, device: torch.device) -> dict[str, Any]:
    """The device the model trained on, how many of them, and the CUDA stack."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "type": device.type,
        "name": name,
        "count": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "precision": str(trainer.precision),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "platform": f"{platform.system()} {platform.release()}; {sys.platform}",
    }


def _cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_state() -> dict[str, Any]:
    """Which code produced a result (a run's summary, a benchmark's record): ``embedkit`` (its
    version, git commit and dirtiness, source hash) and ``packages`` (Python's version and
    those of the packages its numbers depend on)."""
    return {
        "embedkit": {"version": version("embedkit"), **git_state(), "source_hash": source_hash()},
        "packages": {"python": platform.python_version(), **package_versions()},
    }
