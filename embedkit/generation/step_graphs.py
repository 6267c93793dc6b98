"""``DecodeSteps``: one-token decoding steps over a KV cache of fixed rows and length, whose
decoder layers replay as CUDA graphs.

An eager decoding step launches a few hundred small kernels, one Python call each; on a GPU
the host then sets the pace, not the device. Here every stretch of decoder layers between two
parts that read lookup tables (the input embedding, sublayers such as L³) is captured once as
a CUDA graph and replayed each step, with the step's positions and attention mask computed on
the device from the cache's lengths, over all of its ``max_len`` positions. The table parts run
eagerly between the replays, from the rows ``plan_lookups`` fetched ahead (or their own reads),
on every tier alike: their rows and routes change every step. The last stretch ends with the
final norm, the output head and the cache's advance.

Without graphs (``graphs=False``, e.g. on the CPU) the same stretches run as plain calls: the
static-shape step, which must give what ``Decoder.decode`` gives.

Legend: B = batch rows, D = model width, V = vocabulary size, S = positions the cache holds.
"""

from __future__ import annotations

import collections
import itertools
import weakref
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from embedkit.generation.lookup_plan import LookupPlan
    from embedkit.model.decoder import Decoder

MIN_GRAPH_LEN = 64  # cache lengths are rounded up to a power of two from here (graph reuse)
KEPT_PER_DECODER = 4  # graphed steps kept per decoder (each holds a KV cache and its graphs)


class DecodeSteps:
    """Decoding steps of one token per row for ``batch_size`` rows of at most ``max_len``
    positions, over their own ``cache`` (prefilled with ``Decoder.decode``, then stepped)."""

    def __init__(self, decoder: Decoder, *, batch_size: int, max_len: int, graphs: bool) -> None:
        """
        Args:
            decoder: The model, in eval mode, on the device to decode on.
            batch_size: Rows decoded together.
            max_len: Positions a row can hold (prompt and generated tokens).
            graphs: Capture the stretches of layers as CUDA graphs (the decoder must be on a
                CUDA device); ``False``: run them as plain calls.
        """
        weight = decoder.token_embedding.weight
        if graphs and weight.device.type != "cuda":
            raise ValueError(
                f"cuda_graphs=True needs the model on a CUDA device; it is on {weight.device}. "
                "Valid: cuda_graphs=False, or a CUDA device"
            )
        self._decoder = weakref.ref(decoder)  # kept per decoder, in a weak mapping of it
        self.cache = decoder.new_cache(batch_size=batch_size, max_len=max_len)
        starts = sorted(int(index) for index in decoder.sublayers)
        bounds = [0, *starts, len(decoder.layers)]
        self.spans = list(itertools.pairwise(bounds))
        self.ids_B1 = torch.zeros(batch_size, 1, dtype=torch.long, device=weight.device)
        # Each stretch's input, where the eager part before it leaves its output.
        self._inputs = [
            torch.zeros(batch_size, 1, decoder.dim, dtype=weight.dtype, device=weight.device)
            for _ in self.spans
        ]
        self._outputs: list[torch.Tensor | None] = [None] * len(self.spans)
        self._graphs: list[torch.cuda.CUDAGraph] | None = None
        self._positions_B1: torch.Tensor | None = None
        self._mask_B11S: torch.Tensor | None = None
        if graphs:
            self._capture(decoder)

    @property
    def graphed(self) -> bool:
        """Whether the stretches replay as CUDA graphs."""
        return self._graphs is not None

    def reset(self) -> None:
        """Empty the cache for a new batch of prompts (the graphs stay)."""
        self.cache.lengths_B.zero_()
        self.cache.ids_BS.fill_(-1)
        self.cache.max_length = 0

    def step(self, ids_B1: torch.Tensor, plan: LookupPlan | None = None) -> torch.Tensor:
        """Logits [B, V] of new tokens ``ids_B1`` (on the device) after the rows of the cache,
        whose keys, values, ids and lengths it updates. ``plan``: the rows that parts with
        static routing started fetching for these ids. The logits are valid until the next
        step (a graph's output is overwritten by its next replay)."""
        decoder, cache = self._decoder(), self.cache
        if cache.max_length == 0:
            raise ValueError("DecodeSteps.step needs a prefilled cache: run Decoder.decode first")
        if cache.max_length + 1 > cache.max_len:
            raise ValueError(
                f"1 new position after {cache.max_length} exceeds the cache's "
                f"max_len={cache.max_len}; make the cache longer"
            )
        self.ids_B1.copy_(ids_B1, non_blocking=True)
        hidden_B1D = decoder.embed_new(self.ids_B1, cache, plan=plan)
        for index, (start, _) in enumerate(self.spans):
            if index:
                hidden_B1D = decoder.run_sublayer(start, hidden_B1D, self.ids_B1, plan)
            hidden_B1D = self._run(index, hidden_B1D, decoder)
        cache.max_length += 1
        return hidden_B1D[:, 0]

    def _run(self, index: int, hidden_B1D: torch.Tensor, decoder: Decoder) -> torch.Tensor:
        if self._graphs is None:
            return self._stretch(index, hidden_B1D, decoder)
        self._inputs[index].copy_(hidden_B1D)
        self._graphs[index].replay()
        return self._outputs[index]

    def _stretch(self, index: int, hidden_B1D: torch.Tensor, decoder: Decoder) -> torch.Tensor:
        """Stretch ``index``: its layers; the first also finds the step's positions, mask and
        writes its ids; the last ends with the norm, the head and the cache's advance."""
        from embedkit.model.decoder import cached_positions_mask

        cache = self.cache
        if index == 0:
            self._positions_B1 = cache.lengths_B[:, None].clone()
            self._mask_B11S = cached_positions_mask(self._positions_B1, cache.max_len)
            cache.write_ids(self._positions_B1, self.ids_B1)
        start, stop = self.spans[index]
        for layer_index in range(start, stop):
            hidden_B1D = decoder.layers[layer_index].decode(
                hidden_B1D, cache.layer(layer_index), self._positions_B1, self._mask_B11S,
                end=cache.max_len,
            )  # fmt: skip
        if index + 1 < len(self.spans):
            return hidden_B1D
        cache.lengths_B += 1
        return decoder.logits(decoder.norm(hidden_B1D))

    def _capture(self, decoder: Decoder) -> None:
        """Run every stretch once on a side stream (lazy initialisations, rotary tables), then
        capture each as a graph, all in one memory pool, in the order they replay. The run
        writes the cache at each row's next position, which the next real step overwrites;
        the lengths are restored."""
        lengths_B = self.cache.lengths_B.clone()
        device = self.ids_B1.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for index in range(len(self.spans)):
                self._stretch(index, self._inputs[index], decoder)
        torch.cuda.current_stream(device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        graphs = []
        for index in range(len(self.spans)):
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=pool):
                    self._outputs[index] = self._stretch(index, self._inputs[index], decoder)
            except RuntimeError as error:
                start, stop = self.spans[index]
                raise RuntimeError(
                    f"decoder layers {start}..{stop - 1} cannot be captured as a CUDA graph "
                    f"({error}); a part waits for the host (e.g. an MoE block without grouped "
                    "products). Decode with cuda_graphs=False"
                ) from error
            graphs.append(graph)
        self.cache.lengths_B.copy_(lengths_B)
        self._graphs = graphs


