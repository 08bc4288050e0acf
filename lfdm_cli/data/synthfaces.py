"""SynthFaces: procedurally drawn talking-head videos with the seven MUG expression classes.

The project must train and test without downloads, so this renders a MUG-like dataset: every
subject is a drawn identity (face shape, skin, hair, eyes, brows, nose, mouth, glasses,
background) and performs each expression as a neutral -> apex -> hold/release time course.

How it is drawn: every part of the face is a polygon or polyline in *face coordinates* (x right,
y down, face half-width about 1, origin between the cheekbones). A per-frame affine pose (small
translation, roll, scale) maps them to a canvas `SUPERSAMPLE` times the target size, where PIL
draws them without antialiasing; a box-filter reduction then gives antialiased edges. Ellipses are
drawn as polygons so that the pose rotation applies to them too.

Expressions are driven by a small set of action-unit-like controls (`CONTROLS`), each class has an
apex vector over them (`APEX`), and each video draws its own intensity, onset, speed, hold or
release, blinks and idle head motion.

Determinism: every random number comes from numpy Generators seeded by (seed, subject) for the
identity and (seed, subject, class, take) for the performance; PIL's rasteriser is deterministic,
so the same arguments give byte-identical arrays.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# The MUG expression classes (alphabetical, as in MUG's folder names).
CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")

SUPERSAMPLE = 4

# Expression controls, loosely after FACS action units. Values are roughly in [-1, 1].
CONTROLS = (
    "brow_inner_up",   # AU1
    "brow_outer_up",   # AU2
    "brow_down",       # AU4 (vertical part)
    "brow_together",   # AU4 (horizontal part)
    "eye_open",        # AU5 (>0) / lids lowered (<0)
    "lower_lid_up",    # AU6/AU7: lower lid raised, eyes narrowed from below
    "cheek_up",        # AU6
    "nose_wrinkle",    # AU9
    "upper_lip_up",    # AU10
    "smile",           # AU12
    "frown",           # AU15: lip corners down
    "lip_stretch",     # AU20 (>0 wider, <0 rounder)
    "lip_press",       # AU23/24
    "jaw_drop",        # AU26/27
    "head_pitch",      # head down (>0) or back (<0)
    "head_tilt",       # head rolled away, to the side `asym` picks
)
_C = {name: i for i, name in enumerate(CONTROLS)}

APEX: dict[str, dict[str, float]] = {
    "anger": {"brow_down": 1.0, "brow_together": 1.0, "eye_open": 0.25, "lower_lid_up": 0.5,
              "lip_press": 1.0, "frown": 0.35, "head_pitch": 0.25},
    "disgust": {"nose_wrinkle": 1.0, "upper_lip_up": 1.0, "brow_down": 0.55, "brow_together": 0.4,
                "lower_lid_up": 0.6, "cheek_up": 0.4, "frown": 0.35, "eye_open": -0.2, "head_tilt": 1.0,
                "head_pitch": -0.2},
    "fear": {"brow_inner_up": 1.0, "brow_outer_up": 0.5, "brow_together": 0.7, "eye_open": 1.0,
             "lip_stretch": 1.0, "jaw_drop": 0.35, "frown": 0.3, "upper_lip_up": 0.2,
             "head_pitch": -0.3},
    "happiness": {"smile": 1.0, "cheek_up": 1.0, "lower_lid_up": 0.8, "eye_open": -0.3,
                  "jaw_drop": 0.35, "upper_lip_up": 0.35, "head_pitch": -0.15},
    "neutral": {},
    "sadness": {"brow_inner_up": 1.0, "brow_together": 0.45, "brow_outer_up": -0.35, "frown": 1.0,
                "eye_open": -0.4, "lip_press": 0.35, "head_pitch": 1.0},
    "surprise": {"brow_inner_up": 1.0, "brow_outer_up": 1.0, "eye_open": 1.0, "jaw_drop": 1.0,
                 "lip_stretch": -0.35, "head_pitch": -0.35},
}

_SKIN = np.array([(255, 226, 200), (243, 200, 170), (228, 178, 142), (205, 145, 105),
                  (170, 110, 78), (128, 82, 56), (94, 60, 42)], dtype=float)
_HAIR = np.array([(28, 24, 22), (58, 40, 30), (98, 64, 40), (140, 62, 36), (205, 170, 105),
                  (232, 206, 150), (150, 150, 150), (215, 213, 205)], dtype=float)
_HAIR_P = np.array([0.2, 0.2, 0.16, 0.1, 0.1, 0.08, 0.08, 0.04]) / 0.96
_IRIS = np.array([(88, 54, 30), (45, 30, 22), (120, 98, 52), (72, 118, 70), (66, 108, 170),
                  (108, 124, 136)], dtype=float)
_HAIR_STYLES = ("short", "long", "bob", "curly", "bun", "bald", "swept")
_HAIR_STYLE_P = np.array([0.22, 0.2, 0.16, 0.12, 0.1, 0.07, 0.13])
_BACKGROUNDS = ("solid", "gradient", "radial", "stripes", "noise", "dots")


def _clip8(c) -> tuple:
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def _mix(a, b, t: float) -> tuple:
    # Plain Python on 3-tuples: called dozens of times per frame, where numpy's overhead dominates.
    t = min(max(float(t), 0.0), 1.0)
    return tuple(min(255, max(0, round(x * (1 - t) + y * t))) for x, y in zip(a, b))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


@dataclass(frozen=True)
class Identity:
    """Everything about a subject that stays fixed across its videos."""

    skin: tuple
    face_w: float
    face_h: float
    jaw: float           # chin width relative to cheek width
    hair_style: str
    hair_color: tuple
    hair_volume: float
    hairline: float      # y of the fringe (face units; more negative = higher)
    hair_part: float     # fringe slope (-1..1): side-swept fringes
    eye_w: float
    eye_h: float
    eye_x: float
    eye_y: float
    iris: tuple
    brow_thick: float
    brow_gap: float
    brow_arch: float
    brow_len: float
    brow_color: tuple
    nose_len: float
    nose_w: float
    nose_style: int
    mouth_y: float
    mouth_w: float
    lip_t: float
    lip_color: tuple
    glasses: str | None
    glasses_color: tuple
    ear_size: float
    clothes: tuple
    bg_kind: str
    bg_colors: tuple
    bg_param: float


def sample_identity(rng: np.random.Generator) -> Identity:
    skin_i = rng.integers(len(_SKIN))
    skin = _SKIN[skin_i] + rng.normal(0, 6, 3)
    if rng.random() < 0.06:  # a dyed colour now and then
        hair = _hsv(rng.random(), rng.uniform(0.5, 0.8), rng.uniform(0.45, 0.8))
    else:
        hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] + rng.normal(0, 8, 3)
    style = str(rng.choice(_HAIR_STYLES, p=_HAIR_STYLE_P))
    brow = hair * 0.7 if np.mean(hair) < 150 else np.array([110, 85, 60]) * rng.uniform(0.7, 1.1)
    if style == "bald":
        brow = np.minimum(brow, skin * 0.45)
    lip = skin * 0.62 + np.array([150, 50, 60]) * 0.38 + rng.normal(0, 5, 3)
    glasses = None
    r = rng.random()
    if r < 0.14:
        glasses = "round"
    elif r < 0.26:
        glasses = "square"
    bg_kind = str(rng.choice(_BACKGROUNDS))
    hue = rng.random()
    bg_colors = (_clip8(_hsv(hue, rng.uniform(0.08, 0.55), rng.uniform(0.35, 0.92))),
                 _clip8(_hsv(hue + rng.uniform(-0.25, 0.25), rng.uniform(0.08, 0.6), rng.uniform(0.3, 0.95))))
    return Identity(
        skin=_clip8(skin),
        face_w=float(rng.uniform(0.9, 1.04)),
        face_h=float(rng.uniform(1.22, 1.42)),
        jaw=float(rng.uniform(0.5, 0.82)),
        hair_style=style,
        hair_color=_clip8(hair),
        hair_volume=float(rng.uniform(0.1, 0.28)),
        hairline=float(rng.uniform(-0.95, -0.68)),
        hair_part=float(rng.uniform(-1, 1)) if style in ("swept", "long", "bob") else float(rng.uniform(-0.2, 0.2)),
        eye_w=float(rng.uniform(0.17, 0.22)),
        eye_h=float(rng.uniform(0.08, 0.1)),
        eye_x=float(rng.uniform(0.33, 0.41)),
        eye_y=float(rng.uniform(-0.14, -0.04)),
        iris=_clip8(_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 6, 3)),
        brow_thick=float(rng.uniform(0.05, 0.085)),
        brow_gap=float(rng.uniform(0.13, 0.19)),
        brow_arch=float(rng.uniform(0.0, 0.07)),
        brow_len=float(rng.uniform(0.95, 1.2)),
        brow_color=_clip8(brow),
        nose_len=float(rng.uniform(0.3, 0.42)),
        nose_w=float(rng.uniform(0.1, 0.16)),
        nose_style=int(rng.integers(3)),
        mouth_y=float(rng.uniform(0.66, 0.78)),
        mouth_w=float(rng.uniform(0.28, 0.36)),
        lip_t=float(rng.uniform(0.06, 0.09)),
        lip_color=_clip8(lip),
        glasses=glasses,
        glasses_color=_clip8(_hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.05, 0.5))),
        ear_size=float(rng.uniform(0.16, 0.22)),
        clothes=_clip8(_hsv(rng.random(), rng.uniform(0.2, 0.75), rng.uniform(0.25, 0.85))),
        bg_kind=bg_kind,
        bg_colors=bg_colors,
        bg_param=float(rng.random()),
    )


# ---------------------------------------------------------------------------------------------
# Performances: per-frame control values and pose


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, amp: float, n_waves: int = 3) -> np.ndarray:
    """A slow random wobble: a sum of low-frequency sines with random phases."""
    out = np.zeros_like(t)
    for _ in range(n_waves):
        freq = rng.uniform(0.3, 1.6)
        out += np.sin(2 * np.pi * (freq * t + rng.random())) / n_waves
    return amp * out


@dataclass(frozen=True)
class Performance:
    controls: np.ndarray   # (T, len(CONTROLS))
    blink: np.ndarray      # (T,) eyelid closure 0..1
    pose: np.ndarray       # (T, 4): dx, dy (face units), roll (radians), scale
    gaze: np.ndarray       # (T, 2): iris offset (fraction of eye size)
    asym: float            # which side a one-sided expression favours (-1..1)
    envelope: np.ndarray   # (T,) expression strength 0..1 (for tests and inspection)


def sample_performance(rng: np.random.Generator, class_name: str, frames: int) -> Performance:
    if class_name not in APEX:
        raise ValueError(f"unknown SynthFaces class {class_name!r}")
    t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    onset = rng.uniform(0.04, 0.3)
    rise = rng.uniform(0.14, 0.4)             # speed of the expression
    intensity = rng.uniform(0.65, 1.0)
    env = _smoothstep((t - onset) / rise)
    if rng.random() < 0.45:                   # release instead of hold
        start = rng.uniform(onset + rise + 0.1, 0.95)
        fall = rng.uniform(0.12, 0.3)
        floor = rng.uniform(0.0, 0.4)
        env = env * (1 - (1 - floor) * _smoothstep((t - start) / fall))

    apex = np.zeros(len(CONTROLS))
    for name, value in APEX[class_name].items():
        apex[_C[name]] = value
    active = apex != 0
    apex[active] += rng.normal(0, 0.08, active.sum())   # every performance differs a little
    controls = env[:, None] * (intensity * apex)[None, :]
    # Idle micro-motion (all classes): small mouth and brow twitches.
    controls[:, _C["brow_inner_up"]] += _smooth_noise(rng, t, 0.05)
    controls[:, _C["smile"]] += _smooth_noise(rng, t, 0.04)
    controls[:, _C["lip_press"]] += np.abs(_smooth_noise(rng, t, 0.05))

    blink = np.zeros(frames)
    n_blinks = rng.poisson(0.5 + frames / 40)
    half = rng.uniform(1.2, 2.2) * max(frames / 32, 0.5)
    for _ in range(int(n_blinks)):
        centre = rng.uniform(0, frames - 1)
        blink = np.maximum(blink, 1 - np.abs(np.arange(frames) - centre) / half)
    blink = np.clip(blink, 0, 1)

    dx = _smooth_noise(rng, t, rng.uniform(0.01, 0.03)) + rng.uniform(-0.05, 0.05)
    dy = _smooth_noise(rng, t, rng.uniform(0.01, 0.025)) + rng.uniform(-0.04, 0.04)
    roll = _smooth_noise(rng, t, math.radians(rng.uniform(0.5, 2.0))) + math.radians(rng.uniform(-3, 3))
    scale = 1 + _smooth_noise(rng, t, 0.008) + rng.uniform(-0.04, 0.04)
    pitch = controls[:, _C["head_pitch"]]
    dy = dy + 0.07 * pitch                     # a lowered head moves down on screen
    asym = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.0))
    roll = roll + 0.09 * np.sign(asym) * controls[:, _C["head_tilt"]]
    pose = np.stack([dx, dy, roll, scale], axis=1)
    gaze = np.stack([_smooth_noise(rng, t, 0.12) + rng.uniform(-0.15, 0.15),
                     _smooth_noise(rng, t, 0.06) + 0.25 * np.clip(pitch, 0, None)], axis=1)
    return Performance(controls=controls, blink=blink, pose=pose, gaze=gaze, asym=asym,
                       envelope=env * intensity)


# ---------------------------------------------------------------------------------------------
# Drawing


@functools.lru_cache(maxsize=None)
def _unit_circle(n: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


@functools.lru_cache(maxsize=None)
def _bezier_weights(n: int) -> np.ndarray:
    s = np.linspace(0, 1, n)[:, None]
    return np.stack([(1 - s) ** 2, 2 * (1 - s) * s, s ** 2])


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    return _unit_circle(n) * (rx, ry) + (cx, cy)


def _bezier(p0, p1, p2, n: int = 10) -> np.ndarray:
    w = _bezier_weights(n)
    return w[0] * np.asarray(p0, float) + w[1] * np.asarray(p1, float) + w[2] * np.asarray(p2, float)


def _thick_curve(pts: np.ndarray, w0: float, w1: float) -> np.ndarray:
    """A tapered stroke along a polyline as a filled polygon (width w0 at the start, w1 at the end)."""
    d = np.gradient(pts, axis=0)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-9
    w = np.linspace(w0, w1, len(pts))[:, None] / 2
    return np.concatenate([pts + nrm * w, (pts - nrm * w)[::-1]])


class _Canvas:
    """Draws face-coordinate shapes through the frame's pose onto a supersampled PIL image."""

    def __init__(self, image: Image.Image, unit: float, centre: tuple, pose) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image)
        dx, dy, roll, scale = (float(v) for v in pose)
        k = unit * scale
        c, s = math.cos(roll), math.sin(roll)
        self.A = np.array([[c * k, -s * k], [s * k, c * k]])
        self.b = np.array([centre[0] + dx * unit, centre[1] + dy * unit])
        self.k = k

    def xy(self, pts: np.ndarray) -> list:
        return (pts @ self.A.T + self.b).ravel().tolist()

    def poly(self, pts: np.ndarray, fill) -> None:
        self.draw.polygon(self.xy(pts), fill=fill)

    def line(self, pts: np.ndarray, fill, width: float, closed: bool = False) -> None:
        if closed:
            pts = np.concatenate([pts, pts[:1]])
        self.draw.line(self.xy(pts), fill=fill, width=max(1, int(round(width * self.k))), joint="curve")


