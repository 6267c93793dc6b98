"""What the commands that build a recipe's model share (``info``, ``export``, ``generate``,
``eval``, ``bench train``): the ``--config`` argument, repeated or listed and merged in order
as ``embedkit fit`` merges it; recipe options (``--model...``, ``--data...``) beside the
command's own; ``--device``; building the model connected to its data; loading a
checkpoint's weights."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from jsonargparse import ArgumentParser, Namespace

if TYPE_CHECKING:
    import torch

# Options of the recipe itself (``--model.decoder.init_args.tables DIR``, ``--data...``), passed
# on to the recipe's parser as ``embedkit validate`` takes them.
RECIPE_OPTIONS = ("--model", "--data")


class RecipeCommandParser(ArgumentParser):
    """The command's own arguments; recipe options (``--model...``, ``--data...``) are set apart
    into ``recipe_overrides``."""

    def parse_args(self, args: Sequence[str] | None = None, *rest, **kwargs) -> Namespace:
        own, overrides = split_recipe_options(sys.argv[1:] if args is None else args)
        namespace = super().parse_args(own, *rest, **kwargs)
        namespace.recipe_overrides = overrides
        return namespace


def split_recipe_options(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``args`` apart into the command's own and the recipe's (``--model.x=v`` or
    ``--model.x v``)."""
    own, recipe = [], []
    index = 0
    while index < len(args):
        arg = args[index]
        name = arg.split("=", 1)[0]
        if not name.startswith(tuple(f"{option}." for option in RECIPE_OPTIONS)) and (
            name not in RECIPE_OPTIONS
        ):
            own.append(arg)
        elif "=" in arg or index + 1 == len(args):
            recipe.append(arg)
        else:
            recipe += [arg, args[index + 1]]
            index += 1
        index += 1
    return own, recipe


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


def add_device_argument(parser: ArgumentParser, purpose: str) -> None:
    """``--device auto|cpu|cuda`` (read with ``pick_device``)."""
    parser.add_argument(
        "--device",
        type=Literal["auto", "cpu", "cuda"],
        default="auto",
        help=f"{purpose} (auto: CUDA when available).",
    )


def pick_device(name: str) -> torch.device:
    """``--device``: auto is CUDA when available."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device=cuda, but no CUDA device is available; valid: auto, cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def require_checkpoint(ckpt_path: str) -> None:
    """Refuse a ``--ckpt_path`` that is not a file, before anything is built."""
    if not os.path.isfile(ckpt_path):
        raise ValueError(f"--ckpt_path={ckpt_path!r} does not exist")


def build_connected(args: Sequence[str], *, prepare: bool = True):
    """LightningCLI's objects for recipe arguments ``args`` (as ``embedkit fit`` builds them),
    with every model part that needs the data connected to it; returns ``(cli, model, data)``.
    With ``prepare`` the training shards are written and opened first (else only parts that
    need them prepare them)."""
    from embedkit.cli import run_cli
    from embedkit.interfaces import DataConnected

    with warnings.catch_warnings():  # sys.argv holds the embedkit command's own arguments
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = run_cli(list(args), run=False)
    model, data = cli.model, cli.datamodule
    if prepare:
        data.prepare_data()
        data.setup("fit")
    for part in model.decoder.modules():  # as LanguageModel.setup does
        if isinstance(part, DataConnected):
            part.connect(data)
    return cli, model, data


def load_weights(model, ckpt_path: str) -> None:
    """The checkpoint's weights into ``model``; a missing checkpoint, or one of another
    recipe's model, is a ``ValueError`` naming ``--ckpt_path``."""
    import torch

    require_checkpoint(ckpt_path)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:  # shapes or parts that differ: another recipe's checkpoint
        message = f"--ckpt_path={ckpt_path!r} does not fit the recipe's model: {err}"
        raise ValueError(message) from err
