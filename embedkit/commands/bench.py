"""``embedkit bench``: measured benchmarks whose results are kept under docs/benchmarks/."""

from __future__ import annotations

import shlex
import sys
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

HELP = "Benchmarks (storage, train); results as JSON, Markdown and PNG under docs/benchmarks/."


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit bench`` and its subcommands."""
    parser = ArgumentParser(prog="embedkit bench", description=HELP)
    subcommands = parser.add_subcommands(dest="benchmark")
    storage = ArgumentParser(description="Gather latency and GB/s of every storage tier.")
    storage.add_argument("--rows", type=int, default=1_000_000, help="Rows of the table.")
    storage.add_argument("--dim", type=int, default=1024, help="Width of a row.")
    storage.add_argument("--dtype", type=str, default="bfloat16", help="Element type.")
    storage.add_argument(
        "--batch_sizes",
        type=list[int],
        default=[64, 256, 1024, 4096, 16384, 65536],
        help="Rows per gather.",
    )
    storage.add_argument(
        "--zarr_rows", type=int, default=2_000_000, help="Rows of the Zarr store (its prefix)."
    )
    storage.add_argument(
        "--zarr_path", type=str | None, default=None, help="Folder for the store (default: tmp)."
    )
    storage.add_argument("--repeats", type=int, default=50, help="Timed calls per size.")
    storage.add_argument("--output", type=str, default="docs/benchmarks", help="Result folder.")
    subcommands.add_subcommand("storage", storage, help="Storage tiers against hardware limits.")
    subcommands.add_subcommand("train", _train_parser(), help="Training tokens/s side by side.")
    return parser


def _train_parser() -> ArgumentParser:
    train = ArgumentParser(
        description="Training tokens/s and peak GPU memory of recipes, side by side in one run."
    )
    train.add_argument(
        "--runs",
        type=str,
        nargs="+",
        required=True,
        help="NAME=CONFIG[,CONFIG...] per run (recipes applied in order); the first is the "
        "baseline of the ratios.",
    )
    train.add_argument("--steps", type=int, default=20, help="Timed steps per run and round.")
    train.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="Untimed steps per run first (and up to 3 again before each timed round).",
    )
    train.add_argument("--rounds", type=int, default=3, help="Rounds over all runs.")
    train.add_argument(
        "--batch_size", type=int | None, default=None, help="Override data.batch_size."
    )
    train.add_argument("--seq_len", type=int | None, default=None, help="Override data.seq_len.")
    train.add_argument(
        "--device",
        type=Literal["auto", "cpu", "cuda"],
        default="auto",
        help="Where to train (auto: CUDA when available).",
    )
    train.add_argument("--output", type=str, default="docs/benchmarks", help="Result folder.")
    train.add_argument("--name", type=str, default="train", help="Result file name, no suffix.")
    return train


def run(args: Namespace) -> None:
    """Run the chosen benchmark and write its report."""
    if args.benchmark == "storage":
        from embedkit.bench.report import write_storage_report
        from embedkit.bench.storage import run_storage_bench

        opts = args.storage
        results = run_storage_bench(
            num_rows=opts.rows,
            dim=opts.dim,
            dtype=opts.dtype,
            batch_sizes=opts.batch_sizes,
            zarr_rows=opts.zarr_rows,
            zarr_path=opts.zarr_path,
            repeats=opts.repeats,
        )
        command = "embedkit " + shlex.join(sys.argv[1:])
        for path in write_storage_report(results, opts.output, command=command):
            print(f"wrote {path}")
    elif args.benchmark == "train":
        from embedkit.bench.train import run_train_bench
        from embedkit.bench.train_report import write_train_report

        opts = args.train
        results = run_train_bench(
            runs=opts.runs,
            steps=opts.steps,
            warmup=opts.warmup,
            rounds=opts.rounds,
            batch_size=opts.batch_size,
            seq_len=opts.seq_len,
            device=opts.device,
        )
        command = "embedkit " + shlex.join(sys.argv[1:])
        paths = write_train_report(results, opts.output, name=opts.name, command=command)
        print(paths[1].read_text())
        for path in paths:
            print(f"wrote {path}")