def _face_contour(ident: Identity, jaw_drop: float, n: int = 56) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = ident.face_w * np.cos(a)
    y = ident.face_h * np.sin(a)
    lower = np.clip(np.sin(a), 0, None)
    x = x * (1 - (1 - ident.jaw) * lower ** 1.6)
    y = y + 0.16 * jaw_drop * lower ** 2          # an opening jaw lengthens the chin
    return np.stack([x, y], axis=1)


def _background(ident: Identity, S: int, rng: np.random.Generator) -> np.ndarray:
    c0 = np.array(ident.bg_colors[0], float)
    c1 = np.array(ident.bg_colors[1], float)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / max(S - 1, 1)
    kind = ident.bg_kind
    if kind == "solid":
        w = np.zeros_like(xx)
    elif kind == "gradient":
        ang = ident.bg_param * 2 * np.pi
        w = (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang) + 0.5
    elif kind == "radial":
        w = np.sqrt((xx - 0.5) ** 2 + (yy - 0.45) ** 2) * 1.5
    elif kind == "stripes":
        ang = ident.bg_param * np.pi
        f = 4 + 6 * ident.bg_param
        w = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xx * math.cos(ang) + yy * math.sin(ang)))
        w = 0.35 * w
    elif kind == "dots":
        f = 5 + 5 * ident.bg_param
        w = ((np.sin(np.pi * f * xx) * np.sin(np.pi * f * yy)) > 0.55).astype(np.float32) * 0.6
    else:  # low-frequency noise: a tiny random grid upsampled smoothly
        grid = rng.random((5, 5)).astype(np.float32)
        w = np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((S, S), Image.Resampling.BICUBIC),
                       np.float32) / 255.0
    w = np.clip(w, 0, 1)[..., None]
    return np.clip(c0 * (1 - w) + c1 * w, 0, 255).astype(np.uint8)


