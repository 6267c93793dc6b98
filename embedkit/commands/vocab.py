"""``embedkit vocab``: build a vocabulary extension (SCONE's f-grams, L³'s row allocation) from
token shards, or describe one: entries per length, coverage of a validation split and the top
entries as text; for an allocation, rows per token in power-of-two buckets, the rows a
validation position reads and the tokens with the most rows.

Legend: S = entries, K = longest entry, V = token ids, N = tokens of a split.
"""

from __future__ import annotations

import inspect
import resource
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
from jsonargparse import ArgumentParser, Namespace
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from embedkit import registry
from embedkit.data.shards import TokenShards
from embedkit.data.tokenizers import TokenizerFile

HELP = "Build a vocabulary extension (SCONE f-grams, L³ rows) from token shards, or describe one."
DEFAULT_VOCAB = "FGramVocab"
# Constructor settings that `vocab build` passes on when given; the chosen implementation
# refuses, by name, one its constructor does not take.
SETTINGS: dict[str, tuple[type, str]] = {
    "max_n": (int, "FGramVocab: longest f-gram K (default 5)."),
    "min_count": (int, "FGramVocab: fewest occurrences of a candidate (default 5)."),
    "num_entries": (int, "FGramVocab: most entries to keep, S (default 100000)."),
    "chunk_tokens": (int, "FGramVocab: tokens per streaming step (default 2**24)."),
    "num_rows": (int, "LZWAllocation: rows in total, v (required; V <= v <= V * k)."),
    "max_rows_per_token": (int, "LZWAllocation: most rows of one token, k (default 512)."),
    "strategy": (str, "LZWAllocation: lzw, uniform or frequency (default lzw)."),
}
CHUNK_TOKENS = 1 << 24  # validation tokens counted per step


def build_parser() -> ArgumentParser:
    """Arguments of ``embedkit vocab build`` and ``embedkit vocab info``."""
    parser = ArgumentParser(prog="embedkit vocab", description=HELP)
    subcommands = parser.add_subcommands(dest="action")
    build = ArgumentParser(description="Fit a vocabulary on the training split and save it.")
    build.add_argument("--data_dir", type=str, required=True, help="Folder of token shards.")
    build.add_argument("--out", type=str, required=True, help="File to write (.npz).")
    _add_vocab_argument(build)
    for name, (kind, help_text) in SETTINGS.items():
        build.add_argument(f"--{name}", type=kind | None, default=None, help=help_text)
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
    cls = registry.resolve("VocabExtension", opts.vocab)
    params = inspect.signature(cls).parameters
    kwargs = {k: opts[k] for k in SETTINGS if opts[k] is not None}
    _check_settings(cls.__name__, params, kwargs)
    if "vocab_size" in params:
        kwargs["vocab_size"] = shards.manifest.vocab_size  # the tokenizer's, not max id + 1
    vocab = cls(**kwargs)
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


def _check_settings(
    name: str, params: Mapping[str, inspect.Parameter], given: dict[str, Any]
) -> None:
    """``ValueError`` listing the valid flags when ``given`` holds a setting that the
    constructor parameters ``params`` of ``name`` lack, or misses one they require."""
    valid = ", ".join(
        f"--{flag} ({'required' if p.default is p.empty else f'default {p.default!r}'})"
        for flag, p in params.items()
        if flag in SETTINGS
    )
    for flag in given:
        if flag not in params:
            raise ValueError(f"--{flag} is not a setting of {name}; valid: {valid or '(none)'}")
    missing = [
        f"--{flag}"
        for flag, p in params.items()
        if flag in SETTINGS and p.default is p.empty and flag not in given
    ]
    if missing:
        raise ValueError(f"{name} needs {', '.join(missing)}; valid: {valid}")


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
    rows_V = vocab.rows_per_token() if hasattr(vocab, "rows_per_token") else None
    if rows_V is not None:
        _print_allocation(vocab, rows_V)
    if opts.data_dir is not None and rows_V is not None:
        _rows_read(rows_V, opts.data_dir, fingerprint)
    elif opts.data_dir is not None:
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
        if rows_V is not None and tokenizer.vocab_size != len(rows_V):
            print(
                f"note: --tokenizer {opts.tokenizer} has vocab_size {tokenizer.vocab_size}, "
                f"not the allocation's V={len(rows_V)}; decoded text may be wrong",
                file=sys.stderr,
            )
    if entries is not None and opts.top > 0:
        _print_top(entries, opts.top, tokenizer)
    if rows_V is not None and opts.top > 0:
        _print_top_tokens(rows_V, opts.top, tokenizer)


