"""Model evaluation: the library behind `lfdm evaluate reconstruction` and `lfdm evaluate generation`.

- `reconstruction`: stage one's self-reconstruction of test videos (the paper's Table 3): L1,
  PSNR and SSIM of every frame of a clip rebuilt from the clip's first frame.
- `generation`: both stages end to end (the paper's Tables 1 and 4): generate from the test
  videos' first frames, then FVD, cFVD, sFVD, KVD, first-frame SSIM and time per video.
- `selection`: which test videos an evaluation uses, and the dataset's identity.

The metrics themselves live in `lfdm_cli.metrics`; this package only decides what is compared
with what and records the settings every number depends on.
"""
