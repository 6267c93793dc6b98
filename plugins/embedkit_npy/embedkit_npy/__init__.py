"""embedkit_npy: an example third-party embedkit plugin, a table in a memory-mapped ``.npy``."""

from embedkit_npy.backend import NpyBackend

__all__ = ["NpyBackend"]
