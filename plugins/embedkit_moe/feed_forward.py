"""``MoEFeedForward``: a mixture of SwiGLU experts in place of a layer's dense MLP.

Token-choice top-k routing (``TopKRouter``), dispatch to grouped experts (dropless by
default), an optional shared expert every position also goes through; while training, the
Switch load-balancing loss and the ST-MoE router z-loss of each forward are handed to the
training loss (``AuxiliaryLosses``), the auxiliary-loss-free expert bias (DeepSeek-V3) is
updated from the forward's load when ``bias_update_speed`` > 0, and the load and dropped share
are kept on the device for the logged metrics (``TrainingMetrics``).
Legend: B = batch, L = sequence length, D = model width, P = B * L positions, E = experts.
"""

from __future__ import annotations

import torch

from embedkit.compiling import CompileMode, TrainingCompiler
from embedkit.interfaces import FeedForward
from embedkit_dense.swiglu import SwiGLU
from embedkit_moe.balancing import (
    expert_load,
    load_balancing_loss,
    load_metrics,
    router_z_loss,
    update_expert_bias,
)
from embedkit_moe.dispatch import dispatch_to_experts
from embedkit_moe.experts import GroupedExperts, Implementation
from embedkit_moe.router import Score, TopKRouter


def iso_active_width(dim: int, *, top_k: int, shared_expert: bool, multiple_of: int = 64) -> int:
    """Expert width F such that a token's active expert parameters (top_k experts, plus the
    shared one) equal those of the dense SwiGLU of width ``8/3 * dim``: ``F = F_dense / (k + s)``
    rounded to ``multiple_of`` (at least ``multiple_of``)."""
    dense = -(-int(8 * dim / 3) // multiple_of) * multiple_of
    width = dense / (top_k + int(shared_expert))
    return max(multiple_of, round(width / multiple_of) * multiple_of)


class MoEFeedForward(FeedForward):
    """Top-k mixture of SwiGLU experts; its active parameters per token match the dense MLP by
    default (``iso_active_width``)."""

    def __init__(
        self,
        dim: int,
        *,
        num_experts: int = 8,
        top_k: int = 2,
        expert_width: int | None = None,
        shared_expert: bool = False,
        score: Score = "softmax",
        renormalize: bool = True,
        jitter: float = 0.0,
        load_balancing_weight: float = 0.01,
        z_loss_weight: float = 0.001,
        bias_update_speed: float = 0.0,
        capacity_factor: float | None = None,
        implementation: Implementation = "auto",
        compile_mode: CompileMode | None = "reduce-overhead",
    ) -> None:
        """
        Args:
            dim: Model width, passed by the decoder.
            num_experts: Experts E.
            top_k: Experts per position K.
            expert_width: Hidden width of each expert (default: ``iso_active_width``, so a
                token's active parameters equal the dense MLP's).
            shared_expert: Add an expert every position goes through (DeepSeek-V3).
            score: Router scores, "softmax" or "sigmoid".
            renormalize: Divide the K chosen weights by their sum.
            jitter: Multiplicative noise on the router input while training (Switch).
            load_balancing_weight: Weight of the Switch load-balancing loss (0 disables it).
            z_loss_weight: Weight of the ST-MoE router z-loss (0 disables it).
            bias_update_speed: Step of the auxiliary-loss-free expert bias per training
                forward (DeepSeek-V3 uses 0.001); 0 disables it.
            capacity_factor: Each expert keeps at most ``ceil(factor * P * K / E)`` pairs,
                dropping the rest in position order; ``None`` is dropless.
            implementation: Expert matmuls: "grouped", "loop" or "auto".
            compile_mode: While training on CUDA, the block (routing, dispatch, experts,
                balancing losses) runs as one ``torch.compile`` graph per pass in this mode
                ("reduce-overhead" replays it as a CUDA graph: far less host time per step);
                null runs it eagerly.
        """
        super().__init__()
        for field, value in (
            ("load_balancing_weight", load_balancing_weight),
            ("z_loss_weight", z_loss_weight),
            ("bias_update_speed", bias_update_speed),
        ):
            if value < 0:
                raise ValueError(f"MoEFeedForward {field}={value} is invalid; valid: >= 0")
        width = expert_width or iso_active_width(dim, top_k=top_k, shared_expert=shared_expert)
        self.router = TopKRouter(
            dim=dim, num_experts=num_experts, top_k=top_k, score=score,
            renormalize=renormalize, jitter=jitter,
        )  # fmt: skip
        self.experts = GroupedExperts(
            dim=dim, hidden_dim=width, num_experts=num_experts, implementation=implementation
        )
        self.shared = SwiGLU(dim, hidden_dim=width) if shared_expert else None
        self.load_balancing_weight, self.z_loss_weight = load_balancing_weight, z_loss_weight
        self.bias_update_speed, self.capacity_factor = bias_update_speed, capacity_factor
        self._losses: dict[str, torch.Tensor] = {}
        self._block = TrainingCompiler(self._forward, compile_mode, owner="MoEFeedForward")
        self.register_buffer("last_load_E", torch.zeros(num_experts), persistent=False)
        self.register_buffer("last_dropped", torch.zeros(()), persistent=False)

    def forward(self, hidden_BLD: torch.Tensor) -> torch.Tensor:
        out_BLD, losses, load_E, dropped_share = self._block(
            hidden_BLD, training=self.training, device=hidden_BLD.device
        )
        if self.training:
            self._losses = losses
            self.last_load_E.copy_(load_E)
            self.last_dropped.copy_(dropped_share)
        return out_BLD

    def _forward(self, hidden_BLD: torch.Tensor):
        """The output, and while training the weighted balancing losses, the load and the
        dropped share (the expert bias follows the load when ``bias_update_speed`` > 0)."""
        hidden_PD = hidden_BLD.reshape(-1, hidden_BLD.shape[-1])
        _, stats = self.router.route_with_stats(hidden_PD)
        dispatched = dispatch_to_experts(
            hidden_PD, stats.experts_PK, stats.weights_PK, self.experts,
            capacity_factor=self.capacity_factor,
        )  # fmt: skip
        out_PD = dispatched.out_PD
        if self.shared is not None:
            out_PD = out_PD + self.shared(hidden_PD)
        if not self.training:
            return out_PD.view_as(hidden_BLD), {}, None, None
        load_E = expert_load(stats.experts_PK, self.router.num_experts)
        losses = {}
        if self.load_balancing_weight > 0:
            sigmoid = self.router.score == "sigmoid"
            losses["load_balancing_loss"] = self.load_balancing_weight * load_balancing_loss(
                stats.scores_PE, stats.experts_PK, normalize_scores=sigmoid
            )
        if self.z_loss_weight > 0:
            losses["router_z_loss"] = self.z_loss_weight * router_z_loss(stats.logits_PE)
        if self.bias_update_speed > 0:
            update_expert_bias(self.router.expert_bias_E, load_E, speed=self.bias_update_speed)
        return out_PD.view_as(hidden_BLD), losses, load_E, dispatched.dropped_share.detach()

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The weighted balancing losses of the last training forward (then cleared)."""
        losses, self._losses = self._losses, {}
        return losses

    def training_metrics(self) -> dict[str, torch.Tensor]:
        """The load of the last training forward: its entropy, max / mean and minimum
        (``load_metrics``), the share of routed pairs dropped for capacity, and each expert's
        share of the routed pairs (``load/expert_<e>``, 1 / E each when balanced)."""
        metrics = load_metrics(self.last_load_E)
        metrics["dropped_share"] = self.last_dropped
        for expert, share in enumerate(self.last_load_E):
            metrics[f"load/expert_{expert}"] = share
        return metrics

    def lookup_parameters(self) -> int:
        """The experts a token does not go through: (E - K) / E of the routed experts."""
        per_expert = sum(p[0].numel() for p in self.experts.parameters())
        return (self.router.num_experts - self.router.top_k) * per_expert

    def inference_flops_per_token(self) -> int:
        """2 per weight of the gate, the K chosen experts and the shared expert."""
        per_expert = sum(p[0].numel() for p in self.experts.parameters())
        shared = sum(p.numel() for p in self.shared.parameters()) if self.shared else 0
        gate = self.router.gate.weight.numel()
        return 2 * (gate + self.router.top_k * per_expert + shared)
