"""lfdm: conditional image-to-video generation with Latent Flow Diffusion Models."""

__version__ = "0.1.0"
