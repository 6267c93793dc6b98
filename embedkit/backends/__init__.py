"""Core storage tiers for lookup tables."""
