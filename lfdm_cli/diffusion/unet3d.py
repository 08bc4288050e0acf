"""The conditional 3D U-Net that denoises flow volumes (stage two of LFDM).

The network follows the authors' `Unet3D` (itself built on lucidrains' video-diffusion-pytorch)
operation for operation, so that converted checkpoints give the same numbers: every level has two
FiLM-conditioned residual blocks, a spatial linear attention, a temporal attention with rotary
embeddings and a shared T5-style relative position bias, and a spatial-only down/upsampling.
Module names are this project's own; `lfdm_cli.convert.dm` maps the reference's state-dict keys.

Input: cat[x (B,3,F,h,w), image latent z0 repeated over F] on the channel axis. Output: the
predicted noise, cat[flow head (2 ch), occlusion head (1 ch)].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lfdm_cli.diffusion.config import UNet3DConfig


# --------------------------------------------------------------------------------------------
# Position encodings


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): adjacent channels form the rotated pairs."""
    pairs = x.unflatten(-1, (-1, 2))
    first, second = pairs.unbind(-1)
    return torch.stack((-second, first), dim=-1).flatten(-2)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the sequence axis (-2) with interleaved channel pairs.

    Frequencies are theta^(-2i/dim) ("language" frequencies); positions are 0..n-1. Only the first
    `dim` channels of each head are rotated. The frequencies are deterministic, so they are a
    non-persistent buffer (the reference saves a copy per attention layer; conversion checks them).
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs, persistent=False)
        self._cache: dict = {}

    def _cos_sin(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (n, device, dtype, self.freqs.data_ptr())
        hit = self._cache.get(key)
        if hit is None:
            positions = torch.arange(n, device=device).to(self.freqs.dtype)
            angles = (positions[:, None] * self.freqs[None, :]).repeat_interleave(2, dim=-1)
            hit = (angles.cos().to(dtype), angles.sin().to(dtype))
            self._cache = {key: hit}
        return hit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate (..., n, d) queries or keys by their position along n."""
        cos, sin = self._cos_sin(x.shape[-2], x.device, x.dtype)
        if self.dim == x.shape[-1]:
            return x * cos + _rotate_pairs(x) * sin
        head, tail = x[..., : self.dim], x[..., self.dim:]
        return torch.cat((head * cos + _rotate_pairs(head) * sin, tail), dim=-1)


def relative_position_buckets(n: int, num_buckets: int = 32, max_distance: int = 32,
                              device: torch.device | None = None) -> torch.Tensor:
    """(n, n) int64 T5 bucket indices for key position j relative to query position i.

    Half the buckets hold keys after the query, half before; within each half the first
    num_buckets/4 distances are exact and the rest grow logarithmically up to max_distance.
    """
    pos = torch.arange(n, dtype=torch.long, device=device)
    offset = pos[None, :] - pos[:, None]
    n_rel = -offset
    half = num_buckets // 2
    bucket = (n_rel < 0).long() * half
    n_rel = n_rel.abs()
    max_exact = half // 2
    is_small = n_rel < max_exact
    # log(0) = -inf in the discarded branch; torch.where picks the exact distance there.
    large = max_exact + (torch.log(n_rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return bucket + torch.where(is_small, n_rel, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias over bucketed frame offsets, shared by every temporal attention."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.table = nn.Embedding(num_buckets, heads)
        self._buckets: dict = {}

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        """(heads, n, n) bias for n frames."""
        key = (n, device)
        buckets = self._buckets.get(key)
        if buckets is None:
            buckets = relative_position_buckets(n, self.num_buckets, self.max_distance, device)
            self._buckets = {key: buckets}
        return self.table(buckets).permute(2, 0, 1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the integer timestep followed by Linear-GELU-Linear (dim -> 4*dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, dim * 4)
        self.fc2 = nn.Linear(dim * 4, dim * 4)

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        step = math.log(10000) / (half - 1)
        # float32 unless the module runs in float64 (the reference multiplies int64 t by float32).
        dtype = torch.float64 if self.fc1.weight.dtype == torch.float64 else torch.float32
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=dtype) * -step)
        args = t.to(dtype)[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.sinusoid(t))))


# --------------------------------------------------------------------------------------------
# Building blocks


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B,C,F,H,W), scale only (no bias), eps inside the sqrt."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.gamma


class ConvNormAct(nn.Module):
    """(1,3,3) conv -> GroupNorm -> optional FiLM (x * (scale + 1) + shift) -> SiLU."""

    def __init__(self, dim_in: int, dim_out: int, groups: int):
        super().__init__()
        self.conv = nn.Conv3d(dim_in, dim_out, (1, 3, 3), padding=(0, 1, 1))
        self.norm = nn.GroupNorm(groups, dim_out)

    def forward(self, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if film is not None:
            scale, shift = film
            x = x * (scale + 1) + shift
        return F.silu(x)


class ResBlock(nn.Module):
    """Two ConvNormAct layers, the first modulated by the conditioning vector, plus a skip path."""

    def __init__(self, dim_in: int, dim_out: int, groups: int, cond_dim: int | None):
        super().__init__()
        self.film = nn.Linear(cond_dim, dim_out * 2) if cond_dim is not None else None
        self.layer1 = ConvNormAct(dim_in, dim_out, groups)
        self.layer2 = ConvNormAct(dim_out, dim_out, groups)
        self.skip = nn.Conv3d(dim_in, dim_out, 1) if dim_in != dim_out else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        film = None
        if self.film is not None:
            params = self.film(F.silu(cond))[:, :, None, None, None]
            film = params.chunk(2, dim=1)
        h = self.layer2(self.layer1(x, film))
        return h + (self.skip(x) if self.skip is not None else x)


class MultiHeadAttention(nn.Module):
    """Softmax attention over the token axis (-2) of (..., n, dim), optional rotary and bias."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding | None = None):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Linear(dim, hidden * 3, bias=False)
        self.to_out = nn.Linear(hidden, dim, bias=False)
        # Shared between layers, so kept out of this module's children (no duplicate parameters).
        self._rotary = [rotary] if rotary is not None else []

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = (part.unflatten(-1, (self.heads, -1)).transpose(-3, -2)
                   for part in self.to_qkv(x).chunk(3, dim=-1))
        q = q * self.scale
        if self._rotary:
            q = self._rotary[0](q)
            k = self._rotary[0](k)
        sim = torch.einsum("...hid,...hjd->...hij", q, k)
        if bias is not None:
            sim = sim + bias
        # softmax subtracts the row maximum itself; an explicit subtraction would change nothing.
        attn = sim.softmax(dim=-1)
        out = torch.einsum("...hij,...hjd->...hid", attn, v)
        return self.to_out(out.transpose(-3, -2).flatten(-2))


class SpatialLinearAttention(nn.Module):
    """Linear attention over the pixels of every frame: softmax(k) over pixels, softmax(q) over channels."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        q, k, v = (part.reshape(b * f, self.heads, -1, h * w) for part in self.to_qkv(frames).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b * f, -1, h, w)
        out = self.to_out(out)
        return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


class SpatialLinearAttentionBlock(nn.Module):
    """x + linear_attention(layer_norm(x))."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.attn = SpatialLinearAttention(dim, heads, dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm(x)) + x


class TemporalAttentionBlock(nn.Module):
    """x + attention over frames at every pixel (rotary positions and the shared frame bias)."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head, rotary=rotary)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        tokens = self.norm(x).permute(0, 3, 4, 2, 1).reshape(b, h * w, f, c)
        out = self.attn(tokens, bias=bias)
        return out.reshape(b, h, w, f, c).permute(0, 4, 3, 1, 2) + x


class SpatialAttentionBlock(nn.Module):
    """x + full attention over the pixels of every frame (used at the lowest resolution only)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b, f, h * w, c)
        out = self.attn(tokens)
        return out.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3) + x