def _draw_body(draw: ImageDraw.ImageDraw, ident: Identity, S: int, unit: float, centre) -> None:
    cx, cy = centre
    top = cy + 1.6 * unit
    w = 2.3 * unit
    body = [(cx - w, S + 2), (cx - w, top + 0.6 * unit), (cx - w * 0.75, top), (cx + w * 0.75, top),
            (cx + w, top + 0.6 * unit), (cx + w, S + 2)]
    draw.polygon(body, fill=ident.clothes)
    neckline = [(cx - 0.5 * unit, top - 2), (cx + 0.5 * unit, top - 2), (cx, top + 0.55 * unit)]
    draw.polygon(neckline, fill=_mix(ident.skin, (0, 0, 0), 0.12))


def _draw_back_hair(cv: _Canvas, ident: Identity) -> None:
    W, H, v = ident.face_w, ident.face_h, ident.hair_volume
    col = ident.hair_color
    style = ident.hair_style
    a = np.linspace(np.pi, 2 * np.pi, 24)                 # over the top of the head, left to right
    Wv, Hv = W + v + 0.05, H + v
    arc = np.stack([Wv * np.cos(a), -0.08 + Hv * np.sin(a)], axis=1)
    if style == "long":
        sides = np.array([[Wv + 0.1, 0.6], [Wv + 0.22, 1.95], [0.0, 2.05], [-(Wv + 0.22), 1.95],
                          [-(Wv + 0.1), 0.6]])
        cv.poly(np.concatenate([arc, sides]), col)
    elif style == "bob":
        sides = np.array([[Wv + 0.08, 0.75], [Wv - 0.05, 0.92], [-(Wv - 0.05), 0.92], [-(Wv + 0.08), 0.75]])
        cv.poly(np.concatenate([arc, sides]), col)
    elif style == "curly":
        ang = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        r = 1 + 0.05 * np.sin(ang * 14)
        pts = np.stack([(W + v + 0.22) * r * np.cos(ang), -0.35 + (H + v - 0.15) * r * np.sin(ang)], axis=1)
        cv.poly(pts, col)
    elif style == "bun":
        cv.poly(_ellipse(0, -H - v - 0.12, 0.38, 0.3), _mix(col, (0, 0, 0), 0.1))


