"""Embedded demo data: a seeded generator of grayscale face drawings for the six classes.

Why procedural faces: the default pipeline has to run on a fresh machine with no download, yet
the model must learn something real. Here the *expression is carried only by facial geometry*
(brow tilt and height, eye openness, mouth curve, opening and width), the way FACS action units
describe it, while identity (face shape, skin tone, hair, eye spacing), pose (small rotation and
shift), scale, a lighting gradient and pixel noise vary independently of the label. The
``ambiguity`` knob blends each face's expression towards a randomly chosen other class, so the
classes overlap and a small CNN lands well below 100% (macro-F1 roughly 0.6-0.9 by default).

Faces are drawn with OpenCV's anti-aliased primitives on a 4x supersampled canvas and reduced
with area interpolation, with dark brows/eyes on lighter, shaded skin over a darker background,
so OpenCV's Haar frontal-face cascade (:func:`emorec.faces.detect_faces`) finds most of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import cv2
import numpy as np

#: Expression prototypes: the geometry that defines each class (one row of action-unit-like
#: parameters per class). ``brow_tilt`` > 0 raises the inner brow ends (sadness, fear), < 0 pulls
#: them down (anger); ``brow_raise`` lifts both brows; ``eye_open`` scales the eye height;
#: ``mouth_curve`` > 0 smiles, < 0 frowns; ``mouth_open`` opens the lips; ``mouth_width`` scales
#: the mouth horizontally (stretched in fear and joy, round in surprise).
PROTOTYPES: dict[str, dict[str, float]] = {
    "angry":     {"brow_tilt": -1.0, "brow_raise": -0.6, "eye_open": 0.65, "mouth_curve": -0.35,
                  "mouth_open": 0.05, "mouth_width": 0.80},
    "fearful":   {"brow_tilt": 0.75, "brow_raise": 0.70, "eye_open": 1.35, "mouth_curve": -0.25,
                  "mouth_open": 0.45, "mouth_width": 1.15},
    "happy":     {"brow_tilt": 0.0, "brow_raise": 0.10, "eye_open": 0.80, "mouth_curve": 1.0,
                  "mouth_open": 0.30, "mouth_width": 1.20},
    "neutral":   {"brow_tilt": 0.0, "brow_raise": 0.0, "eye_open": 1.0, "mouth_curve": 0.0,
                  "mouth_open": 0.0, "mouth_width": 1.0},
    "sad":       {"brow_tilt": 1.0, "brow_raise": 0.05, "eye_open": 0.75, "mouth_curve": -0.85,
                  "mouth_open": 0.0, "mouth_width": 0.90},
    "surprised": {"brow_tilt": 0.1, "brow_raise": 1.0, "eye_open": 1.55, "mouth_curve": 0.0,
                  "mouth_open": 1.0, "mouth_width": 0.70},
}

#: Per-feature spread of individual variation (same expression, different person/moment).
_JITTER = {"brow_tilt": 0.25, "brow_raise": 0.2, "eye_open": 0.12, "mouth_curve": 0.2,
           "mouth_open": 0.1, "mouth_width": 0.08}

_SUPERSAMPLE = 4  # draw at 4x and area-reduce: smooth edges at any output size
_SHIFT = 2        # cv2 fixed-point bits for sub-pixel drawing


@dataclass(frozen=True)
class _Identity:
    """Appearance that does not depend on the expression."""

    face_w: float      # half-width of the face, fraction of the canvas
    face_h: float      # half-height
    skin: float        # skin grey level 0-255
    background: float  # background grey level
    hair: float        # hair grey level
    hair_line: float   # how far down the forehead the hair reaches (0-1)
    hair_style: int    # 0 short, 1 long (down the sides of the face), 2 bald
    clothes: float     # grey level of the shirt below the neck
    shoulders: float   # shoulder half-width, fraction of the canvas
    eye_gap: float     # half distance between eye centres, fraction of face_w
    eye_y: float       # eye height below centre, fraction of face_h (negative = above)
    mouth_y: float     # mouth height below centre, fraction of face_h


def expression(label: str, rng: np.random.Generator, ambiguity: float) -> dict[str, float]:
    """Expression parameters for one face of class ``label``.

    The class prototype is blended towards a random other class by ``u * ambiguity`` (``u``
    uniform in [0, 1]) and then jittered per feature. With ambiguity 0.5 a face can sit halfway
    between two classes, which is where the label noise of real datasets lives too.
    """
    if label not in PROTOTYPES:
        raise ValueError(f"unknown demo class {label!r}; known: {sorted(PROTOTYPES)}")
    others = [c for c in PROTOTYPES if c != label]
    other = PROTOTYPES[others[int(rng.integers(len(others)))]]
    mix = float(rng.uniform(0.0, 1.0)) * float(ambiguity)
    base = PROTOTYPES[label]
    return {k: (1 - mix) * base[k] + mix * other[k] + float(rng.normal(0.0, _JITTER[k]))
            for k in base}


def _identity(rng: np.random.Generator) -> _Identity:
    skin = float(rng.uniform(120, 215))
    return _Identity(
        face_w=float(rng.uniform(0.29, 0.35)),
        face_h=float(rng.uniform(0.38, 0.44)),
        skin=skin,
        background=float(rng.uniform(15, max(20.0, skin - 70))),
        hair=float(rng.uniform(10, 70)),
        hair_line=float(rng.uniform(0.15, 0.35)),
        hair_style=int(rng.choice(3, p=[0.5, 0.35, 0.15])),
        clothes=float(rng.uniform(20, 230)),
        shoulders=float(rng.uniform(0.35, 0.6)),
        eye_gap=float(rng.uniform(0.36, 0.44)),
        eye_y=float(rng.uniform(-0.20, -0.08)),
        mouth_y=float(rng.uniform(0.48, 0.58)),
    )


def _pt(x: float, y: float) -> tuple[int, int]:
    """Sub-pixel point in cv2 fixed-point coordinates."""
    return int(round(x * (1 << _SHIFT))), int(round(y * (1 << _SHIFT)))


def _ellipse(img: np.ndarray, c: tuple[float, float], axes: tuple[float, float], angle: float,
             value: float, thickness: int = -1) -> None:
    axes_fp = (max(1, int(axes[0] * (1 << _SHIFT))), max(1, int(axes[1] * (1 << _SHIFT))))
    cv2.ellipse(img, _pt(*c), axes_fp, angle, 0, 360, float(value), thickness, cv2.LINE_AA,
                _SHIFT)


def _curve(x0: float, x1: float, y: float, bend: float, n: int = 24) -> np.ndarray:
    """Parabola points from ``x0`` to ``x1`` at height ``y``; ``bend`` > 0 turns the ends up."""
    xs = np.linspace(x0, x1, n)
    t = (xs - (x0 + x1) / 2) / max(1e-6, (x1 - x0) / 2)
    ys = y - bend * (t ** 2 - 0.5)
    return np.stack([xs, ys], axis=1)


def _poly(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _draw_face(canvas: np.ndarray, ident: _Identity, expr: dict[str, float]) -> None:
    """Draw one frontal face centred on ``canvas`` (float32, already filled with background)."""
    s = canvas.shape[0]
    cx, cy = s / 2, s / 2 + 0.03 * s
    fw, fh = ident.face_w * s, ident.face_h * s
    # shoulders and neck, then hair behind the face
    _ellipse(canvas, (cx, cy + 1.45 * fh), (ident.shoulders * s, 0.55 * fh), 0, ident.clothes)
    cv2.rectangle(canvas, _pt(cx - 0.45 * fw, cy + 0.5 * fh), _pt(cx + 0.45 * fw, cy + 1.1 * fh),
                  float(ident.skin * 0.75), -1, cv2.LINE_AA, _SHIFT)
    if ident.hair_style == 1:
        cv2.rectangle(canvas, _pt(cx - fw * 1.18, cy - 0.2 * fh),
                      _pt(cx + fw * 1.18, cy + 0.9 * fh), float(ident.hair), -1, cv2.LINE_AA,
                      _SHIFT)
    if ident.hair_style != 2:
        _ellipse(canvas, (cx, cy - 0.08 * fh), (fw * 1.12, fh * 1.02), 0, ident.hair)
    # face with a soft shading ring darker at the rim
    _ellipse(canvas, (cx, cy), (fw, fh), 0, ident.skin * 0.82)
    _ellipse(canvas, (cx, cy + 0.02 * fh), (fw * 0.86, fh * 0.9), 0, ident.skin * 0.93)
    _ellipse(canvas, (cx, cy + 0.05 * fh), (fw * 0.68, fh * 0.74), 0, ident.skin)
    # hair fringe: the upper half of an ellipse over the forehead
    top = cy - fh
    fringe = top + ident.hair_line * fh * (ident.hair_style != 2)
    cv2.ellipse(canvas, _pt(cx, fringe), (int(fw * (1 << _SHIFT)), int((fringe - top + 0.05 * fh)
                * (1 << _SHIFT))), 0, 180, 360, float(ident.hair), -1, cv2.LINE_AA, _SHIFT)

    ey = cy + ident.eye_y * fh
    ex = ident.eye_gap * fw
    eye_w = 0.2 * fw
    eye_h = max(0.6, 0.085 * fh * expr["eye_open"])
    dark = min(ident.hair, ident.skin * 0.25)
    for side in (-1, 1):
        x = cx + side * ex
        # socket shadow (what Haar eye features respond to), sclera, iris, upper lid line
        _ellipse(canvas, (x, ey - 0.01 * fh), (eye_w * 1.45, max(eye_h, 0.06 * fh) * 1.7), 0,
                 ident.skin * 0.62)
        _ellipse(canvas, (x, ey), (eye_w, eye_h), 0, min(245.0, ident.skin + 40))
        iris_r = min(eye_w * 0.5, eye_h * 1.05)
        _ellipse(canvas, (x, ey), (iris_r, min(iris_r, eye_h)), 0, dark)
        _ellipse(canvas, (x, ey), (eye_w, eye_h), 0, dark, thickness=max(1, int(0.012 * s)))
        # brow: inner end moves with tilt, both ends with raise
        brow_base = ey - 0.17 * fh - expr["brow_raise"] * 0.09 * fh
        inner_x, outer_x = x - side * eye_w * 0.15, x + side * eye_w * 1.35
        inner_y = brow_base - expr["brow_tilt"] * 0.07 * fh
        outer_y = brow_base + expr["brow_tilt"] * 0.03 * fh
        mid = ((inner_x + outer_x) / 2, (inner_y + outer_y) / 2 - 0.02 * fh)
        brow = np.array([[inner_x, inner_y], mid, [outer_x, outer_y]])
        cv2.polylines(canvas, [_poly(brow)], False, float(dark), max(2, int(0.035 * s)),
                      cv2.LINE_AA, _SHIFT)

    # nose: bridge highlight and a shadow under the tip
    ny = cy + 0.22 * fh
    _ellipse(canvas, (cx, (ey + ny) / 2), (0.07 * fw, 0.2 * fh), 0, min(250.0, ident.skin + 18))
    _ellipse(canvas, (cx, ny + 0.02 * fh), (0.16 * fw, 0.05 * fh), 0, ident.skin * 0.6)

    # mouth: lip line as a parabola; an open mouth is a dark region between two curves
    my = cy + ident.mouth_y * fh
    half_w = 0.34 * fw * expr["mouth_width"]
    bend = expr["mouth_curve"] * 0.12 * fh
    upper = _curve(cx - half_w, cx + half_w, my, bend)
    opening = max(0.0, expr["mouth_open"]) * 0.22 * fh
    lip = ident.skin * 0.45
    if opening > 0.01 * fh:
        # the lower lip sags by ``opening`` in the middle and meets the upper lip at the corners
        t = np.linspace(-1.0, 1.0, len(upper))
        lower = upper.copy()
        lower[:, 1] += opening * (1.0 - t ** 2)
        outline = np.vstack([upper, lower[::-1]])
        cv2.fillPoly(canvas, [_poly(outline)], float(dark * 0.8), cv2.LINE_AA, _SHIFT)
        cv2.polylines(canvas, [_poly(outline)], True, float(lip), max(1, int(0.015 * s)),
                      cv2.LINE_AA, _SHIFT)
    else:
        cv2.polylines(canvas, [_poly(upper)], False, float(lip * 0.7), max(2, int(0.025 * s)),
                      cv2.LINE_AA, _SHIFT)


def render_face(label: str, rng: np.random.Generator, size: int = 64, noise_std: float = 14.0,
                ambiguity: float = 0.3) -> np.ndarray:
    """One grayscale face of class ``label`` as a uint8 ``[size, size]`` array.

    Everything random comes from ``rng``, so the same generator state gives the same face.
    ``noise_std`` is gaussian pixel noise on the 0-255 scale; ``ambiguity`` (0-1) how far the
    expression may blend towards another class (see :func:`expression`).
    """
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    expr = expression(label, rng, ambiguity)
    ident = _identity(rng)
    big = size * _SUPERSAMPLE
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big - 0.5
    # background: a plain wall with its own brightness ramp
    phi = float(rng.uniform(0, 2 * np.pi))
    ramp = float(rng.uniform(0, 60))
    canvas = ident.background + ramp * (np.cos(phi) * xx + np.sin(phi) * yy)
    _draw_face(canvas, ident, expr)

    # pose and scale: small in-plane rotation, shift and zoom around the centre
    angle = float(rng.uniform(-12, 12))
    scale = float(rng.uniform(0.8, 1.12))
    shift = rng.uniform(-0.08, 0.08, size=2) * big
    matrix = cv2.getRotationMatrix2D((big / 2, big / 2), angle, scale)
    matrix[:, 2] += shift
    canvas = cv2.warpAffine(canvas, matrix, (big, big), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)

    # lighting: a linear gradient in a random direction, as from a side light
    theta = float(rng.uniform(0, 2 * np.pi))
    strength = float(rng.uniform(0.0, 0.8))
    canvas *= 1.0 + strength * (np.cos(theta) * xx + np.sin(theta) * yy)

    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    small += rng.normal(0.0, noise_std, size=small.shape).astype(np.float32)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def class_counts(n_images: int, proportions: Mapping[str, float]) -> dict[str, int]:
    """Integer counts per class summing to ``n_images`` (largest-remainder rounding)."""
    total = float(sum(proportions.values()))
    exact = {c: n_images * p / total for c, p in proportions.items()}
    counts = {c: int(np.floor(v)) for c, v in exact.items()}
    leftover = n_images - sum(counts.values())
    for c in sorted(exact, key=lambda c: exact[c] - counts[c], reverse=True)[:leftover]:
        counts[c] += 1
    return counts


def generate_dataset(n_images: int, proportions: Mapping[str, float], seed: int, size: int = 64,
                     noise_std: float = 14.0, ambiguity: float = 0.3
                     ) -> Iterator[tuple[str, str, np.ndarray]]:
    """Yield ``(id, label, uint8 image)`` for a class-proportioned demo dataset.

    Image ``i`` uses its own generator seeded by ``(seed, i)``, so any image can be regenerated
    alone and the dataset does not change when iterated partially.
    """
    counts = class_counts(n_images, proportions)
    labels = [c for c, n in counts.items() for _ in range(n)]
    order = np.random.default_rng([seed, 0]).permutation(len(labels))
    for i, j in enumerate(order):
        label = labels[int(j)]
        rng = np.random.default_rng([seed, 1, i])
        yield f"demo-{i:06d}", label, render_face(label, rng, size, noise_std, ambiguity)
