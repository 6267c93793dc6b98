"""Writes a benchmark's results as JSON, a Markdown table and a PNG plot."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from embedkit.run_environment import code_state


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through ``write(tmp)`` into a temporary name beside it, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def results_json(results: dict, *, command: str) -> str:
    """A benchmark's JSON document: the command, which code ran (``code_state``), the results."""
    return json.dumps({"command": command, "code": code_state(), **results}, indent=2) + "\n"


def write_storage_report(results: dict, directory: str | Path, *, command: str) -> list[Path]:
    """``storage.json``, ``storage.md`` and ``storage.png`` in ``directory``; their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"storage.{ext}" for ext in ("json", "md", "png")]
    paths[0].write_text(results_json(results, command=command))
    paths[1].write_text(_markdown(results, command))
    _plot(results, paths[2])
    return paths


def _markdown(results: dict, command: str) -> str:
    table = results["table"]
    h2d = results["h2d_copy_gb_per_s"]
    lines = [
        "# Storage tiers: gather latency and bandwidth",
        "",
        f"Device: **{results['device']}**, torch {results['torch']}. Table: "
        f"{table['rows']:,} x {table['dim']} {table['dtype']} (Zarr: first "
        f"{table['zarr_rows']:,} rows, inner chunks {results['zarr']['chunk_rows']} rows, "
        f"shards {results['zarr']['shard_rows']} rows, uncompressed, page cache warm).",
        f"H2D copy of 1 GiB from pinned memory: {h2d:.1f} GB/s." if h2d else "No CUDA device.",
        "",
        f"Command: `{command}`",
        "",
        "| method | rows | p50 ms | p99 ms | GB/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in results["results"]:
        lines.append(
            f"| {row['method']} | {row['rows']:,} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} "
            f"| {row['gb_per_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = dict.fromkeys(r["method"] for r in results["results"])
    for method in methods:
        rows = [r for r in results["results"] if r["method"] == method]
        ax.plot([r["rows"] for r in rows], [r["gb_per_s"] for r in rows], marker="o", label=method)
    if results["h2d_copy_gb_per_s"]:
        ax.axhline(results["h2d_copy_gb_per_s"], color="gray", ls="--", label="H2D copy ceiling")
    ax.set(xscale="log", yscale="log", xlabel="rows per gather", ylabel="GB/s")
    ax.set_title(f"Gather bandwidth by tier — {results['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