def _draw_front_hair(cv: _Canvas, ident: Identity) -> None:
    style = ident.hair_style
    if style == "bald":
        return
    W, H, v = ident.face_w, ident.face_h, ident.hair_volume
    col = ident.hair_color
    if style == "curly":
        v = v + 0.08
    n = 24
    a = np.linspace(np.pi, 2 * np.pi, n)                      # over the top, left to right
    outer = np.stack([(W + v) * np.cos(a), -0.05 + (H + v) * np.sin(a)], axis=1)
    side_y = 0.05 if style in ("long", "bob") else -0.25
    xs = np.linspace(W + 0.02, -(W + 0.02), 16)
    part = ident.hair_part
    # Fringe: highest in the middle for short cuts, sloping for swept ones, never below the brows.
    hl = ident.hairline + 0.12 * part * xs + 0.1 * (xs / W) ** 2
    if style in ("long", "bob", "swept"):
        hl = hl + 0.12 * np.sin(np.pi * np.clip((xs + W) / (2 * W), 0, 1))
    hl = np.minimum(hl, -0.55)
    hl[0] = hl[-1] = side_y
    fringe = np.stack([xs, hl], axis=1)
    cv.poly(np.concatenate([outer, [[W + v * 0.6, side_y]], fringe, [[-(W + v * 0.6), side_y]]]), col)
    if style == "curly":
        for ang in np.linspace(np.pi * 1.05, np.pi * 1.95, 9):
            cv.poly(_ellipse((W + v) * math.cos(ang), -0.05 + (H + v) * math.sin(ang), 0.17, 0.15, 14), col)


