"""Held-out evaluations of the insight models (fit before a cutoff, score what happens after it)."""
