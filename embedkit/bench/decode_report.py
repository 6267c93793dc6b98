"""Writes ``embedkit bench decode`` results as JSON, a Markdown table and a PNG bar chart, each
file atomically (written beside it, then renamed)."""

from __future__ import annotations

from pathlib import Path

from embedkit.bench.report import results_json, write_atomic

MIB = 1 << 20
TIER_COLOURS = {"gpu": "tab:blue", "pinned": "tab:orange", "zarr": "tab:green"}


def write_decode_report(
    results: dict, directory: str | Path, *, name: str, command: str
) -> list[Path]:
    """``<name>.json``, ``<name>.md`` and ``<name>.png`` in ``directory``; their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{name}.{ext}" for ext in ("json", "md", "png")]
    document = results_json(results, command=command)
    write_atomic(paths[0], lambda tmp: tmp.write_text(document))
    write_atomic(paths[1], lambda tmp: tmp.write_text(decode_markdown(results, command)))
    write_atomic(paths[2], lambda tmp: _plot(results, tmp))
    return paths


def variant_label(variant: dict) -> str:
    """``tier`` and, off the gpu tier, whether the decode loop prefetched."""
    if variant["tier"] == "gpu":
        return "gpu"
    return f"{variant['tier']} {'+' if variant['prefetch'] else '-'}prefetch"


def _ratio(variant: dict, field: str = "ratio_to_gpu") -> str:
    ratios = variant[f"{field}_rounds"]
    if ratios is None:
        return "n/a"
    return f"{variant[field]:.3f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def decode_markdown(results: dict, command: str) -> str:
    """The report as Markdown: setup, command, the runs' sizes and one row per variant."""
    prefetch = "the decode loop's prefetch on and off"
    steps = (
        "Each step's decoder layers replay as CUDA graphs; the parts that read lookup tables "
        "run eagerly between them, on every tier."
        if results.get("cuda_graphs")
        else "Steps run eagerly (no CUDA graphs)."
    )
    lines = [
        "# Decode throughput by table tier",
        "",
        f"Device: **{results['device']}**, torch {results['torch']}, {results['dtype']} weights. "
        f"Greedy decode of {results['new_tokens']} tokens after random prompts of "
        f"{results['prompt_len']} tokens; before each timed decode an untimed one of "
        f"{results['warmup_tokens']} tokens. {results['rounds']} rounds, each measuring every "
        "variant in turn, all resident on the device. Tokens/s counts the tokens after the "
        "first (batch x steps over their time); p50 / p99 are per-step latencies, prefill is "
        "from the call to the first token; all are medians over rounds. The ratio is to the "
        "same run's gpu tier at the same batch size (median of the rounds' ratios); the p50 "
        "ratio is the gpu tier's p50 step over the variant's, which one stalled round moves "
        "less. Off-device "
        f"tiers: {prefetch}. {steps}",
        "",
        f"Command: `{command}`",
        "",
        "| run | recipes | parameters MiB | tables MiB (per tier) | tables / parameters |",
        "|---|---|---:|---:|---:|",
    ]
    for run in results["runs"]:
        params = run["parameter_bytes"]
        tables = max(run["table_bytes"].values(), default=None)
        size, share = (
            ("-", "-") if tables is None else (f"{tables / MIB:,.1f}", f"{tables / params:.1f}x")
        )
        lines.append(
            f"| {run['name']} | {', '.join(f'`{c}`' for c in run['configs'])} "
            f"| {params / MIB:,.1f} | {size} | {share} |"
        )
    lines += [
        "",
        "| run | tier | prefetch | batch | tokens/s | ratio to gpu | p50 ratio | p50 ms | p99 ms "
        "| prefill ms | same tokens as gpu |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v in results["variants"]:
        same = {None: "n/a", True: "yes", False: "**no**"}[v["tokens_match_gpu"]]
        lines.append(
            f"| {v['run']} | {v['tier']} | {'on' if v['prefetch'] else 'off'} "
            f"| {v['batch_size']} | {v['tokens_per_s']:,.0f} | {_ratio(v)} "
            f"| {_ratio(v, 'p50_ratio_to_gpu')} "
            f"| {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['prefill_ms']:.1f} | {same} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    sizes = results["batch_sizes"]
    runs = [run["name"] for run in results["runs"]]
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(max(5.0, 2.2 * len(runs) + 2) * len(sizes), 4.8), squeeze=False
    )
    for ax, size in zip(axes[0], sizes, strict=True):
        x = 0.0
        ticks, top = [], 0.0
        for run in runs:
            group = [v for v in results["variants"] if v["run"] == run and v["batch_size"] == size]
            start = x
            for v in group:
                ax.bar(
                    x, v["tokens_per_s"], width=0.8, color=TIER_COLOURS.get(v["tier"], "gray"),
                    hatch="" if v["prefetch"] else "//", edgecolor="white",
                )  # fmt: skip
                if v["ratio_to_gpu"] is not None and v["tier"] != "gpu":
                    ax.annotate(
                        f"{v['ratio_to_gpu']:.2f}x", (x, v["tokens_per_s"]), xytext=(0, 3),
                        textcoords="offset points", ha="center", fontsize=7,
                    )  # fmt: skip
                top = max(top, v["tokens_per_s"])
                x += 1
            ticks.append(((start + x - 1) / 2, run))
            x += 0.8
        ax.set_xticks([t for t, _ in ticks], [name for _, name in ticks])
        ax.set(ylabel="decode tokens/s (median over rounds)", ylim=(0, top * 1.15 or 1))
        ax.set_title(f"batch {size}", fontsize=10)
    legend = [Patch(color=colour, label=tier) for tier, colour in TIER_COLOURS.items()]
    legend.append(Patch(facecolor="lightgray", hatch="//", edgecolor="white", label="no prefetch"))
    axes[0][-1].legend(handles=legend, fontsize=8, loc="upper right")
    fig.suptitle(f"Decode tokens/s by table tier — {results['device']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
