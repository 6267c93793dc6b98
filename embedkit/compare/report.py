"""The comparison report: figures of every run with deltas against the baseline as Markdown
and CSV, and plots of validation loss against tokens seen and against training FLOPs."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedkit.compare.runs import Run
from embedkit.run_record import write_atomic

FLOPS_LABEL = "training FLOPs (≈ 3 × inference FLOPs/token × tokens + training-only work)"


def _section(summary: dict[str, Any], section: str, key: str) -> Any:
    return (summary.get(section) or {}).get(key)


def _total(summary: dict[str, Any], key: str) -> int | None:
    tiers = summary.get("tables")
    return sum(tier[key] for tier in tiers.values()) if tiers is not None else None


def training_flops(summary: dict[str, Any], point: dict[str, Any] | None = None) -> float | None:
    """3 x inference FLOPs per token x tokens seen, plus the parts' training-only FLOPs
    (``extra_training_flops``: SCONE's f-gram model), at the end of the run or at a validation
    ``point`` of its history (summaries from before that field count none)."""
    flops = _section(summary, "model", "inference_flops_per_token")
    where = (summary.get("training") or {}) if point is None else point
    tokens = where.get("tokens_seen")
    if flops is None or tokens is None:
        return None
    return 3.0 * flops * tokens + (where.get("extra_training_flops") or 0.0)


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.2f}"


def _loss(value: float) -> str:
    return f"{value:.4f}"


def _short(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e6 else f"{value:,.1f}"


@dataclass(frozen=True)
class Field:
    """A compared figure: its CSV name, Markdown label, where a summary holds it (a
    ``(section, key)`` pair or a function of the summary), how it is set against the
    baseline (``difference`` or ``ratio``) and how it is printed."""

    name: str
    label: str
    source: tuple[str, str] | Callable[[dict[str, Any]], Any]
    delta: str
    format: Callable[[float], str]

    def value(self, summary: dict[str, Any]) -> Any:
        """The figure in ``summary``; None where it lacks it."""
        if callable(self.source):
            return self.source(summary)
        return _section(summary, *self.source)


FIELDS = (
    Field("parameters_total", "parameters (total)", ("model", "parameters_total"), "ratio", _count),
    Field(
        "parameters_active", "parameters (active)", ("model", "parameters_active"), "ratio", _count
    ),
    Field(
        "inference_flops_per_token",
        "inference FLOPs/token",
        ("model", "inference_flops_per_token"),
        "ratio",
        _count,
    ),
    Field(
        "accelerator_parameter_bytes",
        "parameters on accelerator (MiB)",
        ("model", "accelerator_parameter_bytes"),
        "ratio",
        _mib,
    ),
    Field("table_rows", "table rows (all tiers)", lambda s: _total(s, "rows"), "ratio", _count),
    Field("table_bytes", "table MiB (all tiers)", lambda s: _total(s, "bytes"), "ratio", _mib),
    Field("steps", "steps", ("training", "steps"), "ratio", _count),
    Field("tokens_seen", "tokens seen", ("training", "tokens_seen"), "ratio", _count),
    Field(
        "training_flops",
        "training FLOPs (≈ 3 × inference × tokens + training-only work)",
        training_flops,
        "ratio",
        _short,
    ),
    Field("wall_time_s", "wall time (s)", ("training", "wall_time_s"), "ratio", _short),
    Field("tokens_per_s", "training tokens/s", ("training", "tokens_per_s"), "ratio", _count),
    Field("final_val_loss", "final val loss", ("validation", "final_loss"), "difference", _loss),
    Field(
        "final_val_perplexity",
        "final val perplexity",
        ("validation", "final_perplexity"),
        "difference",
        _short,
    ),
    Field("best_val_loss", "best val loss", ("validation", "best_loss"), "difference", _loss),
    Field(
        "best_val_perplexity",
        "best val perplexity",
        ("validation", "best_perplexity"),
        "difference",
        _short,
    ),
)


def compare_values(runs: Sequence[Run], base: int) -> list[dict[str, Any]]:
    """Per run: ``run``, ``path``, ``status``, ``tables`` (per tier) and for every field its
    value, ``<field>_delta`` (value - baseline) and for ratio fields ``<field>_ratio``
    (value / baseline); None where a summary lacks the figure."""
    reference = {field.name: field.value(runs[base].summary) for field in FIELDS}
    rows = []
    for run in runs:
        tiers = run.summary.get("tables") or {}
        row: dict[str, Any] = {
            "run": run.name,
            "path": str(run.path),
            "status": run.summary.get("status"),
            "tables": "; ".join(f"{k}: {v['rows']:,} rows" for k, v in tiers.items()),
        }
        for field in FIELDS:
            value, ref = field.value(run.summary), reference[field.name]
            known = value is not None and ref is not None
            row[field.name] = value
            row[f"{field.name}_delta"] = value - ref if known else None
            if field.delta == "ratio":
                row[f"{field.name}_ratio"] = value / ref if known and ref != 0 else None
        rows.append(row)
    return rows


def comparison_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of ``compare_values`` as CSV (empty cells for None)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _cell(field: Field, row: dict[str, Any], is_baseline: bool) -> str:
    value = row[field.name]
    if value is None:
        return "n/a"
    text = field.format(value)
    if is_baseline:
        return text
    if field.delta == "difference" and row[f"{field.name}_delta"] is not None:
        return f"{text} ({row[f'{field.name}_delta']:+.4g})"
    if field.delta == "ratio" and row.get(f"{field.name}_ratio") is not None:
        return f"{text} ({row[f'{field.name}_ratio']:.3f}x)"
    return text


def comparison_markdown(rows: Sequence[dict[str, Any]], base: int, notes: Sequence[str]) -> str:
    """A Markdown table, one column per run, one row per figure; beside each figure of a run
    its difference (losses, perplexities) or ratio (the rest) to the baseline."""
    names = [f"{r['run']} (baseline)" if i == base else r["run"] for i, r in enumerate(rows)]
    lines = [
        "# Run comparison",
        "",
        f"Baseline: **{rows[base]['run']}**. Losses and perplexities: value (difference to the "
        "baseline); other figures: value (ratio to the baseline). Training FLOPs ≈ 3 × "
        "inference FLOPs/token × tokens seen, plus work done only in training (SCONE's f-gram "
        "model), where the run recorded it.",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(rows),
        "| status | " + " | ".join(str(r["status"]) for r in rows) + " |",
        "| tables | " + " | ".join(r["tables"] or "none" for r in rows) + " |",
    ]
    for field in FIELDS:
        cells = [_cell(field, row, i == base) for i, row in enumerate(rows)]
        lines.append(f"| {field.label} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Not comparable (compared with --allow_mismatch):", ""]
        lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def plot_validation(runs: Sequence[Run], path: Path, *, against: str) -> None:
    """Validation loss of every run against ``tokens`` seen or training ``flops``, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for run in runs:
        history = [
            entry
            for entry in _section(run.summary, "validation", "history") or []
            if entry.get("tokens_seen") is not None
        ]
        points = [
            (training_flops(run.summary, e) if against == "flops" else e["tokens_seen"], e["loss"])
            for e in history
        ]
        points = [(x, y) for x, y in points if x is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=run.name)
    ax.set(xlabel="tokens seen" if against == "tokens" else FLOPS_LABEL, ylabel="validation loss")
    ax.set_title("Validation loss", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write_comparison(
    runs: Sequence[Run], output: str | Path, *, base: int = 0, notes: Sequence[str] = ()
) -> list[Path]:
    """``comparison.md``, ``comparison.csv``, ``val_loss_vs_tokens.png`` and
    ``val_loss_vs_flops.png`` in ``output``, each written atomically; their paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rows = compare_values(runs, base)
    paths = [output / name for name in ("comparison.md", "comparison.csv")]
    write_atomic(paths[0], comparison_markdown(rows, base, notes))
    write_atomic(paths[1], comparison_csv(rows))
    for against in ("tokens", "flops"):
        path = output / f"val_loss_vs_{against}.png"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            plot_validation(runs, tmp, against=against)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths
