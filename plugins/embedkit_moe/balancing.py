"""Balancing of a mixture of experts: the Switch load-balancing loss, the ST-MoE router z-loss,
auxiliary-loss-free bias updates (DeepSeek-V3), and the load metrics.

Every function takes ``mask_P`` (True for positions that count, e.g. not padding).
Legend: P = positions, E = experts, K = experts per position.
"""

from __future__ import annotations

import torch


def expert_load(experts_PK: torch.Tensor, num_experts: int, mask_P: torch.Tensor | None = None):
    """Fraction of the routed (position, slot) pairs each expert received, [E], summing to 1."""
    if mask_P is not None:
        experts_PK = experts_PK[mask_P]
    counts_E = torch.zeros(num_experts, device=experts_PK.device)
    counts_E.index_add_(
        0, experts_PK.reshape(-1), torch.ones(experts_PK.numel(), device=counts_E.device)
    )
    return counts_E / counts_E.sum().clamp_min(1)


def load_balancing_loss(
    scores_PE: torch.Tensor,
    experts_PK: torch.Tensor,
    mask_P: torch.Tensor | None = None,
    *,
    normalize_scores: bool = False,
) -> torch.Tensor:
    """Switch Transformer's ``E * sum_e f_e * p_e``: f the share of routed slots, p the mean
    router probability of expert e; 1 when balanced. ``normalize_scores`` divides each
    position's scores by their sum first (for sigmoid scores)."""
    num_experts = scores_PE.shape[-1]
    if normalize_scores:
        scores_PE = scores_PE / scores_PE.sum(-1, keepdim=True).clamp_min(1e-20)
    if mask_P is not None:
        scores_PE = scores_PE[mask_P]
    share_E = expert_load(experts_PK, num_experts, mask_P).detach()
    mean_probability_E = scores_PE.mean(0) if scores_PE.shape[0] else scores_PE.sum(0)
    return num_experts * (share_E * mean_probability_E).sum()


def router_z_loss(logits_PE: torch.Tensor, mask_P: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE's router z-loss: the mean squared log-sum-exp of the gate logits."""
    if mask_P is not None:
        logits_PE = logits_PE[mask_P]
    if logits_PE.shape[0] == 0:
        return logits_PE.sum()
    return torch.logsumexp(logits_PE, dim=-1).square().mean()


@torch.no_grad()
def update_expert_bias(bias_E: torch.Tensor, load_E: torch.Tensor, *, speed: float) -> None:
    """DeepSeek-V3's auxiliary-loss-free balancing, in place: raise the bias of experts below
    the mean load by ``speed``, lower the others, keep the biases centred."""
    step_E = speed * torch.sign(load_E.mean() - load_E)
    bias_E += step_E - step_E.mean()


def load_metrics(load_E: torch.Tensor) -> dict[str, torch.Tensor]:
    """Entropy of the load (log E when balanced), its max / mean, and the least-loaded share;
    0-d tensors on the load's device (no host synchronisation)."""
    share_E = load_E / load_E.sum().clamp_min(1e-20)
    entropy = -(share_E * share_E.clamp_min(1e-20).log()).sum()
    return {
        "load_entropy": entropy,
        "load_max_over_mean": share_E.max() / share_E.mean().clamp_min(1e-20),
        "load_min": share_E.min(),
    }
