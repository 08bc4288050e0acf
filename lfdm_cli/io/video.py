"""Reading and writing videos: container files through ffmpeg, GIFs and frame folders through Pillow.

Frames are uint8 arrays (T, H, W, 3), RGB. The ffmpeg binary comes from imageio-ffmpeg
(`get_ffmpeg_exe()`); it is driven directly rather than through imageio-ffmpeg's frame generators
because those neither report ffmpeg's exit status nor keep its error messages, and both are what
turns a corrupt or truncated file into a clear error here. Decoded frames arrive as a PPM stream,
whose per-frame header carries the size, so no size has to be parsed from ffmpeg's log (which
would get rotated phone videos wrong).

Writes are atomic: the output is built under a temporary name beside the target and renamed into
place once complete, so an interrupted write never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lfdm_cli.atomic import atomic_dir, atomic_path
from lfdm_cli.errors import RunFailure, UserError
from lfdm_cli.io.image import load_image, pil_to_rgb, to_uint8

FFMPEG_SUFFIXES = (".mp4", ".m4v", ".avi", ".mov", ".webm", ".mkv", ".mpg", ".mpeg", ".wmv", ".flv",
                   ".ogv")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
READ_SUFFIXES = FFMPEG_SUFFIXES + (".gif",)
WRITE_KINDS = ".mp4 (H.264), .gif, or a folder of PNG frames (a path without suffix or ending in '/')"

DEFAULT_CRF = 18  # x264's "visually lossless" point; the codec tolerance the round-trip tests use
FRAME_NAME = "frame_{:04d}.png"
_FRAME_NAME_RE = re.compile(r"frame_\d+\.png")
# Marks GIFs written here with their per-frame duration, so runs of identical frames, which
# Pillow merges into one longer frame, are expanded again on reading and T survives a round trip.
_GIF_MARKER = re.compile(rb"lfdm frame_ms=(\d+)")
_MIN_GIF_FRAME_MS = 20  # browsers show shorter GIF delays as 100 ms


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:  # no bundled binary for this platform and none on PATH
        raise RunFailure(f"No ffmpeg executable found: {exc}",
                         hint="Install ffmpeg or set IMAGEIO_FFMPEG_EXE to its path.") from None


def natural_key(name: str) -> tuple:
    """Sort key putting 'frame2' before 'frame10'."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower()))


# ----------------------------------------------------------------------------------------- reading


def _video_source(path: str | os.PathLike) -> tuple[Path, str]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"Video not found: {p}", hint="Check the path and try again.")
    if p.is_dir():
        return p, "frames"
    suffix = p.suffix.lower()
    if suffix == ".gif":
        return p, "gif"
    if suffix in FFMPEG_SUFFIXES:
        if p.stat().st_size == 0:
            raise UserError(f"Video file {p} is empty (0 bytes).")
        return p, "ffmpeg"
    hint = f"Supported: {', '.join(READ_SUFFIXES)} files and folders of {'/'.join(FRAME_SUFFIXES)} frames."
    if suffix in FRAME_SUFFIXES:
        hint = "Give the folder that holds the frames, not one image. " + hint
    raise UserError(f"Cannot read {p} as a video: unsupported file type '{suffix or '(none)'}'.", hint=hint)


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder, in natural order (hidden files and others ignored)."""
    files = [f for f in folder.iterdir()
             if f.suffix.lower() in FRAME_SUFFIXES and not f.name.startswith(".") and f.is_file()]
    if not files:
        raise UserError(f"Folder {folder} holds no video frames.",
                        hint=f"A frame folder holds {'/'.join(FRAME_SUFFIXES)} images, one per frame.")
    return sorted(files, key=lambda f: natural_key(f.name))


def _read_folder(folder: Path, max_frames: int | None) -> np.ndarray:
    files = frame_files(folder)[:max_frames]
    frames = []
    for f in files:
        img = load_image(f)
        if frames and img.shape != frames[0].shape:
            raise UserError(f"Frame {f} is {img.shape[1]}x{img.shape[0]} but {files[0].name} is "
                            f"{frames[0].shape[1]}x{frames[0].shape[0]}; all frames of a video must "
                            "have the same size.")
        frames.append(img)
    return np.stack(frames)


def _gif_frame_ms(im: Image.Image) -> int | None:
    match = _GIF_MARKER.search(im.info.get("comment", b"") or b"")
    return int(match.group(1)) if match else None


def _read_gif(path: Path, max_frames: int | None) -> np.ndarray:
    frames: list[np.ndarray] = []
    try:
        with Image.open(path) as im:
            marker_ms = _gif_frame_ms(im)
            for index in itertools.count():
                try:
                    im.seek(index)
                except EOFError:
                    break
                im.load()
                rgb = pil_to_rgb(im)
                repeats = 1
                if marker_ms:
                    repeats = max(1, round(im.info.get("duration", marker_ms) / marker_ms))
                frames.extend([rgb] * repeats)
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except UnidentifiedImageError:
        raise UserError(f"{path} is not a GIF file that can be read (unrecognised format).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"Could not read GIF {path}: {exc}.",
                        hint="The file is truncated or corrupt; re-export or re-download it.") from None
    if not frames:
        raise UserError(f"GIF {path} contains no frames.")
    return np.stack(frames[:max_frames])


def _ffmpeg_error(stderr: str) -> str:
    """The most telling line of ffmpeg's error output, without its '[component @ 0x..]' prefix."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith("Last message repeated")]
    if not lines:
        return "no error message"
    return lines[0][:300]


