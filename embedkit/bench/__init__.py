"""Benchmarks behind ``embedkit bench``: measured side by side in one run, written as JSON,
Markdown and PNG under ``docs/benchmarks/``."""
