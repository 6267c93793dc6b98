"""Conformance of every registered ``Router``.

A registered router must appear in ``EXAMPLES`` (how to build a small one addressing a
table of ``NUM_ROWS`` rows); the suite then checks the route invariants on it.
"""

from __future__ import annotations

import pytest
import torch

from embedkit import registry
from embedkit.interfaces import Routes

VOCAB, NUM_ROWS, DIM = 50, 50, 16

EXAMPLES = {
    "IdentityRouter": lambda cls: cls(num_rows=NUM_ROWS),
    "StaticTokenRouter": lambda cls: cls(allocation=_l3_allocation()),
    "TopKRouter": lambda cls: cls(dim=DIM, num_experts=8, top_k=2).eval(),
}

ROUTERS = registry.specs("Router")


def _l3_allocation():
    from embedkit_l3 import LZWAllocation

    allocation = LZWAllocation(num_rows=4 * NUM_ROWS, max_rows_per_token=12, vocab_size=VOCAB)
    allocation.fit([torch.randint(0, VOCAB, (2000,)).numpy()])
    return allocation


@pytest.fixture(params=ROUTERS, ids=[s.short_name for s in ROUTERS])
def router(request):
    spec = request.param
    assert spec.short_name in EXAMPLES, f"add an example of {spec.class_path} to EXAMPLES"
    return EXAMPLES[spec.short_name](spec.load())


def _ids_BL(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(seed))


def test_routes_are_well_formed(router):
    ids_BL = _ids_BL()
    hidden_BLD = torch.randn(3, 11, DIM)
    routes = router.route(ids_BL, None if router.static else hidden_BLD)
    assert isinstance(routes, Routes)
    assert routes.num_positions == ids_BL.numel()
    assert routes.offsets_P1[0] == 0 and routes.offsets_P1[-1] == routes.rows_N.numel()
    assert bool((routes.counts_P() >= 0).all())
    assert routes.rows_N.dtype == torch.int64
    if routes.rows_N.numel():
        assert int(routes.rows_N.min()) >= 0 and int(routes.rows_N.max()) < router.num_rows
    if routes.weights_N is not None:
        assert routes.weights_N.shape == routes.rows_N.shape


def test_static_routes_depend_on_token_ids_only(router):
    if not router.static:
        pytest.skip("dynamic router: routes depend on hidden states by design")
    ids_BL = _ids_BL()
    with_hidden = router.route(ids_BL, torch.randn(3, 11, DIM))
    without = router.route(ids_BL)
    assert torch.equal(with_hidden.rows_N, without.rows_N)
    assert torch.equal(with_hidden.offsets_P1, without.offsets_P1)


def test_positions_route_independently_of_batch_layout(router):
    ids_BL = _ids_BL(1)
    hidden_BLD = torch.randn(3, 11, DIM)
    whole = router.route(ids_BL, None if router.static else hidden_BLD)
    last = router.route(ids_BL[2:], None if router.static else hidden_BLD[2:])
    start = int(whole.offsets_P1[2 * 11])
    assert torch.equal(whole.rows_N[start:], last.rows_N)