_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def graph_len(needed: int, max_seq_len: int) -> int:
    """The cache length of graphed steps for ``needed`` positions: the next power of two from
    ``MIN_GRAPH_LEN``, at most ``max_seq_len`` (so that decodes of similar lengths share one
    capture; attention reads every position of the cache, masked)."""
    length = MIN_GRAPH_LEN
    while length < needed:
        length *= 2
    return max(needed, min(length, max_seq_len))


def graphed_steps(decoder: Decoder, *, batch_size: int, needed: int) -> DecodeSteps:
    """Graphed decoding steps of ``decoder`` for ``batch_size`` rows of ``needed`` positions,
    reset: captured on first use, then kept with the decoder and reused while its parameters
    and buffers stay where they were captured (the last ``KEPT_PER_DECODER`` shapes)."""
    max_len = graph_len(needed, decoder.max_seq_len)
    where = tuple(
        (t.data_ptr(), t.dtype, t.device) for t in (*decoder.parameters(), *decoder.buffers())
    )
    kept = _KEPT.setdefault(decoder, collections.OrderedDict())
    key = (batch_size, max_len)
    found = kept.get(key)
    if found is None or found[0] != where:
        steps = DecodeSteps(decoder, batch_size=batch_size, max_len=max_len, graphs=True)
        kept[key] = (where, steps)
        while len(kept) > KEPT_PER_DECODER:
            kept.popitem(last=False)
    kept.move_to_end(key)
    steps = kept[key][1]
    steps.reset()
    return steps
