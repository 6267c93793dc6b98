"""Static-shape decoding steps (``DecodeSteps``): the stretches of layers between lookup parts,
run as plain calls on the CPU or replayed as CUDA graphs, give the logits of the eager
``Decoder.decode`` for every kind of model, with and without planned lookups; ``generate``
with CUDA graphs draws the tokens it draws without them, and reuses its capture.

Legend: B = batch rows, V = vocabulary size.
"""

from __future__ import annotations

import pytest
import torch

from embedkit.generation import DecodeSteps, Sampler, generate
from embedkit.generation.lookup_plan import plan_lookups
from embedkit.generation.step_graphs import MIN_GRAPH_LEN, graph_len, graphed_steps
from embedkit.model.decoder import Decoder
from tests.test_generate import (
    CLOSE,
    PROMPT_LENGTHS,
    _build,
    _sequences,
    data,  # noqa: F401 (fixture)
    full_fp32_matmuls,
)
from tests.test_planned_lookups import _reader, text  # noqa: F401 (fixture)

NEW = 6  # one-token steps after the prefill
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _prompts(rows: list[torch.Tensor]) -> torch.Tensor:
    prompts_BT = torch.zeros(len(rows), max(PROMPT_LENGTHS), dtype=torch.long)
    for row, length in enumerate(PROMPT_LENGTHS):
        prompts_BT[row, :length] = rows[row][:length]
    return prompts_BT


def _step_logits(
    decoder: Decoder,
    rows: list[torch.Tensor],
    *,
    steps: DecodeSteps | None,
    planned: bool,
    defer: bool = False,
) -> list[torch.Tensor]:
    """Logits [B, V] of every one-token step after the prompts' prefill: through ``steps``, or
    the eager ``decode`` when ``None``; ``defer``: the steps' sublayers plan when they run."""
    device = decoder.token_embedding.weight.device
    max_len = max(PROMPT_LENGTHS) + NEW
    cache = steps.cache if steps is not None else decoder.new_cache(batch_size=4, max_len=max_len)
    prompts_BT = _prompts(rows)
    history = [[] for _ in rows]
    plan = plan_lookups(decoder, prompts_BT, history) if planned else None
    decoder.decode(prompts_BT.to(device), cache, lengths=PROMPT_LENGTHS, plan=plan)
    history = [rows[r][:n].tolist() for r, n in enumerate(PROMPT_LENGTHS)]
    logits = []
    for step in range(NEW):
        ids_B1 = torch.stack([rows[r][n + step] for r, n in enumerate(PROMPT_LENGTHS)])[:, None]
        plan = plan_lookups(decoder, ids_B1, history, defer_sublayers=defer) if planned else None
        if steps is None:
            logits_BV = decoder.logits(decoder.decode(ids_B1.to(device), cache, plan=plan)[:, 0])
        else:
            logits_BV = steps.step(ids_B1.to(device), plan).clone()
        logits.append(logits_BV)
        for row in range(len(rows)):
            history[row].append(int(ids_B1[row, 0]))
    return logits


def _check_steps(decoder: Decoder, rows, *, device: str, planned: bool = False) -> None:
    steps = DecodeSteps(
        decoder, batch_size=len(rows), max_len=max(PROMPT_LENGTHS) + NEW, graphs=device == "cuda"
    )
    for defer in (False, True):  # the second decode reuses the steps (and graphs) after a reset
        steps.reset()
        with full_fp32_matmuls():
            fast = _step_logits(decoder, rows, steps=steps, planned=planned, defer=defer)
            slow = _step_logits(decoder, rows, steps=None, planned=planned)
        for got, want in zip(fast, slow, strict=True):
            torch.testing.assert_close(got, want, **CLOSE[device])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("kind", ["dense", "scone", "l3", "token-table", "moe"])
