"""Stage-one training losses: the perceptual pyramid and MRAA's equivariance losses.

Perceptual pyramid (the paper's): the prediction and the driving frame are downsampled to each
scale of the recipe (1, 1/2, 1/4, 1/8) with the anti-aliased downsampling the model uses; at each
scale both go through VGG19 (ImageNet weights, ImageNet normalisation) and the mean absolute
differences of relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 are summed with the recipe's
per-layer weights. The VGG19 here is plain torch with torchvision's parameter names
(`features.<index>.weight`), so torchvision's `vgg19` state dict loads into it as it is.

Pretrained-free fallback (`fallback-l1-ssim`), used only when no VGG19 weights are available and
always recorded in the run's metadata: at each scale, w * (mean |prediction - driving| +
(1 - SSIM(prediction, driving))), with w the mean of the recipe's perceptual layer weights so the
term has the perceptual loss's order of magnitude. SSIM uses a Gaussian window (11 px, sigma 1.5,
shrunk to the largest odd size that fits small scales) over the valid region, K1 0.01, K2 0.03.

Equivariance (MRAA): a random affine+TPS warp T of the driving frame must move the region
centres by T (shift loss: |shift_d - T(shift_T)|) and their affine frames by T's Jacobian
(affine loss: |I - A_d^-1 J_T(shift_T) A_T|, with the first column's sign fixed when the model
reverts SVD axis swaps).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lfdm_cli.errors import UserError
from lfdm_cli.lfae.config import LFAETrainConfig
from lfdm_cli.lfae.layers import AntiAliasDownsample
from lfdm_cli.lfae.transforms import RandomTPS
from lfdm_cli.hashing import file_sha256

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
PERCEPTUAL_VGG = "vgg19-imagenet"
PERCEPTUAL_FALLBACK = "fallback-l1-ssim"
PERCEPTUAL_NONE = "none"
PERCEPTUAL_KINDS = (PERCEPTUAL_VGG, PERCEPTUAL_FALLBACK, PERCEPTUAL_NONE)

# torchvision's vgg19 "features" up to relu5_1: (out channels, or "M" for max-pooling), with a
# ReLU after every convolution; indices follow torchvision's Sequential.
_VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
# Sequential indices right after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
_VGG19_TAPS = (2, 7, 12, 21, 30)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- VGG19 features

class VGG19Features(nn.Module):
    """Frozen VGG19 (torchvision layout) returning relu1_1..relu5_1 of ImageNet-normalised input."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
                layers.append(nn.ReLU(inplace=True))
                channels = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # no dropout or BatchNorm here; keep it a fixed function

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        outs = []
        start = 0
        for tap in _VGG19_TAPS:
            for layer in self.features[start:tap]:
                x = layer(x)
            outs.append(x)
            start = tap
        return outs


def default_vgg19_path() -> Path:
    """Where torchvision caches its VGG19 download (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE




def load_vgg19(path: str | Path) -> VGG19Features:
    """VGG19 features with weights from a torchvision state dict (full model or `features` only)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"VGG19 weights not found: {path}") from None
    except Exception as exc:  # a truncated download or a file that is not a state dict
        raise UserError(f"{path} is not a readable torch state dict ({type(exc).__name__}: {exc}).",
                        hint=f"Download it again from {VGG19_URL}.") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict.", hint=f"Use torchvision's {VGG19_URL}.")
    model = VGG19Features()
    wanted = model.state_dict()
    picked = {}
    for name, ref in wanted.items():
        tensor = state.get(name)
        if tensor is None:
            tensor = state.get(name.removeprefix("features."))  # a bare `features` state dict
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(ref.shape):
            raise UserError(f"{path} does not hold torchvision's VGG19 weights ({name}: "
                            f"{'missing' if tensor is None else tuple(getattr(tensor, 'shape', ()))}, "
                            f"expected {tuple(ref.shape)}).",
                            hint=f"Pass the file torchvision downloads from {VGG19_URL}.")
        picked[name] = tensor.float()
    model.load_state_dict(picked)
    return model


# ----------------------------------------------------------------------------- image pyramid, SSIM

class ImagePyramid(nn.Module):
    """The frame at every scale of the loss, by the model's anti-aliased downsampling."""

    def __init__(self, scales: list[float], channels: int):
        super().__init__()
        self.scales = list(scales)
        self.downs = nn.ModuleList(AntiAliasDownsample(channels, s) for s in self.scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [down(x) for down in self.downs]


def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-t * t / (2 * sigma * sigma))
    return g / g.sum()


