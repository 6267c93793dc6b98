"""Compare runs of ``embedkit fit`` from the ``summary.json`` in their run directories: a
Markdown table and a CSV of their figures with deltas against a baseline run, and plots of
validation loss against tokens seen and against training FLOPs.

Training FLOPs are estimated as 3 x inference FLOPs per token x tokens seen (the forward pass
and a backward pass of twice its cost), so runs of different architectures share one axis.
"""

from embedkit.compare.report import FIELDS, compare_values, write_comparison
from embedkit.compare.runs import Run, load_runs, mismatches, pick_baseline, read_summary

__all__ = [
    "FIELDS",
    "Run",
    "compare_values",
    "load_runs",
    "mismatches",
    "pick_baseline",
    "read_summary",
    "write_comparison",
]
