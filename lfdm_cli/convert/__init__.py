"""Readers for the authors' reference checkpoints (stage one: `load_reference_lfae`; stage two:
`load_reference_dm`)."""

from lfdm_cli.convert.dm import load_reference_dm
from lfdm_cli.convert.lfae import ConvertedLFAE, load_reference_lfae

__all__ = ["ConvertedLFAE", "load_reference_lfae", "load_reference_dm"]
