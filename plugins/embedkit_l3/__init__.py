"""embedkit_l3: L³, Large Lookup Layers (arXiv 2601.21461).

``LZWAllocation`` gives each token id 1..k of the v rows of a lookup table by the paper's
LZW-style scan (Algorithm 1); its ``strategy`` selects the paper's ablations (uniform, by
frequency). ``StaticTokenRouter`` routes every position to all rows of its token. ``L3Layer``
is the lookup layer inserted between decoder layers.
"""

from embedkit_l3.allocation import LZWAllocation
from embedkit_l3.layer import L3Layer
from embedkit_l3.router import StaticTokenRouter
from embedkit_l3.store import FitStats

__all__ = [
    "FitStats",
    "L3Layer",
    "LZWAllocation",
    "StaticTokenRouter",
]