def ssim_map_mean(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Differentiable mean SSIM of images in [0, 1] (B, C, H, W); valid-region statistics."""
    size = min(window, min(x.shape[-2:]))
    size -= 1 - size % 2  # odd
    c = x.shape[1]
    g = _gaussian(size, sigma, x.dtype, x.device)
    gx, gy = g.view(1, 1, 1, -1).expand(c, 1, 1, -1), g.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, gx, groups=c), gy, groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur(y * y) - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return (num / den).mean()


# ----------------------------------------------------------------------------- losses

class PerceptualPyramidLoss(nn.Module):
    """Sum over scales and VGG layers of weight * mean |VGG(prediction) - VGG(target)|."""

    kind = PERCEPTUAL_VGG

    def __init__(self, scales: list[float], layer_weights: list[float], vgg: VGG19Features, channels: int = 3):
        super().__init__()
        if len(layer_weights) != len(_VGG19_TAPS):
            raise UserError(f"loss_weights.perceptual needs {len(_VGG19_TAPS)} weights (relu1_1..relu5_1), "
                            f"got {len(layer_weights)}.")
        self.pyramid = ImagePyramid(scales, channels)
        self.layer_weights = list(layer_weights)
        self.vgg = vgg

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        total = prediction.new_zeros(())
        with torch.no_grad():
            target_feats = [self.vgg(t) for t in self.pyramid(target)]
        for pred_scaled, tgt in zip(self.pyramid(prediction), target_feats):
            for w, a, b in zip(self.layer_weights, self.vgg(pred_scaled), tgt):
                total = total + w * (a - b).abs().mean()
        return total


class L1SSIMPyramidLoss(nn.Module):
    """The pretrained-free fallback (see the module docstring)."""

    kind = PERCEPTUAL_FALLBACK

    def __init__(self, scales: list[float], layer_weights: list[float], channels: int = 3):
        super().__init__()
        self.pyramid = ImagePyramid(scales, channels)
        self.weight = sum(layer_weights) / max(1, len(layer_weights))

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        total = prediction.new_zeros(())
        pred = prediction.float()
        tgt = target.float()
        for a, b in zip(self.pyramid(pred), self.pyramid(tgt)):
            total = total + self.weight * ((a - b).abs().mean() + (1 - ssim_map_mean(a, b)))
        return total


def equivariance_shift_loss(driving_shift: Tensor, transformed_shift: Tensor, transform: RandomTPS) -> Tensor:
    return (driving_shift - transform.warp_coordinates(transformed_shift)).abs().mean()


def equivariance_affine_loss(driving_affine: Tensor, transformed_shift: Tensor, transformed_affine: Tensor,
                             transform: RandomTPS, revert_axis_swap: bool) -> Tensor:
    mapped = torch.matmul(transform.jacobian(transformed_shift), transformed_affine)
    value = torch.matmul(torch.inverse(driving_affine), mapped)
    if revert_axis_swap:
        value = value * torch.sign(value[:, :, 0:1, 0:1])
    eye = torch.eye(2, dtype=value.dtype, device=value.device).view(1, 1, 2, 2)
    return (eye - value).abs().mean()


# ----------------------------------------------------------------------------- choosing the loss

@dataclass
class PerceptualChoice:
    kind: str                       # one of PERCEPTUAL_KINDS
    weights_path: Path | None = None
    weights_sha256: str | None = None
    note: str | None = None         # what to tell the user on stderr


def choose_perceptual(layer_weights: list[float], vgg_weights: str | Path | None = None,
                      recorded: str | None = None) -> PerceptualChoice:
    """Decide which perceptual loss a run uses, never silently changing a resumed run's.

    `vgg_weights` is the user's --vgg-weights; `recorded` the kind a resumed run started with.
    """
    if sum(layer_weights) == 0:
        kind = PERCEPTUAL_NONE
        if recorded not in (None, kind):
            raise UserError(f"Cannot resume: the run used the '{recorded}' perceptual loss but the recipe "
                            "now sets all perceptual weights to 0.")
        return PerceptualChoice(kind)
    if vgg_weights is not None:
        path = Path(vgg_weights)
        if not path.is_file():
            raise UserError(f"--vgg-weights {path}: file not found.",
                            hint=f"torchvision's VGG19 weights are at {VGG19_URL}.")
    else:
        path = default_vgg19_path()
        path = path if path.is_file() else None

    if recorded == PERCEPTUAL_FALLBACK:
        note = None
        if path is not None:
            note = (f"Note: VGG19 weights are available ({path}), but this run started with the "
                    f"'{PERCEPTUAL_FALLBACK}' loss and keeps it.")
        return PerceptualChoice(PERCEPTUAL_FALLBACK, note=note)
    if recorded == PERCEPTUAL_VGG and path is None:
        raise UserError(f"Cannot resume: this run was trained with the VGG19 perceptual loss, but no VGG19 "
                        f"weights were found (looked for --vgg-weights and {default_vgg19_path()}).",
                        hint="Pass --vgg-weights FILE with the weights the run started with.")
    if recorded not in (None, PERCEPTUAL_VGG, PERCEPTUAL_FALLBACK):
        raise UserError(f"Cannot resume: the run used the '{recorded}' perceptual loss, but the recipe has "
                        "non-zero perceptual weights.")
    if path is None:
        note = (f"Warning: no VGG19 ImageNet weights found (no --vgg-weights, nothing at "
                f"{default_vgg19_path()}). Training uses the pretrained-free '{PERCEPTUAL_FALLBACK}' loss "
                f"(multi-scale L1 + 1-SSIM) instead of the paper's VGG19 perceptual loss; this is recorded "
                f"in the run. For the paper's loss, download {VGG19_URL} to that path or pass --vgg-weights.")
        return PerceptualChoice(PERCEPTUAL_FALLBACK, note=note)
    return PerceptualChoice(PERCEPTUAL_VGG, weights_path=path, weights_sha256=file_sha256(path))


def build_perceptual(choice: PerceptualChoice, train: LFAETrainConfig, channels: int, frame_size: int
                     ) -> nn.Module | None:
    if choice.kind == PERCEPTUAL_NONE:
        return None
    if choice.kind == PERCEPTUAL_FALLBACK:
        return L1SSIMPyramidLoss(train.scales, train.loss_weights.perceptual, channels)
    if channels != 3:
        raise UserError("The VGG19 perceptual loss needs RGB frames (num_channels: 3).")
    smallest = min(int(frame_size * s) for s in train.scales)
    if smallest < 16:
        raise UserError(f"The VGG19 perceptual loss needs images of at least 16x16 at every loss scale, but "
                        f"scale {min(train.scales)} of {frame_size}x{frame_size} frames is {smallest}x{smallest}.",
                        hint="Drop the smallest entries of lfae.train.scales for small frames.")
    return PerceptualPyramidLoss(train.scales, train.loss_weights.perceptual, load_vgg19(choice.weights_path),
                                 channels)


# ----------------------------------------------------------------------------- the training forward

class LFAETrainingModule(nn.Module):
    """The LFAE plus its losses: one forward per training step (what DDP wraps).

    forward(source, driving, transform) -> (weighted loss terms, the reconstruction dict).
    """

    def __init__(self, lfae: nn.Module, train: LFAETrainConfig, perceptual: nn.Module | None):
        super().__init__()
        self.lfae = lfae
        self.perceptual = perceptual
        self.weights = train.loss_weights
        self.revert_axis_swap = bool(getattr(lfae.config, "revert_axis_swap", True))

    def forward(self, source: Tensor, driving: Tensor, transform: RandomTPS | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
        generated = self.lfae.reconstruct(source, driving)
        losses: dict[str, Tensor] = {}
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(generated["prediction"], driving)
        w_shift, w_affine = self.weights.equivariance_shift, self.weights.equivariance_affine
        if transform is not None and (w_shift or w_affine):
            transformed = transform.transform_frame(driving)
            t_params = self.lfae.region_predictor(transformed)
            d_params = generated["driving_region_params"]
            # The geometry runs in float32 even under autocast: inverses and Jacobians of
            # near-singular 2x2 frames lose too much in half precision.
            with torch.autocast(device_type=source.device.type, enabled=False):
                if w_shift:
                    losses["equivariance_shift"] = w_shift * equivariance_shift_loss(
                        d_params.shift.float(), t_params.shift.float(), transform)
                if w_affine:
                    if d_params.affine is None or t_params.affine is None:
                        raise UserError("equivariance_affine needs region affines: set estimate_affine "
                                        "(or pca_based) in the model configuration, or its weight to 0.")
                    losses["equivariance_affine"] = w_affine * equivariance_affine_loss(
                        d_params.affine.float(), t_params.shift.float(), t_params.affine.float(), transform,
                        self.revert_axis_swap)
        return losses, generated


def print_note(choice: PerceptualChoice) -> None:
    if choice.note:
        print(choice.note, file=sys.stderr, flush=True)
