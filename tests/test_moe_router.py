"""``TopKRouter`` and the balancing functions of ``embedkit_moe`` against plain references:
fp32 gate under autocast, top-k with renormalisation, a bias that only changes the choice,
jitter only while training; the Switch loss, the z-loss, bias updates and load metrics.

Legend: P = positions, D = width, E = experts, K = experts per position.
"""

from __future__ import annotations

import math

import pytest
import torch

from embedkit_moe import (
    TopKRouter,
    expert_load,
    load_balancing_loss,
    load_metrics,
    router_z_loss,
    update_expert_bias,
)

DIM, EXPERTS = 16, 6


def _router(**kwargs) -> TopKRouter:
    torch.manual_seed(0)
    return TopKRouter(dim=DIM, num_experts=EXPERTS, **kwargs).eval()


def _hidden(seed: int = 0, num_p: int = 40) -> torch.Tensor:
    return torch.randn(num_p, DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_routes_match_a_plain_reference(score, renormalize):
    router = _router(top_k=2, score=score, renormalize=renormalize)
    hidden_PD = _hidden()
    routes, stats = router.route_with_stats(hidden_PD)
    logits_PE = hidden_PD @ router.gate.weight.T
    scores_PE = logits_PE.softmax(-1) if score == "softmax" else logits_PE.sigmoid()
    for p in range(hidden_PD.shape[0]):
        order = sorted(range(EXPERTS), key=lambda e: -float(scores_PE[p, e]))[:2]
        weights = scores_PE[p, order]
        if renormalize:
            weights = weights / weights.sum()
        assert routes.rows_N[2 * p : 2 * p + 2].tolist() == order
        torch.testing.assert_close(routes.weights_N[2 * p : 2 * p + 2], weights)
    assert routes.offsets_P1.tolist() == list(range(0, 2 * hidden_PD.shape[0] + 1, 2))
    torch.testing.assert_close(stats.logits_PE, logits_PE)


def test_gate_runs_in_fp32_under_autocast():
    router = _router()
    hidden_PD = _hidden().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, stats = router.route_with_stats(hidden_PD)
    assert stats.logits_PE.dtype == torch.float32
    torch.testing.assert_close(stats.logits_PE, hidden_PD.float() @ router.gate.weight.T)


def test_bias_changes_the_choice_not_the_weights():
    router = _router(top_k=2, renormalize=False)
    hidden_PD = _hidden()
    router.expert_bias_E[3] = 10.0  # expert 3 always chosen
    _, stats = router.route_with_stats(hidden_PD)
    assert bool((stats.experts_PK == 3).any(-1).all())
    torch.testing.assert_close(stats.weights_PK, stats.scores_PE.gather(-1, stats.experts_PK))


def test_jitter_only_while_training():
    router = _router(jitter=0.5)
    hidden_PD = _hidden()
    assert torch.equal(router.route_with_stats(hidden_PD)[1].logits_PE,
                       router.route_with_stats(hidden_PD)[1].logits_PE)  # fmt: skip
    router.train()
    torch.manual_seed(1)
    first = router.route_with_stats(hidden_PD)[1].logits_PE
    second = router.route_with_stats(hidden_PD)[1].logits_PE
    assert not torch.equal(first, second)


def test_route_needs_hidden_states_and_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"needs the hidden states"):
        _router().route(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"top_k=7 is invalid; valid: 1 .. num_experts=6"):
        _router(top_k=7)
    with pytest.raises(ValueError, match=r"score='relu' is invalid"):
        _router(score="relu")


def test_switch_loss_matches_its_formula_and_excludes_masked_positions():
    router = _router(top_k=2)
    hidden_PD = _hidden(num_p=50)
    _, stats = router.route_with_stats(hidden_PD)
    mask_P = torch.arange(50) < 35
    loss = load_balancing_loss(stats.scores_PE, stats.experts_PK, mask_P)
    kept = stats.experts_PK[:35].reshape(-1).tolist()
    share = [kept.count(e) / len(kept) for e in range(EXPERTS)]
    probability = stats.scores_PE[:35].mean(0)
    expected = EXPERTS * sum(share[e] * float(probability[e]) for e in range(EXPERTS))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # Balanced routing with uniform probabilities gives exactly 1.
    uniform_PE = torch.full((EXPERTS, EXPERTS), 1 / EXPERTS)
    experts_PK = torch.arange(EXPERTS)[:, None]
    assert float(load_balancing_loss(uniform_PE, experts_PK)) == pytest.approx(1.0)
    # The loss trains the gate: its gradient reaches the router's weight.
    load_balancing_loss(stats.scores_PE, stats.experts_PK).backward()
    assert router.gate.weight.grad is not None


def test_z_loss_is_the_mean_squared_logsumexp():
    logits_PE = torch.randn(30, EXPERTS, generator=torch.Generator().manual_seed(3))
    mask_P = torch.arange(30) % 3 != 0
    expected = torch.stack([torch.logsumexp(row, 0) ** 2 for row in logits_PE[mask_P]]).mean()
    torch.testing.assert_close(router_z_loss(logits_PE, mask_P), expected)


def test_bias_update_raises_underloaded_experts_and_stays_centred():
    bias_E = torch.zeros(4)
    update_expert_bias(bias_E, torch.tensor([0.1, 0.4, 0.3, 0.2]), speed=0.01)
    assert bias_E[0] > 0 and bias_E[1] < 0 and bias_E[3] > 0
    assert float(bias_E.sum()) == pytest.approx(0.0, abs=1e-7)


def test_load_and_its_metrics():
    experts_PK = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])
    load_E = expert_load(experts_PK, 4)
    assert load_E.tolist() == [0.5, 0.25, 0.125, 0.125]
    metrics = load_metrics(torch.full((8,), 0.125))
    assert float(metrics["load_entropy"]) == pytest.approx(math.log(8))
    assert float(metrics["load_max_over_mean"]) == pytest.approx(1.0)
    assert float(load_metrics(load_E)["load_max_over_mean"]) == pytest.approx(2.0)
    assert float(load_metrics(load_E)["load_min"]) == pytest.approx(0.125)
