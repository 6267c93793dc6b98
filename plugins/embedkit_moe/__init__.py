"""embedkit_moe: the mixture-of-experts baseline (docs/moe.md).

``MoEFeedForward`` replaces a decoder layer's MLP with a mixture of SwiGLU experts whose
width keeps a token's active parameters equal to the dense MLP's by default. Its parts:
``TopKRouter`` (token choice: fp32 gate, softmax or sigmoid, top-k, optional renormalisation
and jitter, a selection-only expert bias), the balancing functions (Switch load-balancing
loss, ST-MoE router z-loss, auxiliary-loss-free bias updates, load metrics), ``GroupedExperts``
(stacked SwiGLU experts, grouped matmul or a loop over expert slices) and
``dispatch_to_experts`` (dropless, or with a capacity factor). ``embedkit_moe.load_plot``
draws the logged expert load of a run.
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
from embedkit_moe.feed_forward import MoEFeedForward, iso_active_width
from embedkit_moe.router import RouterStats, TopKRouter

__all__ = [
    "Dispatched",
    "GroupedExperts",
    "MoEFeedForward",
    "RouterStats",
    "TopKRouter",
    "dispatch_to_experts",
    "expert_load",
    "iso_active_width",
    "load_balancing_loss",
    "load_metrics",
    "router_z_loss",
    "update_expert_bias",
]
