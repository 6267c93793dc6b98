"""Token-choice dispatch: sort the (position, slot) pairs by expert, run the experts on
contiguous groups, scatter the weighted results back to their positions (MegaBlocks,
torchtitan). Dropless by default; with a capacity factor, each expert takes at most
``ceil(capacity_factor * N / E)`` pairs, in position order (Switch), and the rest are dropped
(the residual stream carries those positions). No host synchronisation on the grouped path.

Legend: P = positions, D = width, K = experts per position, N = P * K routed pairs, E = experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from embedkit_moe.experts import GroupedExperts


@dataclass(frozen=True)
class Dispatched:
    """The combined expert outputs and the share of routed pairs dropped (0 when dropless)."""

    out_PD: torch.Tensor
    dropped_share: torch.Tensor


def dispatch_to_experts(
    hidden_PD: torch.Tensor,
    experts_PK: torch.Tensor,
    weights_PK: torch.Tensor,
    experts: GroupedExperts,
    *,
    capacity_factor: float | None = None,
) -> Dispatched:
    """``sum_k weights[p, k] * expert_{experts[p, k]}(hidden[p])`` for every position [P, D],
    over the pairs each expert keeps."""
    num_p, top_k = experts_PK.shape
    num_e = experts.num_experts
    expert_N = experts_PK.reshape(-1)
    device = expert_N.device
    counts_E = torch.zeros(num_e, dtype=torch.long, device=device)
    counts_E.index_add_(0, expert_N, torch.ones_like(expert_N))  # bincount would wait for max()
    order_N = torch.argsort(expert_N, stable=True)
    if capacity_factor is None:
        kept_N = torch.ones(order_N.shape, dtype=torch.bool, device=device)
    else:
        if capacity_factor <= 0:
            raise ValueError(f"capacity_factor={capacity_factor} is invalid; valid: > 0 or null")
        capacity = math.ceil(capacity_factor * expert_N.numel() / num_e)
        first_E = torch.cumsum(counts_E, 0) - counts_E
        sorted_expert_N = expert_N[order_N]
        rank_N = torch.arange(expert_N.numel(), device=device) - first_E[sorted_expert_N]
        # Dropped pairs move to the end, inside the last group with a zero input: they cost a
        # little compute and contribute nothing, values or gradients.
        key_N = torch.where(rank_N < capacity, sorted_expert_N, num_e)
        regroup_N = torch.argsort(key_N, stable=True)
        order_N = order_N[regroup_N]
        kept_N = (key_N < num_e)[regroup_N]
        counts_E = counts_E.clamp(max=capacity)
        counts_E[-1] += expert_N.numel() - counts_E.sum()  # the dropped tail joins the last
    position_N = order_N // top_k
    rows_ND = hidden_PD.index_select(0, position_N) * kept_N[:, None].to(hidden_PD.dtype)
    out_ND = experts(rows_ND, counts_E)
    weight_N = weights_PK.reshape(-1).index_select(0, order_N) * kept_N.to(weights_PK.dtype)
    weighted_ND = out_ND * weight_N[:, None].to(out_ND.dtype)
    combined_PD = torch.zeros(num_p, hidden_PD.shape[1], dtype=weighted_ND.dtype,
                              device=hidden_PD.device)  # fmt: skip
    dropped = 1.0 - kept_N.float().mean() if kept_N.numel() else kept_N.float().sum()
    return Dispatched(combined_PD.index_add(0, position_N, weighted_ND), dropped)
