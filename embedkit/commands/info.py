"""``embedkit info``: what a recipe's model costs — parameters and inference FLOPs per token."""

from __future__ import annotations

from jsonargparse import ArgumentParser, Namespace

from embedkit.commands.recipe_args import add_config_argument, config_args

HELP = "Parameters and inference FLOPs per token of a recipe's model."


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit info``."""
    parser = ArgumentParser(prog="embedkit info", description=HELP)
    add_config_argument(parser)
    return parser


def describe(configs: list[str]) -> dict[str, int]:
    """The figures ``embedkit info`` prints, for the model of ``configs``."""
    from embedkit.accounting import inference_flops_per_token, parameter_counts
    from embedkit.cli import run_cli

    cli = run_cli(config_args(configs), run=False)
    decoder = cli.model.decoder
    context = cli.datamodule.seq_len
    figures = {f"parameters_{k}": v for k, v in parameter_counts(decoder).items()}
    figures["context"] = context
    figures["inference_flops_per_token"] = inference_flops_per_token(decoder, context=context)
    return figures


def run(args: Namespace) -> None:
    """Print the figures, one per line."""
    for name, value in describe(args.config).items():
        print(f"{name}: {value:,}")
