"""Planned lookups of ``L3Layer`` (decoding): the rows of the next tokens start moving to the
compute device as soon as the tokens are known, and the layer waits for them only when it
runs, so their transfer from pinned CPU memory or a Zarr store hides behind the decoder layers
before it (``before_layer`` >= 1 is what makes room for it). On CUDA a step's pool (the plan
and its row ids) goes to the device once, on a planning stream, where the tables that read
device ids fetch from it without waiting for the layers queued on the current stream.

Legend: B = batch rows, T = new positions, D = model width, E = value width, P = B * T
positions, U = distinct tokens (the pool's), M = pooled rows.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from embedkit.dtypes import compute_dtype
from embedkit.interfaces import EmbeddingBackend, RowsHandle, StreamRows
from embedkit_l3.token_attention import LookupPlan, plan_lookup

if TYPE_CHECKING:
    from embedkit_l3.triton_lookup import TritonPlan


# The last pools planned, by (allocation, device, width, ids): L³ layers that share an
# allocation plan a decoding step's pool once and each fetch their own table's rows of it.
_RECENT_POOLS: collections.deque = collections.deque(maxlen=4)
# Tables whole on the GPU: calls of at most this many positions read a pool of their tokens'
# rows (gathered in GPU memory) rather than the whole table, whose plan and grids span every
# token of the vocabulary (8,192 programs for one position).
POOLED_POSITIONS = 256
# Pools of fewer rows are fetched from host ids even by tables that read device rows: a few
# rows cost the host less that way (a pinned table gathers them on the CPU for one copy) than
# a launch ordered on the planning stream. Measured on the H100 (L³ recipe, pinned tables):
# from device ids, batch 1 decoded at 0.86-0.89x the gpu tier; batch 64 pools ~1,000 rows.
DEVICE_ROWS_FROM = 128
_PLANNING_STREAMS: dict[int, torch.cuda.Stream] = {}  # by CUDA device index


@dataclasses.dataclass(frozen=True)
class PlannedRows:
    """The plan of some new positions over their tokens' rows in flight (``values`` None when
    the tables are tied): a bucket plan (CPU), or a Triton plan over the pooled rows (CUDA).
    ``ready``: recorded once the plan is on the device, if it was sent on the planning stream
    (the consumer waits for it before the kernels read the plan)."""

    plan: LookupPlan | TritonPlan
    keys: RowsHandle
    values: RowsHandle | None
    ready: torch.cuda.Event | None = None


@dataclasses.dataclass(frozen=True)
class _Pool:
    """A step's pool: its plan and rows on the device (sent together on the planning stream,
    ``sent`` recorded after the copy; ``None`` on the CPU) and its rows on the host."""

    plan: TritonPlan
    rows_M: torch.Tensor
    rows_on_device_M: torch.Tensor
    sent: torch.cuda.Event | None


class PlannedTables:
    """``PlannedLookups`` for ``L3Layer``: the rows of the batch's distinct tokens (the pool)
    are fetched with the tables' ``prefetch``; the plan is made from host ids, with no device
    synchronisation. On CUDA the fused kernels then read the pool as their table."""

    def plan_lookups(self, ids_BT: torch.Tensor, preceding_BW: torch.Tensor) -> PlannedRows | None:
        """Start fetching the rows of tokens ``ids_BT`` (host); ``None`` when the tables are
        whole on the compute device and more than ``POOLED_POSITIONS`` positions come (a
        long prefill: the fused kernels read the tables in place, planned on the device over
        every token of the vocabulary). Fewer positions, e.g. a decoding step, pool their rows
        on every tier: that plan covers only their own tokens."""
        if not self._connected:
            raise RuntimeError("L3Layer is used before connect(datamodule) loaded its allocation")
        device = self.offsets_V1.device
        self._tables_follow(device)
        ids_P = ids_BT.reshape(-1).cpu()
        if self._use_kernels(device):  # whole tables on the GPU
            return None if ids_P.numel() > POOLED_POSITIONS else self._plan_pool(ids_P, device)
        if device.type == "cuda" and self.lookup != "buckets" and self._kernel_widths():
            return self._plan_pool(ids_P, device)
        plan = plan_lookup(ids_P, self._host_offsets(), max_rows=self._max_rows)
        handles = {name: table.prefetch(plan.pool_rows_M) for name, table in self._tables().items()}
        return PlannedRows(_plan_on(plan, device), handles["keys"], handles.get("values"))

    def forward_planned(self, hidden_BTD: torch.Tensor, planned: PlannedRows) -> torch.Tensor:
        """The layer over the positions ``planned`` was made for, from its rows."""
        if not self._tables_checked:
            self._check_table_source()
        dtype = compute_dtype(hidden_BTD)
        device = hidden_BTD.device  # the rows of some tiers (Zarr on the CPU) land on the host
        # Without blocking only towards CUDA: a copy to the host must be complete when read.
        onto_cuda = device.type == "cuda"
        if planned.ready is not None:  # the plan (and pool rows) came on the planning stream
            torch.cuda.current_stream(device).wait_event(planned.ready)
        keys_MD = planned.keys.wait().to(device, non_blocking=onto_cuda)
        values_ME = None if planned.values is None else planned.values.wait()
        if values_ME is not None:
            values_ME = values_ME.to(device, non_blocking=onto_cuda)
        if not isinstance(planned.plan, LookupPlan):  # a TritonPlan over the pool (CUDA)
            from embedkit_l3.lookup_ops import triton_token_attention

            hidden_PD = hidden_BTD.reshape(-1, self.dim)
            looked_PE = triton_token_attention(
                self.query_norm(hidden_PD), planned.plan, keys_MD, values_ME,
                scale=1 / math.sqrt(self.dim), dtype=dtype,
            )  # fmt: skip
            return self._mix(looked_PE, hidden_PD).view_as(hidden_BTD) + hidden_BTD
        keys_MD = keys_MD.to(dtype)
        values_ME = keys_MD if values_ME is None else values_ME.to(dtype)
        return self._attend(hidden_BTD, planned.plan, keys_MD, values_ME)

    def _plan_pool(self, ids_P: torch.Tensor, device: torch.device) -> PlannedRows:
        """Fetch the rows of the distinct tokens of ``ids_P``, token by token (the pool), with
        the kernels' plan over the pool. Tables that take host rows start fetching first;
        the plan and the pool's rows then go to the device in one copy, shared by the other
        layers of the allocation, whose tables that read device rows fetch them from there."""
        width = max(self.dim, self.d_emb)
        key = (self.allocation.content_hash, device, width, ids_P.numpy().tobytes())
        # Another layer of the same allocation may have planned these ids (pools are immutable).
        pool = next((pool for recent, pool in _RECENT_POOLS if recent == key), None)
        if pool is not None:
            return PlannedRows(pool.plan, *self._prefetch(pool), ready=pool.sent)
        from embedkit_l3.triton_lookup import TritonPlan, plan_lists_host, tile_rows

        local_P, pool_offsets_U1, pool_rows_M = self._host_pool(ids_P)
        from_host = {  # started before the plan is made: e.g. a Zarr store's reads
            name: table.prefetch(pool_rows_M)
            for name, table in self._tables().items()
            if not _takes_device_rows(table, device, len(pool_rows_M))
        }
        lists = plan_lists_host(local_P, pool_offsets_U1, num_rows=len(pool_rows_M), width=width)
        (*plan_lists, rows_M), sent = _send([*lists, pool_rows_M.numpy()], device)
        plan = TritonPlan.from_tensors(plan_lists, rows_per_block=tile_rows(width))
        pool = _Pool(plan, pool_rows_M, rows_M, sent)
        _RECENT_POOLS.append((key, pool))
        return PlannedRows(plan, *self._prefetch(pool, from_host), ready=sent)

    def _prefetch(
        self, pool: _Pool, started: dict[str, RowsHandle] | None = None
    ) -> tuple[RowsHandle, RowsHandle | None]:
        """Each table's handle on the pool's rows (``started``: those already fetching). A
        table that reads device rows fetches the pool's rows sent to the device, ordered
        after their copy on the planning stream (its gather may overlap the layers queued
        before it), and its handle orders the consumer after that fetch."""
        handles = dict(started or {})
        on_device_M = pool.rows_on_device_M
        for name, table in self._tables().items():
            if name in handles:
                continue
            if not _takes_device_rows(table, on_device_M.device, len(on_device_M)):
                handles[name] = table.prefetch(pool.rows_M)
            elif pool.sent is None:  # the CPU: no streams
                handles[name] = table.prefetch(on_device_M)
            else:
                handles[name] = _planning_fetch(table, on_device_M)
        return handles["keys"], handles.get("values")

    def _tables(self) -> dict[str, EmbeddingBackend]:
        if self.tie_kv:
            return {"keys": self.key_table}
        return {"keys": self.key_table, "values": self.value_table}

    def _host_pool(self, ids_P: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """The pool of ``ids_P``, on the host: each position's token renumbered to its place
        among the distinct ones, the pool's CSR offsets, and its rows in the tables. Numpy:
        small arrays, which torch's CPU ops cost more to call than to run."""
        offsets_V1 = self._host_offsets().numpy()
        tokens_U, local_P = np.unique(ids_P.numpy(), return_inverse=True)
        first_row_U = offsets_V1[tokens_U]
        rows_U = offsets_V1[tokens_U + 1] - first_row_U
        pool_offsets_U1 = np.concatenate(([0], np.cumsum(rows_U)))
        num_m = int(pool_offsets_U1[-1])
        # Row j of the pool: its token's first row + its rank among that token's rows.
        token_M = np.repeat(np.arange(len(tokens_U)), rows_U)
        pool_rows_M = first_row_U[token_M] + np.arange(num_m) - pool_offsets_U1[token_M]
        return local_P.reshape(-1), pool_offsets_U1, torch.from_numpy(pool_rows_M)

    def _kernel_widths(self) -> bool:
        from embedkit_l3.triton_lookup import supported  # imports Triton: CUDA builds only

        return supported(self.dim, self.d_emb)

    def _host_offsets(self) -> torch.Tensor:
        """The CSR offsets on the host, copied again whenever the buffer changes (connect,
        a loaded checkpoint, a move to another device)."""
        key = (self.offsets_V1.device, self.offsets_V1._version)
        cached = getattr(self, "_offsets_host", None)
        if cached is None or cached[0] != key:
            cached = (key, self.offsets_V1.cpu())
            self._offsets_host = cached
        return cached[1]


