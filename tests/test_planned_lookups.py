"""Planned lookups: SCONE and L³ models whose tables sit on the pinned or Zarr tier decode the
same logits when their rows are fetched ahead (``plan_lookups``) as when each part reads them
itself, and the planned path reads its rows only through the prefetched handles.

Legend: B = batch rows, T = new positions, W = preceding ids.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
import torch

from embedkit.backends.gpu import GPUBackend
from embedkit.backends.pinned import PinnedCPUBackend
from embedkit.backends.zarr_store import ZarrBackend
from embedkit.data.datamodule import TextDataModule
from embedkit.data.tokenizers import ByteTokenizer
from embedkit.generation import Sampler, generate
from embedkit.generation.lookup_plan import (
    INPUT_EMBEDDING,
    LookupPlan,
    plan_lookups,
    preceding_ids,
)
from embedkit.interfaces import StreamRows
from embedkit.model.decoder import Decoder
from embedkit_dense.swiglu import SwiGLU
from embedkit_l3.allocation import LZWAllocation
from embedkit_l3.layer import L3Layer
from embedkit_scone.embedding import SconeEmbedding
from embedkit_scone.vocab import FGramVocab
from tests.support.interpreter import needs_triton
from tests.test_generate import (
    CLOSE,
    PROMPT_LENGTHS,
    STEPS,
    _randomized,
    _sequences,
    full_fp32_matmuls,
)

TIERS = {"gpu": GPUBackend, "pinned": PinnedCPUBackend, "zarr": ZarrBackend}


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> TextDataModule:
    text = TextDataModule(
        tokenizer=ByteTokenizer(), cache_dir=str(tmp_path_factory.mktemp("planned")), seq_len=32
    )
    text.prepare_data()
    text.setup("fit")
    return text


def _decoder(kind: str, workspace: Path, text: TextDataModule, **tables) -> Decoder:
    """A SCONE or L³ decoder (the same weights for the same arguments), connected."""
    torch.manual_seed(0)
    if kind == "scone":
        vocab = FGramVocab(max_n=4, min_count=3, num_entries=500)
        parts = {
            "input_embedding": partial(
                SconeEmbedding, vocab=vocab, vocab_path=str(workspace / "v.npz")
            )
        }
    else:
        allocation = LZWAllocation(num_rows=2048, max_rows_per_token=64)
        # d_emb=16: widths the fused kernels take (so CUDA runs them), and unlike dim=32.
        l3 = partial(
            L3Layer, allocation=allocation, allocation_path=str(workspace / "a.npz"), d_up=48,
            tie_kv=False, d_emb=16,
        )  # fmt: skip
        # Two layers of one allocation: a step's pool is planned once, each reads its tables.
        parts = {"sublayers": [partial(l3, before_layer=1), partial(l3, before_layer=2)]}
    decoder = Decoder(
        vocab_size=256, dim=32, num_layers=3, num_heads=4, max_seq_len=64,
        feed_forward=SwiGLU, **parts, **tables,
    )  # fmt: skip
    for part in (decoder.input_embedding, *decoder.sublayers.values()):
        if part is not None:
            part.connect(text)
    return decoder


def _reader(kind: str, tier: str, workspace: Path, text: TextDataModule) -> Decoder:
    """A model that reads its tables from an export on ``tier``, with trained weights."""
    trained = _randomized(_decoder(kind, workspace, text))
    out = workspace / f"{kind}-{tier}"
    for part in (trained.input_embedding, *trained.sublayers.values()):
        if part is not None:
            part.export_tables(
                str(out), to=tier, token_embedding=trained.token_embedding, producer={}
            )
    reader = _decoder(kind, workspace, text, table_backend=TIERS[tier], tables=str(out))
    reader.load_state_dict(trained.state_dict(), strict=False)
    return reader.eval()


def _logits(
    decoder: Decoder, rows: list[torch.Tensor], *, planned: bool, device: str = "cpu"
) -> list[torch.Tensor]:
    """Logits of every row: prompts prefilled in one batch, then ``STEPS`` tokens at a time,
    with or without planned lookups."""
    cache = decoder.new_cache(batch_size=len(rows), max_len=max(map(len, rows)) + 4)
    prompts_BT = torch.zeros(len(rows), max(PROMPT_LENGTHS), dtype=torch.long)
    for row, length in enumerate(PROMPT_LENGTHS):
        prompts_BT[row, :length] = rows[row][:length]
    history = [[] for _ in rows]
    plan = plan_lookups(decoder, prompts_BT, history) if planned else None
    prompts_BT = prompts_BT.to(device, non_blocking=True)
    hidden_BTD = decoder.decode(prompts_BT, cache, lengths=PROMPT_LENGTHS, plan=plan)
    logits = [[decoder.logits(hidden_BTD[r, :n])] for r, n in enumerate(PROMPT_LENGTHS)]
    history = [rows[r][:n].tolist() for r, n in enumerate(PROMPT_LENGTHS)]
    done = 0
    for step in STEPS:
        ids_BT = torch.stack(
            [rows[r][n + done : n + done + step] for r, n in enumerate(PROMPT_LENGTHS)]
        )
        plan = plan_lookups(decoder, ids_BT, history) if planned else None
        if planned:
            assert plan is not None
        hidden_BTD = decoder.decode(ids_BT.to(device, non_blocking=True), cache, plan=plan)
        logits_BTV = decoder.logits(hidden_BTD)
        for row in range(len(rows)):
            logits[row].append(logits_BTV[row])
            history[row] += ids_BT[row].tolist()
        done += step
    return [torch.cat(parts) for parts in logits]


def _planning_parts(decoder: Decoder) -> list:
    if decoder.input_embedding is not None:
        return [decoder.input_embedding]
    return list(decoder.sublayers.values())


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
@pytest.mark.parametrize("tier", ["gpu", "pinned", "zarr"])
@pytest.mark.parametrize("kind", ["scone", "l3"])
@torch.no_grad()
def test_planned_decoding_equals_unplanned_and_reads_only_prefetched_rows(
    kind, tier, device, text, tmp_path, monkeypatch
):
    """On CUDA, L³'s planned path runs the fused kernels over the prefetched rows (a pool of
    the step's tokens' rows, on every tier), the unplanned one gathers and runs the bucket
    path, or the kernels over whole GPU tables: they agree to fp32 rounding."""
    decoder = _reader(kind, tier, tmp_path, text).to(device)
    rows = _sequences(text, sum(STEPS))
    with full_fp32_matmuls():
        unplanned = _logits(decoder, rows, planned=False, device=device)  # checks the source
        for part in _planning_parts(decoder):  # the planned path never runs the plain one
            monkeypatch.setattr(part, "forward", lambda *a, **k: pytest.fail("ran unplanned"))
        planned = _logits(decoder, rows, planned=True, device=device)
    for fast, slow in zip(planned, unplanned, strict=True):
        torch.testing.assert_close(fast, slow, **CLOSE[device])


@needs_triton
@pytest.mark.parametrize("tier", ["gpu", "pinned"])
@torch.no_grad()
def test_l3_pool_plan_gives_every_position_its_tokens_rows(tier, text, tmp_path):
    """The kernels' plan over a step's pool (made on the host, as on CUDA; here on the CPU):
    the positions of each pooled token share its id, and its stretch of the fetched keys and
    values holds that token's rows of the tables."""
    decoder = _reader("l3", tier, tmp_path, text)
    layer = decoder.sublayers["1"]
    ids_P = torch.randint(0, 256, (70,), generator=torch.Generator().manual_seed(3))
    ids_P[:20] = ids_P[0]  # one token at many positions
    planned = layer._plan_pool(ids_P, torch.device("cpu"))
    plan, keys_MD, values_ME = planned.plan, planned.keys.wait(), planned.values.wait()
    offsets_V1 = layer._host_offsets()
    assert sorted(plan.order_P.tolist()) == list(range(len(ids_P)))
    for start, count, first, rows in zip(
        plan.q_start_V.tolist(), plan.q_count_V.tolist(), plan.row_start_V.tolist(),
        plan.row_count_V.tolist(), strict=True,
    ):  # fmt: skip
        token_ids = ids_P[plan.order_P[start : start + count]].unique()
        assert token_ids.numel() == 1
        token = int(token_ids)
        table_rows = torch.arange(int(offsets_V1[token]), int(offsets_V1[token + 1]))
        assert rows == table_rows.numel()
        torch.testing.assert_close(
            keys_MD[first : first + rows], layer.key_table.gather(table_rows)
        )
        torch.testing.assert_close(
            values_ME[first : first + rows], layer.value_table.gather(table_rows)
        )