def _draw_eye(cv: _Canvas, ident: Identity, side: int, ctl: np.ndarray, blink: float, gaze) -> None:
    ew, eh = ident.eye_w, ident.eye_h
    cx = side * ident.eye_x
    cy = ident.eye_y + 0.02 * ctl[_C["head_pitch"]] - 0.03 * ctl[_C["cheek_up"]]
    o_up = np.clip(1 + 0.7 * ctl[_C["eye_open"]] - 0.15 * ctl[_C["brow_down"]], 0.12, 1.9)
    o_low = np.clip(1 - 0.55 * ctl[_C["lower_lid_up"]] - 0.2 * ctl[_C["cheek_up"]] + 0.15 *
                    max(ctl[_C["eye_open"]], 0), 0.15, 1.3)
    o_up = o_up * (1 - blink) - 0.8 * o_low * blink
    n = 15
    xs = np.linspace(-ew, ew, n)
    g = (1 - (xs / ew) ** 2) ** 0.7
    tilt = 0.012 * side * (xs / ew)                            # outer corners slightly higher
    upper = np.stack([cx + xs, cy - tilt - eh * o_up * g * (1 + 0.15 * side * xs / ew)], axis=1)
    lower = np.stack([cx + xs, cy - tilt + 0.8 * eh * o_low * g], axis=1)
    skin = ident.skin
    line_col = _mix(skin, (20, 12, 10), 0.75)
    if o_up + 0.8 * o_low > 0.08:
        cv.poly(np.concatenate([upper, lower[::-1]]), (246, 244, 240))
        # Iris and pupil: circles clipped between the lids at each x (no masks needed).
        ir = eh * 1.08
        gx = cx + gaze[0] * ew * 0.45
        gy = cy + gaze[1] * eh * 0.5
        for radius, colour in ((ir, ident.iris), (ir * 0.45, (15, 12, 12))):
            c = _ellipse(gx, gy, radius, radius, 20)
            t = np.interp(c[:, 0], upper[:, 0], upper[:, 1])
            b = np.interp(c[:, 0], lower[:, 0], lower[:, 1])
            c[:, 1] = np.clip(c[:, 1], t, np.maximum(b, t))
            cv.poly(c, colour)
        hl = _ellipse(gx + ir * 0.35, gy - ir * 0.35, ir * 0.2, ir * 0.2, 8)
        if hl[:, 1].min() > np.interp(gx, upper[:, 0], upper[:, 1]):
            cv.poly(hl, (250, 250, 250))
        cv.line(lower, _mix(skin, line_col, 0.35 + 0.3 * ctl[_C["lower_lid_up"]]), 0.014)
    # Upper lid (with lashes) and the fold above it.
    cv.line(upper, line_col, 0.03)
    crease = upper.copy()
    crease[:, 1] -= 0.05 + 0.2 * eh * max(o_up, 0)
    cv.line(crease[2:-2], _mix(skin, line_col, 0.28), 0.012)
    if ctl[_C["cheek_up"]] > 0.05 or ctl[_C["lower_lid_up"]] > 0.3:   # crow's feet / lid bulge
        k = max(ctl[_C["cheek_up"]], ctl[_C["lower_lid_up"]] - 0.3)
        col = _mix(skin, line_col, 0.45 * min(k, 1))
        for j in (-1, 0, 1):
            p0 = np.array([cx + side * (ew + 0.03), cy + 0.02 * j])
            cv.line(np.stack([p0, p0 + [side * 0.07, 0.035 * j]]), col, 0.012)
        bag = lower.copy()
        bag[:, 1] += 0.05
        cv.line(bag[3:-3], col, 0.012)


def _draw_brow(cv: _Canvas, ident: Identity, side: int, ctl: np.ndarray) -> None:
    ew = ident.eye_w
    base_y = ident.eye_y - ident.eye_h - ident.brow_gap
    inner_x = side * (ident.eye_x - ew * 0.85)
    outer_x = side * (ident.eye_x + ew * ident.brow_len)
    lift_in = -0.18 * ctl[_C["brow_inner_up"]] + 0.12 * ctl[_C["brow_down"]]
    lift_out = -0.12 * ctl[_C["brow_outer_up"]] + 0.03 * ctl[_C["brow_down"]] - 0.04 * ctl[_C["brow_inner_up"]]
    inner_x -= side * 0.07 * ctl[_C["brow_together"]]
    drop = 0.02 * ctl[_C["head_pitch"]]
    p_in = np.array([inner_x, base_y + lift_in + drop + 0.01])
    p_out = np.array([outer_x, base_y + lift_out + drop + 0.04])
    # Anger pulls the inner ends down into a V; sadness and fear lift them into an oblique line.
    arch = ident.brow_arch + 0.05 * ctl[_C["brow_outer_up"]] + 0.03
    mid = (p_in + p_out) / 2 + np.array([0.0, -arch - 0.02 * ctl[_C["brow_inner_up"]]])
    pts = _bezier(p_in, mid, p_out, 10)
    cv.poly(_thick_curve(pts, ident.brow_thick * 1.15, ident.brow_thick * 0.55), ident.brow_color)


