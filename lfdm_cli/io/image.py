"""Still images and frame arrays: loading, saving, dtype/layout conversion and resizing.

Everything here works on uint8 RGB arrays laid out (H, W, 3) or (T, H, W, 3), the layout the video
readers and writers use. Transparent pixels are composited on black everywhere, the same colour
`fit_frames` pads with, so an RGBA image and its padded resize agree at the borders.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lfdm_cli.atomic import atomic_path
from lfdm_cli.errors import RunFailure, UserError, unknown_name_error

IMAGE_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}
FIT_MODES = ("pad", "crop", "stretch")

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_numpy(x: Any) -> np.ndarray:
    if is_tensor(x):
        import torch

        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # numpy has no bfloat16
        return x.numpy()
    return np.asarray(x)


def to_uint8(frames: Any) -> np.ndarray:
    """Frames or a single image as a contiguous uint8 RGB array, channels last.

    Accepts numpy arrays and torch tensors (any device), 4-D videos (T, H, W, C) or (T, C, H, W)
    and 3-D images (H, W, C) or (C, H, W), with C = 3 (RGB) or 1 (grayscale, repeated to RGB).
    Channels-last wins when both readings are possible. uint8 input is returned as is (made
    contiguous); other integer input must already lie in [0, 255]; float input is taken to be in
    [0, 1], clipped and rounded. NaN values are a RunFailure (they come from a failed model, and a
    silently black frame would hide that).
    """
    arr = as_numpy(frames)
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected an image (H, W, C) or video (T, H, W, C), got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3):
        ch_axis = arr.ndim - 3
        if arr.shape[ch_axis] not in (1, 3):
            raise ValueError(f"no channel axis of size 1 or 3 in shape {arr.shape}")
        arr = np.moveaxis(arr, ch_axis, -1)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise RunFailure("The frames to save contain NaN values (the model output is invalid).")
        out = np.rint(np.clip(arr.astype(np.float32, copy=False), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype.kind in "iub":
        if arr.dtype.kind != "b" and arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"integer frames must lie in [0, 255], got [{arr.min()}, {arr.max()}]")
        out = arr.astype(np.uint8) * (255 if arr.dtype.kind == "b" else 1)
    else:
        raise ValueError(f"unsupported frame dtype {arr.dtype}")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A Pillow image as a writable uint8 (H, W, 3) RGB array.

    Transparency (alpha channels and palette/RGB transparency keys) is composited on black;
    16-bit grayscale is scaled down to 8 bits instead of being clipped as Pillow's convert does.
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        gray = np.asarray(im).astype(np.float32)
        if mode in _SIXTEEN_BIT_MODES or (gray.size and gray.max() > 255):
            gray = gray / 257.0
        gray = np.rint(np.clip(gray, 0, 255)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        im = im.convert("L")
        mode = "L"
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        alpha = rgba[..., 3:4]
        return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)
    return np.array(im.convert("RGB"))


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{what} not found: {path}", hint="Check the path and try again.")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not {what.lower()} file.")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read any image Pillow can read as uint8 (H, W, 3) RGB.

    EXIF orientation is applied (photos show the way viewers show them); grayscale, palette,
    CMYK and 16-bit images become RGB; transparency is composited on black. Multi-frame files
    give their first frame. A missing, unrecognised, truncated or corrupt file is a UserError that
    names the file. Truncation is detected because Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` is
    left at its default (False), which makes `load()` raise.
    """
    p = Path(path)
    _check_file(p, "Image")
    try:
        with Image.open(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return pil_to_rgb(im)
    except UnidentifiedImageError:
        raise UserError(f"{p} is not an image file that can be read (unrecognised format).",
                        hint="Use a PNG, JPEG, BMP, WebP, TIFF or GIF image.") from None
    except Image.DecompressionBombError as exc:
        raise UserError(f"{p} is too large to load safely: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UserError(f"Could not read image {p}: {exc}.",
                        hint="The file is truncated or corrupt; re-export or re-download it.") from None


def save_image(path: str | os.PathLike, image: Any) -> Path:
    """Write one image (anything `to_uint8` accepts, 3-D) atomically; format from the suffix."""
    p = Path(path)
    fmt = IMAGE_WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise UserError(f"Cannot write image {p}: unknown suffix '{p.suffix}'.",
                        hint=f"Supported suffixes: {', '.join(IMAGE_WRITE_FORMATS)}.")
    arr = to_uint8(image)
    if arr.ndim != 3:
        raise ValueError(f"save_image takes one image (H, W, 3), got shape {arr.shape}")
    params = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(p) as tmp:
        Image.fromarray(arr).save(tmp, format=fmt, **params)
    return p


def _target_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {size}")
    return h, w


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of uint8 (T, H, W, 3) frames to (T, height, width, 3).

    Uses torch's uint8 channels-last kernel (antialias=True is a triangle filter widened by the
    scale factor, like Pillow's BILINEAR); it is about ten times faster than Pillow's LANCZOS
    frame by frame, which matters because dataset importers resize every frame they read.
    """
    if frames.shape[1:3] == (height, width):
        return frames.copy()
    import torch

    with warnings.catch_warnings():
        # Read-only inputs (np.frombuffer) are fine: interpolate never writes to its input.
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(np.ascontiguousarray(frames))
    # (T, H, W, 3) permuted to (T, 3, H, W) already has channels-last strides: no copy.
    out = torch.nn.functional.interpolate(src.permute(0, 3, 1, 2), size=(height, width),
                                          mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).numpy())


def fit_frames(frames: Any, size: int | tuple[int, int], mode: str = "pad") -> np.ndarray:
    """Resize frames (T, H, W, 3) or one image (H, W, 3) to `size` (an int means square).

    mode 'pad': keep the aspect ratio, scale so the whole frame fits, centre it on black (the
    reference's dataset preparation). 'crop': scale so the frame covers the target, centre crop.
    'stretch': resize to the target, ignoring the aspect ratio. Resizing is antialiased.
    """
    if mode not in FIT_MODES:
        raise unknown_name_error("resize mode", mode, FIT_MODES)
    arr = to_uint8(frames)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    th, tw = _target_hw(size)
    _, h, w, _ = arr.shape
    if mode == "stretch" or (h, w) == (th, tw):
        out = resize_frames(arr, th, tw)
    elif mode == "pad":
        scale = min(th / h, tw / w)
        nh, nw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
        out = np.zeros((arr.shape[0], th, tw, 3), np.uint8)
        top, left = (th - nh) // 2, (tw - nw) // 2
        out[:, top:top + nh, left:left + nw] = resize_frames(arr, nh, nw)
    else:
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
        top, left = (nh - th) // 2, (nw - tw) // 2
        out = np.ascontiguousarray(resize_frames(arr, nh, nw)[:, top:top + th, left:left + tw])
    return out[0] if single else out