def test_l3_tables_fetch_pools_from_device_ids_only_when_they_can_and_the_pool_is_large():
    from embedkit_l3.layer_planning import DEVICE_ROWS_FROM, _takes_device_rows

    cpu = torch.device("cpu")
    reads, host_only = (
        PinnedCPUBackend(num_rows=4, dim=2, device="cpu"),
        _HostIdsOnly(num_rows=4, dim=2),
    )
    assert reads.reads_device_rows and not host_only.reads_device_rows
    assert _takes_device_rows(reads, cpu, DEVICE_ROWS_FROM)
    assert not _takes_device_rows(reads, cpu, DEVICE_ROWS_FROM - 1)  # a few rows: host ids
    assert not _takes_device_rows(host_only, cpu, 10 * DEVICE_ROWS_FROM)
    if torch.cuda.is_available():  # ids on another device than the table's rows
        assert not _takes_device_rows(reads, torch.device("cuda"), DEVICE_ROWS_FROM)


class _HostIdsOnly(GPUBackend):
    """A table that takes host ids only (as a Zarr store does)."""

    @property
    def reads_device_rows(self) -> bool:
        return False


@cuda
@pytest.mark.parametrize("tier", ["gpu", "pinned"])
@torch.no_grad()
def test_l3_pool_fetch_does_not_wait_for_the_queued_layers(tier, text, tmp_path):
    """A pool's plan and rows go to the device, and its tables read them, on the planning
    stream: while the current stream is still busy (the layers before the L³ layer), the
    rows arrive; the layer's output still waits for them."""
    decoder = _reader("l3", tier, tmp_path, text).to("cuda")
    layer = decoder.sublayers["1"]
    ids_P = torch.arange(128).repeat(2)  # a pool of over DEVICE_ROWS_FROM rows
    device = layer.offsets_V1.device  # as plan_lookups passes it: "cuda:0"
    layer._tables_follow(device)  # as plan_lookups does: GPU tables move with the model
    layer._plan_pool(ids_P, device)  # compiles the gather kernel
    torch.cuda.synchronize()
    consumer = torch.cuda.current_stream()
    torch.cuda._sleep(4_000_000_000)  # a few seconds of queued work
    planned = layer._plan_pool(ids_P + 1, device)
    assert isinstance(planned.keys, StreamRows), (planned.keys, layer.key_table.device)
    fetched = planned.keys.ready  # recorded on the planning stream after the gather
    deadline = time.monotonic() + 60
    while not fetched.query() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert fetched.query() and not consumer.query()
    keys_MD = planned.keys.wait()
    torch.cuda.synchronize()
    offsets_V1 = layer._host_offsets()
    rows = torch.arange(int(offsets_V1[1]), int(offsets_V1[129]))  # tokens 1-128, in order
    assert torch.equal(keys_MD.cpu(), layer.key_table.gather(rows).cpu())