def _draw_nose(cv: _Canvas, ident: Identity, ctl: np.ndarray, asym: float) -> None:
    skin = ident.skin
    shade = _mix(skin, (30, 15, 10), 0.32)
    y_tip = ident.eye_y + ident.nose_len + 0.1 + 0.02 * ctl[_C["head_pitch"]]
    wr = ctl[_C["nose_wrinkle"]]
    y_tip -= 0.04 * wr
    nw = ident.nose_w * (1 + 0.2 * wr)
    side = 1 if (ident.hair_part >= 0) else -1
    if ident.nose_style == 0:
        bridge = np.array([[side * 0.05, ident.eye_y + 0.05], [side * 0.07, y_tip - 0.12],
                           [side * nw * 0.6, y_tip - 0.02]])
        cv.line(bridge, _mix(skin, shade, 0.5), 0.02)
    elif ident.nose_style == 1:
        cv.poly(np.array([[0.0, ident.eye_y + 0.1], [side * nw * 0.8, y_tip - 0.03], [0.0, y_tip]]),
                _mix(skin, shade, 0.25))
    tip = _ellipse(0, y_tip - 0.035, nw * 0.55, 0.06, 16)
    cv.poly(tip, _mix(skin, (255, 255, 255), 0.08))
    base = np.stack([np.linspace(-nw, nw, 9), y_tip + 0.012 - 0.025 * np.cos(np.linspace(-1.4, 1.4, 9))], axis=1)
    cv.line(base, shade, 0.018)
    for s in (-1, 1):
        cv.poly(_ellipse(s * nw * 0.45, y_tip - 0.005 - 0.015 * wr * (1 + 0.5 * s * asym), 0.03 + 0.01 * wr,
                         0.018, 10), _mix(skin, (20, 8, 8), 0.65))
        wing = _bezier([s * nw * 0.75, y_tip - 0.07], [s * (nw + 0.03), y_tip - 0.02], [s * nw * 0.8, y_tip + 0.02], 6)
        cv.line(wing, shade, 0.015)
    if wr > 0.08:                                   # wrinkles across the bridge
        col = _mix(skin, shade, min(wr, 1.0))
        for j in range(3):
            yy = ident.eye_y + 0.05 + 0.045 * j
            cv.line(_bezier([-0.09, yy + 0.01], [0.0, yy - 0.015], [0.09, yy + 0.01], 5), col, 0.014)


def _mouth_curves(ident: Identity, ctl: np.ndarray, asym: float, n: int = 17):
    mw = ident.mouth_w * (1 + 0.18 * ctl[_C["smile"]] + 0.28 * ctl[_C["lip_stretch"]]
                          - 0.1 * ctl[_C["lip_press"]])
    my = ident.mouth_y + 0.03 * ctl[_C["head_pitch"]] + 0.03 * ctl[_C["jaw_drop"]]
    xs = np.linspace(-1, 1, n)
    X = xs * mw
    # Corner height: smile lifts, frown drops; stretching pulls them down a little.
    corner = (-0.16 * ctl[_C["smile"]] + 0.09 * ctl[_C["frown"]] + 0.025 * ctl[_C["lip_stretch"]])
    mid = my + corner * xs ** 2 - 0.035 * ctl[_C["upper_lip_up"]] * (1 + asym * xs) * 0.3
    opening = 0.36 * max(ctl[_C["jaw_drop"]], 0) + 0.035 * max(ctl[_C["smile"]], 0) + 0.02 * max(ctl[_C["lip_stretch"]], 0)
    shape = np.clip(1 - xs ** 2, 0, None)
    up_raise = 0.09 * max(ctl[_C["upper_lip_up"]], 0) * np.clip(1 + asym * xs * 0.9, 0, None) * shape ** 0.6
    inner_up = mid - 0.35 * opening * shape ** 0.8 - up_raise
    inner_lo = mid + 0.65 * opening * shape ** 0.8
    press = 1 - 0.75 * np.clip(ctl[_C["lip_press"]], 0, 1)
    t = ident.lip_t * press
    bow = 1 - 0.35 * np.exp(-(xs / 0.18) ** 2)                 # cupid's bow dip in the middle
    outer_up = inner_up - t * 0.9 * shape ** 0.5 * bow
    outer_lo = inner_lo + t * 1.25 * shape ** 0.5
    return X, inner_up, inner_lo, outer_up, outer_lo, opening + float(up_raise.max())


