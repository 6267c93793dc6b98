"""Conformance of every registered ``FeedForward`` block: built from the width alone."""

from __future__ import annotations

import pytest
import torch

from embedkit import registry

FEED_FORWARDS = registry.specs("FeedForward")
DIM = 32


@pytest.fixture(params=FEED_FORWARDS, ids=[s.short_name for s in FEED_FORWARDS])
def block(request):
    torch.manual_seed(0)
    return request.param.load()(DIM)


def test_shape_and_gradients(block):
    hidden_BLD = torch.randn(2, 7, DIM, requires_grad=True)
    out_BLD = block(hidden_BLD)
    assert out_BLD.shape == hidden_BLD.shape
    out_BLD.square().sum().backward()
    assert hidden_BLD.grad is not None and hidden_BLD.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


def test_positions_are_independent(block):
    hidden_BLD = torch.randn(2, 7, DIM)
    whole = block(hidden_BLD)
    single = block(hidden_BLD[:, 3:4])
    torch.testing.assert_close(whole[:, 3:4], single, rtol=1e-5, atol=1e-6)
