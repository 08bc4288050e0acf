"""Readers for the authors' reference checkpoints (stage one: `load_reference_lfae`)."""

from lfdm_cli.convert.lfae import ConvertedLFAE, load_reference_lfae

__all__ = ["ConvertedLFAE", "load_reference_lfae"]
