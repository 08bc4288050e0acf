"""Chaining strategy names and defaults, kept free of torch so the CLI starts fast."""

STRATEGIES = ("reanchor", "naive", "crossfade", "noised")
DEFAULT_STRATEGY = "reanchor"
DEFAULT_OVERLAP = 4
DEFAULT_COND_NOISE = 0.1
