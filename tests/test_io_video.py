"""Video reading/writing: round trips, input kinds, error messages, atomic writes."""

import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from lfdm_cli.errors import RunFailure, UserError
from lfdm_cli.io import probe_video, read_video, to_uint8, write_video
from lfdm_cli.io.video import ffmpeg_exe, natural_key


def smooth_video(t=10, h=48, w=64):
    """Gradients plus a moving square: smooth enough that H.264 at CRF 18 stays close."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = x * 255 // (w - 1)
        frames[i, ..., 1] = y * 255 // (h - 1)
        frames[i, ..., 2] = 96
        frames[i, 12:28, 4 + 4 * i:20 + 4 * i] = (240, 240, 32)
    return frames


def blocky_video(t=6, h=32, w=40):
    """At most 8 colours in flat blocks: a GIF stores this exactly."""
    colors = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
                       [255, 255, 255], [40, 80, 120], [200, 100, 50]], np.uint8)
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        idx = ((np.arange(h)[:, None] // 8) + (np.arange(w)[None, :] // 8) + i) % len(colors)
        frames[i] = colors[idx]
    return frames


def leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def run_ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, capture_output=True)


# ------------------------------------------------------------------------------------ round trips


def test_mp4_round_trip_keeps_count_size_fps_and_pixels(tmp_path):
    frames = smooth_video()
    out = write_video(tmp_path / "clip.mp4", frames, fps=12.5)
    assert out == tmp_path / "clip.mp4"
    back = read_video(out)
    assert back.shape == frames.shape and back.dtype == np.uint8
    err = np.abs(back.astype(int) - frames.astype(int))
    assert err.mean() < 4.0
    assert err.reshape(len(frames), -1).mean(axis=1).max() < 6.0  # every frame, not just on average
    info = probe_video(out)
    assert (info["frames"], info["width"], info["height"], info["codec"]) == (10, 64, 48, "h264")
    assert info["fps"] == pytest.approx(12.5)
    assert info["duration"] == pytest.approx(10 / 12.5, abs=0.05)
    assert leftovers(tmp_path, {"clip.mp4"}) == []


def test_mp4_quality_changes_the_encoding(tmp_path):
    frames = smooth_video()
    best = read_video(write_video(tmp_path / "best.mp4", frames, quality=0))
    worst = read_video(write_video(tmp_path / "worst.mp4", frames, quality=45))
    err_best = np.abs(best.astype(int) - frames).mean()
    err_worst = np.abs(worst.astype(int) - frames).mean()
    assert err_best < 2.0 and err_worst > err_best
    with pytest.raises(UserError, match="CRF"):
        write_video(tmp_path / "bad.mp4", frames, quality=99)


def test_mp4_from_float_tensor_channels_first(tmp_path):
    frames = smooth_video(t=4)
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    back = read_video(write_video(tmp_path / "t.mp4", tensor, fps=8))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4.0


def test_odd_size_mp4_is_padded_to_even_by_edge_replication(tmp_path):
    frames = smooth_video(t=5, h=33, w=47)
    back = read_video(write_video(tmp_path / "odd.mp4", frames))
    assert back.shape == (5, 34, 48, 3)
    assert np.abs(back[:, :33, :47].astype(int) - frames).mean() < 4.0
    # the added row/column repeat the edge instead of adding a black line
    assert np.abs(back[:, 33].astype(int) - back[:, 32].astype(int)).mean() < 6.0
    assert np.abs(back[:, :, 47].astype(int) - back[:, :, 46].astype(int)).mean() < 6.0


def test_gif_round_trip_is_exact_for_few_colours_and_loops(tmp_path):
    frames = blocky_video()
    out = write_video(tmp_path / "clip.gif", frames, fps=10)
    back = read_video(out)
    assert back.shape == frames.shape
    np.testing.assert_array_equal(back, frames)
    with Image.open(out) as im:
        assert im.info["loop"] == 0  # NETSCAPE extension: loop forever
        assert im.info["duration"] == 100
    info = probe_video(out)
    assert (info["frames"], info["width"], info["height"]) == (6, 40, 32)
    assert info["fps"] == pytest.approx(10.0)


def test_gif_of_smooth_content_is_close(tmp_path):
    frames = smooth_video()
    back = read_video(write_video(tmp_path / "smooth.gif", frames))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 6.0


def test_gif_keeps_frame_count_when_frames_repeat(tmp_path):
    # Pillow merges identical consecutive frames into one longer frame; reading expands them.
    base = blocky_video(t=3)
    frames = np.concatenate([base[:1], base[:1], base[:1], base[1:2], base[2:], base[2:]])
    back = read_video(write_video(tmp_path / "rep.gif", frames, fps=8))
    np.testing.assert_array_equal(back, frames)
    still = np.repeat(base[:1], 5, axis=0)
    path = write_video(tmp_path / "still.gif", still)
    assert read_video(path).shape[0] == 5
    assert probe_video(path)["frames"] == 5


def test_png_folder_round_trip_is_exact(tmp_path):
    frames = smooth_video(t=12)
    out = write_video(tmp_path / "frames", frames)
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "frame_0000.png" and names[-1] == "frame_0011.png" and len(names) == 12
    np.testing.assert_array_equal(read_video(out), frames)
    assert probe_video(out)["frames"] == 12
    # trailing slash and a suffix-less name both mean a folder; an old frame folder is replaced
    out2 = write_video(str(tmp_path / "frames") + "/", frames[:3])
    assert out2 == out and len(list(out.iterdir())) == 3
    np.testing.assert_array_equal(read_video(out), frames[:3])


def test_existing_folder_with_other_files_is_not_replaced(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="Refusing to replace"):
        write_video(folder, smooth_video(t=2))
    assert (folder / "notes.txt").read_text() == "keep me"


def test_max_frames(tmp_path):
    frames = blocky_video(t=6)
    for name in ("a.mp4", "a.gif", "a"):
        path = write_video(tmp_path / name, frames)
        assert read_video(path, max_frames=4).shape[0] == 4, name
        assert read_video(path, max_frames=100).shape[0] == 6, name


# ------------------------------------------------------------------------------------ input kinds


def test_frame_folder_is_sorted_naturally_and_modes_become_rgb(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (1, 2, 10, 11):  # lexical order would put 10 and 11 before 2
        value = i * 20
        if i == 1:
            img = Image.new("L", (16, 12), value)
        elif i == 2:
            img = Image.new("RGBA", (16, 12), (value, value, value, 255))
        elif i == 10:
            img = Image.new("RGB", (16, 12), (value,) * 3).convert("P", palette=Image.Palette.ADAPTIVE)
        else:
            img = Image.new("RGB", (16, 12), (value,) * 3)
        img.save(folder / f"frame{i}.{'jpg' if i == 11 else 'png'}", quality=100)
    (folder / "meta.json").write_text("{}")  # not a frame: ignored
    (folder / ".hidden.png").write_bytes(b"junk")  # hidden: ignored
    video = read_video(folder)
    assert video.shape == (4, 12, 16, 3)
    assert np.abs(video[:, 0, 0, 0].astype(int) - [20, 40, 200, 220]).max() <= 2
    assert (video[..., 0] == video[..., 1]).all()


def test_natural_key():
    names = ["f10.png", "f2.png", "F1.png", "f2b.png"]
    assert sorted(names, key=natural_key) == ["F1.png", "f2.png", "f2b.png", "f10.png"]


def test_frame_folder_size_mismatch_names_the_frame(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (16, 12)).save(folder / "0.png")
    Image.new("RGB", (16, 14)).save(folder / "1.png")
    with pytest.raises(UserError, match=r"1\.png is 16x14"):
        read_video(folder)


def test_palette_rgba_and_gray_gifs_become_rgb(tmp_path):
    # palette GIF with a transparent index: transparent pixels come back black
    frames = []
    for i in range(3):
        img = Image.new("P", (10, 8), 1)
        img.putpalette([0, 0, 0, 200, 50 + 40 * i, 10] + [0] * 762)
        img.paste(0, (0, 0, 5, 8))
        frames.append(img)
    frames[0].save(tmp_path / "pal.gif", save_all=True, append_images=frames[1:], transparency=0,
                   duration=100, loop=0, disposal=2)
    video = read_video(tmp_path / "pal.gif")
    assert video.shape == (3, 8, 10, 3)
    assert (video[:, :, :5] == 0).all()
    np.testing.assert_array_equal(video[:, 0, 9], [[200, 50, 10], [200, 90, 10], [200, 130, 10]])
    gray = [Image.new("L", (10, 8), v) for v in (0, 128, 255)]
    gray[0].save(tmp_path / "gray.gif", save_all=True, append_images=gray[1:], duration=50)
    video = read_video(tmp_path / "gray.gif")
    assert video.shape == (3, 8, 10, 3)
    np.testing.assert_array_equal(video[:, 0, 0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])


def test_reads_avi_and_mkv_written_by_ffmpeg(tmp_path):
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=40x24:rate=5", "-frames:v", "4", "-c:v", "mjpeg",
               str(tmp_path / "a.avi"))
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=40x24:rate=5", "-frames:v", "3", "-c:v", "libx264",
               "-pix_fmt", "yuv444p", str(tmp_path / "b.mkv"))
    assert read_video(tmp_path / "a.avi").shape == (4, 24, 40, 3)
    assert read_video(tmp_path / "b.mkv").shape == (3, 24, 40, 3)
    info = probe_video(tmp_path / "a.avi")
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (4, 40, 24, 5.0)


# ----------------------------------------------------------------------------------------- errors


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="not found.*nope.mp4") as exc:
        read_video(tmp_path / "nope.mp4")
    assert exc.value.exit_code == 2
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(UserError, match="empty.mp4.*empty"):
        read_video(tmp_path / "empty.mp4")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(UserError, match="holds no video frames"):
        read_video(empty_dir)


def test_random_bytes_named_mp4_is_a_user_error(tmp_path):
    bad = tmp_path / "random.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=r"ffmpeg could not decode .*random\.mp4: \S"):
        read_video(bad)
    with pytest.raises(UserError, match=r"random\.mp4"):
        probe_video(bad)


def test_truncated_mp4_is_a_user_error(tmp_path):
    # our own output (index at the front): the demuxer sees the missing data
    good = write_video(tmp_path / "good.mp4", smooth_video(t=30))
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.mp4 is truncated"):
        read_video(cut)
    # a plain ffmpeg mp4 (index at the end): the index itself is missing
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=32x32:rate=8", "-frames:v", "10", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", str(tmp_path / "plain.mp4"))
    data = (tmp_path / "plain.mp4").read_bytes()
    (tmp_path / "cut2.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"ffmpeg could not decode .*cut2\.mp4: .*moov atom not found"):
        read_video(tmp_path / "cut2.mp4")


def test_audio_only_file_has_no_video_stream(tmp_path):
    run_ffmpeg("-f", "lavfi", "-i", "sine=duration=0.2", "-c:a", "aac", str(tmp_path / "sound.mp4"))
    with pytest.raises(UserError, match=r"sound\.mp4 has no video stream"):
        read_video(tmp_path / "sound.mp4")


def test_corrupt_gif_and_unsupported_suffixes(tmp_path):
    gif = write_video(tmp_path / "a.gif", blocky_video())
    data = gif.read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.gif"):
        read_video(tmp_path / "cut.gif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=r"unsupported file type '\.txt'") as exc:
        read_video(tmp_path / "notes.txt")
    assert ".mp4" in exc.value.hint and ".gif" in exc.value.hint
    with pytest.raises(UserError, match=r"unknown suffix '\.avi'") as exc:
        write_video(tmp_path / "out.avi", blocky_video())
    assert ".mp4" in exc.value.hint


def test_bad_fps_and_frames(tmp_path):
    with pytest.raises(UserError, match="Frame rate"):
        write_video(tmp_path / "a.mp4", blocky_video(), fps=0)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "a.mp4", [])
    with pytest.raises(ValueError, match="same size"):
        write_video(tmp_path / "a.gif", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)])
    assert leftovers(tmp_path, set()) == []


# ---------------------------------------------------------------------------------- atomic writes


def failing_frames(frames, fail_at, exc=RuntimeError):
    for i, frame in enumerate(frames):
        if i == fail_at:
            raise exc("simulated failure")
        yield frame


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_interrupted_write_leaves_nothing(tmp_path, name):
    with pytest.raises(RuntimeError, match="simulated"):
        write_video(tmp_path / name, failing_frames(smooth_video(), 5))
    assert leftovers(tmp_path, set()) == []


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    old = write_video(tmp_path / "clip.mp4", smooth_video(t=3))
    before = old.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        write_video(old, failing_frames(smooth_video(), 4, KeyboardInterrupt))
    assert old.read_bytes() == before
    assert leftovers(tmp_path, {"clip.mp4"}) == []


def test_streamed_frames_are_written(tmp_path):
    frames = smooth_video(t=6)
    back = read_video(write_video(tmp_path / "s.mp4", (f for f in frames)))
    assert back.shape == frames.shape


# --------------------------------------------------------------------------------------- to_uint8


def test_to_uint8_layouts_and_dtypes():
    frames = smooth_video(t=2)
    assert to_uint8(frames) is not None and to_uint8(frames).dtype == np.uint8
    np.testing.assert_array_equal(to_uint8(frames), frames)
    as_float = frames.astype(np.float32) / 255.0
    np.testing.assert_array_equal(to_uint8(as_float), frames)
    chw = torch.from_numpy(as_float).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_array_equal(to_uint8(chw), frames)
    np.testing.assert_array_equal(to_uint8(chw[0]), frames[0])
    np.testing.assert_array_equal(to_uint8(chw.half()), to_uint8(chw.half().float()))
    gray = to_uint8(np.full((2, 4, 5, 1), 0.5))
    assert gray.shape == (2, 4, 5, 3) and (gray == 128).all()
    clipped = to_uint8(np.array([[[-1.0, 0.5, 2.0]]]))
    np.testing.assert_array_equal(clipped, [[[0, 128, 255]]])
    with pytest.raises(RunFailure, match="NaN"):
        to_uint8(np.full((1, 2, 2, 3), np.nan))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        to_uint8(np.full((1, 2, 2, 3), 300, np.int64))
    with pytest.raises(ValueError, match="channel"):
        to_uint8(np.zeros((2, 5, 5, 5)))
