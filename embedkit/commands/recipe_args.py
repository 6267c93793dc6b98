"""The ``--config`` argument of the commands that build a recipe's model (``info``,
``export``): repeated or listed, merged in order as ``embedkit fit`` merges them."""

from __future__ import annotations

from collections.abc import Sequence

from jsonargparse import ArgumentParser


def add_config_argument(parser: ArgumentParser) -> None:
    """``--config A --config B`` or ``--config A B``: the recipe files, in order."""
    parser.add_argument(
        "--config",
        type=str,
        nargs="+",
        action="extend",
        required=True,
        help="The recipe(s), in order (repeat --config or list them).",
    )


def config_args(paths: Sequence[str]) -> list[str]:
    """The recipe files as LightningCLI arguments (``--config`` before each)."""
    return [arg for path in paths for arg in ("--config", path)]