class Downsample(nn.Module):
    """Halve height and width with a strided (1,4,4) convolution; frames are untouched."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: a transposed (1,4,4) convolution, or nearest + (1,3,3) convolution."""

    def __init__(self, dim: int, use_deconv: bool, padding_mode: str):
        super().__init__()
        self.use_deconv = use_deconv
        if use_deconv:
            self.conv = nn.ConvTranspose3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))
        else:
            self.conv = nn.Conv3d(dim, dim, (1, 3, 3), (1, 1, 1), (0, 1, 1), padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_deconv:
            x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return self.conv(x)


class Level(nn.Module):
    """One resolution of the encoder or decoder: two res blocks, two attentions, a resampler."""

    def __init__(self, dim_in: int, dim_out: int, cfg: UNet3DConfig, cond_dim: int, rotary: RotaryEmbedding,
                 resample: nn.Module | None):
        super().__init__()
        self.res1 = ResBlock(dim_in, dim_out, cfg.resnet_groups, cond_dim)
        self.res2 = ResBlock(dim_out, dim_out, cfg.resnet_groups, cond_dim)
        self.spatial_attn = (SpatialLinearAttentionBlock(dim_out, cfg.attn_heads, cfg.spatial_attn_dim_head)
                             if cfg.use_sparse_linear_attn else None)
        self.temporal_attn = TemporalAttentionBlock(dim_out, cfg.attn_heads, cfg.attn_dim_head, rotary)
        self.resample = resample

    def body(self, x: torch.Tensor, cond: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.res2(self.res1(x, cond), cond)
        if self.spatial_attn is not None:
            x = self.spatial_attn(x)
        return self.temporal_attn(x, bias)


class OutputHead(nn.Module):
    """Unconditioned res block then a 1x1x1 projection (the flow and occlusion heads)."""

    def __init__(self, dim_in: int, dim: int, out_channels: int, groups: int):
        super().__init__()
        self.block = ResBlock(dim_in, dim, groups, cond_dim=None)
        self.proj = nn.Conv3d(dim, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.block(x))


# --------------------------------------------------------------------------------------------
# The network


@dataclass(frozen=True)
class UNetShapes:
    """Resolved sizes (what the configuration's `None` defaults turn into)."""

    channels: int
    cond_dim: int
    dims: tuple[int, ...]


class UNet3D(nn.Module):
    """Noise predictor eps(x_t, t, z0, c) for flow volumes."""

    def __init__(self, cfg: UNet3DConfig, channels: int, cond_dim: int):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        dims = (dim, *(dim * m for m in cfg.dim_mults))
        self.shapes = UNetShapes(channels=channels, cond_dim=cond_dim, dims=dims)
        self.x_channels = 3
        self.channels_last = False
        heads = cfg.attn_heads

        # One rotary module shared by every temporal attention (registered once, here).
        self.rotary = RotaryEmbedding(min(cfg.rotary_dim, cfg.attn_dim_head))
        self.frame_bias = RelativePositionBias(heads, cfg.rel_pos_num_buckets, cfg.rel_pos_max_distance)

        pad = cfg.init_kernel_size // 2
        self.stem = nn.Conv3d(channels, dim, (1, cfg.init_kernel_size, cfg.init_kernel_size), padding=(0, pad, pad))
        self.stem_temporal_attn = TemporalAttentionBlock(dim, heads, cfg.attn_dim_head, self.rotary)

        self.time_embed = TimestepEmbedding(dim)
        film_dim = dim * 4 + cond_dim

        if cfg.learn_null_cond:
            self.null_cond = nn.Parameter(torch.randn(1, cond_dim))
        else:
            self.register_buffer("null_cond", torch.zeros(1, cond_dim), persistent=False)

        pairs = list(zip(dims[:-1], dims[1:]))
        last = len(pairs) - 1
        self.down_levels = nn.ModuleList(
            Level(d_in, d_out, cfg, film_dim, self.rotary, Downsample(d_out) if i < last else None)
            for i, (d_in, d_out) in enumerate(pairs))

        mid = dims[-1]
        self.mid_res1 = ResBlock(mid, mid, cfg.resnet_groups, film_dim)
        self.mid_spatial_attn = SpatialAttentionBlock(mid, heads, cfg.spatial_attn_dim_head)
        self.mid_temporal_attn = TemporalAttentionBlock(mid, heads, cfg.attn_dim_head, self.rotary)
        self.mid_res2 = ResBlock(mid, mid, cfg.resnet_groups, film_dim)

        self.up_levels = nn.ModuleList(
            Level(d_out * 2, d_in, cfg, film_dim, self.rotary,
                  Upsample(d_in, cfg.use_deconv, cfg.padding_mode) if i < last else None)
            for i, (d_in, d_out) in enumerate(reversed(pairs)))

        self.flow_head = OutputHead(dim * 2, dim, 2, cfg.resnet_groups)
        self.occlusion_head = OutputHead(dim * 2, dim, 1, cfg.resnet_groups)

    # ----------------------------------------------------------------------------------------

    def null_embedding(self, batch: int) -> torch.Tensor:
        """(batch, cond_dim) copies of the null (unconditional) embedding."""
        return self.null_cond.expand(batch, -1)

    def conditioning(self, time: torch.Tensor, cond: torch.Tensor | None,
                     null_mask: torch.Tensor | None) -> torch.Tensor:
        """cat[time embedding, condition embedding or the null embedding where null_mask]."""
        temb = self.time_embed(time)
        if cond is None:
            cond = self.null_cond.expand(temb.shape[0], -1)
        elif null_mask is not None:
            cond = torch.where(null_mask.reshape(-1, 1).bool(), self.null_cond, cond)
        return torch.cat((temb, cond.to(temb.dtype)), dim=-1)

    def project_latent(self, fea: torch.Tensor) -> torch.Tensor:
        """The stem's response to the image latent (B, C, h, w), bias included: (B, dim, 1, h, w).

        The latent is the same for every frame (and every sampling step), so its share of the
        stem convolution - by far the network's largest, 256 of its 259 input channels - is
        computed once in 2-D and broadcast over the frames instead of convolved 40 times.
        """
        weight = self.stem.weight[:, self.x_channels:]
        pad = self.cfg.init_kernel_size // 2
        out = F.conv2d(fea, weight.squeeze(2), self.stem.bias, padding=pad)
        return out.unsqueeze(2)

    def forward(self, x: torch.Tensor, time: torch.Tensor, cond: torch.Tensor | None = None,
                null_mask: torch.Tensor | None = None, *, latent: torch.Tensor | None = None) -> torch.Tensor:
        """Noise prediction (B, 3, F, h, w): [flow_x, flow_y, occlusion].

        x: the noisy volume (B, 3, F, h, w) with `latent` = project_latent(z0) (the fast path), or
        the reference's input cat[x, z0 repeated over F] (B, channels, F, h, w) with latent None.
        time: (B,) int64 timesteps; cond: (B, cond_dim) condition embeddings, or None for the null
        embedding everywhere; null_mask: (B,) bool, rows that use the null embedding.
        """
        bias = self.frame_bias(x.shape[2], x.device)
        if latent is None:
            x = self.stem(x)
        else:
            pad = self.cfg.init_kernel_size // 2
            x = F.conv3d(x, self.stem.weight[:, : self.x_channels], None, padding=(0, pad, pad)) + latent
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        stem_out = x
        x = self.stem_temporal_attn(x, bias)
        c = self.conditioning(time, cond, null_mask)

        skips = []
        for level in self.down_levels:
            x = level.body(x, c, bias)
            skips.append(x)
            if level.resample is not None:
                x = level.resample(x)

        x = self.mid_res1(x, c)
        x = self.mid_spatial_attn(x)
        x = self.mid_temporal_attn(x, bias)
        x = self.mid_res2(x, c)

        for level in self.up_levels:
            x = level.body(torch.cat((x, skips.pop()), dim=1), c, bias)
            if level.resample is not None:
                x = level.resample(x)

        x = torch.cat((x, stem_out), dim=1)
        out = torch.cat((self.flow_head(x), self.occlusion_head(x)), dim=1)
        return out.contiguous() if self.channels_last else out

    def use_channels_last(self, enable: bool = True) -> "UNet3D":
        """Run activations and convolution weights channels-last (NDHWC).

        oneDNN's CPU convolutions are markedly faster in this layout; results differ from the
        default layout only by float rounding. Returns self.
        """
        self.channels_last = enable
        fmt3, fmt2 = (torch.channels_last_3d, torch.channels_last) if enable else (torch.contiguous_format,) * 2
        for mod in self.modules():
            if isinstance(mod, (nn.Conv3d, nn.ConvTranspose3d)):
                mod.weight.data = mod.weight.data.contiguous(memory_format=fmt3)
            elif isinstance(mod, nn.Conv2d):
                mod.weight.data = mod.weight.data.contiguous(memory_format=fmt2)
        return self
