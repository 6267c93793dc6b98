"""Writes ``embedkit bench train`` results as JSON, a Markdown table and a PNG bar chart, each
file atomically (written beside it, then renamed)."""

from __future__ import annotations

from pathlib import Path

from embedkit.bench.report import results_json, write_atomic


def write_train_report(
    results: dict, directory: str | Path, *, name: str, command: str
) -> list[Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` in ``directory``; their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.{ext}" for ext in ("json", "md", "png")]
    document = results_json(results, command=command)
    write_atomic(paths[0], lambda tmp: tmp.write_text(document))
    write_atomic(paths[1], lambda tmp: tmp.write_text(train_markdown(results, command)))
    write_atomic(paths[2], lambda tmp: _plot(results, tmp))
    return paths


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def train_markdown(results: dict, command: str) -> str:
    """The report as Markdown: setup, command and one table row per run."""
    lines = [
        "# Training throughput",
        "",
        f"Device: **{results['device']}**, torch {results['torch']}, {results['precision']}. "
        f"Steps per run: {results['warmup']} to warm up, then {results['steps']} timed in each "
        f"of {results['rounds']} rounds, runs in turn with only the timed one on the device; "
        f"tokens/s is the median over rounds (min-max beside it); the ratio to "
        f"**{results['baseline']}** is the median of the rounds' ratios (runs of one round ran "
        "back to back, so drift of the machine cancels).",
        "",
        f"Command: `{command}`",
        "",
        "| run | recipes | batch x seq | tokens/s | min-max | ratio | step ms | peak GiB "
        "| params | active params | MFLOPs/token |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in results["runs"]:
        params, ratios = run["parameters"], run["ratio_rounds"]
        lines.append(
            f"| {run['name']} | {', '.join(f'`{c}`' for c in run['configs'])} "
            f"| {run['batch_size']} x {run['seq_len']} | {run['tokens_per_s']:,.0f} "
            f"| {run['tokens_per_s_min']:,.0f}-{run['tokens_per_s_max']:,.0f} "
            f"| {run['ratio']:.3f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {run['step_ms']:.1f} | {_gib(run['peak_memory_gib'])} "
            f"| {params['total']:,} | {params['active']:,} "
            f"| {run['inference_flops_per_token'] / 1e6:,.1f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    names = [run["name"] for run in runs]
    rates = [run["tokens_per_s"] for run in runs]
    spread = [
        [rate - run["tokens_per_s_min"] for rate, run in zip(rates, runs, strict=True)],
        [run["tokens_per_s_max"] - rate for rate, run in zip(rates, runs, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(runs) + 2), 4.5))
    bars = ax.bar(names, rates, yerr=spread, capsize=4, color="tab:blue")
    for bar, run in zip(bars, runs, strict=True):
        ax.annotate(
            f"{run['ratio']:.2f}x",
            (bar.get_x() + bar.get_width() / 2, run["tokens_per_s_max"]),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
        )
    ax.set(
        ylabel="tokens/s (median over rounds)",
        ylim=(0, max(r["tokens_per_s_max"] for r in runs) * 1.2),
    )
    ax.set_title(f"Training throughput vs {results['baseline']} — {results['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
