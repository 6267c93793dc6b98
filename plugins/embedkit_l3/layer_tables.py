"""``ExportedTables``: how an ``L3Layer`` writes its key/value tables for inference
(``embedkit export``) and reads them back on any tier, checked against the allocation and
the layer's weights; mixed into ``L3Layer``."""

from __future__ import annotations

import torch
from torch import nn

from embedkit.exported_tables import place_table, weights_hash, write_table
from embedkit.interfaces import EmbeddingBackend
from embedkit.model.table_slot import TableSlot


class ExportedTables:
    """Export and import of ``L3Layer``'s tables (``table_names()`` under a folder)."""

    def table_names(self) -> list[str]:
        """Names of the tables under the export folder."""
        prefix = f"l3-before{self.before_layer}"
        return [f"{prefix}-kv"] if self.tie_kv else [f"{prefix}-keys", f"{prefix}-values"]

    def use_exported_tables(self, directory: str) -> None:
        """Read the tables from ``directory`` (written by ``embedkit export``) on the
        ``table_backend`` tier at ``connect`` instead of from the checkpoint."""
        self.exported_tables = directory
        for name in ("key_table", "value_table"):
            if isinstance(getattr(self, name), nn.Module):
                delattr(self, name)
            object.__setattr__(self, name, None)

    def _place_exported_tables(self) -> None:
        backends: list[EmbeddingBackend] = []
        names = self.table_names()
        for name, width in zip(names, (self.dim, self.d_emb)[: len(names)], strict=True):
            table, producer = place_table(
                f"{self.exported_tables}/{name}",
                self.table_backend,
                num_rows=self.num_rows,
                dim=width,
                producer={"allocation_hash": self.allocation.content_hash},
                what=f"the L³ table {name!r}",
            )
            backends.append(table)
            self._table_producer = producer
        object.__setattr__(self, "key_table", backends[0])
        object.__setattr__(self, "value_table", None if self.tie_kv else backends[1])
        self._tables_checked = False

    def _tables_follow(self, device: torch.device) -> None:
        """Move exported tables on the GPU tier (modules outside the model) to ``device``,
        where the model went."""
        for table in (self.key_table, self.value_table):
            exported_module = isinstance(table, nn.Module) and not isinstance(table, TableSlot)
            if exported_module and table.device != device:
                table.to(device)

    def _dense_weights_hash(self) -> str:
        return weights_hash(self.query_norm, self.up, self.up_norm, self.mix)

    def export_tables(
        self, directory: str, *, to: str, token_embedding: nn.Embedding, producer: dict
    ) -> list[str]:
        """Write the key/value tables (``table_names()``) into ``directory`` on tier ``to``."""
        if self.exported_tables is not None:
            raise ValueError("this L3Layer reads exported tables; export from the checkpoint")
        hashes = {
            "allocation_hash": self.allocation.content_hash,
            "layer_weights_hash": self._dense_weights_hash(),
        }
        tables = [self.key_table] if self.tie_kv else [self.key_table, self.value_table]
        written = []
        for name, table in zip(self.table_names(), tables, strict=True):
            device = table.backend.device

            def rows_of(start: int, stop: int, table=table, device=device) -> torch.Tensor:
                return table.gather(torch.arange(start, stop, device=device))

            location = f"{directory}/{name}"
            write_table(
                location,
                rows_of,
                to=to,
                num_rows=self.num_rows,
                dim=table.backend.dim,
                dtype=str(table.backend.dtype).removeprefix("torch."),
                producer=producer | hashes,
            )
            written.append(location)
        return written

    def _check_table_source(self) -> None:
        """Refuse tables exported from another checkpoint (other layer weights); once per
        loaded state, at the first forward after it."""
        expected = self._table_producer.get("layer_weights_hash")
        if expected and self._dense_weights_hash() != expected:
            raise ValueError(
                f"the L³ tables in {self.exported_tables!r} were exported from another "
                f"checkpoint (the weights of the L3Layer before layer {self.before_layer} "
                "differ); export them again from this one"
            )
        self._tables_checked = True

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        offsets_key = prefix + "offsets_V1"
        loaded = state_dict.get(offsets_key)
        if (
            self._connected
            and loaded is not None
            and not torch.equal(loaded.cpu(), self.offsets_V1.cpu())
        ):
            error_msgs.append(
                f"{offsets_key}: the checkpoint was trained with another row allocation "
                f"than the one at allocation_path={self.allocation_path!r}; give the "
                "allocation file of that run"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.exported_tables is None:
            return
        # Exported tables replace the checkpoint's rows; check them against the loaded weights.
        for key in [k for k in unexpected_keys if k.startswith(prefix) and "_table." in k]:
            unexpected_keys.remove(key)
        self._tables_checked = False
