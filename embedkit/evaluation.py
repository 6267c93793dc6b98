"""Scoring a trained model on any text: perplexity and bits per byte over every target once.

The text is tokenized as the token shards are (documents cut by ``chunk_text``, joined by the
tokenizer's end-of-text token, or by its encoding of a newline where it has none) and scored in
the non-overlapping windows of ``ValidationWindows``: every token after the first is a target
exactly once, each predicted from the tokens before it in its window.

Bits per byte divides the summed negative log-likelihood (in bits) by the UTF-8 bytes of the
text that the targets cover: the decoded target tokens, end-of-text tokens left out (they stand
for no text). It does not depend on how a tokenizer cuts the text, so it compares models with
different tokenizers; perplexity (per token) does not.

Legend: N = number of tokens of the text, B = windows per batch, L = window length, V = vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from embedkit.data.text import chunk_text
from embedkit.data.tokenizers import Tokenizer
from embedkit.data.windows import IGNORE_INDEX, ValidationWindows


@dataclass(frozen=True)
class EvalResult:
    """What ``embedkit eval`` reports."""

    tokens: int  # targets scored
    nll: float  # summed negative log-likelihood of the targets, nats
    bytes: int  # UTF-8 bytes of the text the targets cover

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood, nats per token."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        """``exp(nll / tokens)``."""
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        """``nll / ln 2 / bytes``."""
        return self.nll / math.log(2) / self.bytes

    def as_dict(self) -> dict[str, float | int]:
        return {
            **asdict(self),
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


def tokenize_documents(tokenizer: Tokenizer, documents: Iterable[str]) -> np.ndarray:
    """One token stream ``ids_N`` (int64) of ``documents`` as the token shards would hold it."""
    eot = tokenizer.eot_id
    separator_N = np.array([eot]) if eot is not None else tokenizer.encode("\n")
    parts = []
    for text in documents:
        if not text:
            continue
        if parts:
            parts.append(separator_N)
        parts += tokenizer.encode_batch(list(chunk_text(text)))
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts).astype(np.int64)


def target_bytes(tokenizer: Tokenizer, ids_N: np.ndarray) -> int:
    """UTF-8 bytes of the text that the targets ``ids_N[1:]`` cover: those of the decoded stream
    less those of its first token decoded alone, end-of-text tokens left out.

    Exact when the first token and the stream's end fall on character boundaries; a token that
    splits a multi-byte character decodes alone to U+FFFD (3 bytes), so a text starting with one
    cut there, or a ``--max_tokens`` cut inside one, is off by at most 3 bytes."""
    eot = tokenizer.eot_id
    text_N = ids_N[ids_N != eot] if eot is not None else ids_N
    first_N = ids_N[:1] if eot is None or ids_N[0] != eot else ids_N[:0]
    whole = len(tokenizer.decode(text_N).encode("utf-8"))
    return whole - len(tokenizer.decode(first_N).encode("utf-8"))


@torch.no_grad()
def score(
    model: torch.nn.Module,
    ids_N: np.ndarray,
    *,
    seq_len: int,
    batch_size: int,
    device: torch.device,
    features: Mapping[str, np.ndarray] | None = None,
) -> tuple[float, int]:
    """Summed NLL (nats, float64) and number of targets of ``ids_N`` under ``model`` (called as
    ``model(ids_BL, features) -> logits_BLV``), in non-overlapping windows of ``seq_len``."""
    windows = ValidationWindows(ids_N, seq_len=seq_len, features=dict(features or {}))
    nll, count = torch.zeros((), dtype=torch.float64), 0
    for start in range(0, len(windows), batch_size):
        items = [windows[i] for i in range(start, min(start + batch_size, len(windows)))]
        batch = {k: torch.stack([item[k] for item in items]).to(device) for k in items[0]}
        ids_BL, targets_BL = batch.pop("input_ids"), batch.pop("targets")
        logits_BLV = model(ids_BL, batch)
        nll += F.cross_entropy(
            logits_BLV.flatten(0, 1).float(),
            targets_BL.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).cpu()
        count += int((targets_BL != IGNORE_INDEX).sum())
    assert count == windows.num_targets
    return float(nll), count