def _planning_stream(device: torch.device) -> torch.cuda.Stream:
    """The device's planning stream: pools' copies and the fetches that read them run there,
    beside the layers already queued on the current stream (a fetch issued on it would wait
    for them)."""
    index = torch.cuda.current_device() if device.index is None else device.index
    stream = _PLANNING_STREAMS.get(index)
    if stream is None:
        # High priority: its copies and gathers wait on PCIe, not on the SMs, and should not
        # queue behind the layers they overlap.
        stream = _PLANNING_STREAMS[index] = torch.cuda.Stream(index, priority=-1)
    return stream


def _send(
    arrays: list[np.ndarray], device: torch.device
) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """``arrays`` (int64) on ``device`` in one copy, and the event recorded after it on the
    planning stream (``None`` off CUDA). The tensors are marked as used on the current stream."""
    packed = torch.from_numpy(np.concatenate(arrays))
    sizes = [a.size for a in arrays]
    if device.type != "cuda":
        return list(packed.to(device).split(sizes)), None
    consumer = torch.cuda.current_stream(device)
    planning = _planning_stream(device)
    with torch.cuda.stream(planning):
        sent = packed.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(planning)
    sent.record_stream(consumer)
    return list(sent.split(sizes)), event


def _planning_fetch(table: EmbeddingBackend, rows_M: torch.Tensor) -> RowsHandle:
    """``table``'s rows ``rows_M`` (on the device, sent on the planning stream) gathered on the
    planning stream, so that the gather waits for their copy only. ``gather`` rather than
    ``prefetch``: the planning stream already runs beside the current one, and a prefetch's own
    side stream and events would cost the host more than the gather's launch."""
    planning = _planning_stream(rows_M.device)
    with torch.cuda.stream(planning):
        rows_MD = table.gather(rows_M)
        done = torch.cuda.Event()
        done.record(planning)
    return StreamRows(rows_MD, done)


def _takes_device_rows(table: EmbeddingBackend, device: torch.device, num_rows: int) -> bool:
    """Whether ``table`` fetches a pool of ``num_rows`` rows from its ids on ``device``."""
    if num_rows < DEVICE_ROWS_FROM:
        return False
    if device.type == "cuda" and device.index is None:  # "cuda": the current CUDA device
        device = torch.device("cuda", torch.cuda.current_device())
    return table.reads_device_rows and table.device == device


def _plan_on(plan: LookupPlan, device: torch.device) -> LookupPlan:
    """``plan`` with its tensors on ``device`` (copies that do not wait for the device)."""

    def moved(value):
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
            return tuple(v.to(device, non_blocking=True) for v in value)
        return value

    fields = {f.name: moved(getattr(plan, f.name)) for f in dataclasses.fields(plan)}
    return LookupPlan(**fields)
