"""The runs a comparison reads: their ``summary.json``, short names, the baseline, and the
data fields that must match for their validation losses to be comparable."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.run_record import SCHEMA_VERSION, SUMMARY_FILE

# Fields whose difference makes validation losses incomparable (--allow_mismatch overrides).
MATCHING_FIELDS = ("tokenizer_fingerprint", "validation_hash")


@dataclass(frozen=True)
class Run:
    """A run directory, the name it is shown under and its summary."""

    name: str
    path: Path
    summary: dict[str, Any]


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of ``run_dir``; ``ValueError`` naming it when missing or corrupt."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        raise ValueError(
            f"{path}: not found; give run directories of embedkit fit "
            "(<default_root_dir>/lightning_logs/version_N)"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: corrupt run summary, not valid JSON ({err})") from None
    version = summary.get("schema_version") if isinstance(summary, dict) else None
    if not isinstance(version, int):
        raise ValueError(f"{path}: corrupt run summary, it has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version={version} is newer than this embedkit reads "
            f"({SCHEMA_VERSION}); upgrade embedkit"
        )
    return summary


def run_names(paths: Sequence[Path]) -> list[str]:
    """Short names of run directories: their paths below the common parent, without the
    ``lightning_logs`` folder (``tiny-dense/version_0``)."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    names = []
    for path in resolved:
        parts = [p for p in path.relative_to(common).parts if p != "lightning_logs"]
        names.append("/".join(parts) or path.name)
    return names


def load_runs(run_dirs: Sequence[str | Path]) -> list[Run]:
    """The runs of ``run_dirs``, in order, with their summaries."""
    paths = [Path(d) for d in run_dirs]
    summaries = [read_summary(p) for p in paths]
    return [Run(n, p, s) for n, p, s in zip(run_names(paths), paths, summaries, strict=True)]


def pick_baseline(runs: Sequence[Run], baseline: str | int | None) -> int:
    """Index of the baseline: a run's index, its name or its path as given; default 0."""
    if baseline is None:
        return 0
    text = str(baseline)
    if text.lstrip("-").isdigit() and -len(runs) <= int(text) < len(runs):
        return int(text) % len(runs)
    for index, run in enumerate(runs):
        if text in (run.name, str(run.path)) or Path(text).resolve() == run.path.resolve():
            return index
    known = ", ".join(f"{i}={run.name}" for i, run in enumerate(runs))
    raise ValueError(f"--baseline={text!r} names no run; valid: an index or name of {known}")


def mismatches(runs: Sequence[Run], base: int) -> list[str]:
    """One line per run and field of ``MATCHING_FIELDS`` that differs from the baseline."""
    lines = []
    reference = runs[base]
    for run in runs:
        for field in MATCHING_FIELDS:
            ours = run.summary.get("data", {}).get(field)
            theirs = reference.summary.get("data", {}).get(field)
            if ours != theirs:
                lines.append(
                    f"runs {reference.name!r} and {run.name!r} differ in data.{field} "
                    f"({theirs!r} vs {ours!r})"
                )
    return lines
