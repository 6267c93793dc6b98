"""``embedkit vocab``: build a vocabulary extension (SCONE's f-grams) from token shards, or
describe one: entries per length, coverage of a validation split, the top entries as text."""

from __future__ import annotations

import resource
import sys
from collections import Counter
from typing import Any

import numpy as np
from jsonargparse import ArgumentParser, Namespace
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from embedkit import registry
from embedkit.data.shards import TokenShards
from embedkit.data.tokenizers import TokenizerFile

HELP = "Build a vocabulary extension (SCONE f-grams) from token shards, or describe one."
DEFAULT_VOCAB = "FGramVocab"


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit vocab build`` and ``embedkit vocab info``."""
    parser = ArgumentParser(prog="embedkit vocab", description=HELP)
    subcommands = parser.add_subcommands(dest="action")
    build = ArgumentParser(description="Fit a vocabulary on the training split and save it.")
    build.add_argument("--data_dir", type=str, required=True, help="Folder of token shards.")
    build.add_argument("--out", type=str, required=True, help="File to write (.npz).")
    _add_vocab_argument(build)
    for name, help_text in (
        ("max_n", "Longest f-gram K (default: the vocabulary's, 5)."),
        ("min_count", "Fewest occurrences of a candidate (default: the vocabulary's, 5)."),
        ("num_entries", "Most entries to keep, S (default: the vocabulary's, 100000)."),
        ("chunk_tokens", "Tokens per streaming step (default: the vocabulary's, 2**24)."),
    ):
        build.add_argument(f"--{name}", type=int | None, default=None, help=help_text)
    subcommands.add_subcommand("build", build, help="Fit on token shards and save.")
    info = ArgumentParser(description="Entries, length histogram, coverage and top entries.")
    info.add_argument("path", type=str, help="A vocabulary file written by `vocab build`.")
    _add_vocab_argument(info)
    info.add_argument(
        "--data_dir", type=str | None, default=None, help="Token shards whose val split to cover."
    )
    info.add_argument(
        "--tokenizer", type=str | None, default=None, help="tokenizer.json to decode entries."
    )
    info.add_argument("--top", type=int, default=20, help="Most frequent entries to show.")
    subcommands.add_subcommand("info", info, help="Describe a saved vocabulary.")
    return parser


def _add_vocab_argument(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--vocab",
        type=str,
        default=DEFAULT_VOCAB,
        help="VocabExtension implementation: short name or class path.",
    )


def run(args: Namespace) -> None:
    """Run ``build`` or ``info``; bad input ends with one line naming what is wrong."""
    try:
        if args.action == "build":
            _build(args.build)
        else:
            _info(args.info)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"embedkit vocab: error: {err}") from None


def _build(opts: Namespace) -> None:
    shards = TokenShards.open(opts.data_dir)
    settings = ("max_n", "min_count", "num_entries", "chunk_tokens")
    kwargs = {k: opts[k] for k in settings if opts[k] is not None}
    vocab = registry.resolve("VocabExtension", opts.vocab)(**kwargs)
    vocab.fit([shards.train_N])
    if hasattr(vocab, "tokenizer_fingerprint"):
        vocab.tokenizer_fingerprint = shards.manifest.tokenizer_fingerprint
    vocab.save(opts.out)
    print(f"wrote {opts.out}: {vocab.num_entries:,} entries, content hash {vocab.content_hash}")
    stats = getattr(vocab, "fit_stats", None)
    if stats is not None:
        print(stats.summary())
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak resident memory of this process: {peak_rss:.0f} MiB")


def _info(opts: Namespace) -> None:
    vocab = registry.resolve("VocabExtension", opts.vocab).load(opts.path)
    fingerprint = getattr(vocab, "tokenizer_fingerprint", None)
    print(f"{opts.path}: {type(vocab).__name__}, {vocab.num_entries:,} entries")
    print(f"content hash: {vocab.content_hash}")
    print(f"tokenizer fingerprint: {fingerprint or 'unknown'}")
    entries = vocab.entries() if hasattr(vocab, "entries") else None
    if entries is not None:
        histogram = Counter(int(n) for n in entries[1])
        for n in sorted(histogram):
            share = histogram[n] / max(vocab.num_entries, 1)
            print(f"  length {n}: {histogram[n]:,} entries ({share:.1%})")
    if opts.data_dir is not None:
        _coverage(vocab, opts.data_dir, fingerprint, entries)
    tokenizer = None
    if opts.tokenizer is not None:
        tokenizer = TokenizerFile(path=opts.tokenizer)
        if fingerprint is not None and tokenizer.fingerprint != fingerprint:
            print(
                f"note: --tokenizer {opts.tokenizer} has fingerprint {tokenizer.fingerprint}, "
                f"not the vocabulary's {fingerprint}; decoded text may be wrong",
                file=sys.stderr,
            )
    if entries is not None and opts.top > 0:
        _print_top(entries, opts.top, tokenizer)


def _coverage(vocab: Any, data_dir: str, fingerprint: str | None, entries: Any) -> None:
    shards = TokenShards.open(data_dir)
    theirs = shards.manifest.tokenizer_fingerprint
    if fingerprint is not None and theirs != fingerprint:
        raise ValueError(
            f"the vocabulary was built from tokens of tokenizer {fingerprint} but the token "
            f"shards in --data_dir={data_dir} come from tokenizer {theirs}; give shards of the "
            "same tokenizer"
        )
    ids_L = vocab.lookup(shards.val_N)
    matched_L = ids_L >= 0
    print(
        f"coverage of the validation split ({len(ids_L):,} positions): "
        f"{matched_L.mean() if len(ids_L) else 0.0:.2%} have an entry"
    )
    if entries is not None and matched_L.any():
        mean_length = entries[1][ids_L[matched_L]].mean()
        print(f"mean length of the matched entries: {mean_length:.2f}")


def _print_top(entries: Any, top: int, tokenizer: TokenizerFile | None) -> None:
    tokens_SK, lengths_S, counts_S = entries
    table = Table(title=f"top {min(top, len(lengths_S))} entries")
    for column in ("id", "n", "count", "tokens", *(("text",) if tokenizer else ())):
        table.add_column(column, overflow="fold")
    for i in range(min(top, len(lengths_S))):
        tokens = tokens_SK[i, : lengths_S[i]]
        row = [str(i), str(lengths_S[i]), f"{counts_S[i]:,}", " ".join(map(str, tokens))]
        if tokenizer is not None:
            row.append(repr(tokenizer.decode(np.asarray(tokens))))
        table.add_row(*(escape(cell) for cell in row))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
