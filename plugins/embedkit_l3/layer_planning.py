"""Planned lookups of ``L3Layer`` (decoding): the rows of the next tokens start moving to the
compute device as soon as the tokens are known, and the layer waits for them only when it
runs, so their transfer from pinned CPU memory or a Zarr store hides behind the decoder layers
before it (``before_layer`` >= 1 is what makes room for it).

Legend: B = batch rows, T = new positions, D = model width, E = value width, P = B * T
positions, M = pooled rows.
"""

from __future__ import annotations

import dataclasses

import torch

from embedkit.dtypes import compute_dtype
from embedkit.interfaces import RowsHandle
from embedkit_l3.token_attention import LookupPlan, plan_lookup


@dataclasses.dataclass(frozen=True)
class PlannedRows:
    """The bucket plan of some new positions (on the compute device) and their tokens' rows in
    flight (``values`` None when the tables are tied)."""

    plan: LookupPlan
    keys: RowsHandle
    values: RowsHandle | None


class PlannedTables:
    """``PlannedLookups`` for ``L3Layer``: the plan is made on the host from host ids (no
    device synchronisation), the rows fetched with the tables' ``prefetch``."""

    def plan_lookups(self, ids_BT: torch.Tensor, preceding_BW: torch.Tensor) -> PlannedRows | None:
        """Start fetching the rows of tokens ``ids_BT`` (host); ``None`` when the tables are
        whole on the compute device (the fused kernels read them in place)."""
        if not self._connected:
            raise RuntimeError("L3Layer is used before connect(datamodule) loaded its allocation")
        device = self.offsets_V1.device
        if self._use_kernels(device):
            return None
        plan = plan_lookup(ids_BT.reshape(-1).cpu(), self._host_offsets(), max_rows=self._max_rows)
        keys = self.key_table.prefetch(plan.pool_rows_M)
        values = None if self.tie_kv else self.value_table.prefetch(plan.pool_rows_M)
        return PlannedRows(_plan_on(plan, device), keys, values)

    def forward_planned(self, hidden_BTD: torch.Tensor, planned: PlannedRows) -> torch.Tensor:
        """The layer over the positions ``planned`` was made for, from its rows."""
        if not self._tables_checked:
            self._check_table_source()
        dtype = compute_dtype(hidden_BTD)
        keys_MD = planned.keys.wait().to(hidden_BTD.device, dtype)
        values_ME = (
            keys_MD if planned.values is None else planned.values.wait().to(keys_MD.device, dtype)
        )
        return self._attend(hidden_BTD, planned.plan, keys_MD, values_ME)

    def _host_offsets(self) -> torch.Tensor:
        """The CSR offsets on the host (copied once per device placement)."""
        cached = getattr(self, "_offsets_host", None)
        if cached is None or cached.shape != self.offsets_V1.shape:
            cached = self.offsets_V1.cpu()
            self._offsets_host = cached
        return cached


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
