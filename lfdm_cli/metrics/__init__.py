"""Video and frame metrics.

- `i3d`: the Kinetics-400 Inception-I3D in PyTorch (FVD's feature network) and its weights.
- `safe_unpickle`: the restricted unpickler that reads the I3D weights pickle.
- `fvd`: preprocessing, I3D features, FVD, KVD, cFVD/sFVD and the settings saved with scores.
- `video_sets`: dataset folders and folders of generated videos as sets of clips.
- `frame_metrics`: L1, PSNR, SSIM and first-frame SSIM.

Modules are imported on use: `lfdm --help` should not pay for torch models.
"""
