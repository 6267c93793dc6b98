"""``embedkit bench``: measured benchmarks whose results are kept under docs/benchmarks/."""

from __future__ import annotations

import shlex
import sys
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from embedkit.commands.recipe_args import add_device_argument

HELP = (
    "Benchmarks (storage, train, decode); results as JSON, Markdown and PNG under docs/benchmarks/."
)


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
    subcommands.add_subcommand(
        "decode", _decode_parser(), help="Decode tokens/s and latency per table tier side by side."
    )
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


def _decode_parser() -> ArgumentParser:
    decode = ArgumentParser(
        description="Decode tokens/s, per-token latency (p50/p99) and prefill time of recipes' "
        "models with their lookup tables on each storage tier (prefetch on and off), side by "
        "side in one run; random weights from each recipe's seed."
    )
    decode.add_argument(
        "--runs",
        type=str,
        nargs="+",
        required=True,
        help="NAME=CONFIG[,CONFIG...] per run (recipes applied in order). Runs whose parts own "
        "lookup tables (SCONE, L3) are measured on every --tiers tier, others on gpu only.",
    )
    decode.add_argument(
        "--tiers",
        type=str,
        nargs="+",
        default=["gpu", "pinned", "zarr"],
        help="Tiers of the tables: gpu, pinned, zarr (the ratios are to gpu).",
    )
    decode.add_argument(
        "--batch_sizes", type=int, nargs="+", default=[1, 64], help="Prompts decoded together."
    )
    decode.add_argument("--prompt_len", type=int, default=32, help="Tokens of each prompt.")
    decode.add_argument(
        "--new_tokens",
        type=int,
        default=64,
        help="Tokens decoded per prompt: the first comes with the prefill, the others are the "
        "timed steps (at least 2).",
    )
    decode.add_argument(
        "--warmup_tokens",
        type=int,
        default=8,
        help="Tokens of an untimed decode of the same prompts before each timed one.",
    )
    decode.add_argument("--rounds", type=int, default=3, help="Rounds over all variants.")
    add_device_argument(decode, "Where to decode")
    decode.add_argument("--seed", type=int, default=0, help="Seed of the random prompts.")
    decode.add_argument(
        "--cuda_graphs",
        type=bool | None,
        default=None,
        help="Replay each step's decoder layers as CUDA graphs, the table parts running "
        "between them, on every tier alike (default: on a CUDA device).",
    )
    decode.add_argument(
        "--storage_recipes",
        type=str,
        default="recipes/storage",
        help="Folder of the tier overlays <tier>.yaml, relative to the working directory like "
        "the --runs recipes (the repository's recipes/storage; give it when running elsewhere).",
    )
    decode.add_argument(
        "--work_dir",
        type=str | None,
        default=None,
        help="Folder for the runs' weights and exported tables (default: a temporary one, "
        "removed at the end).",
    )
    decode.add_argument("--output", type=str, default="docs/benchmarks", help="Result folder.")
    decode.add_argument("--name", type=str, default="decode", help="Result file name, no suffix.")
    return decode


def run(args: Namespace) -> None:
    """Run the chosen benchmark and write its report."""
    command = "embedkit " + shlex.join(sys.argv[1:])  # recorded in every report
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
        paths = write_train_report(results, opts.output, name=opts.name, command=command)
        print(paths[1].read_text())
        for path in paths:
            print(f"wrote {path}")
    elif args.benchmark == "decode":
        from embedkit.bench.decode import run_decode_bench
        from embedkit.bench.decode_report import write_decode_report

        opts = args.decode
        results = run_decode_bench(
            runs=opts.runs,
            tiers=opts.tiers,
            batch_sizes=opts.batch_sizes,
            prompt_len=opts.prompt_len,
            new_tokens=opts.new_tokens,
            warmup_tokens=opts.warmup_tokens,
            rounds=opts.rounds,
            device=opts.device,
            seed=opts.seed,
            storage_recipes=opts.storage_recipes,
            work_dir=opts.work_dir,
            cuda_graphs=opts.cuda_graphs,
        )
        paths = write_decode_report(results, opts.output, name=opts.name, command=command)
        print(paths[1].read_text())
        for path in paths:
            print(f"wrote {path}")