def _decode_error(path: Path, stderr: str) -> UserError:
    if "matches no streams" in stderr or "does not contain any stream" in stderr:
        return UserError(f"{path} has no video stream.")
    return UserError(f"ffmpeg could not decode {path}: {_ffmpeg_error(stderr)}",
                     hint="The file is corrupt, truncated or not a video; re-export or re-download it.")


def _read_ppm_frame(stream: IO[bytes]) -> np.ndarray | None:
    magic = stream.readline()
    if not magic:
        return None
    dims = stream.readline().split()
    stream.readline()  # maxval, always 255 for rgb24
    if magic.strip() != b"P6" or len(dims) != 2:
        raise RunFailure(f"Unexpected frame header from ffmpeg: {magic[:20]!r}")
    width, height = int(dims[0]), int(dims[1])
    size = width * height * 3
    data = stream.read(size)
    if len(data) < size:
        return None  # ffmpeg stopped mid-frame; its exit status and log say why
    return np.frombuffer(data, np.uint8).reshape(height, width, 3)


def _read_ffmpeg(path: Path, max_frames: int | None) -> np.ndarray:
    # 'file:' stops ffmpeg reading a name like 'pipe:x.mp4' or 'http:...' as a protocol.
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", f"file:{path}",
           "-map", "0:v:0"]
    if max_frames is not None:
        cmd += ["-frames:v", str(max_frames)]
    cmd += ["-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "pipe:1"]
    frames: list[np.ndarray] = []
    with tempfile.TemporaryFile() as errlog:
        # Own session: a Ctrl-C reaches Python only, which then stops ffmpeg itself.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errlog,
                                start_new_session=True)
        try:
            while (frame := _read_ppm_frame(proc.stdout)) is not None:
                frames.append(frame)
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        errlog.seek(0)
        stderr = errlog.read().decode("utf-8", errors="replace")
    if "partial file" in stderr:
        # The container promises more data than the file holds: a cut-off copy or download.
        detail = _ffmpeg_error("\n".join(l for l in stderr.splitlines() if "partial file" in l))
        raise UserError(f"{path} is truncated: ffmpeg decoded {len(frames)} frame(s), then found "
                        f"the rest missing ({detail}).", hint="Re-export or re-download the file.")
    if returncode != 0:
        raise _decode_error(path, stderr)
    if not frames:
        raise UserError(f"{path} contains no video frames.")
    if any(f.shape != frames[0].shape for f in frames):
        raise UserError(f"The frame size of {path} changes mid-video; this is not supported.")
    return np.stack(frames)


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """Read a video as uint8 (T, H, W, 3) RGB frames (the first `max_frames` if given).

    Reads mp4/m4v/avi/mov/webm/mkv/mpg/wmv/flv/ogv files through ffmpeg (first video stream,
    rotation metadata applied), GIFs through Pillow (all frames, palette/transparency composited
    on black), and folders of png/jpg/jpeg/bmp frames sorted naturally (frame2 before frame10).
    A missing, empty, unreadable, corrupt or truncated file, or one without frames, is a
    UserError naming the file and the problem.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    p, kind = _video_source(path)
    if kind == "frames":
        return _read_folder(p, max_frames)
    if kind == "gif":
        return _read_gif(p, max_frames)
    return _read_ffmpeg(p, max_frames)


_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>\w+)(?P<rest>.*)")
_SIZE_RE = re.compile(r"[ ,](\d+)x(\d+)(?=[ ,\[]|$)")
_FPS_RE = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)")
_FRAMES_RE = re.compile(r"frame=\s*(\d+)")


def _probe_ffmpeg(path: Path) -> dict[str, Any]:
    # Copying the stream to the null muxer demuxes without decoding: an exact frame count for the
    # price of reading the file once.
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", f"file:{path}", "-map", "0:v:0",
           "-c", "copy", "-f", "null", "-"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True)
    log = proc.stderr.decode("utf-8", errors="replace")
    stream = _STREAM_RE.search(log)
    if proc.returncode != 0 or stream is None:
        errors = "\n".join(line for line in log.splitlines()
                           if "rror" in line or "not found" in line or "matches no" in line)
        raise _decode_error(path, errors or log)
    info: dict[str, Any] = {"path": str(path), "kind": "video", "codec": stream.group("codec"),
                            "frames": None, "fps": None, "width": None, "height": None,
                            "duration": None}
    rest = stream.group("rest")
    if size := _SIZE_RE.search(rest):
        info["width"], info["height"] = int(size.group(1)), int(size.group(2))
    rates = {unit: float(value) * (1000 if k else 1) for value, k, unit in _FPS_RE.findall(rest)}
    info["fps"] = rates.get("fps") or rates.get("tbr")
    if duration := _DURATION_RE.search(log):
        h, m, s = duration.groups()
        info["duration"] = int(h) * 3600 + int(m) * 60 + float(s)
    rotation = _ROTATION_RE.search(log)
    if rotation and info["width"] is not None:
        degrees = float(rotation.group(1) or rotation.group(2))
        if round(abs(degrees)) % 180 == 90:  # ffmpeg rotates on decoding, so width and height swap
            info["width"], info["height"] = info["height"], info["width"]
    counts = _FRAMES_RE.findall(log)
    if counts:
        info["frames"] = int(counts[-1])
    return info


def _probe_gif(path: Path) -> dict[str, Any]:
    try:
        with Image.open(path) as im:
            width, height = im.size
            marker_ms = _gif_frame_ms(im)
            durations = []
            for index in itertools.count():
                try:
                    im.seek(index)
                except EOFError:
                    break
                durations.append(im.info.get("duration", 0) or 0)
    except UnidentifiedImageError:
        raise UserError(f"{path} is not a GIF file that can be read (unrecognised format).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"Could not read GIF {path}: {exc}.") from None
    if marker_ms:
        frames = sum(max(1, round((d or marker_ms) / marker_ms)) for d in durations)
        frame_ms = float(marker_ms)
    else:
        frames = len(durations)
        positive = sorted(d for d in durations if d > 0)
        frame_ms = float(positive[len(positive) // 2]) if positive else None
    return {"path": str(path), "kind": "gif", "codec": "gif", "frames": frames,
            "fps": 1000.0 / frame_ms if frame_ms else None, "width": width, "height": height,
            "duration": sum(durations) / 1000.0 if any(durations) else None}


def _probe_folder(folder: Path) -> dict[str, Any]:
    files = frame_files(folder)
    try:
        with Image.open(files[0]) as im:
            width, height = im.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"Could not read image {files[0]}: {exc}.") from None
    return {"path": str(folder), "kind": "frames", "codec": None, "frames": len(files), "fps": None,
            "width": width, "height": height, "duration": None}


def probe_video(path: str | os.PathLike) -> dict[str, Any]:
    """Cheap metadata without decoding frames.

    Returns {path, kind ('video' | 'gif' | 'frames'), codec, frames, fps, width, height,
    duration}; values that cannot be known are None (a frame folder has no fps). For container
    files `frames` is the number of video packets, exact for the usual codecs.
    """
    p, kind = _video_source(path)
    if kind == "frames":
        return _probe_folder(p)
    if kind == "gif":
        return _probe_gif(p)
    return _probe_ffmpeg(p)


# ----------------------------------------------------------------------------------------- writing


def _frames_iter(frames: Any) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames from an array/tensor (T, ...) or an iterable of frames."""
    if isinstance(frames, np.ndarray) or (hasattr(frames, "ndim") and hasattr(frames, "shape")):
        if frames.ndim != 4:
            raise ValueError(f"expected frames shaped (T, H, W, 3) or (T, 3, H, W), got {tuple(frames.shape)}")
        yield from to_uint8(frames)
        return
    for frame in frames:
        frame = to_uint8(frame)
        if frame.ndim != 3:
            raise ValueError(f"each frame must be (H, W, 3) or (3, H, W), got {frame.shape}")
        yield frame


