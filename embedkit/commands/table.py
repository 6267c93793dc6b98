"""``embedkit table``: convert a stored lookup table between tiers, or describe one."""

from __future__ import annotations

from typing import Literal

from jsonargparse import ArgumentParser, Namespace
from rich.console import Console
from rich.table import Table

HELP = "Convert a stored lookup table between tiers (zarr, pinned, gpu) or describe one."
ZARR_OPTIONS = ("codec", "chunk_rows", "shard_rows")


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit table`` and its subcommands."""
    parser = ArgumentParser(prog="embedkit table", description=HELP)
    subcommands = parser.add_subcommands(dest="action")
    convert = ArgumentParser(
        description="Copy the table at SRC into a new table at DST of tier --to; the rows, "
        "their content hash and the producer record are kept."
    )
    convert.add_argument("src", type=str, help="Stored table to read (any tier).")
    convert.add_argument("dst", type=str, help="Where to write the new table (must not exist).")
    convert.add_argument(
        "--to", type=Literal["zarr", "pinned", "gpu"], required=True, help="Destination tier."
    )
    convert.add_argument(
        "--codec",
        type=Literal["none", "zstd", "blosc-lz4"] | None,
        default=None,
        help="Zarr only: compression of each inner chunk (default none).",
    )
    convert.add_argument(
        "--chunk_rows", type=int | None, default=None, help="Zarr only: rows per inner chunk."
    )
    convert.add_argument(
        "--shard_rows", type=int | None, default=None, help="Zarr only: rows per shard file."
    )
    subcommands.add_subcommand("convert", convert, help="Convert a table to another tier.")
    info = ArgumentParser(description="Tier, shape, dtype, codec, size and hash of a table.")
    info.add_argument("path", type=str, help="Stored table (any tier).")
    subcommands.add_subcommand("info", info, help="Describe a stored table.")
    return parser


def run(args: Namespace) -> None:
    """Run the chosen action (bad input raises ``ValueError``, reported by ``embedkit``)."""
    from embedkit import tables  # imports every tier: only when the command runs

    if args.action == "convert":
        _convert(tables, args.convert)
    else:
        _print_info(tables.table_info(args.info.path))


def _convert(tables, opts: Namespace) -> None:
    given = {name: opts[name] for name in ZARR_OPTIONS if opts[name] is not None}
    if given and opts.to != "zarr":
        flags = ", ".join(f"--{name}" for name in given)
        raise ValueError(f"{flags}: for --to zarr only, not --to {opts.to}")
    manifest = tables.convert_table(opts.src, opts.dst, to=opts.to, **given)
    print(
        f"wrote {opts.dst}: {opts.to} table of {manifest.num_rows} x {manifest.dim} "
        f"{manifest.dtype}, sha256 {manifest.content_hash}"
    )


def _print_info(info: dict[str, object]) -> None:
    rows = [(key, _text(value)) for key, value in info.items()]
    console = Console()
    if not console.is_terminal:  # piped: one "key: value" line each, easy to parse
        for key, value in rows:
            print(f"{key}: {value}")
        return
    table = Table(title=f"embedkit table {info['location']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _text(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items()) or "-"
    return str(value) if value != "" else "-"
