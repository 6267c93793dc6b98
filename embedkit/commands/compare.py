"""``embedkit compare``: set runs of ``embedkit fit`` side by side from their run directories."""

from __future__ import annotations

import sys

from jsonargparse import ArgumentParser, Namespace

HELP = "Compare fit runs: a Markdown table, a CSV and validation-loss plots, against a baseline."


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit compare``."""
    parser = ArgumentParser(prog="embedkit compare", description=HELP)
    parser.add_argument(
        "run_dirs",
        type=str,
        nargs="+",
        help="Run directories of embedkit fit (<default_root_dir>/lightning_logs/version_N), "
        "each holding its summary.json.",
    )
    parser.add_argument(
        "--baseline",
        type=str | None,
        default=None,
        help="The run the others are set against: its index among the run "
        "directories (0 first), its shown name or its path; default the first.",
    )
    parser.add_argument(
        "--output",
        type=str,
        default="comparison",
        help="Folder of comparison.md, comparison.csv, val_loss_vs_tokens.png and "
        "val_loss_vs_flops.png.",
    )
    parser.add_argument(
        "--allow_mismatch",
        action="store_true",
        help="Compare runs whose tokenizer or validation data differ (their losses are not "
        "comparable; the report says so).",
    )
    return parser


def run(args: Namespace) -> None:
    """Read the runs, refuse incomparable ones, write the report and print its table."""
    from embedkit.compare import load_runs, mismatches, pick_baseline, write_comparison

    runs = load_runs(args.run_dirs)
    base = pick_baseline(runs, args.baseline)
    notes = mismatches(runs, base)
    if notes and not args.allow_mismatch:
        raise ValueError(
            f"{notes[0]}: their validation losses are not comparable; pass --allow_mismatch "
            "to compare them anyway"
        )
    for note in notes:
        print(f"embedkit: warning: {note}", file=sys.stderr)
    paths = write_comparison(runs, args.output, base=base, notes=notes)
    print(paths[0].read_text(encoding="utf-8"), end="")
    print("wrote " + ", ".join(str(path) for path in paths))