@torch.no_grad()
def test_static_steps_equal_eager_decoding(kind, device, data, tmp_path):  # noqa: F811
    if kind == "moe" and device == "cuda":
        pytest.skip("MoE in fp32 runs its experts in a loop sized on the host: not capturable")
    decoder = _build(kind, data, tmp_path).to(device)
    _check_steps(decoder, _sequences(data, NEW), device=device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("tier", ["gpu", "pinned", "zarr"])
@pytest.mark.parametrize("kind", ["scone", "l3"])
@torch.no_grad()
def test_static_steps_with_planned_lookups_equal_eager(kind, tier, device, text, tmp_path):  # noqa: F811
    decoder = _reader(kind, tier, tmp_path, text).to(device)
    rows = _sequences(text, NEW)
    decoder(_prompts(rows).to(device))  # checks the tables' source once (SCONE plans after it)
    _check_steps(decoder, rows, device=device, planned=True)


@pytest.mark.parametrize("kind", ["scone", "l3"])
def test_static_steps_refuse_an_empty_or_full_cache(kind, text, tmp_path):  # noqa: F811
    decoder = _reader(kind, "pinned", tmp_path, text)
    steps = DecodeSteps(decoder, batch_size=1, max_len=3, graphs=False)
    with pytest.raises(ValueError, match="needs a prefilled cache"):
        steps.step(torch.tensor([[5]]))
    with torch.no_grad():
        decoder.decode(torch.tensor([[5, 6]]), steps.cache)
        steps.step(torch.tensor([[7]]))
        with pytest.raises(ValueError, match="exceeds the cache's max_len=3"):
            steps.step(torch.tensor([[8]]))


def test_cuda_graphs_refuse_a_model_off_cuda(data, tmp_path):  # noqa: F811
    decoder = _build("dense", data, tmp_path)
    with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device"):
        generate(decoder, [[1, 2]], max_new_tokens=2, sampler=Sampler(temperature=0),
                 cuda_graphs=True)  # fmt: skip


def test_graph_lengths_round_up_to_powers_of_two_within_the_model():
    assert graph_len(10, 512) == MIN_GRAPH_LEN
    assert graph_len(65, 512) == 128
    assert graph_len(300, 512) == 512
    assert graph_len(300, 400) == 400
    assert graph_len(600, 512) == 600  # never shorter than needed


@cuda
@pytest.mark.parametrize(("kind", "tier"), [("dense", None), ("scone", "pinned"), ("l3", "pinned"),
                                            ("l3", "gpu")])  # fmt: skip
def test_generation_with_cuda_graphs_draws_the_same_tokens(kind, tier, data, text, tmp_path):  # noqa: F811
    if tier is None:
        decoder = _build(kind, data, tmp_path).to("cuda")
    else:
        decoder = _reader(kind, tier, tmp_path, text).to("cuda")
    prompts = [row[:n].tolist() for row, n in zip(_sequences(data, 0), PROMPT_LENGTHS, strict=True)]
    greedy = Sampler(temperature=0)
    with full_fp32_matmuls():
        want = generate(decoder, prompts, max_new_tokens=8, sampler=greedy)
        got = generate(decoder, prompts, max_new_tokens=8, sampler=greedy, cuda_graphs=True)
        steps = graphed_steps(decoder, batch_size=len(prompts), needed=max(PROMPT_LENGTHS) + 8)
        again = generate(decoder, prompts, max_new_tokens=8, sampler=greedy, cuda_graphs=True)
    assert got == want == again
    assert steps.graphed
    assert graphed_steps(decoder, batch_size=len(prompts), needed=20) is steps  # kept


@cuda
@pytest.mark.parametrize(("kind", "tier"), [("scone", "pinned"), ("scone", "zarr"), ("l3", "gpu"),
                                            ("l3", "pinned"), ("l3", "zarr")])  # fmt: skip
@torch.no_grad()
def test_graphed_steps_never_wait_for_the_device(kind, tier, text, tmp_path):  # noqa: F811
    """A graphed step with planned lookups (planning, the table parts, the replays) runs without
    a host synchronisation: sampling's ``tolist`` stays the decode loop's only one."""
    decoder = _reader(kind, tier, tmp_path, text).to("cuda")
    rows = _sequences(text, NEW)
    decoder(_prompts(rows).to("cuda"))  # checks the tables' source once
    steps = DecodeSteps(decoder, batch_size=len(rows), max_len=max(PROMPT_LENGTHS) + NEW,
                        graphs=True)  # fmt: skip
    _step_logits(decoder, rows, steps=steps, planned=True)  # compiles the kernels
    steps.reset()
    prompts_BT = _prompts(rows)
    decoder.decode(prompts_BT.cuda(), steps.cache, lengths=PROMPT_LENGTHS,
                   plan=plan_lookups(decoder, prompts_BT, [[] for _ in rows]))  # fmt: skip
    history = [rows[r][:n].tolist() for r, n in enumerate(PROMPT_LENGTHS)]
    ids_BN = torch.stack([rows[r][n : n + NEW] for r, n in enumerate(PROMPT_LENGTHS)])
    ids_on_device_BN = ids_BN.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(NEW):
            plan = plan_lookups(decoder, ids_BN[:, step : step + 1], history,
                                defer_sublayers=step % 2 == 1)  # fmt: skip
            steps.step(ids_on_device_BN[:, step : step + 1], plan)
            for row in range(len(rows)):
                history[row].append(int(ids_BN[row, step]))
    finally:
        torch.cuda.set_sync_debug_mode(0)


@torch.no_grad()
def test_deferred_sublayers_plan_once_the_layers_and_lookups_before_them_are_queued(text, tmp_path):  # noqa: F811
    """With ``defer_sublayers`` a step queues the embedding and the layers before the first
    sublayer, then plans that sublayer and runs it, then plans the later ones: the host's
    planning overlaps the layers and the lookup before it on a device. Without it,
    everything is planned first."""
    decoder = _reader("l3", "pinned", tmp_path, text)  # sublayers before layers 1 and 2
    rows = _sequences(text, NEW)
    events = []
    for index, sublayer in decoder.sublayers.items():
        plan_rows, run = sublayer.plan_lookups, sublayer.forward_planned
        sublayer.plan_lookups = _logged(events, f"plan {index}", plan_rows)
        sublayer.forward_planned = _logged(events, f"run {index}", run)
    for index, layer in enumerate(decoder.layers):
        layer.decode = _logged(events, f"layer {index}", layer.decode)
    steps = DecodeSteps(decoder, batch_size=len(rows), max_len=max(PROMPT_LENGTHS) + NEW,
                        graphs=False)  # fmt: skip
    history = [rows[r][:n].tolist() for r, n in enumerate(PROMPT_LENGTHS)]
    ids_B1 = torch.stack([rows[r][n] for r, n in enumerate(PROMPT_LENGTHS)])[:, None]
    for defer, want in (
        (False, ["plan 1", "plan 2", "layer 0", "run 1", "layer 1", "run 2", "layer 2"]),
        (True, ["layer 0", "plan 1", "run 1", "plan 2", "layer 1", "run 2", "layer 2"]),
    ):
        steps.reset()
        decoder.decode(_prompts(rows), steps.cache, lengths=PROMPT_LENGTHS)
        events.clear()
        steps.step(ids_B1, plan_lookups(decoder, ids_B1, history, defer_sublayers=defer))
        assert events == want, f"defer_sublayers={defer}"


def _logged(events: list[str], name: str, function):
    def logged(*args, **kwargs):
        events.append(name)
        return function(*args, **kwargs)

    return logged
