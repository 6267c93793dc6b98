"""Dropless token-choice dispatch: sort the (position, slot) pairs by expert, run the experts
on contiguous groups, scatter the weighted results back to their positions (MegaBlocks,
torchtitan). No token is dropped; no host synchronisation on the grouped path.

Legend: P = positions, D = width, K = experts per position, N = P * K routed pairs, E = experts.
"""

from __future__ import annotations

import torch

from embedkit_moe.experts import GroupedExperts


def dropless_dispatch(
    hidden_PD: torch.Tensor,
    experts_PK: torch.Tensor,
    weights_PK: torch.Tensor,
    experts: GroupedExperts,
) -> torch.Tensor:
    """``sum_k weights[p, k] * expert_{experts[p, k]}(hidden[p])`` for every position [P, D]."""
    num_p, top_k = experts_PK.shape
    expert_N = experts_PK.reshape(-1)
    order_N = torch.argsort(expert_N, stable=True)
    position_N = order_N // top_k
    counts_E = torch.zeros(experts.num_experts, dtype=torch.long, device=expert_N.device)
    counts_E.index_add_(0, expert_N, torch.ones_like(expert_N))  # bincount would wait for max()
    out_ND = experts(hidden_PD.index_select(0, position_N), counts_E)
    weighted_ND = out_ND * weights_PK.reshape(-1).index_select(0, order_N)[:, None].to(out_ND.dtype)
    combined_PD = torch.zeros(num_p, hidden_PD.shape[1], dtype=weighted_ND.dtype,
                              device=hidden_PD.device)  # fmt: skip
    return combined_PD.index_add(0, position_N, weighted_ND)
