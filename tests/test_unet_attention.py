"""The U-Net's fast attention paths equal the reference's plain formulation.

The blocks fold the rotary rotation into per-frame weights, use the fused attention kernel, fold
the linear attention's context into its output projection and work on channels-last tokens. Each
is compared here, in float64 and with gradients, against a direct transcription of the reference's
operations (rotate the projected q and k, explicit softmax over scores, channel layer norm on the
channel axis).
"""

from __future__ import annotations

import pytest
import torch

from lfdm_cli.diffusion.unet3d import (RelativePositionBias, RotaryEmbedding, SpatialAttentionBlock,
                                       SpatialLinearAttentionBlock, TemporalAttentionBlock)


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def channel_norm(x, gamma, eps=1e-5):
    var = torch.var(x, dim=1, unbiased=False, keepdim=True)
    mean = torch.mean(x, dim=1, keepdim=True)
    return (x - mean) / (var + eps).sqrt() * gamma


def rotate_pairs(x, dim, positions_axis_len, freqs):
    """Reference rotary: x*cos + rotate_half_interleaved(x)*sin on the first `dim` channels."""
    pos = torch.arange(positions_axis_len, dtype=freqs.dtype)
    angles = (pos[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    head, tail = x[..., :dim], x[..., dim:]
    pairs = head.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat((head * cos + rotated * sin, tail), dim=-1)


def softmax_attention(q, k, v, bias=None):
    sim = torch.einsum("...id,...jd->...ij", q, k)
    if bias is not None:
        sim = sim + bias
    return torch.einsum("...ij,...jd->...id", sim.softmax(dim=-1), v)


def reference_temporal(block, x, bias):
    b, c, f, h, w = x.shape
    attn = block.attn
    tokens = channel_norm(x, block.norm.gamma).permute(0, 3, 4, 2, 1).reshape(b, h * w, f, c)
    q, k, v = (part.unflatten(-1, (attn.heads, -1)).transpose(-3, -2)  # (b, hw, heads, f, d)
               for part in (tokens @ attn.to_qkv.weight.t()).chunk(3, dim=-1))
    rot = attn._rotary[0]
    q = rotate_pairs(q * attn.scale, rot.dim, f, rot.freqs)
    k = rotate_pairs(k, rot.dim, f, rot.freqs)
    out = softmax_attention(q, k, v, bias).transpose(-3, -2).flatten(-2) @ attn.to_out.weight.t()
    return out.reshape(b, h, w, f, c).permute(0, 4, 3, 1, 2) + x


def reference_linear(block, x):
    b, c, f, h, w = x.shape
    attn = block.attn
    frames = channel_norm(x, block.norm.gamma).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    qkv = torch.nn.functional.conv2d(frames, attn.to_qkv.weight)
    q, k, v = (part.reshape(b * f, attn.heads, -1, h * w) for part in qkv.chunk(3, dim=1))
    q = q.softmax(dim=-2) * attn.scale
    k = k.softmax(dim=-1)
    context = torch.einsum("bhdn,bhen->bhde", k, v)
    out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b * f, -1, h, w)
    out = torch.nn.functional.conv2d(out, attn.to_out.weight, attn.to_out.bias)
    return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4) + x


def reference_spatial(block, x):
    b, c, f, h, w = x.shape
    attn = block.attn
    tokens = channel_norm(x, block.norm.gamma).permute(0, 2, 3, 4, 1).reshape(b, f, h * w, c)
    q, k, v = (part.unflatten(-1, (attn.heads, -1)).transpose(-3, -2)
               for part in (tokens @ attn.to_qkv.weight.t()).chunk(3, dim=-1))
    out = softmax_attention(q * attn.scale, k, v).transpose(-3, -2).flatten(-2) @ attn.to_out.weight.t()
    return out.reshape(b, f, h, w, c).permute(0, 4, 1, 2, 3) + x


def randomise(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


def compare(fast_fn, ref_fn, module, x):
    """Outputs and parameter and input gradients agree to float64 rounding."""
    results = []
    for fn in (fast_fn, ref_fn):
        module.zero_grad()
        xi = x.detach().clone().requires_grad_(True)
        out = fn(xi)
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        (out * weights).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad.clone() for n, p in module.named_parameters()}))
    (out_f, gx_f, gp_f), (out_r, gx_r, gp_r) = results
    torch.testing.assert_close(out_f, out_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx_f, gx_r, rtol=1e-9, atol=1e-9)
    for name in gp_r:
        torch.testing.assert_close(gp_f[name], gp_r[name], rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("side,channels", [(6, 16), (2, 16)])  # 36 px >= 16 ch: folded weights; 4 px < 16: rotated activations
@pytest.mark.parametrize("rotary_dim", [8, 4])  # full and partial rotation of 8-channel heads
@pytest.mark.parametrize("channels_last", [False, True])
def test_temporal_attention(side, channels, rotary_dim, channels_last):
    block = randomise(TemporalAttentionBlock(channels, heads=2, dim_head=8, rotary=RotaryEmbedding(rotary_dim)))
    frame_bias = randomise(RelativePositionBias(2))
    x = torch.randn(2, channels, 5, side, side)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def fast(xi):
        return block(xi, frame_bias(5, xi.device))

    def ref(xi):
        return reference_temporal(block, xi, frame_bias(5, xi.device))

    compare(fast, ref, torch.nn.ModuleList([block, frame_bias]), x)


@pytest.mark.parametrize("block_type,reference,side", [(SpatialLinearAttentionBlock, reference_linear, (5, 4)),
                                                       (SpatialAttentionBlock, reference_spatial, (3, 4))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_spatial_attention(block_type, reference, side, channels_last):
    block = randomise(block_type(12, heads=3, dim_head=4))
    x = torch.randn(2, 12, 3, *side)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    compare(block, lambda xi: reference(block, xi), block, x)


def test_residual_keeps_the_input_layout():
    """A channels-last input stays channels-last through every block (the convolutions rely on it)."""
    x = torch.randn(1, 16, 4, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    rotary, bias = RotaryEmbedding(8), RelativePositionBias(2)
    with torch.no_grad():
        outs = [TemporalAttentionBlock(16, 2, 8, rotary)(x, bias(4, x.device)),
                SpatialLinearAttentionBlock(16, 2, 8)(x), SpatialAttentionBlock(16, 2, 8)(x)]
    for out in outs:
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
