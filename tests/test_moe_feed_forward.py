"""``MoEFeedForward``: iso-active width, balancing losses handed to the training loss once,
the auxiliary-loss-free bias, and what ``embedkit info`` counts as active.

Legend: B = batch rows, L = positions, D = width.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedkit.commands.info import describe
from embedkit.interfaces import AuxiliaryLosses
from embedkit.lm import LanguageModel
from embedkit.model.decoder import Decoder
from embedkit_moe import balancing
from embedkit_moe.feed_forward import MoEFeedForward, iso_active_width

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def test_iso_active_width_matches_the_dense_mlp():
    assert iso_active_width(128, top_k=2, shared_expert=False) == 192  # dense 384 / 2
    assert iso_active_width(128, top_k=1, shared_expert=True) == 192
    block = MoEFeedForward(128, num_experts=8, top_k=2)
    active = 2 * sum(p[0].numel() for p in block.experts.parameters())
    assert active == 3 * 128 * 384  # the dense SwiGLU's parameters


def test_training_forward_hands_its_losses_over_once():
    torch.manual_seed(0)
    block = MoEFeedForward(32, num_experts=4, top_k=2, load_balancing_weight=0.5)
    hidden_BLD = torch.randn(2, 9, 32)
    block(hidden_BLD)
    assert isinstance(block, AuxiliaryLosses)
    losses = block.auxiliary_losses()
    assert set(losses) == {"load_balancing_loss", "router_z_loss"}
    _, stats = block.router.route_with_stats(hidden_BLD.reshape(-1, 32))
    expected = 0.5 * balancing.load_balancing_loss(stats.scores_PE, stats.experts_PK)
    torch.testing.assert_close(losses["load_balancing_loss"], expected)
    assert block.auxiliary_losses() == {}  # cleared
    block.eval()
    block(hidden_BLD)
    assert block.auxiliary_losses() == {}  # none at evaluation


def test_language_model_adds_the_losses_to_the_training_loss():
    torch.manual_seed(0)
    decoder = Decoder(
        vocab_size=64, dim=32, num_layers=2, num_heads=4,
        feed_forward=lambda dim: MoEFeedForward(dim, num_experts=4, top_k=2),
    )  # fmt: skip
    model = LanguageModel(decoder=decoder)
    logged = {}
    model.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    ids_BL = torch.randint(0, 64, (2, 12))
    batch = {"input_ids": ids_BL, "targets": torch.roll(ids_BL, -1, 1)}
    loss = model.training_step(batch, 0)
    auxiliary = sum(v for k, v in logged.items() if k.endswith(("_loss",)) and "layers" in k)
    assert "train/layers.0.ffn/load_balancing_loss" in logged
    torch.testing.assert_close(loss, logged["train/loss"] + auxiliary)
    loss.backward()
    assert decoder.layers[0].ffn.router.gate.weight.grad is not None


def test_bias_update_follows_the_load():
    torch.manual_seed(0)
    block = MoEFeedForward(32, num_experts=4, top_k=1, bias_update_speed=0.01)
    block.router.gate.weight.data[0] += 5.0  # expert 0 takes (almost) everything
    block(torch.randn(4, 16, 32).abs())
    bias = block.router.expert_bias_E
    assert bias[0] < 0 and bool((bias[1:] > 0).all())
    with pytest.raises(ValueError, match=r"bias_update_speed=-1 is invalid"):
        MoEFeedForward(32, bias_update_speed=-1)


def test_info_counts_two_of_eight_experts_as_active():
    dense = describe([str(RECIPES / "dense.yaml")])
    moe = describe([str(RECIPES / "moe.yaml")])
    gates = 4 * 8 * 128  # one router per layer
    assert moe["parameters_active"] == dense["parameters_total"] + gates
    assert moe["parameters_total"] == dense["parameters_total"] + gates + 4 * 6 * 3 * 128 * 192
    flops = 2 * gates // 4 * 4  # the gates, once per layer
    assert moe["inference_flops_per_token"] == dense["inference_flops_per_token"] + flops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the block compiles on CUDA")
def test_compiled_training_forward_matches_eager_values_losses_gradients_and_bias():
    import copy

    torch.manual_seed(0)
    eager = MoEFeedForward(64, num_experts=4, top_k=2, bias_update_speed=0.01, compile_mode=None)
    compiled = copy.deepcopy(eager)
    compiled._block.mode = "reduce-overhead"
    hidden_BLD = torch.randn(2, 32, 64)
    results = []
    for block in (eager.cuda(), compiled.cuda()):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_BLD = block(hidden_BLD.cuda())
        losses = block.auxiliary_losses()
        (out_BLD.float().square().mean() + sum(losses.values())).backward()
        grads = {name: p.grad for name, p in block.named_parameters()}
        results.append((out_BLD.float(), losses, grads, block.router.expert_bias_E.clone()))
    (out, losses, grads, bias), (out_c, losses_c, grads_c, bias_c) = results
    assert compiled._block._compiled is not None
    close = {"rtol": 2e-2, "atol": 2e-3}
    torch.testing.assert_close(out_c, out, **close)
    assert set(losses_c) == set(losses) == {"load_balancing_loss", "router_z_loss"}
    for name in losses:
        torch.testing.assert_close(losses_c[name], losses[name], **close)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_c[name], grad, **close)
    torch.testing.assert_close(bias_c, bias)
    torch.testing.assert_close(compiled.last_load_E, eager.last_load_E)