@cuda
@torch.no_grad()
def test_l3_tables_on_the_gpu_pool_a_few_positions_and_read_in_place_for_many(text, tmp_path):
    from embedkit_l3.layer_planning import POOLED_POSITIONS

    decoder = _reader("l3", "gpu", tmp_path, text).to("cuda")
    few_BT = torch.randint(0, 256, (4, POOLED_POSITIONS // 4))
    assert plan_lookups(decoder, few_BT, [[]] * 4) is not None
    many_BT = torch.randint(0, 256, (4, POOLED_POSITIONS // 4 + 1))
    assert plan_lookups(decoder, many_BT, [[]] * 4) is None


@pytest.mark.parametrize("kind", ["scone", "l3"])
def test_generation_with_and_without_prefetch_agree(kind, text, tmp_path):
    decoder = _reader(kind, "pinned", tmp_path, text)
    prompts = [row[:n].tolist() for row, n in zip(_sequences(text, 0), PROMPT_LENGTHS, strict=True)]
    runs = [
        generate(decoder, prompts, max_new_tokens=6, sampler=Sampler(temperature=0), prefetch=p)
        for p in (False, True, False)
    ]
    assert runs[0] == runs[1] == runs[2]


@torch.no_grad()
def test_parts_plan_only_rows_they_fetch(text, tmp_path):
    dense = Decoder(vocab_size=256, dim=32, num_layers=2, num_heads=4, feed_forward=SwiGLU)
    ids_BT = torch.tensor([[5, 6]])
    assert plan_lookups(dense, ids_BT, [[]]) is None
    training = _decoder("scone", tmp_path, text)  # the f-gram model computes: nothing to fetch
    assert plan_lookups(training, ids_BT, [[]]) is None
    reader = _reader("scone", "pinned", tmp_path, text)
    assert plan_lookups(reader, ids_BT, [[]]) is None  # until a forward checked the table
    reader(ids_BT)
    plan = plan_lookups(reader, ids_BT, [[1, 2, 3]])
    assert plan is not None and plan.of(INPUT_EMBEDDING) is not None


def test_deferred_parts_start_in_order_of_use():
    started = []

    def start(part, rows):
        return lambda: started.append(part) or rows

    plan = LookupPlan({INPUT_EMBEDDING: "f-gram rows"})
    plan.deferred = {"3": start("3", "rows of 3"), "5": start("5", None), "7": start("7", "r7")}
    assert plan.of(INPUT_EMBEDDING) == "f-gram rows" and started == []
    assert plan.of("5") is None  # a part with nothing to fetch runs its plain forward
    assert started == ["3", "5"] and plan.of("3") == "rows of 3"  # those before it start first
    plan.of("3")
    assert started == ["3", "5"]  # each starts once
    plan.start_deferred()  # e.g. once a sublayer has run: the rest
    assert started == ["3", "5", "7"] and plan.of("7") == "r7" and not plan.deferred


def test_a_sublayer_starts_the_later_deferred_fetches_once_it_has_run():
    started = []

    def start(part):
        return lambda: started.append(part) or None  # nothing to fetch: plain forwards

    decoder = Decoder(
        vocab_size=64, dim=16, num_layers=4, num_heads=2, max_seq_len=8, feed_forward=SwiGLU
    )
    decoder.sublayers["1"] = _Recorder(started, "ran 1")
    plan = LookupPlan({})
    plan.deferred = {"1": start("1"), "3": start("3")}
    hidden_BTD = torch.zeros(1, 1, 16)
    decoder.run_sublayer(0, hidden_BTD, torch.zeros(1, 1, dtype=torch.long), plan)
    assert started == []  # layer 0 has no sublayer
    decoder.run_sublayer(1, hidden_BTD, torch.zeros(1, 1, dtype=torch.long), plan)
    assert started == ["1", "ran 1", "3"]


class _Recorder(torch.nn.Module):
    def __init__(self, log: list, entry: str) -> None:
        super().__init__()
        self.log, self.entry = log, entry

    def forward(self, hidden_BTD: torch.Tensor, ids_BT: torch.Tensor) -> torch.Tensor:
        self.log.append(self.entry)
        return hidden_BTD


def test_preceding_ids_pad_on_the_left():
    assert preceding_ids([[], [7], [1, 2, 3, 4]], 3).tolist() == [
        [-1, -1, -1],
        [-1, -1, 7],
        [2, 3, 4],
    ]
    assert preceding_ids([[1, 2]], 0).shape == (1, 0)


@cuda
@pytest.mark.parametrize(
    ("kind", "tier"),
    [("scone", "gpu"), ("scone", "pinned"), ("scone", "zarr"), ("l3", "gpu"), ("l3", "pinned"),
     ("l3", "zarr")],
)  # fmt: skip
@torch.no_grad()
def test_planned_decoding_never_waits_for_the_device(kind, tier, text, tmp_path):
    """Planning and decoding steps run without a host synchronisation (sampling's ``tolist``
    is the decode loop's only one); Zarr reads wait for their reader thread, not the device."""
    decoder = _reader(kind, tier, tmp_path, text).to("cuda")
    rows = _sequences(text, sum(STEPS))
    _logits(decoder, rows, planned=False, device="cuda")  # checks the tables' source once
    _logits(decoder, rows, planned=True, device="cuda")  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _logits(decoder, rows, planned=True, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
