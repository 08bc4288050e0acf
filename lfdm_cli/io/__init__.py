"""Video and image I/O and visualisation: everything that turns files into uint8 frame arrays
(T, H, W, 3) and back, plus grids and flow/occlusion pictures."""

from lfdm_cli.io.flowviz import (
    flow_to_color,
    grid_to_color,
    grid_to_displacement,
    middlebury_colorwheel,
    occlusion_to_gray,
)
from lfdm_cli.io.grid import make_grid
from lfdm_cli.io.image import FIT_MODES, fit_frames, load_image, resize_frames, save_image, to_uint8
from lfdm_cli.io.video import (
    FRAME_SUFFIXES,
    READ_SUFFIXES,
    frame_files,
    natural_key,
    probe_video,
    read_video,
    write_video,
)

__all__ = [
    "FIT_MODES",
    "FRAME_SUFFIXES",
    "READ_SUFFIXES",
    "fit_frames",
    "flow_to_color",
    "frame_files",
    "grid_to_color",
    "grid_to_displacement",
    "load_image",
    "make_grid",
    "middlebury_colorwheel",
    "natural_key",
    "occlusion_to_gray",
    "probe_video",
    "read_video",
    "resize_frames",
    "save_image",
    "to_uint8",
    "write_video",
]
