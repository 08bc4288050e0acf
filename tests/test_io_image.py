"""Image loading/saving and frame resizing."""

import numpy as np
import pytest
from PIL import Image

from lfdm_cli.errors import UserError
from lfdm_cli.io import fit_frames, load_image, save_image


def test_rgb_png_loads_exactly(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.dtype == np.uint8 and img.shape == (12, 20, 3) and img.flags.writeable
    np.testing.assert_array_equal(img, arr)


def test_gray_palette_and_16bit_become_rgb(tmp_path):
    gray = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    img = load_image(tmp_path / "gray.png")
    assert img.shape == (12, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)

    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(load_image(tmp_path / "pal.png")[0, 0], [200, 100, 50])

    deep = Image.fromarray(np.full((3, 4), 65535, np.uint16))  # I;16: white, not clipped
    deep.save(tmp_path / "deep.png")
    assert (load_image(tmp_path / "deep.png") == 255).all()
    Image.fromarray(np.full((3, 4), 257 * 100, np.uint16)).save(tmp_path / "deep2.png")
    assert (load_image(tmp_path / "deep2.png") == 100).all()


def test_transparency_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = 255
    rgba[1, 0, 3] = 0
    rgba[1, 1, 3] = 128
    rgba[1, 2, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(img[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(img[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(img[1, 1], [100, 50, 25])

    la = Image.new("LA", (2, 2), (255, 0))
    la.save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 0).all()

    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([255, 255, 255, 9, 9, 9] + [0] * 762)
    pal.save(tmp_path / "tpal.png", transparency=0)
    assert (load_image(tmp_path / "tpal.png") == 0).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape == (20, 10, 3)


def test_missing_folder_non_image_and_truncated_files(tmp_path):
    with pytest.raises(UserError, match=r"Image not found: .*nope\.png") as exc:
        load_image(tmp_path / "nope.png")
    assert exc.value.exit_code == 2
    with pytest.raises(UserError, match="is a folder"):
        load_image(tmp_path)
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(UserError, match=r"notes\.png is not an image"):
        load_image(tmp_path / "notes.png")

    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"Could not read image .*cut\.png") as exc:
        load_image(tmp_path / "cut.png")
    assert "truncated" in str(exc.value)

    Image.fromarray(arr).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.jpg"):
        load_image(tmp_path / "cut.jpg")


def test_save_image_round_trip_and_bad_suffix(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    out = save_image(tmp_path / "sub" / "x.png", arr)
    np.testing.assert_array_equal(load_image(out), arr)
    save_image(tmp_path / "f.png", arr.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(load_image(tmp_path / "f.png"), arr)
    with pytest.raises(UserError, match="unknown suffix"):
        save_image(tmp_path / "x.tga", arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "sub"]


# ------------------------------------------------------------------------------------ fit_frames


def landscape_frames(t=3, h=480, w=640):
    frames = np.empty((t, h, w, 3), np.uint8)
    frames[...] = (180, 60, 30)
    return frames


def test_fit_pad_keeps_aspect_with_centred_black_bars():
    out = fit_frames(landscape_frames(), 128, "pad")
    assert out.shape == (3, 128, 128, 3) and out.dtype == np.uint8
    # 480x640 -> 96x128: 16 black rows above and below
    assert (out[:, :16] == 0).all() and (out[:, -16:] == 0).all()
    assert (out[:, 16:112] == (180, 60, 30)).all()
    tall = fit_frames(landscape_frames(h=640, w=480)[0], (64, 96), "pad")
    assert tall.shape == (64, 96, 3)
    assert (tall[:, :24] == 0).all() and (tall[:, -24:] == 0).all() and (tall[:, 24:72] != 0).all()


def test_fit_crop_and_stretch_fill_the_frame():
    frames = landscape_frames(t=2)
    # a white band on the left that the centre crop removes: 640 -> 85 wide, 10 columns cut on
    # each side, i.e. 75 source columns, beyond the band plus the filter's reach (7.5 px)
    frames[:, :, :50] = 255
    crop = fit_frames(frames, 64, "crop")
    assert crop.shape == (2, 64, 64, 3)
    assert (crop == (180, 60, 30)).all()
    stretch = fit_frames(frames, (32, 48), "stretch")
    assert stretch.shape == (2, 32, 48, 3)
    assert (stretch[:, :, :3] == 255).all()  # the band is 50 / (640 / 48) = 3.75 columns wide


def test_fit_is_antialiased():
    # A one-pixel checkerboard shrunk 4x must come out flat grey, not aliased black/white stripes.
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    frame = np.repeat(checker[..., None], 3, axis=-1)
    small = fit_frames(frame, 16, "stretch").astype(int)
    assert np.abs(small - 127.5).max() <= 3


def test_fit_same_size_is_a_copy_and_bad_mode_is_an_error():
    frames = landscape_frames(t=1, h=32, w=32)
    out = fit_frames(frames, 32, "pad")
    np.testing.assert_array_equal(out, frames)
    out[...] = 0
    assert frames.max() > 0
    with pytest.raises(UserError, match="Unknown resize mode 'padd'.*") as exc:
        fit_frames(frames, 16, "padd")
    assert "pad" in exc.value.hint
