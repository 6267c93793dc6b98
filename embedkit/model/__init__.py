"""The decoder-only network and its building blocks."""
