"""The per-position reference of L³'s lookup and the checks against it, shared by the tests of
the bucket path (``tests/test_l3_layer.py``), the Triton kernels (``tests/test_l3_kernels.py``)
and their interpreter run (``tests/support/interpreted_lookup.py``).

Legend: P = positions, D = key width, E = value width, R = table rows, V = token ids.
"""

from __future__ import annotations

import torch


def offsets(rows_V: torch.Tensor) -> torch.Tensor:
    """CSR offsets [V + 1] of tokens with ``rows_V`` rows each."""
    offsets_V1 = torch.zeros(len(rows_V) + 1, dtype=torch.long)
    offsets_V1[1:] = rows_V.cumsum(0)
    return offsets_V1


def reference(query_PD, ids_P, offsets_V1, keys_RD, values_RE, scale):
    """One position at a time: softmax over its token's rows, weighted sum of their values."""
    outputs = []
    for p, t in enumerate(ids_P.tolist()):
        start, stop = int(offsets_V1[t]), int(offsets_V1[t + 1])
        weights = torch.softmax(keys_RD[start:stop] @ query_PD[p] * scale, dim=0)
        outputs.append(weights @ values_RE[start:stop])
    return torch.stack(outputs)


def fused_lookup(query_PD, plan, keys_RD, values_RE, *, tied: bool, scale: float):
    """``triton_token_attention`` in fp32 through its custom operator (gradients kept), checked
    equal, bit for bit, to the path decoding takes without gradients (the kernel launched
    directly)."""
    from embedkit_l3.lookup_ops import triton_token_attention  # imports Triton

    values = None if tied else values_RE
    fast_PE = triton_token_attention(
        query_PD, plan, keys_RD, values, scale=scale, dtype=torch.float32
    )
    with torch.no_grad():
        direct_PE = triton_token_attention(
            query_PD, plan, keys_RD, values, scale=scale, dtype=torch.float32
        )
    assert torch.equal(direct_PE, fast_PE)
    return fast_PE


def assert_matches(fast_PE, slow_PE, inputs, generator, **close) -> None:
    """``fast_PE`` equals the reference ``slow_PE``, and so do their gradients to ``inputs``
    under one random output gradient."""
    torch.testing.assert_close(fast_PE, slow_PE, **close)
    grad_PE = torch.randn(fast_PE.shape, generator=generator).to(fast_PE.device)
    fast = torch.autograd.grad(fast_PE, inputs, grad_PE)
    slow = torch.autograd.grad(slow_PE, inputs, grad_PE)
    for fast_grad, slow_grad in zip(fast, slow, strict=True):
        torch.testing.assert_close(fast_grad, slow_grad, **close)
