"""Several videos side by side in one video, each with a caption, for comparing samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lfdm_cli.io.image import to_uint8

_DEFAULT_FONT_PX = 11
_ELLIPSIS = "..."  # ASCII: Pillow's bitmap fallback font has no U+2026


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> float:
    try:
        return draw.textlength(text, font=font)
    except UnicodeEncodeError:  # the bitmap font only knows Latin-1
        return draw.textlength(_latin1(text), font=font)


def _latin1(text: str) -> str:
    return text.encode("latin-1", errors="replace").decode("latin-1")


def fit_caption(text: str, max_width: float, font: Any) -> str:
    """`text`, or its longest prefix plus '...' that fits in `max_width` pixels."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = " ".join(text.split())  # newlines and tabs would break the one-line layout
    if _text_width(draw, text, font) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix n with prefix + ellipsis fitting
        mid = (lo + hi + 1) // 2
        if _text_width(draw, text[:mid].rstrip() + _ELLIPSIS, font) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + _ELLIPSIS


def _caption_band(text: str, width: int, height: int, font: Any, background: int) -> np.ndarray:
    band = Image.new("RGB", (width, height), (background,) * 3)
    if text and height > 0:
        draw = ImageDraw.Draw(band)
        text = fit_caption(text, width - 4, font)
        try:
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        except UnicodeEncodeError:
            text = _latin1(text)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = (width - (right - left)) / 2 - left
        y = (height - (bottom - top)) / 2 - top
        draw.text((x, y), text, fill=(0, 0, 0) if background >= 128 else (255, 255, 255), font=font)
    return np.asarray(band)


def default_caption_height(font_px: int = _DEFAULT_FONT_PX) -> int:
    ascent, descent = _font(font_px).getmetrics()
    return ascent + descent + 4


def make_grid(videos: Sequence[Any], captions: Sequence[str] | None = None, ncols: int | None = None,
              pad: int = 2, caption_height: int | None = None, background: int = 255) -> np.ndarray:
    """Tile videos into one uint8 video (T, H', W', 3), row by row, `ncols` per row (default: all
    in one row).

    Each video is (T, H, W, 3) or a single image (H, W, 3), anything `to_uint8` accepts. Tiles
    take the largest height and width; smaller videos are centred on black. T is the longest
    video's length; shorter videos hold their last frame. With `captions`, each tile gets its
    caption on a band below it (Pillow's default font, sized to the band; too-long captions end
    in '...'); `caption_height` defaults to fit an 11 px font, 0 turns captions off. `pad` pixels
    of `background` grey level separate tiles and frame the grid.
    """
    if not videos:
        raise ValueError("make_grid needs at least one video")
    clips = []
    for video in videos:
        clip = to_uint8(video)
        clips.append(clip[None] if clip.ndim == 3 else clip)
    if captions is not None and len(captions) != len(clips):
        raise ValueError(f"{len(captions)} captions for {len(clips)} videos")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n = len(clips)
    ncols = n if ncols is None else max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    frames = max(c.shape[0] for c in clips)
    tile_h = max(c.shape[1] for c in clips)
    tile_w = max(c.shape[2] for c in clips)

    with_captions = captions is not None and any(captions) and caption_height != 0
    if with_captions:
        band_h = default_caption_height() if caption_height is None else int(caption_height)
        font = _font(_DEFAULT_FONT_PX if caption_height is None else max(6, band_h - 4))
    else:
        band_h, font = 0, None

    cell_h = tile_h + band_h
    grid = np.full((frames, nrows * cell_h + (nrows + 1) * pad, ncols * tile_w + (ncols + 1) * pad, 3),
                   background, np.uint8)
    for index, clip in enumerate(clips):
        row, col = divmod(index, ncols)
        y0 = pad + row * (cell_h + pad)
        x0 = pad + col * (tile_w + pad)
        grid[:, y0:y0 + tile_h, x0:x0 + tile_w] = 0
        t, h, w, _ = clip.shape
        top, left = y0 + (tile_h - h) // 2, x0 + (tile_w - w) // 2
        grid[:t, top:top + h, left:left + w] = clip
        grid[t:, top:top + h, left:left + w] = clip[-1]
        if with_captions:
            grid[:, y0 + tile_h:y0 + cell_h, x0:x0 + tile_w] = _caption_band(
                str(captions[index] or ""), tile_w, band_h, font, background)
    return grid
