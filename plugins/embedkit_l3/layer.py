"""``L3Layer``: a large lookup layer between two decoder layers (arXiv 2601.21461).

For hidden state x and token t: ``W_mix [ norm( W_up( V_tᵀ softmax(K_t q) ) ) ; x ]`` where
K_t, V_t are the rows of token t in a key table [v, D] and a value table [v, E] (one table
when tied), allotted by an ``LZWAllocation``. The query q is the RMS-normalised x (pre-norm,
like every block of the decoder) and scores are scaled by 1/sqrt(D).

Initialisation: ``W_mix`` is stored as its difference from ``[0 | I]`` (the identity on the x
part), initialised to zero, so the layer is exactly the identity on the residual stream at
the start; ``W_mix`` gets gradients at the first step and the lookup path from the second.
Weight decay pulls ``W_mix`` toward that identity. Tables start N(0, ``table_init_std``), by
default N(0, 1) like ``nn.Embedding``, so the scores q·k/sqrt(D) start at unit scale and the
softmax over a token's rows is not uniform from the start (tiny recipe: 31.29 validation
perplexity against 32.99 with N(0, 0.02)).

Legend: B = batch, L = sequence length, D = model width, E = value width (d_emb),
F = up-projection width (d_up), P = B * L positions, M = pooled rows, V = token ids.
"""

from __future__ import annotations

import collections
import math
import os
import weakref
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedkit.compiling import CompileMode, TrainingCompiler
from embedkit.dtypes import compute_dtype
from embedkit.interfaces import Sublayer, TableFactory
from embedkit.model.table_slot import TableSlot
from embedkit_l3.allocation import LZWAllocation, load_matching_allocation
from embedkit_l3.layer_planning import PlannedTables
from embedkit_l3.layer_tables import ExportedTables
from embedkit_l3.token_attention import plan_lookup, token_attention

# The last few plans, by ids tensor (weakly) and allocation: L³ layers that share an
# allocation compute the plan of a forward's ids once.
_RECENT_PLANS: collections.deque = collections.deque(maxlen=4)


