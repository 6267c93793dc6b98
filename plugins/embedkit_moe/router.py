"""``TopKRouter``: token-choice routing of a mixture of experts (Switch, OLMoE, DeepSeek-V3).

A linear gate scores every expert in fp32 (softmax or sigmoid); each position goes to its k
best experts. With an expert bias (auxiliary-loss-free balancing, DeepSeek-V3) the bias only
changes which experts are chosen; the weights come from the unbiased scores.
Legend: B = batch, L = sequence length, P = B * L positions, D = width, E = experts,
K = experts per position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.interfaces import Router, Routes

Score = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class RouterStats:
    """What the balancing losses and load metrics need from one routing."""

    logits_PE: torch.Tensor  # fp32 gate logits
    scores_PE: torch.Tensor  # softmax or sigmoid of the logits
    experts_PK: torch.Tensor  # chosen experts, best first
    weights_PK: torch.Tensor  # their weights (from the unbiased scores)


class TopKRouter(nn.Module, Router):
    """Each position to its ``top_k`` highest-scoring experts; dynamic (reads hidden states)."""

    def __init__(
        self,
        *,
        dim: int,
        num_experts: int,
        top_k: int = 2,
        score: Score = "softmax",
        renormalize: bool = True,
        jitter: float = 0.0,
        init_std: float = 0.02,
    ) -> None:
        """
        Args:
            dim: Width of the hidden states routed.
            num_experts: Number of experts E.
            top_k: Experts per position K (1 <= K <= E).
            score: "softmax" over the experts (Switch, Mixtral, OLMoE) or an independent
                "sigmoid" per expert (DeepSeek-V3).
            renormalize: Divide the K chosen weights by their sum.
            jitter: Multiplicative noise on the gate input while training, uniform in
                [1 - jitter, 1 + jitter] (Switch); 0 disables it.
            init_std: Standard deviation of the gate's normal initialisation.
        """
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"TopKRouter num_experts={num_experts} is invalid; valid: >= 1")
        if not 1 <= top_k <= num_experts:
            raise ValueError(
                f"TopKRouter top_k={top_k} is invalid; valid: 1 .. num_experts={num_experts}"
            )
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"TopKRouter score={score!r} is invalid; valid: softmax, sigmoid")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"TopKRouter jitter={jitter} is invalid; valid: 0 <= jitter < 1")
        self.num_experts, self.top_k, self.score = num_experts, top_k, score
        self.renormalize, self.jitter = renormalize, jitter
        self.gate = nn.Linear(dim, num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=init_std)
        # Auxiliary-loss-free balancing: added to the scores for the choice only.
        self.register_buffer("expert_bias_E", torch.zeros(num_experts))

    @property
    def static(self) -> bool:
        return False

    @property
    def num_rows(self) -> int:
        return self.num_experts

    def scores(self, hidden_PD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate logits and scores [P, E], both fp32 whatever autocast is on."""
        if self.training and self.jitter > 0:
            noise = torch.empty_like(hidden_PD).uniform_(1 - self.jitter, 1 + self.jitter)
            hidden_PD = hidden_PD * noise
        with torch.autocast(hidden_PD.device.type, enabled=False):
            logits_PE = F.linear(hidden_PD.float(), self.gate.weight.float())
        if self.score == "softmax":
            return logits_PE, torch.softmax(logits_PE, dim=-1)
        return logits_PE, torch.sigmoid(logits_PE)

    def route_with_stats(self, hidden_PD: torch.Tensor) -> tuple[Routes, RouterStats]:
        """Routes of positions ``hidden_PD`` (K rows each) and the statistics of the choice."""
        logits_PE, scores_PE = self.scores(hidden_PD)
        biased_PE = scores_PE + self.expert_bias_E
        experts_PK = torch.topk(biased_PE, self.top_k, dim=-1).indices
        weights_PK = scores_PE.gather(-1, experts_PK)
        if self.renormalize:
            weights_PK = weights_PK / weights_PK.sum(-1, keepdim=True).clamp_min(1e-20)
        num_p = hidden_PD.shape[0]
        offsets_P1 = torch.arange(num_p + 1, device=hidden_PD.device) * self.top_k
        routes = Routes(
            rows_N=experts_PK.reshape(-1), offsets_P1=offsets_P1, weights_N=weights_PK.reshape(-1)
        )
        return routes, RouterStats(logits_PE, scores_PE, experts_PK, weights_PK)

    def route(self, ids_BL: torch.Tensor, hidden_BLD: torch.Tensor | None = None) -> Routes:
        """K experts per position in row-major order; needs ``hidden_BLD``."""
        if hidden_BLD is None:
            raise ValueError("TopKRouter is dynamic: route(ids, hidden) needs the hidden states")
        return self.route_with_stats(hidden_BLD.reshape(-1, hidden_BLD.shape[-1]))[0]
