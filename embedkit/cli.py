"""The ``embedkit`` command: LightningCLI (``fit``, ``validate``, ``test``, ``predict``) plus
embedkit's own commands (``plugins``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentParser
from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from embedkit.callbacks import FitSummary
from embedkit.cli_errors import explain
from embedkit.commands import bench as bench_command
from embedkit.commands import compare as compare_command
from embedkit.commands import eval as eval_command
from embedkit.commands import export as export_command
from embedkit.commands import generate as generate_command
from embedkit.commands import info as info_command
from embedkit.commands import plugins as plugins_command
from embedkit.commands import table as table_command
from embedkit.commands import vocab as vocab_command
from embedkit.data.datamodule import TextDataModule
from embedkit.lm import LanguageModel
from embedkit.run_record import RunRecord

# name -> (one-line help, parser builder, runner); dispatched before LightningCLI parses.
COMMANDS: dict[str, tuple[str, Callable[[], ArgumentParser], Callable]] = {
    "plugins": (plugins_command.HELP, plugins_command.build_parser, plugins_command.run),
    "bench": (bench_command.HELP, bench_command.build_parser, bench_command.run),
    "table": (table_command.HELP, table_command.build_parser, table_command.run),
    "vocab": (vocab_command.HELP, vocab_command.build_parser, vocab_command.run),
    "info": (info_command.HELP, info_command.build_parser, info_command.run),
    "export": (export_command.HELP, export_command.build_parser, export_command.run),
    "compare": (compare_command.HELP, compare_command.build_parser, compare_command.run),
    "generate": (generate_command.HELP, generate_command.build_parser, generate_command.run),
    "eval": (eval_command.HELP, eval_command.build_parser, eval_command.run),
}


class EmbedkitArgumentParser(LightningArgumentParser):
    """Lightning's parser whose errors about unknown implementations list the registered ones."""

    def error(self, message: str, *args, **kwargs):
        return super().error(explain(message), *args, **kwargs)


def default_precision() -> str:
    """bf16 mixed precision where the accelerator has it, fp32 elsewhere."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


# Options of `fit` itself that its saved config.yaml carries next to the recipe.
FIT_ONLY_OPTIONS = {"ckpt_path": str | None, "weights_only": bool | None}


def default_loggers(root_dir: str | None) -> list[Logger]:
    """A CSV logger, plus a TensorBoard logger writing to the same ``version_N`` directory
    when ``tensorboard`` (or ``tensorboardX``) is installed."""
    root = root_dir or os.getcwd()
    csv = CSVLogger(root)
    if not (_TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE):
        return [csv]
    return [csv, TensorBoardLogger(root, version=csv.version, default_hp_metric=False)]


class EmbedkitCLI(LightningCLI):
    """LightningCLI over ``LanguageModel`` and ``TextDataModule`` with run-time links."""

    def setup_parser(self, add_subcommands: bool, *args, **kwargs) -> None:
        self._with_subcommands = add_subcommands
        super().setup_parser(add_subcommands, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if not self._with_subcommands:  # objects only (run=False): no fit, hence no ckpt_path
            # A run's saved config.yaml holds the fit's own options; the commands that build a
            # recipe's objects (export, generate, eval, bench) take their checkpoint apart.
            for name, kind in FIT_ONLY_OPTIONS.items():
                parser.add_argument(
                    f"--{name}", type=kind, default=None,
                    help="Ignored here (from a run's saved configuration).",
                )  # fmt: skip
        parser.link_arguments(
            "data.vocab_size", "model.decoder.init_args.vocab_size", apply_on="instantiate"
        )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, logging to CSV (``metrics.csv``) and, when TensorBoard is installed,
        also to TensorBoard, in one run directory, unless the recipe names its own logger."""
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") in (None, True):
            kwargs.setdefault("logger", default_loggers(trainer.get("default_root_dir")))
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Keep the recipe's configuration when a checkpoint is given.

        LightningCLI would replace the model's configuration with the hyperparameters saved in
        the checkpoint; embedkit takes only the weights from it, so that evaluation can move
        tables to another tier or read an exported table by configuration alone.
        """

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        # Listed for `embedkit --help` only: main() dispatches these before LightningCLI parses.
        subcommands = parser._subcommands_action
        for name, (help_text, _, _) in COMMANDS.items():
            subcommands.add_subcommand(name, ArgumentParser(description=help_text), help=help_text)


def run_cli(args: Sequence[str] | None = None, *, run: bool = True) -> EmbedkitCLI:
    """Run LightningCLI with embedkit's model, data module and defaults (``run=False``: only
    parse the recipe and instantiate its parts)."""
    torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left on Ampere+
    return EmbedkitCLI(
        LanguageModel,
        TextDataModule,
        trainer_defaults={
            "precision": default_precision(),
            "callbacks": [FitSummary(), RunRecord()],
        },
        parser_class=EmbedkitArgumentParser,
        args=args,
        run=run,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``embedkit`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in COMMANDS:
            _, build, run = COMMANDS[args[0]]
            run(build().parse_args(args[1:]))
        else:
            run_cli(None if argv is None else args)
    except ValueError as err:
        # Bad input (a recipe value, a corpus, a store) is reported as one clear line;
        # EMBEDKIT_DEBUG=1 shows the traceback.
        if os.environ.get("EMBEDKIT_DEBUG"):
            raise
        print(f"embedkit: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
