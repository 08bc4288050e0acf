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


def _rotate_pairs(even: torch.Tensor, odd: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  dim: int) -> torch.Tensor:
    """Each (even, odd) channel pair rotated by its angle, re-interleaved along `dim`."""
    return torch.stack((cos * even - sin * odd, sin * even + cos * odd), dim=dim)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over frames with interleaved channel pairs.

    Frequencies are theta^(-2i/dim) ("language" frequencies); positions are 0..n-1. Only the first
    `dim` channels of each head are rotated. The frequencies are deterministic, so they are a
    non-persistent buffer (the reference saves a copy per attention layer; conversion checks them).

    The reference rotates the projected queries and keys, which on a 40-frame 32x32 volume means
    several elementwise passes over 40 MB tensors. A rotation is linear, so rotating W x by the angle
    of position p equals projecting x with the rotated weight R_p W: `rotate_projection` builds the
    per-position weights (a few MB), and the rotation costs nothing at the activations' size.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs, persistent=False)
        self._cache: dict = {}

    def cos_sin(self, n: int, pairs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, pairs) cos and sin of every position's angle per channel pair, in the buffer's dtype.

        Pairs past dim/2 are not rotated: angle 0, so cos 1 and sin 0 exactly.
        """
        key = (n, pairs, device, self.freqs.data_ptr())
        hit = self._cache.get(key)
        if hit is None:
            positions = torch.arange(n, device=device).to(self.freqs.dtype)
            angles = positions[:, None] * self.freqs[None, :]
            angles = F.pad(angles, (0, pairs - angles.shape[1]))
            hit = (angles.cos(), angles.sin())
            self._cache = {key: hit}
        return hit

    def rotate(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Rotate (..., heads, d) queries or keys by their position along axis `dim`."""
        n, d = x.shape[dim], x.shape[-1]
        cos, sin = self.cos_sin(n, d // 2, x.device)
        shape = [1] * x.dim()
        shape[dim], shape[-1] = n, d // 2
        cos, sin = cos.to(x.dtype).reshape(shape), sin.to(x.dtype).reshape(shape)
        even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
        return _rotate_pairs(even, odd, cos, sin, dim=-1).flatten(-2)

    def rotate_projection(self, weight: torch.Tensor, heads: int, n: int) -> torch.Tensor:
        """(n, out, in) copies of a (out, in) query or key projection, rotated for positions 0..n-1."""
        out, cin = weight.shape
        pairs = out // heads // 2
        cos, sin = self.cos_sin(n, pairs, weight.device)
        cos, sin = cos[:, None, :, None], sin[:, None, :, None]
        w = weight.to(torch.promote_types(weight.dtype, cos.dtype)).reshape(heads, pairs, 2, cin)
        rotated = _rotate_pairs(w[:, :, 0], w[:, :, 1], cos, sin, dim=3)  # rows of a pair: (heads, pairs, cin)
        return rotated.reshape(n, out, cin).to(weight.dtype)


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
    """LayerNorm over the channel axis, scale only (no bias), eps inside the sqrt."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalise (..., C) tokens over their last axis (one fused kernel instead of five passes)."""
        c = tokens.shape[-1]
        return F.layer_norm(tokens, (c,), self.gamma.reshape(c), None, self.eps)


def channels_to_last(x: torch.Tensor) -> torch.Tensor:
    """(B,C,F,H,W) -> (B,F,H,W,C); free (a view) when x is channels-last."""
    return x.permute(0, 2, 3, 4, 1)


def channels_to_second(tokens: torch.Tensor) -> torch.Tensor:
    """(B,F,H,W,C) -> (B,C,F,H,W): the inverse view of channels_to_last."""
    return tokens.permute(0, 4, 1, 2, 3)


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
    """Softmax attention over the token axis (-2) of (..., n, dim); the temporal blocks add rotary
    positions and a bias (see TemporalAttentionBlock)."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding | None = None):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Linear(dim, hidden * 3, bias=False)
        self.to_out = nn.Linear(hidden, dim, bias=False)
        # Shared between layers, so kept out of this module's children (no duplicate parameters).
        self._rotary = [rotary] if rotary is not None else []

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T * scale + bias) v over (B, heads, n, d) views; the fused kernel never
        materialises the (n, n) scores of every pixel, and accepts strided q, k and v."""
        mask = None if bias is None else bias.to(q.dtype).expand(1, *bias.shape[-3:])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        lead, n = x.shape[:-2], x.shape[-2]
        qkv = self.to_qkv(x).reshape(-1, n, 3, self.heads, self.to_qkv.out_features // 3 // self.heads)
        q, k, v = (part.transpose(1, 2) for part in qkv.unbind(2))
        out = self.attend(q, k, v, bias).transpose(1, 2)
        return self.to_out(out.reshape(*lead, n, -1))


class SpatialLinearAttention(nn.Module):
    """Linear attention over the pixels of every frame: softmax(k) over pixels, softmax(q) over channels."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.scale = dim_head ** -0.5
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(frames, pixels, C) normalised tokens -> (frames, pixels, C)."""
        frames, n, c = tokens.shape
        # The 1x1 convolutions are matrix products over the channel axis of channels-last tokens;
        # separate q, k and v products keep each one contiguous for the softmaxes.
        wq, wk, wv = self.to_qkv.weight.flatten(1).chunk(3, dim=0)
        hidden = wq.shape[0]
        q = F.linear(tokens, wq).unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(-2)
        k = F.linear(tokens, wk).softmax(dim=1)
        v = F.linear(tokens, wv)
        # All heads' contexts in one product (k^T v, hidden x hidden per frame); the blocks across
        # heads are masked out. Folding the context, the scale and the output projection into one
        # (hidden, C) matrix per frame leaves a single pass over the pixels.
        context = torch.bmm(k.transpose(1, 2), v)
        same_head = self._head_mask(hidden, context.device)
        mixed = torch.matmul(context * same_head, self.to_out.weight.flatten(1).t() * self.scale)
        return torch.baddbmm(self.to_out.bias.to(mixed.dtype), q, mixed)

    def _head_mask(self, hidden: int, device: torch.device) -> torch.Tensor:
        """(hidden, hidden) 1 where row and column channels belong to the same head, else 0."""
        head = torch.arange(hidden, device=device) // (hidden // self.heads)
        return (head[:, None] == head[None, :]).float()


class SpatialLinearAttentionBlock(nn.Module):
    """x + linear_attention(layer_norm(x))."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.attn = SpatialLinearAttention(dim, heads, dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        tokens = self.norm(channels_to_last(x)).reshape(b * f, h * w, c)
        return x + channels_to_second(self.attn(tokens).reshape(b, f, h, w, c))


class TemporalAttentionBlock(nn.Module):
    """x + attention over frames at every pixel (rotary positions and the shared frame bias)."""

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head, rotary=rotary)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        attn, heads = self.attn, self.attn.heads
        tokens = self.norm(channels_to_last(x)).reshape(b, f, h * w, c)
        rotary = attn._rotary[0]
        if h * w >= c:
            # Many pixels per frame: fold the rotation into per-frame weights (see RotaryEmbedding);
            # one batched product over frames projects and rotates, frame p using [R_p Wq; R_p Wk; Wv].
            wq, wk, wv = attn.to_qkv.weight.chunk(3, dim=0)
            weight = torch.cat((rotary.rotate_projection(wq, heads, f), rotary.rotate_projection(wk, heads, f),
                                wv.expand(f, -1, -1)), dim=1)
            qkv = torch.matmul(tokens, weight.transpose(1, 2)).unflatten(-1, (3, heads, -1))  # (b,f,n,3,heads,d)
        else:
            # Few pixels (the low resolutions): the per-frame weights would outweigh the activations.
            q, k, v = attn.to_qkv(tokens).unflatten(-1, (3, heads, -1)).unbind(-3)  # (b,f,n,heads,d)
            qkv = torch.stack((rotary.rotate(q, dim=1), rotary.rotate(k, dim=1), v), dim=3)
        outs = []
        for i in range(b):
            # (pixels, heads, frames, d) views of this sample's projections: no copies.
            q, k, v = (part.permute(1, 2, 0, 3) for part in qkv[i].unbind(2))
            # The kernel lays its output out like q: (frames, pixels, heads, d) in memory.
            outs.append(attn.attend(q, k, v, bias).permute(2, 0, 1, 3))
        out = attn.to_out((outs[0][None] if b == 1 else torch.stack(outs)).flatten(-2))  # (b, f, n, c)
        return x + channels_to_second(out.reshape(b, f, h, w, c))


class SpatialAttentionBlock(nn.Module):
    """x + full attention over the pixels of every frame (used at the lowest resolution only)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        tokens = self.norm(channels_to_last(x)).reshape(b, f, h * w, c)
        return x + channels_to_second(self.attn(tokens).reshape(b, f, h, w, c))


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
