"""embedkit_moe: the mixture-of-experts baseline.

``TopKRouter`` (token choice: fp32 gate, softmax or sigmoid, top-k, optional renormalisation
and jitter, a selection-only expert bias), the balancing functions (Switch load-balancing
loss, ST-MoE router z-loss, auxiliary-loss-free bias updates, load metrics), ``GroupedExperts``
(stacked SwiGLU experts, grouped matmul or a loop over expert slices) and
``dispatch_to_experts`` (dropless, or with a capacity factor). The MoE feed-forward block
that wires them into the decoder, its losses in training, recipes and benchmarks come next
(issue 6).
"""

from embedkit_moe.balancing import (
    expert_load,
    load_balancing_loss,
    load_metrics,
    router_z_loss,
    update_expert_bias,
)
from embedkit_moe.dispatch import Dispatched, dispatch_to_experts
from embedkit_moe.experts import GroupedExperts
from embedkit_moe.router import RouterStats, TopKRouter

__all__ = [
    "Dispatched",
    "GroupedExperts",
    "RouterStats",
    "TopKRouter",
    "dispatch_to_experts",
    "expert_load",
    "load_balancing_loss",
    "load_metrics",
    "router_z_loss",
    "update_expert_bias",
]