def _matching_shards(data_dir: str, fingerprint: str | None, what: str) -> TokenShards:
    """The shards in ``data_dir``, refused when their tokenizer is not ``fingerprint``."""
    shards = TokenShards.open(data_dir)
    theirs = shards.manifest.tokenizer_fingerprint
    if fingerprint is not None and theirs != fingerprint:
        raise ValueError(
            f"{what} on tokens of tokenizer {fingerprint} but the token shards in "
            f"--data_dir={data_dir} come from tokenizer {theirs}; give shards of the same "
            "tokenizer"
        )
    return shards


def _coverage(vocab: Any, data_dir: str, fingerprint: str | None, entries: Any) -> None:
    shards = _matching_shards(data_dir, fingerprint, "the vocabulary was built")
    ids_L = vocab.lookup(shards.val_N)
    matched_L = ids_L >= 0
    print(
        f"coverage of the validation split ({len(ids_L):,} positions): "
        f"{matched_L.mean() if len(ids_L) else 0.0:.2%} have an entry"
    )
    if entries is not None and matched_L.any():
        mean_length = entries[1][ids_L[matched_L]].mean()
        print(f"mean length of the matched entries: {mean_length:.2f}")


def _print_allocation(vocab: Any, rows_V: np.ndarray) -> None:
    """Settings, fit statistics and the histogram of rows per token (power-of-two buckets)."""
    num_rows, cap = int(rows_V.sum()), int(vocab.settings["max_rows_per_token"])
    print(
        f"allocation: v={num_rows:,} rows over V={len(rows_V):,} token ids, "
        f"at most k={cap:,} rows per token, strategy {vocab.strategy}"
    )
    if vocab.fit_stats is not None:
        print(f"fit: {vocab.fit_stats.summary()}")
    lines = []  # (label, mask_V) of every bucket 1, 2-3, 4-7, ... up to k
    for b in range(cap.bit_length()):
        low, high = 1 << b, min((2 << b) - 1, cap)
        label = f"{low}-{high} rows" if low < high else f"{low} row{'s' if low > 1 else ''}"
        lines.append((label, (rows_V >= low) & (rows_V <= high)))
    lines.append((f"at the cap k={cap}", rows_V == cap))
    width = max(len(label) for label, _ in lines)
    tokens_width, rows_width = len(f"{len(rows_V):,}"), len(f"{num_rows:,}")
    print("rows per token:")
    for label, mask_V in lines:
        num_tokens, held = int(mask_V.sum()), int(rows_V[mask_V].sum())
        print(
            f"  {label:<{width}}  {num_tokens:>{tokens_width},} tokens "
            f"({num_tokens / len(rows_V):6.1%})  {held:>{rows_width},} rows "
            f"({held / num_rows:6.1%} of v)"
        )


def _rows_read(rows_V: np.ndarray, data_dir: str, fingerprint: str | None) -> None:
    """Rows a validation position reads (its token's), on average, and how often more than 1."""
    shards = _matching_shards(data_dir, fingerprint, "the allocation was fitted")
    if shards.manifest.vocab_size != len(rows_V):
        raise ValueError(
            f"the allocation covers V={len(rows_V)} token ids but the token shards in "
            f"--data_dir={data_dir} come from a tokenizer of vocab_size="
            f"{shards.manifest.vocab_size}; give shards of the same tokenizer"
        )
    counts_V = np.zeros(len(rows_V), dtype=np.int64)
    for start in range(0, len(shards.val_N), CHUNK_TOKENS):
        counts_V += np.bincount(shards.val_N[start : start + CHUNK_TOKENS], minlength=len(rows_V))
    num_positions = max(int(counts_V.sum()), 1)
    print(
        f"validation split ({int(counts_V.sum()):,} positions): "
        f"{int(counts_V @ rows_V) / num_positions:.2f} rows read per position, "
        f"{counts_V[rows_V > 1].sum() / num_positions:.2%} of positions have a token with more "
        "than 1 row"
    )


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
    _print_table(table)


def _print_top_tokens(rows_V: np.ndarray, top: int, tokenizer: TokenizerFile | None) -> None:
    order_V = np.argsort(-rows_V, kind="stable")[:top]  # most rows first; equal: lower id
    table = Table(title=f"top {len(order_V)} tokens by rows")
    for column in ("id", "rows", "share of v", *(("text",) if tokenizer else ())):
        table.add_column(column, overflow="fold")
    for token in order_V:
        row = [str(token), f"{rows_V[token]:,}", f"{rows_V[token] / rows_V.sum():.2%}"]
        if tokenizer is not None:
            row.append(repr(tokenizer.decode([int(token)])))
        table.add_row(*(escape(cell) for cell in row))
    _print_table(table)


def _print_table(table: Table) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
