"""embedkit_moe: the mixture-of-experts baseline.

``TopKRouter`` (token choice: fp32 gate, softmax or sigmoid, top-k, optional renormalisation
and jitter, a selection-only expert bias), the balancing functions (Switch load-balancing
loss, ST-MoE router z-loss, auxiliary-loss-free bias updates, load metrics), ``GroupedExperts``
(stacked SwiGLU experts, grouped matmul or a loop over expert slices) and
``dropless_dispatch``. The MoE feed-forward block that wires them into the decoder, its losses
in training, recipes and benchmarks come next (issue 6).
"""

from embedkit_moe.balancing import (
    expert_load,
    load_balancing_loss,
    load_metrics,
    router_z_loss,
    update_expert_bias,
)
from embedkit_moe.dispatch import dropless_dispatch
from embedkit_moe.experts import GroupedExperts
from embedkit_moe.router import RouterStats, TopKRouter

__all__ = [
    "GroupedExperts",
    "RouterStats",
    "TopKRouter",
    "dropless_dispatch",
    "expert_load",
    "load_balancing_loss",
    "load_metrics",
    "router_z_loss",
    "update_expert_bias",
]
