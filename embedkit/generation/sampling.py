"""``Sampler``: the next token of every row from its logits — greedy, or drawn after temperature,
top-k and top-p (nucleus) filtering, from a seeded generator and without a host sync.

Legend: B = batch rows, V = vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def greedy(logits_BV: torch.Tensor) -> torch.Tensor:
    """The most likely token of every row, ``[B]``."""
    return logits_BV.argmax(dim=-1)


def top_k_filter(logits_BV: torch.Tensor, k: int) -> torch.Tensor:
    """``logits_BV`` with every token outside each row's ``k`` best set to -inf."""
    if k >= logits_BV.shape[-1]:
        return logits_BV
    kth_B1 = logits_BV.topk(k, dim=-1).values[:, -1:]
    return logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))


def top_p_filter(logits_BV: torch.Tensor, p: float) -> torch.Tensor:
    """``logits_BV`` with every token outside each row's nucleus set to -inf: the smallest set
    of most likely tokens whose probabilities sum to at least ``p``."""
    if p >= 1.0:
        return logits_BV
    sorted_BV, order_BV = logits_BV.sort(dim=-1, descending=True)
    probs_BV = sorted_BV.softmax(dim=-1)
    mass_before_BV = probs_BV.cumsum(dim=-1) - probs_BV  # of the tokens ranked above
    drop_BV = mass_before_BV >= p  # the set already reached p without this token
    drop_BV[:, 0] = False
    return logits_BV.masked_fill(drop_BV.scatter(-1, order_BV, drop_BV), float("-inf"))


def draw(probs_BV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row with probability ``probs_BV``: the largest ``prob / Exp(1)`` noise
    (an exponential race; unlike ``torch.multinomial`` it never waits for the device)."""
    noise_BV = torch.empty_like(probs_BV).exponential_(generator=generator)
    # A noise of exactly 0 would turn a filtered token's 0 into NaN, which argmax picks.
    noise_BV.clamp_min_(torch.finfo(noise_BV.dtype).tiny)
    return (probs_BV / noise_BV).argmax(dim=-1)


@dataclass(frozen=True)
class Sampler:
    """Picks the next token of every row from its logits: scaled by the temperature, filtered
    by top-k, then by top-p, then drawn.

    Args:
        temperature: Divides the logits; 0 is greedy (the most likely token, no draw).
        top_k: Draw among each row's k most likely tokens only; ``None``: all.
        top_p: Draw among each row's nucleus only: the smallest set of most likely tokens
            whose probabilities sum to at least p (1: all).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} is invalid; valid: at least 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} is invalid; valid: at least 1, or null (all)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} is invalid; valid: 0 < top_p <= 1")

    def __call__(
        self, logits_BV: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The next token of every row, ``[B]``, on the logits' device."""
        if self.temperature == 0:
            return greedy(logits_BV)
        logits_BV = logits_BV.float() / self.temperature
        if self.top_k is not None:
            logits_BV = top_k_filter(logits_BV, self.top_k)
        logits_BV = top_p_filter(logits_BV, self.top_p)
        return draw(logits_BV.softmax(dim=-1), generator)
