"""Video grids with captions, flow colouring and occlusion pictures."""

import numpy as np
import pytest
import torch

from lfdm_cli.io import (
    flow_to_color,
    grid_to_color,
    grid_to_displacement,
    make_grid,
    middlebury_colorwheel,
    occlusion_to_gray,
)
from lfdm_cli.io.grid import _font, default_caption_height, fit_caption


def solid(t, h, w, value):
    return np.full((t, h, w, 3), value, np.uint8)


# ------------------------------------------------------------------------------------------ grid


def test_grid_layout_padding_and_held_last_frame():
    a = np.random.default_rng(0).integers(0, 256, (4, 16, 20, 3), dtype=np.uint8)
    b = solid(2, 16, 20, 50)
    b[1] = 60
    c = solid(4, 8, 10, 70)
    grid = make_grid([a, b, c], ncols=2, pad=3)
    assert grid.shape == (4, 2 * 16 + 3 * 3, 2 * 20 + 3 * 3, 3)
    np.testing.assert_array_equal(grid[:, 3:19, 3:23], a)
    assert (grid[1:, 3:19, 26:46] == 60).all()  # b ended after 2 frames: holds its last frame
    assert (grid[0, 3:19, 26:46] == 50).all()
    # c is smaller: centred on black inside its 16x20 tile in row 2
    tile = grid[:, 22:38, 3:23]
    assert (tile[:, 4:12, 5:15] == 70).all() and (tile[:, :4] == 0).all()
    assert (grid[:, :3] == 255).all() and (grid[:, :, :3] == 255).all()  # white frame
    assert (grid[:, 22:38, 26:46] == 255).all()  # the empty cell


def test_grid_captions_are_drawn_under_each_tile():
    videos = [solid(2, 24, 40, 255), solid(2, 24, 40, 255)]
    band = default_caption_height()
    grid = make_grid(videos, captions=["left", ""], pad=2)
    assert grid.shape == (2, 24 + band + 4, 2 * 40 + 6, 3)
    left_band = grid[:, 26:26 + band, 2:42]
    right_band = grid[:, 26:26 + band, 44:84]
    assert (left_band < 128).any()  # dark text on the white band
    assert (right_band == 255).all()  # empty caption: nothing drawn
    assert (left_band[0] == left_band[1]).all()
    no_captions = make_grid(videos, pad=2)
    assert no_captions.shape == (2, 28, 86, 3)
    tall = make_grid(videos, captions=["a", "b"], caption_height=30)
    assert tall.shape[1] == 24 + 30 + 4


def test_long_captions_are_truncated_with_an_ellipsis():
    font = _font(11)
    text = "a very long caption that cannot possibly fit into a narrow tile"
    short = fit_caption(text, 60, font)
    assert short.endswith("...") and len(short) < len(text)
    assert font.getlength(short) <= 60
    assert fit_caption("ok", 60, font) == "ok"
    grid = make_grid([solid(1, 8, 30, 0)], captions=[text + " \u00fc\u4e2d\u6587"])
    assert grid.shape[2] == 34


def test_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        make_grid([])
    with pytest.raises(ValueError, match="captions"):
        make_grid([solid(1, 4, 4, 0)], captions=["a", "b"])


# ------------------------------------------------------------------------------------- flowviz


def test_colorwheel_matches_middlebury():
    wheel = middlebury_colorwheel()
    assert wheel.shape == (55, 3) and wheel.dtype == np.uint8
    # segment starts: RY 0, YG 15, GC 21, CB 25, BM 36, MR 49
    np.testing.assert_array_equal(wheel[[0, 15, 21, 25, 36, 49]],
                                  [[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255],
                                   [0, 0, 255], [255, 0, 255]])
    np.testing.assert_array_equal(wheel[1], [255, 17, 0])  # floor(255 / 15)
    np.testing.assert_array_equal(wheel[54], [255, 0, 43])  # 255 - floor(255 * 5 / 6)


def test_flow_colors():
    flow = np.zeros((2, 3, 2), np.float32)
    flow[0, 0] = (4.0, 0.0)  # largest: +x at full magnitude -> pure red
    flow[0, 1] = (2.0, -0.0)  # half magnitude, negative zero dy -> red faded halfway to white
    flow[0, 2] = (-4.0, 0.0)  # -x: the opposite side of the wheel (blue-cyan)
    rgb = flow_to_color(flow)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [255, 127, 127])
    np.testing.assert_array_equal(rgb[0, 2], [0, 209, 255])
    np.testing.assert_array_equal(rgb[1, 0], [255, 255, 255])  # no motion: white
    beyond = flow_to_color(flow, max_flow=2.0)
    np.testing.assert_array_equal(beyond[0, 0], [191, 0, 0])  # outside the unit disc: 75%
    np.testing.assert_array_equal(beyond[0, 1], [255, 0, 0])
    assert (flow_to_color(np.zeros((4, 4, 2))) == 255).all()
    nan = flow.copy()
    nan[1, 1] = (np.nan, 1.0)
    assert (flow_to_color(nan)[1, 1] == 0).all()
    batch = torch.from_numpy(np.stack([flow, flow * 2]))
    both = flow_to_color(batch)  # one scale for the whole batch
    assert both.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(both[1, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(both[0, 0, 0], [255, 127, 127])
    with pytest.raises(ValueError, match="H, W, 2"):
        flow_to_color(np.zeros((4, 4, 3)))


def identity_grid(n, h, w):
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    return torch.nn.functional.affine_grid(theta, (n, 1, h, w), align_corners=False)


def test_identity_grid_has_zero_displacement():
    grid = identity_grid(2, 6, 10)
    disp = grid_to_displacement(grid)
    assert isinstance(disp, torch.Tensor) and disp.shape == (2, 6, 10, 2)
    assert disp.abs().max() < 1e-5
    disp_np = grid_to_displacement(grid.numpy())
    assert isinstance(disp_np, np.ndarray) and np.abs(disp_np).max() < 1e-5
    assert (grid_to_color(grid) == 255).all()  # float noise of ~1e-7 px is not coloured


def test_displacement_agrees_with_grid_sample():
    h, w = 6, 10
    image = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    grid = identity_grid(1, h, w).clone()
    grid[..., 0] += 2 * 2.0 / w  # sample two pixels to the right
    grid[..., 1] -= 1 * 2.0 / h  # and one pixel up
    warped = torch.nn.functional.grid_sample(image, grid, align_corners=False)
    assert torch.allclose(warped[0, 0, 1:, :-2], image[0, 0, :-1, 2:], atol=1e-4)
    disp = grid_to_displacement(grid)
    assert torch.allclose(disp[..., 0], torch.tensor(2.0), atol=1e-5)
    assert torch.allclose(disp[..., 1], torch.tensor(-1.0), atol=1e-5)


def test_occlusion_to_gray():
    occ = torch.tensor([[[[0.0, 0.5], [1.0, 2.0]]]])  # (1, 1, 2, 2)
    gray = occlusion_to_gray(occ)
    assert gray.shape == (1, 2, 2, 3) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray[0, ..., 0], [[0, 128], [255, 255]])
    assert (gray[..., 0] == gray[..., 2]).all()
    assert occlusion_to_gray(np.zeros((3, 2, 4, 5))).shape == (3, 2, 4, 5, 3)  # (..., h, w)
    assert occlusion_to_gray(np.zeros((4, 5))).shape == (4, 5, 3)