def _checked(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    shape = None
    for index, frame in enumerate(frames):
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise ValueError(f"frame {index} is shaped {frame.shape}, frame 0 {shape}: "
                             "all frames of a video must have the same size")
        yield frame
    if shape is None:
        raise ValueError("no frames to write")


def _write_mp4(target: Path, frames: Iterator[np.ndarray], fps: float, crf: int) -> None:
    first = next(frames, None)
    if first is None:
        raise ValueError("no frames to write")
    height, width = first.shape[:2]
    # yuv420p needs even sizes: odd ones get one replicated edge row/column (bottom/right), so
    # the video is up to one pixel larger but loses nothing and shows no border line.
    pad_h, pad_w = height % 2, width % 2
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(target) as tmp, tempfile.TemporaryFile() as errlog:
        cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width + pad_w}x{height + pad_h}",
               "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0", "-an",
               "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
               "-movflags", "+faststart", "-f", "mp4", f"file:{tmp}"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errlog,
                                start_new_session=True)
        try:
            for frame in itertools.chain([first], frames):
                if pad_h or pad_w:
                    frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                try:
                    proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
                except BrokenPipeError:
                    break  # ffmpeg quit early; its exit status and log below say why
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            returncode = proc.wait()
        except BaseException:
            # Kill rather than close stdin: closing would let ffmpeg finish a valid, short video.
            proc.kill()
            proc.wait()
            with contextlib.suppress(OSError):
                proc.stdin.close()
            raise
        if returncode != 0:
            errlog.seek(0)
            message = _ffmpeg_error(errlog.read().decode("utf-8", errors="replace"))
            raise RunFailure(f"ffmpeg could not encode {target}: {message}")


