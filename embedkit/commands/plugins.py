"""``embedkit plugins``: every registered implementation, per interface."""

from __future__ import annotations

from jsonargparse import ArgumentParser, Namespace
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from embedkit import registry

HELP = "List registered implementations of every interface (imports each plugin)."


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit plugins``."""
    parser = ArgumentParser(prog="embedkit plugins", description=HELP)
    parser.add_argument("--interface", type=str | None, default=None, help="Only this interface.")
    return parser


def first_doc_line(cls: type) -> str:
    """The first sentence of a class docstring (it may wrap over lines), or an empty string."""
    paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    sentence, stop, _ = paragraph.partition(". ")
    return sentence + ("." if stop else "")


def run(args: Namespace) -> None:
    """Print a table: interface, short name, class path, package, summary."""
    interfaces = registry.known_interfaces()
    if args.interface is not None and args.interface not in interfaces:
        raise SystemExit(
            f"--interface={args.interface!r} is not an interface; valid: {', '.join(interfaces)}"
        )
    table = Table(title="embedkit plugins")
    for column in ("interface", "short name", "class path", "package", "summary"):
        table.add_column(column, overflow="fold")
    for spec in registry.specs(args.interface):
        try:
            summary = first_doc_line(spec.load())
        except (ImportError, TypeError, ValueError) as err:
            summary = f"failed to load: {err}"
        top_level = spec.class_path.split(".")[0]
        package = top_level if top_level == spec.package else f"{top_level} ({spec.package})"
        table.add_row(spec.interface, spec.short_name, spec.class_path, package, escape(summary))
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped output: one line per implementation
    console.print(table)
