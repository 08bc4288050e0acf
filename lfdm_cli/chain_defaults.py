"""Chaining strategy names and defaults, kept free of torch so the CLI starts fast."""

STRATEGIES = ("reanchor", "naive", "crossfade", "noised")
# Chosen by measurement (benchmarks/chain_drift.py on the bundled model, 10 segments, 4 held-out
# faces): naive drifted least (last segment's still-border L1 0.027, SSIM 0.83; FVD of late vs
# early segments 345) against reanchor (0.100, 0.44, 545) and crossfade (0.110, 0.40, 642):
# composed flows accumulate every segment's small background motion and multiply occlusions,
# while re-encoding through a near-lossless auto-encoder costs little.
DEFAULT_STRATEGY = "naive"
DEFAULT_OVERLAP = 4
DEFAULT_COND_NOISE = 0.1