def _draw_mouth(cv: _Canvas, ident: Identity, ctl: np.ndarray, asym: float) -> None:
    X, inner_up, inner_lo, outer_up, outer_lo, gap = _mouth_curves(ident, ctl, asym)
    lip = ident.lip_color
    dark = _mix(lip, (10, 0, 0), 0.6)

    def band(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
        return np.concatenate([np.stack([X, upper], axis=1), np.stack([X[::-1], lower[::-1]], axis=1)])

    cv.poly(band(outer_up, outer_lo), lip)
    if gap > 0.012:
        cv.poly(band(inner_up, inner_lo), (60, 18, 22))
        # Upper teeth: a band under the upper lip, at most a little deeper than a tenth of the gap.
        open_h = inner_lo - inner_up
        teeth_h = 0.85 * np.minimum(open_h, 0.06 + 0.1 * open_h.max())
        cv.poly(band(inner_up, inner_up + teeth_h), (240, 236, 225))
    seam = (inner_up + inner_lo) / 2 if gap <= 0.012 else inner_up
    cv.line(np.stack([X, seam], axis=1), dark, 0.016)
    if ctl[_C["frown"]] > 0.3 or ctl[_C["lip_press"]] > 0.4:  # chin tension below the lower lip
        k = max(ctl[_C["frown"]] - 0.3, ctl[_C["lip_press"]] - 0.4)
        yy = outer_lo.max() + 0.07
        cv.line(_bezier([-0.09, yy], [0.0, yy + 0.03], [0.09, yy], 5), _mix(ident.skin, dark, 0.5 * min(k, 1)), 0.014)


def _draw_folds(cv: _Canvas, ident: Identity, ctl: np.ndarray, asym: float) -> None:
    """Nasolabial folds: from the nose wings past the mouth corners, deeper when smiling or sneering."""
    X, inner_up, _, _, _, _ = _mouth_curves(ident, ctl, asym, n=5)
    y_tip = ident.eye_y + ident.nose_len + 0.1 - 0.04 * ctl[_C["nose_wrinkle"]]
    for s in (-1, 1):
        # Deeper on the side a sneer (upper lip raise) favours.
        k = max(ctl[_C["smile"]], 0.68 * ctl[_C["upper_lip_up"]] * (1 + s * asym),
                0.5 * ctl[_C["nose_wrinkle"]], 0.0)
        col = _mix(ident.skin, (40, 20, 15), 0.1 + 0.35 * min(k, 1))
        corner = np.array([X[-1 if s > 0 else 0] + s * 0.06, inner_up[-1 if s > 0 else 0] + 0.02])
        p0 = np.array([s * (ident.nose_w + 0.06), y_tip - 0.04])
        ctrl = np.array([s * (ident.nose_w + 0.2 + 0.05 * k), (p0[1] + corner[1]) / 2])
        cv.line(_bezier(p0, ctrl, corner, 8), col, 0.016)


def _draw_glasses(cv: _Canvas, ident: Identity) -> None:
    r = ident.eye_w * 1.45
    col = ident.glasses_color
    for s in (-1, 1):
        cx, cy = s * ident.eye_x, ident.eye_y + 0.01
        if ident.glasses == "round":
            rim = _ellipse(cx, cy, r, r * 0.85, 24)
        else:
            a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            c, sn = np.cos(a), np.sin(a)
            rim = np.stack([cx + r * np.sign(c) * np.abs(c) ** 0.4, cy + r * 0.7 * np.sign(sn) * np.abs(sn) ** 0.4], axis=1)
        cv.line(rim, col, 0.03, closed=True)
        cv.line(np.array([[cx + s * r, cy - 0.03], [s * (ident.face_w + 0.02), cy - 0.06]]), col, 0.03)
    cv.line(_bezier([-ident.eye_x + r, ident.eye_y - 0.02], [0, ident.eye_y - 0.07],
                    [ident.eye_x - r, ident.eye_y - 0.02], 6), col, 0.03)


def _draw_frame(base: Image.Image, ident: Identity, perf: Performance, i: int, unit: float, centre) -> Image.Image:
    img = base.copy()
    ctl = perf.controls[i]
    cv = _Canvas(img, unit, centre, perf.pose[i])
    skin = ident.skin
    outline = _mix(skin, (30, 15, 10), 0.45)
    W = ident.face_w
    _draw_back_hair(cv, ident)
    # Neck, ears, face.
    cv.poly(np.array([[-0.4 * W, 0.6], [0.4 * W, 0.6], [0.44 * W, 1.72], [-0.44 * W, 1.72]]),
            _mix(skin, (0, 0, 0), 0.14))
    for s in (-1, 1):
        ear = _ellipse(s * W * 0.97, 0.02, ident.ear_size * 0.6, ident.ear_size * 1.1, 16)
        cv.poly(ear, outline)
        cv.poly(ear * [0.97, 0.92] + [s * W * 0.97 * 0.03 - s * 0.01, 0.0], _mix(skin, outline, 0.25))
    face = _face_contour(ident, max(ctl[_C["jaw_drop"]], 0.0))
    cv.line(face, outline, 0.035, closed=True)
    cv.poly(face, skin)
    # Cheeks: a soft flush that rises with a smile.
    cheek_k = max(ctl[_C["cheek_up"]], 0.0)
    for s in (-1, 1):
        cv.poly(_ellipse(s * 0.52, 0.3 - 0.07 * cheek_k, 0.2, 0.13, 18),
                _mix(skin, (225, 105, 110), 0.07 + 0.2 * cheek_k))
    # Forehead lines when the brows are raised; vertical frown lines when they are pulled together.
    raise_k = max(ctl[_C["brow_inner_up"]], ctl[_C["brow_outer_up"]]) - 0.25
    if raise_k > 0:
        col = _mix(skin, outline, 0.55 * min(raise_k / 0.6, 1))
        for j in range(3):
            yy = ident.eye_y - 0.52 - 0.09 * j
            cv.line(_bezier([-0.42, yy + 0.02], [0.0, yy - 0.03], [0.42, yy + 0.02], 8), col, 0.014)
    knit = ctl[_C["brow_together"]] * max(ctl[_C["brow_down"]], 0.3) - 0.15
    if knit > 0:
        col = _mix(skin, outline, 0.8 * min(knit / 0.5, 1))
        for s in (-1, 1):
            x = s * 0.055
            y0 = ident.eye_y - ident.eye_h - ident.brow_gap + 0.05
            cv.line(np.array([[x, y0 - 0.11], [x * 0.8, y0 + 0.02]]), col, 0.016)
    for s in (-1, 1):
        _draw_eye(cv, ident, s, ctl, float(perf.blink[i]), perf.gaze[i])
    _draw_folds(cv, ident, ctl, perf.asym)
    _draw_nose(cv, ident, ctl, perf.asym)
    _draw_mouth(cv, ident, ctl, perf.asym)
    _draw_front_hair(cv, ident)
    for s in (-1, 1):
        _draw_brow(cv, ident, s, ctl)
    if ident.glasses:
        _draw_glasses(cv, ident)
    return img


def _seed_rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


_IDENTITY_STREAM = 1
_PERFORMANCE_STREAM = 2
_CAMERA_STREAM = 3


def identity_for(seed: int, subject: int) -> Identity:
    return sample_identity(_seed_rng(seed, _IDENTITY_STREAM, subject))


def render_video(seed: int, subject: int, class_name: str, take: int, frames: int = 32,
                 size: int = 64) -> np.ndarray:
    """One SynthFaces video, uint8 (frames, size, size, 3); the same arguments give the same bytes."""
    if class_name not in CLASSES:
        raise ValueError(f"unknown SynthFaces class {class_name!r}; choose from {', '.join(CLASSES)}")
    if frames < 1 or size < 8:
        raise ValueError("frames must be >= 1 and size >= 8")
    ident = identity_for(seed, subject)
    cls = CLASSES.index(class_name)
    perf = sample_performance(_seed_rng(seed, _PERFORMANCE_STREAM, subject, cls, take), class_name, frames)
    cam = _seed_rng(seed, _CAMERA_STREAM, subject, cls, take)
    S = size * SUPERSAMPLE
    unit = S * 0.26 * cam.uniform(0.95, 1.05)
    centre = (S * (0.5 + cam.uniform(-0.03, 0.03)), S * (0.46 + cam.uniform(-0.02, 0.02)))
    base = Image.fromarray(_background(ident, S, _seed_rng(seed, _IDENTITY_STREAM, subject, 7)))
    _draw_body(ImageDraw.Draw(base), ident, S, unit, centre)
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        img = _draw_frame(base, ident, perf, i, unit, centre)
        out[i] = np.asarray(img.reduce(SUPERSAMPLE))
    return out


# ---------------------------------------------------------------------------------------------
# As a dataset

# Bump when a change to the renderer changes its pixels: resumed datasets then re-render.
RENDERER_VERSION = 1
FPS = 12.0


def render_job(job) -> np.ndarray:
    """`Job.load` for SynthFaces jobs (top-level, so spawned workers can call it)."""
    seed, subject, class_name, take, frames, size = job.args
    return render_video(seed, subject, class_name, take, frames=frames, size=size)


def plan_synthfaces(*, subjects: int = 24, takes: int = 2, frames: int = 32, size: int = 64,
                    seed: int = 0, test_fraction: float = 0.25):
    """An import plan that renders subjects x 7 classes x takes videos, split by subject."""
    from lfdm_cli.data.importers.common import ImportPlan, Job, PlannedVideo, split_by_subject
    from lfdm_cli.errors import UserError

    for name, value, low in (("--subjects", subjects, 1), ("--takes", takes, 1), ("--frames", frames, 2),
                             ("--size", size, 16)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}.")
    width = max(2, len(str(subjects - 1)))
    names = [f"s{i:0{width}d}" for i in range(subjects)]
    test = split_by_subject(names, test_fraction, seed)
    jobs = []
    for i, subject in enumerate(names):
        for class_name in CLASSES:
            for take in range(takes):
                source = (f"synthfaces-v{RENDERER_VERSION}:seed={seed},subject={i},class={class_name},"
                          f"take={take},frames={frames}")
                jobs.append(Job(path=source, load=render_job, args=(seed, i, class_name, take, frames, size),
                                outputs=[PlannedVideo(id=f"{subject}_{class_name}_t{take}",
                                                      split="test" if subject in test else "train",
                                                      class_name=class_name, subject=subject, source=source)]))
    return ImportPlan(importer="synthfaces", source=f"synthfaces-v{RENDERER_VERSION}", classes=list(CLASSES),
                      jobs=jobs, fps=FPS,
                      options={"subjects": subjects, "takes": takes, "frames": frames, "seed": seed,
                               "test_fraction": test_fraction, "renderer_version": RENDERER_VERSION})
