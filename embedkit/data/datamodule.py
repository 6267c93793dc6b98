"""``TextDataModule``: a corpus, tokenized once into shards, served as windows of tokens.

Batches are ``{"input_ids": LongTensor[B, L], "targets": LongTensor[B, L]}``; targets equal to
``IGNORE_INDEX`` (-100) are padding to leave out of the loss.

Legend: N = number of tokens, V = vocabulary size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from embedkit.data.corpus import BundledCorpus, Corpus
from embedkit.data.features import feature_path, tag_split
from embedkit.data.shards import MANIFEST_FILE, TokenShards, write_shards
from embedkit.data.text import digest, split_fingerprint, train_heads
from embedkit.data.tokenizers import BPETokenizer, Tokenizer
from embedkit.data.windows import EpochSampler, RandomWindows, ValidationWindows
from embedkit.interfaces import VocabExtension

# Tokens counted per step when a statistic streams over a split.
_STREAM_TOKENS = 1 << 24


class TextDataModule(L.LightningDataModule):
    """Language-model data: train on random windows of the training split, evaluate on every
    token of the validation split.

    The tokenizer is prepared (BPE trained on the training split, or loaded from the cache) on
    first use, which ``vocab_size`` triggers so the CLI can size the model before ``setup``.
    ``prepare_data`` tokenizes the corpus into shards under ``data_dir`` once; later runs with
    the same corpus, tokenizer and ``val_fraction`` reuse them.
    """

    def __init__(
        self,
        *,
        corpus: Corpus | None = None,
        tokenizer: Tokenizer | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        train_samples_per_epoch: int = 100_000,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        data_dir: str | None = None,
    ) -> None:
        """
        Args:
            corpus: Where the documents come from; ``None`` is the bundled tinyshakespeare.
            tokenizer: How text becomes token ids; ``None`` is a byte-level BPE of 2048 tokens
                trained on the training split.
            seq_len: Tokens per training and evaluation window (the model's context length).
            batch_size: Windows per batch.
            val_fraction: Fraction of every document, at its end, held out for validation
                (the cut moves forward to the next line start).
            train_samples_per_epoch: Random training windows per epoch; each epoch draws
                fresh ones.
            num_workers: Data loader worker processes (0 loads in the main process).
            seed: Seed of the random training windows.
            cache_dir: Folder of trained tokenizers and token shards; ``None`` is
                ``$EMBEDKIT_CACHE`` if set, else ``~/.cache/embedkit``.
            data_dir: Folder of this run's token shards; ``None`` is a folder under
                ``cache_dir`` named by the corpus, tokenizer and ``val_fraction``.
        """
        super().__init__()
        for field, value, low in (
            ("seq_len", seq_len, 1),
            ("batch_size", batch_size, 1),
            ("train_samples_per_epoch", train_samples_per_epoch, batch_size),
            ("num_workers", num_workers, 0),
        ):
            if value < low:
                raise ValueError(f"data.{field}={value} is invalid; valid: at least {low}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction} is invalid; valid: 0 < it < 1")
        self.corpus = corpus if corpus is not None else BundledCorpus()
        self._tokenizer = tokenizer if tokenizer is not None else BPETokenizer(vocab_size=2048)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.train_samples_per_epoch = train_samples_per_epoch
        self.num_workers = num_workers
        self.seed = seed
        default_cache = os.environ.get("EMBEDKIT_CACHE") or "~/.cache/embedkit"
        self.cache_dir = Path(cache_dir or default_cache).expanduser()
        self._data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self._tokenizer_ready = False
        self._shards: TokenShards | None = None
        self._feature_vocabs: dict[str, VocabExtension] = {}

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer, prepared on first access."""
        if not self._tokenizer_ready:
            self._tokenizer.prepare(
                train_documents=train_heads(self.corpus.documents, val_fraction=self.val_fraction),
                corpus_fingerprint=split_fingerprint(
                    self.corpus.fingerprint, val_fraction=self.val_fraction
                ),
                cache_dir=self.cache_dir,
            )
            self._tokenizer_ready = True
        return self._tokenizer

    def untrained_tokenizer_path(self) -> Path | None:
        """Where the tokenizer would be trained and cached, when it is not there yet (a BPE
        tokenizer of this corpus not trained before); None when it needs no training."""
        if self._tokenizer_ready or not isinstance(self._tokenizer, BPETokenizer):
            return None
        fingerprint = split_fingerprint(self.corpus.fingerprint, val_fraction=self.val_fraction)
        path = self._tokenizer.cache_path(fingerprint, self.cache_dir)
        return None if path.is_file() else path

    @property
    def vocab_size(self) -> int:
        """Number of token ids of the tokenizer (prepares it); the model's vocabulary size."""
        return self.tokenizer.vocab_size

    @property
    def data_dir(self) -> Path:
        """Folder of the token shards."""
        if self._data_dir is None:
            key = digest(
                {
                    "corpus": self.corpus.fingerprint,
                    "tokenizer": self.tokenizer.fingerprint,
                    "val_fraction": self.val_fraction,
                }
            )
            self._data_dir = self.cache_dir / "shards" / key
        return self._data_dir

    def prepare_data(self) -> None:
        """Tokenize the corpus into shards under ``data_dir`` unless they are there."""
        if not (self.data_dir / MANIFEST_FILE).is_file():
            write_shards(
                self.data_dir,
                corpus=self.corpus,
                tokenizer=self.tokenizer,
                val_fraction=self.val_fraction,
            )

    def setup(self, stage: str | None = None) -> None:
        """Open the shards and check that they fit the configuration."""
        if self._shards is not None:
            return
        shards = TokenShards.open(self.data_dir)
        _check_manifest(self, shards)
        self._shards = shards

    @property
    def shards(self) -> TokenShards:
        """The opened token shards (after ``setup``)."""
        if self._shards is None:
            raise RuntimeError("TextDataModule.shards is used before prepare_data() and setup()")
        return self._shards

    def add_feature(self, name: str, vocab: VocabExtension) -> None:
        """Give every window the entry ids of ``vocab`` at its input positions, under ``name``
        (tagged once per split and stored beside the shards). Called by the model's parts
        through ``LanguageModel.setup``, before the data loaders are built."""
        self._feature_vocabs[name] = vocab

    def features_of(self, tokens_N: np.ndarray) -> dict[str, np.ndarray]:
        """The features ``add_feature`` asked for, of any token ids (e.g. another text)."""
        return {name: vocab.lookup(tokens_N) for name, vocab in self._feature_vocabs.items()}

    def features(self, split: str) -> dict[str, np.ndarray]:
        """The per-token features of ``split`` ("train" or "val"), tagging them if needed."""
        tokens_N = self.shards.train_N if split == "train" else self.shards.val_N
        return {
            name: tag_split(tokens_N, vocab, feature_path(self.data_dir, name, vocab, split))
            for name, vocab in self._feature_vocabs.items()
        }

    def train_dataloader(self) -> DataLoader:
        windows = RandomWindows(
            self.shards.train_N,
            seq_len=self.seq_len,
            num_samples=self.train_samples_per_epoch,
            seed=self.seed,
            features=self.features("train"),
        )
        sampler = EpochSampler(num_samples=self.train_samples_per_epoch)
        return self._loader(windows, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        windows = ValidationWindows(
            self.shards.val_N, seq_len=self.seq_len, features=self.features("val")
        )
        return self._loader(windows)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _loader(self, dataset: Any, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def describe(self) -> dict[str, Any]:
        """What the data is, for logs: sizes, fingerprints and where the shards are."""
        manifest = self.shards.manifest
        return {
            "corpus": type(self.corpus).__name__,
            "corpus_fingerprint": manifest.corpus_fingerprint,
            "tokenizer": type(self._tokenizer).__name__,
            "tokenizer_fingerprint": manifest.tokenizer_fingerprint,
            "vocab_size": manifest.vocab_size,
            "dtype": manifest.dtype,
            "num_train_tokens": manifest.num_train_tokens,
            "num_val_tokens": manifest.num_val_tokens,
            "val_fraction": manifest.val_fraction,
            "seq_len": self.seq_len,
            "data_dir": str(self.data_dir),
        }

    def unigram_perplexity(self) -> float:
        """Perplexity on the validation targets of a unigram model of the training split
        (add-one smoothing): the score a model that ignores context can reach."""
        shards = self.shards
        return unigram_perplexity(
            shards.train_N, shards.val_N[1:], vocab_size=shards.manifest.vocab_size
        )


def unigram_perplexity(train_N: np.ndarray, targets_N: np.ndarray, *, vocab_size: int) -> float:
    """Perplexity on ``targets_N`` of token frequencies in ``train_N`` with add-one smoothing."""
    counts_V = np.ones(vocab_size, dtype=np.int64)
    for start in range(0, len(train_N), _STREAM_TOKENS):
        counts_V += np.bincount(train_N[start : start + _STREAM_TOKENS], minlength=vocab_size)
    log_probs_V = np.log(counts_V) - np.log(counts_V.sum())
    nll = 0.0
    for start in range(0, len(targets_N), _STREAM_TOKENS):
        nll -= float(log_probs_V[targets_N[start : start + _STREAM_TOKENS]].sum())
    return float(np.exp(nll / len(targets_N)))


def _check_manifest(data: TextDataModule, shards: TokenShards) -> None:
    manifest = shards.manifest
    where = f"the token shards in data.data_dir={str(shards.directory)!r}"
    advice = "configure the matching one or another data_dir (or none, for the default)"
    tokenizer = data.tokenizer
    if manifest.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"data.tokenizer has vocab_size={tokenizer.vocab_size} but {where} have "
            f"vocab_size={manifest.vocab_size}; {advice}"
        )
    if manifest.tokenizer_fingerprint != tokenizer.fingerprint:
        raise ValueError(
            f"data.tokenizer (fingerprint {tokenizer.fingerprint}) is not the tokenizer of "
            f"{where} (fingerprint {manifest.tokenizer_fingerprint}); {advice}"
        )
    if manifest.corpus_fingerprint != data.corpus.fingerprint:
        raise ValueError(
            f"data.corpus (fingerprint {data.corpus.fingerprint}) is not the corpus of {where} "
            f"(fingerprint {manifest.corpus_fingerprint}); {advice}"
        )
    if manifest.val_fraction != data.val_fraction:
        raise ValueError(
            f"data.val_fraction={data.val_fraction} but {where} were split at "
            f"val_fraction={manifest.val_fraction}; {advice}"
        )
    if data.seq_len >= manifest.num_val_tokens:
        raise ValueError(
            f"data.seq_len={data.seq_len} is longer than the validation split "
            f"({manifest.num_val_tokens} tokens); lower seq_len or raise val_fraction"
        )
    if data.seq_len >= manifest.num_train_tokens:
        raise ValueError(
            f"data.seq_len={data.seq_len} is longer than the training split "
            f"({manifest.num_train_tokens} tokens); lower seq_len or use a larger corpus"
        )
