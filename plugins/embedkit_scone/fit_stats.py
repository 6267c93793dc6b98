"""``FitStats``: what fitting an f-gram vocabulary counted and what it cost."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedkit_scone.counting import NGramCounts


@dataclass(frozen=True)
class FitStats:
    """Counts per length n and the cost of one ``FGramVocab.fit``."""

    num_tokens: int  # tokens of the shards
    seconds: float  # wall time of the fit: all passes, the ranking and the index
    tokens_per_second: float
    peak_table_bytes: int  # most bytes held at once by the count tables
    num_counted: dict[int, int]  # distinct n-grams counted (prefix and suffix survived)
    num_survivors: dict[int, int]  # n-grams seen at least min_count times
    num_kept: dict[int, int]  # f-grams kept among the most frequent
    min_kept_count: int  # count of the last f-gram kept (0 when none is)

    @classmethod
    def of(
        cls, counts: NGramCounts, lengths_S: np.ndarray, counts_S: np.ndarray, *, seconds: float
    ) -> FitStats:
        """The statistics of a fit that counted ``counts`` and kept entries of ``lengths_S``."""
        return cls(
            num_tokens=counts.num_tokens,
            seconds=seconds,
            tokens_per_second=counts.num_tokens / max(seconds, 1e-9),
            peak_table_bytes=counts.peak_table_bytes,
            num_counted={lv.n: lv.num_counted for lv in counts.levels},
            num_survivors={lv.n: len(lv.keys_M) for lv in counts.levels},
            num_kept={lv.n: int((lengths_S == lv.n).sum()) for lv in counts.levels},
            min_kept_count=int(counts_S[-1]) if len(counts_S) else 0,
        )

    def to_json(self) -> dict[str, Any]:
        """Fields as JSON-ready values (dictionary keys become strings)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> FitStats:
        """Inverse of ``to_json``."""
        per_n = ("num_counted", "num_survivors", "num_kept")
        return cls(
            **{k: {int(n): c for n, c in v.items()} if k in per_n else v for k, v in fields.items()}
        )

    def summary(self) -> str:
        """A few lines for people: throughput, memory and counts per length."""
        lines = [
            f"counted {self.num_tokens:,} tokens in {self.seconds:.2f} s "
            f"({self.tokens_per_second / 1e6:.2f} M tokens/s), "
            f"peak count tables {self.peak_table_bytes / 2**20:.1f} MiB",
            "n  counted  survivors  kept",
        ]
        for n in self.num_counted:
            lines.append(
                f"{n}  {self.num_counted[n]:,}  {self.num_survivors[n]:,}  {self.num_kept[n]:,}"
            )
        lines.append(f"smallest count kept: {self.min_kept_count:,}")
        return "\n".join(lines)
