"""What the commands that build a recipe's model share (``info``, ``export``, ``generate``,
``bench train``): the ``--config`` argument, repeated or listed and merged in order as
``embedkit fit`` merges it; building the model connected to its data; loading a
checkpoint's weights."""

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


def build_connected(args: Sequence[str]):
    """LightningCLI's objects for recipe arguments ``args`` (as ``embedkit fit`` builds them),
    with the data prepared and every model part that needs the data connected to it; returns
    ``(cli, model, data)``."""
    from embedkit.cli import run_cli
    from embedkit.interfaces import DataConnected

    cli = run_cli(list(args), run=False)
    model, data = cli.model, cli.datamodule
    data.prepare_data()
    data.setup("fit")
    for part in model.decoder.modules():  # as LanguageModel.setup does
        if isinstance(part, DataConnected):
            part.connect(data)
    return cli, model, data


def load_weights(model, ckpt_path: str) -> None:
    """The checkpoint's weights into ``model``; a missing checkpoint, or one of another
    recipe's model, is a ``ValueError`` naming ``--ckpt_path``."""
    import os

    import torch

    if not os.path.isfile(ckpt_path):
        raise ValueError(f"--ckpt_path={ckpt_path!r} does not exist")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:  # shapes or parts that differ: another recipe's checkpoint
        message = f"--ckpt_path={ckpt_path!r} does not fit the recipe's model: {err}"
        raise ValueError(message) from err