class L3Layer(ExportedTables, PlannedTables, Sublayer):
    """L³: each position attends over its own token's rows of large tables; static routing, so
    the rows can live off the accelerator and be fetched ahead of use."""

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        table_backend: TableFactory,
        *,
        before_layer: int,
        allocation: LZWAllocation,
        allocation_path: str,
        d_emb: int | None = None,
        d_up: int | None = None,
        tie_kv: bool = True,
        table_init_std: float = 1.0,
        init_std: float = 0.02,
        lookup: Literal["auto", "triton", "buckets"] = "auto",
        compile_mode: CompileMode | None = "reduce-overhead",
    ) -> None:
        """
        Args:
            dim: Model width D (query and key width), passed by the decoder.
            vocab_size: Token vocabulary size V, passed by the decoder.
            table_backend: Storage tier of the key and value tables, passed by the decoder.
            before_layer: The decoder layer this block runs before (at least 1; the paper
                finds the middle of the stack best).
            allocation: v (``num_rows``), k (``max_rows_per_token``) and the strategy of the
                row allocation; its ``vocab_size`` is the decoder's.
            allocation_path: Where the fitted allocation is kept: loaded when it exists (its
                settings must equal ``allocation``'s), else fitted on the training shards and
                saved there (``embedkit vocab build --vocab LZWAllocation`` makes one ahead).
            d_emb: Value width E (default: D; must be D when ``tie_kv``).
            d_up: Width F of the up-projection (default: 2 * D).
            tie_kv: One table serves as keys and values (halves the table and its transfer;
                the paper finds quality "mostly unchanged").
            table_init_std: Standard deviation of the tables' normal initialisation.
            init_std: Standard deviation of the normal initialisation of ``W_up``.
            lookup: How the sorted block-diagonal lookup runs: "triton" (fused kernels that
                read each token's rows where they lie in the table; needs the tables on the
                model's CUDA device, widths powers of two), "buckets" (gather the batch's
                rows, batched matmuls per row-count bucket; any tier and device) or "auto"
                (triton where it can, else buckets).
            compile_mode: While training with the Triton lookup, the layer (norms, lookup
                kernels, projections, residual) runs as one ``torch.compile`` graph per pass
                in this mode ("reduce-overhead" replays it as a CUDA graph: far less host time
                per step); null runs it eagerly.
        """
        super().__init__()
        if lookup not in ("auto", "triton", "buckets"):
            raise ValueError(f"L3Layer lookup={lookup!r} is invalid; valid: auto, triton, buckets")
        self.lookup = lookup
        self._kernel_path = TrainingCompiler(self._kernel_forward, compile_mode, owner="L3Layer")
        d_emb = dim if d_emb is None else d_emb
        if tie_kv and d_emb != dim:
            raise ValueError(
                f"L3Layer d_emb={d_emb} with tie_kv=True is invalid; valid: d_emb equal to the "
                f"model width {dim} (or null), or tie_kv: false"
            )
        if allocation.vocab_size not in (None, vocab_size):
            raise ValueError(
                f"L3Layer allocation vocab_size={allocation.vocab_size} differs from the "
                f"decoder's vocab_size={vocab_size}; valid: leave it unset (the decoder sets it)"
            )
        allocation.vocab_size = vocab_size
        self._before_layer = before_layer
        self.allocation, self.allocation_path = allocation, allocation_path
        self.dim, self.d_emb, self.tie_kv = dim, d_emb, tie_kv
        self.d_up = 2 * dim if d_up is None else d_up
        self.vocab_size = vocab_size
        self.num_rows = allocation.settings["num_rows"]
        self.table_backend = table_backend
        self.query_norm = nn.RMSNorm(dim)
        self.up = nn.Linear(d_emb, self.d_up, bias=False)
        self.up_norm = nn.RMSNorm(self.d_up)
        self.mix = nn.Linear(self.d_up + dim, dim, bias=False)  # minus [0 | I]
        nn.init.normal_(self.up.weight, std=init_std)
        nn.init.zeros_(self.mix.weight)

        def slot(width: int) -> TableSlot:
            backend = table_backend(num_rows=self.num_rows, dim=width, dtype="float32")
            if isinstance(backend, nn.Module) and hasattr(backend, "weight"):
                nn.init.normal_(backend.weight.data, std=table_init_std)
            return TableSlot(backend, init_std=table_init_std)

        self.key_table = slot(dim)
        self.value_table = None if tie_kv else slot(d_emb)
        self.register_buffer("offsets_V1", torch.zeros(vocab_size + 1, dtype=torch.long))
        self._connected = False
        self._mean_rows_per_position: float | None = None
        self.exported_tables: str | None = None
        self._table_producer: dict[str, str] = {}
        self._tables_checked = True

    @property
    def before_layer(self) -> int:
        return self._before_layer

    # -- data ------------------------------------------------------------------------------

    def connect(self, data) -> None:
        """Load or fit the allocation on ``data``'s training shards; check its tokenizer; read
        exported tables when the decoder names a folder of them."""
        fingerprint = data.tokenizer.fingerprint
        if os.path.exists(self.allocation_path):
            self.allocation = load_matching_allocation(self.allocation_path, self.allocation)
        else:
            data.prepare_data()
            data.setup("fit")
            self.allocation.fit([data.shards.train_N])
            self.allocation.tokenizer_fingerprint = fingerprint
            self.allocation.save(self.allocation_path)
        if self.allocation.tokenizer_fingerprint not in (None, fingerprint):
            raise ValueError(
                f"allocation_path={self.allocation_path!r} was fitted on tokens of tokenizer "
                f"{self.allocation.tokenizer_fingerprint} but data.tokenizer is {fingerprint}; "
                "give another allocation_path (it is fitted there) or the matching tokenizer"
            )
        offsets_V1 = torch.from_numpy(np.array(self.allocation.offsets(), dtype=np.int64))
        loaded = int(self.offsets_V1[-1]) != 0  # from a checkpoint loaded before connect
        if loaded and not torch.equal(self.offsets_V1.cpu(), offsets_V1):
            raise ValueError(
                f"the loaded checkpoint was trained with another row allocation than the one at "
                f"allocation_path={self.allocation_path!r}; give the allocation file of that run"
            )
        self.offsets_V1.copy_(offsets_V1)
        rows_V = self.allocation.rows_per_token()
        self._max_rows = int(rows_V.max())
        if getattr(data, "shards", None) is not None:
            counts_V = np.bincount(np.asarray(data.shards.train_N), minlength=len(rows_V))
            self._mean_rows_per_position = float(counts_V @ rows_V) / max(int(counts_V.sum()), 1)
        self._connected = True
        if self.exported_tables is not None:
            self._place_exported_tables()

    # -- cost ------------------------------------------------------------------------------

    def lookup_parameters(self) -> int:
        """Rows of the tables: a token reads only its own (not active parameters); 0 when the
        tables are read from an export (they are not parameters then)."""
        if self.exported_tables is not None:
            return 0
        return self.num_rows * (self.dim + (0 if self.tie_kv else self.d_emb))

    def inference_flops_per_token(self) -> int:
        """The matrices, plus scores and weighted sum over the token's rows: the mean rows read
        per training position once connected (frequent tokens own more rows), v / V before."""
        mean_rows = self._mean_rows_per_position or self.num_rows / max(self.vocab_size, 1)
        lookup = 2 * mean_rows * (self.dim + self.d_emb)
        return int(2 * (self.up.weight.numel() + self.mix.weight.numel()) + lookup)

    # -- compute ---------------------------------------------------------------------------

    def forward(self, hidden_BLD: torch.Tensor, ids_BL: torch.Tensor) -> torch.Tensor:
        if not self._connected:
            raise RuntimeError("L3Layer is used before connect(datamodule) loaded its allocation")
        if not self._tables_checked:
            self._check_table_source()
        dtype = compute_dtype(hidden_BLD)
        if self._use_kernels(hidden_BLD.device):
            return self._kernel_path(
                hidden_BLD, ids_BL, dtype, training=self.training, device=hidden_BLD.device
            )
        plan = self._bucket_plan(ids_BL)
        keys_MD = self._pool(self.key_table, plan.pool_rows_M, hidden_BLD.device, dtype)
        values_ME = (
            keys_MD
            if self.tie_kv
            else self._pool(self.value_table, plan.pool_rows_M, hidden_BLD.device, dtype)
        )
        return self._attend(hidden_BLD, plan, keys_MD, values_ME)

    def _attend(self, hidden_BLD, plan, keys_MD: torch.Tensor, values_ME: torch.Tensor):
        """The layer over pooled rows ``keys_MD``/``values_ME`` of bucket plan ``plan``."""
        hidden_PD = hidden_BLD.reshape(-1, self.dim)
        looked_PE = token_attention(
            self.query_norm(hidden_PD), plan, keys_MD, values_ME, scale=1 / math.sqrt(self.dim)
        )
        return self._mix(looked_PE, hidden_PD).view_as(hidden_BLD) + hidden_BLD

    def _kernel_forward(
        self, hidden_BLD: torch.Tensor, ids_BL: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """The layer with the Triton lookup over whole tables. The plan is made here, from the
        ids, and the tables are read here as the module's parameters, so that one compiled
        graph holds it all and a CUDA graph keeps the tables in place."""
        from embedkit_l3.lookup_ops import token_lookup
        from embedkit_l3.triton_lookup import plan_triton

        width = max(self.dim, self.d_emb)
        plan = plan_triton(ids_BL.reshape(-1), self.offsets_V1, num_rows=self.num_rows, width=width)
        keys_RD = _whole_table(self.key_table)
        values_RE = None if self.tie_kv else _whole_table(self.value_table)
        hidden_PD = hidden_BLD.reshape(-1, self.dim)
        looked_PE, _ = token_lookup(
            self.query_norm(hidden_PD).contiguous(), keys_RD, values_RE, plan.tensors(),
            1 / math.sqrt(self.dim), dtype, plan.rows_per_block,
        )  # fmt: skip
        return self._mix(looked_PE, hidden_PD).view_as(hidden_BLD) + hidden_BLD

    def _mix(self, looked_PE: torch.Tensor, hidden_PD: torch.Tensor) -> torch.Tensor:
        """``(W_mix - [0 | I]) [norm(W_up looked); x]``, as two products over the column
        blocks of ``W_mix`` (no concatenated copy)."""
        up_PF = self.up_norm(self.up(looked_PE))
        mix_up_DF, mix_x_DD = self.mix.weight.split([self.d_up, self.dim], dim=1)
        return F.linear(up_PF, mix_up_DF) + F.linear(hidden_PD, mix_x_DD)

    def _use_kernels(self, device: torch.device) -> bool:
        """Whether this call runs the fused Triton kernels over whole tables on the GPU."""
        if self.lookup == "buckets":
            return False
        tables = [t for t in (self.key_table, self.value_table) if t is not None]
        whole = all(
            _whole_table(t) is not None and _whole_table(t).device == device for t in tables
        )
        if device.type == "cuda" and whole:
            from embedkit_l3.triton_lookup import supported  # imports Triton: CUDA builds only

            if supported(self.dim, self.d_emb):
                return True
        if self.lookup == "triton":
            raise ValueError(
                "L3Layer lookup='triton' needs its tables on the CUDA device of the model "
                "(table_backend: GPUBackend) and widths that are powers of two from 16 "
                f"(dim={self.dim}, d_emb={self.d_emb}); valid here: auto or buckets"
            )
        return False

    def _bucket_plan(self, ids_BL: torch.Tensor):
        """The bucket plan of ``ids_BL``; layers with the same allocation share it within one
        forward (the decoder hands every sublayer the same ids tensor). The Triton path makes
        its plan inside its compiled graph instead."""
        if ids_BL.is_inference():  # no version counter: in-place changes would go unseen
            return plan_lookup(ids_BL.reshape(-1), self.offsets_V1, max_rows=self._max_rows)
        key = (self.allocation.content_hash, ids_BL._version)
        for ids_ref, ids_key, plan in _RECENT_PLANS:
            if ids_ref() is ids_BL and ids_key == key:
                return plan
        plan = plan_lookup(ids_BL.reshape(-1), self.offsets_V1, max_rows=self._max_rows)
        _RECENT_PLANS.append((weakref.ref(ids_BL), key, plan))
        return plan

    def _pool(self, table, rows_M: torch.Tensor, device: torch.device, dtype) -> torch.Tensor:
        self._tables_follow(device)
        return table.gather(rows_M).to(device, dtype)


def _whole_table(table) -> torch.Tensor | None:
    """The rows of a table held as one tensor (``GPUBackend.weight``), else None."""
    backend = table.backend if isinstance(table, TableSlot) else table
    weight = getattr(backend, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None