def _write_gif(target: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    if not images:
        raise ValueError("no frames to write")
    # GIF delays are whole centiseconds.
    frame_ms = max(_MIN_GIF_FRAME_MS, int(round(100.0 / fps)) * 10)
    with atomic_path(target) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms,
                       loop=0, comment=f"lfdm frame_ms={frame_ms}".encode())


def _is_replaceable_frame_folder(folder: Path) -> bool:
    return all(_FRAME_NAME_RE.fullmatch(f.name) for f in folder.iterdir())


def _write_folder(target: Path, frames: Iterator[np.ndarray]) -> None:
    if target.exists():
        if not target.is_dir():
            raise UserError(f"Cannot write frames to {target}: it exists and is not a folder.")
        if not _is_replaceable_frame_folder(target):
            raise UserError(f"Refusing to replace folder {target}: it holds files other than "
                            f"{FRAME_NAME.format(0)}-style frames.",
                            hint="Choose a new or empty folder for the frames.")
    with atomic_dir(target, overwrite=True) as tmp:
        count = 0
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / FRAME_NAME.format(index), format="PNG", compress_level=4)
            count += 1
        if count == 0:
            raise ValueError("no frames to write")


def output_kind(path: str | os.PathLike) -> str:
    """mp4, gif, or frames (a folder of PNGs: a path without suffix, ending in '/', or a folder)."""
    text = os.fspath(path)
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.is_dir() or not p.suffix:
        return "frames"
    suffix = p.suffix.lower()
    if suffix in (".mp4", ".gif"):
        return suffix[1:]
    raise UserError(f"Cannot write video {p}: unknown suffix '{p.suffix}'.",
                    hint=f"Supported outputs: {WRITE_KINDS}.")


def write_video(path: str | os.PathLike, frames: Any, fps: float = 8.0, quality: int | None = None) -> Path:
    """Write frames as a video, atomically; returns the path written.

    `frames`: uint8 (T, H, W, 3) or float in [0, 1], numpy or torch, channels last or (T, 3, H, W)
    (see `to_uint8`), or any iterable of such frames (streamed to ffmpeg for mp4).
    The output kind follows the path: `.mp4` is H.264 (libx264, yuv420p, `fps`, constant quality
    CRF `quality`, 0 best .. 51 worst, default 18; odd sizes are padded to even by repeating the
    last row/column); `.gif` loops forever with 1/fps per frame (whole centiseconds, at least
    20 ms, 256 colours per frame); a path without suffix, ending in '/', or an existing folder
    becomes a folder of `frame_0000.png`, ... (an existing folder is replaced only if it holds
    nothing but such frames).
    """
    kind = output_kind(path)
    if not (isinstance(fps, numbers.Real) and np.isfinite(fps) and fps > 0):
        raise UserError(f"Frame rate must be a positive number, got {fps!r}.")
    if quality is not None and not (isinstance(quality, (int, np.integer)) and 0 <= quality <= 51):
        raise UserError(f"Video quality (x264 CRF) must be an integer from 0 to 51, got {quality!r}.")
    target = Path(path)
    stream = _checked(_frames_iter(frames))
    try:
        if kind == "mp4":
            _write_mp4(target, stream, float(fps), DEFAULT_CRF if quality is None else int(quality))
        elif kind == "gif":
            _write_gif(target, stream, float(fps))
        else:
            _write_folder(target, stream)
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        raise UserError(f"Cannot write {target}: {exc.strerror or exc}.") from None
    except OSError as exc:
        raise RunFailure(f"Writing {target} failed: {exc.strerror or exc}.") from None
    return target
