"""``embedkit eval``: score a trained checkpoint on any text with the run's own tokenizer and
vocabularies; perplexity and bits per byte (see ``embedkit.evaluation``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from jsonargparse import ArgumentParser, Namespace

from embedkit.commands.recipe_args import (
    RecipeCommandParser,
    add_config_argument,
    add_device_argument,
    build_connected,
    config_args,
    load_weights,
    pick_device,
    require_checkpoint,
)

HELP = "Score a checkpoint on any text with the run's tokenizer: perplexity and bits per byte."


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit eval``."""
    parser = RecipeCommandParser(
        prog="embedkit eval",
        description=HELP + " Recipe options (--model..., --data...) apply as in `embedkit "
        "validate`. The tokenizer is never trained: a BPE tokenizer must be in the cache.",
    )
    add_config_argument(parser)
    parser.add_argument("--ckpt_path", type=str, required=True, help="The trained checkpoint.")
    parser.add_argument(
        "--corpus",
        type=str,
        required=True,
        help="A text file or a folder of *.txt files (each may be .gz or .xz), one document per "
        "file.",
    )
    parser.add_argument(
        "--max_tokens",
        type=int | None,
        default=None,
        help="Score at most this many targets (the start of the text); default: all.",
    )
    parser.add_argument(
        "--batch_size", type=int | None, default=None, help="Windows per batch (data.batch_size)."
    )
    add_device_argument(parser, "Where to score")
    parser.add_argument(
        "--output", type=str | None, default=None, help="Also write the results to this JSON file."
    )
    return parser


def run(args: Namespace) -> None:
    """Read and tokenize the text, load the model, score it, print (and write) the results."""
    from embedkit.evaluation import EvalResult, score, target_bytes, tokenize_documents

    require_checkpoint(args.ckpt_path)
    for field in ("max_tokens", "batch_size"):
        value = getattr(args, field)
        if value is not None and value < 1:
            raise ValueError(f"--{field}={value} is invalid; valid: at least 1")
    documents = read_documents(args.corpus)
    device = pick_device(args.device)
    recipe = [*config_args(args.config), *args.recipe_overrides]
    require_cached_tokenizer(recipe)
    _, model, data = build_connected(recipe, prepare=False)  # shards only where parts need them
    ids_N = tokenize_documents(data.tokenizer, documents)
    if args.max_tokens is not None:
        ids_N = ids_N[: args.max_tokens + 1]
    if len(ids_N) < data.seq_len + 1:
        raise ValueError(
            f"--corpus={args.corpus!r} has {len(ids_N)} tokens (after --max_tokens); one window "
            f"of data.seq_len={data.seq_len} needs at least {data.seq_len + 1}"
        )
    load_weights(model, args.ckpt_path)
    # The per-position features the model's parts asked for (SCONE's f-gram ids), for this text.
    features = data.features_of(ids_N)
    nll, tokens = score(
        model.eval().to(device),
        ids_N,
        seq_len=data.seq_len,
        batch_size=args.batch_size or data.batch_size,
        device=device,
        features=features,
    )
    result = EvalResult(tokens=tokens, nll=nll, bytes=target_bytes(data.tokenizer, ids_N))
    report = {
        "corpus": args.corpus,
        "ckpt_path": args.ckpt_path,
        "seq_len": data.seq_len,
        "tokenizer_fingerprint": data.tokenizer.fingerprint,
        **result.as_dict(),
    }
    print_table(report)
    if args.output is not None:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")


def read_documents(path: str) -> list[str]:
    """The documents of ``--corpus`` as ``TextFiles`` reads a corpus."""
    from embedkit.data.corpus import TextFiles

    if not os.path.exists(path):
        raise ValueError(f"--corpus={path!r} does not exist; give a text file or a folder of them")
    try:
        documents = [text for text in TextFiles(path=path).documents() if text]
    except ValueError as err:
        raise ValueError(f"--corpus={path!r}: {err}") from err
    return documents


def require_cached_tokenizer(recipe: Sequence[str]) -> None:
    """Refuse a recipe whose BPE tokenizer is not in the cache: evaluating must not train one."""
    path = _recipe_data(recipe).untrained_tokenizer_path()
    if path is not None:
        raise ValueError(
            f"the recipe's BPE tokenizer is not in the cache ({path} is missing) and eval does "
            "not train one; run with the run's data.cache_dir, or give the run's tokenizer.json "
            "as --data.tokenizer=TokenizerFile --data.tokenizer.path=FILE"
        )


def _recipe_data(recipe: Sequence[str]):
    """The recipe's data module, instantiated alone (its tokenizer not prepared)."""
    from lightning.pytorch.cli import LightningArgumentParser

    from embedkit.cli import EmbedkitArgumentParser, EmbedkitCLI
    from embedkit.data.datamodule import TextDataModule
    from embedkit.lm import LanguageModel

    class ParseOnly(EmbedkitCLI):
        def instantiate_classes(self) -> None:
            pass

    config = ParseOnly(
        LanguageModel, TextDataModule, parser_class=EmbedkitArgumentParser, args=list(recipe),
        run=False,
    ).config  # fmt: skip
    parser = LightningArgumentParser()
    parser.add_lightning_class_args(TextDataModule, "data", subclass_mode=False)
    return parser.instantiate_classes(Namespace(data=config.data)).data


def print_table(report: dict) -> None:
    """The results as a two-column table."""
    rows = [
        ("tokens scored", f"{report['tokens']:,}"),
        ("bytes scored", f"{report['bytes']:,}"),
        ("total NLL (nats)", f"{report['nll']:.4f}"),
        ("loss (nats/token)", f"{report['loss']:.4f}"),
        ("perplexity", f"{report['perplexity']:.4f}"),
        ("bits per byte", f"{report['bits_per_byte']:.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"embedkit eval: {report['corpus']} (seq_len {report['seq_len']})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
