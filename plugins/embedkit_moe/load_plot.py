"""Plot of a mixture of experts' load over training, from a run's Lightning CSV metrics.

``embedkit fit`` writes its metrics to ``<default_root_dir>/lightning_logs/version_<n>/
metrics.csv`` (Lightning's CSV logger); ``MoEFeedForward`` logs each expert's share of the
routed pairs there as ``train/<layer>/load/expert_<e>`` every ``trainer.log_every_n_steps``.
This draws one panel per MoE layer, one line per expert, over the training steps:

    python -m embedkit_moe.load_plot runs/tiny-moe/lightning_logs/version_0/metrics.csv \\
        --output docs/images/moe-load.png

Legend: S = logged steps, E = experts.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOAD_COLUMN = re.compile(r"^train/(?P<layer>.+)/load/expert_(?P<expert>\d+)$")


@dataclass(frozen=True)
class LayerLoad:
    """The load of one MoE layer at the steps it was logged."""

    steps_S: np.ndarray
    shares_SE: np.ndarray  # each expert's share of the routed pairs; rows sum to 1


def _natural(name: str) -> list:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_expert_load(path: str | Path) -> dict[str, LayerLoad]:
    """Per MoE layer (by module name, in layer order), the expert shares of every row of the
    metrics CSV ``path`` that logged them."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        columns: dict[str, dict[int, str]] = {}
        for column in reader.fieldnames or []:
            if match := LOAD_COLUMN.match(column):
                columns.setdefault(match["layer"], {})[int(match["expert"])] = column
        rows = list(reader)
    if not columns:
        raise ValueError(
            f"metrics CSV {path} has no train/<layer>/load/expert_<e> columns; valid: the "
            "metrics.csv of an `embedkit fit` run whose model has MoEFeedForward layers"
        )
    loads = {}
    for layer in sorted(columns, key=_natural):
        experts = [columns[layer][e] for e in sorted(columns[layer])]
        logged = [row for row in rows if all(row[column] for column in experts)]
        loads[layer] = LayerLoad(
            steps_S=np.array([int(row["step"]) for row in logged]),
            shares_SE=np.array([[float(row[c]) for c in experts] for row in logged]).reshape(
                len(logged), len(experts)
            ),
        )
    return loads


def plot_expert_load(
    loads: dict[str, LayerLoad], output: str | Path, *, title: str = "Expert load"
) -> Path:
    """Draw each layer's expert shares over the steps (one panel per layer, the balanced share
    1 / E dashed) and save the figure as ``output`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_cols = min(2, len(loads))
    num_rows = math.ceil(len(loads) / num_cols)
    fig, axes = plt.subplots(
        num_rows, num_cols, figsize=(5.5 * num_cols, 3.2 * num_rows), sharex=True, sharey=True,
        squeeze=False,
    )  # fmt: skip
    for ax, (layer, load) in zip(axes.flat, loads.items(), strict=False):
        num_experts = load.shares_SE.shape[1]
        for expert in range(num_experts):
            ax.plot(load.steps_S, load.shares_SE[:, expert], lw=1.2, label=f"expert {expert}")
        ax.axhline(1 / num_experts, color="black", ls="--", lw=0.8, label="balanced (1/E)")
        ax.set_title(layer, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(loads) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of routed pairs")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120, format="png")
    plt.close(fig)
    return output


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m embedkit_moe.load_plot METRICS_CSV --output PNG [--title TITLE]``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="python -m embedkit_moe.load_plot",
        description="Plot each MoE layer's expert load over training from a run's metrics.csv.",
    )
    parser.add_argument("metrics", type=str, help="The run's Lightning metrics.csv.")
    parser.add_argument("--output", type=str, required=True, help="The PNG to write.")
    parser.add_argument("--title", type=str, default="Expert load", help="Figure title.")
    args = parser.parse_args(argv)
    path = plot_expert_load(read_expert_load(args.metrics), args.output, title=args.title)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
