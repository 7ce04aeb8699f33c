"""Offline augmentation for the balance step: an albumentations pipeline described in params.

``balance.augment`` is a list of one-key mappings ``{TransformName: {kwarg: value}}`` applied in
order, e.g. ``- Affine: {rotate: [-10, 10], p: 0.9}``. Building the pipeline validates every name
and argument up front (albumentations' strict mode), so a typo stops the split stage with a
message naming ``balance.augment[i]`` instead of failing halfway through writing images.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

from emorec.errors import ParamsError


def _tuples(value: Any) -> Any:
    """YAML has no tuples; albumentations wants ranges as tuples."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def build_pipeline(spec: list[Any], seed: int, key: str = "balance.augment") -> A.Compose:
    """An ``A.Compose`` from the params list, seeded so the same inputs give the same copies."""
    if not isinstance(spec, list) or not spec:
        raise ParamsError(key, f"must be a non-empty list of {{TransformName: {{kwargs}}}}, "
                               f"got {spec!r}")
    transforms = []
    for i, item in enumerate(spec):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise ParamsError(where,
                              f"must be a single {{TransformName: {{kwargs}}}}, got {item!r}")
        (name, kwargs), = item.items()
        cls = getattr(A, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise ParamsError(where, f"{name!r} is not an albumentations transform")
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise ParamsError(where, f"arguments of {name} must be a mapping, got {kwargs!r}")
        try:
            transforms.append(cls(**_tuples(kwargs), strict=True))
        except (TypeError, ValueError) as err:
            detail = " ".join(str(err).split())[:300]
            raise ParamsError(where, f"invalid arguments for {name}: {detail}") from err
    return A.Compose(transforms, seed=seed, strict=True)


def augment(pipeline: A.Compose, gray: np.ndarray) -> np.ndarray:
    """One augmented copy of a uint8 ``[H, W]`` image (same size and dtype)."""
    out = pipeline(image=np.ascontiguousarray(gray))["image"]
    return np.asarray(out, dtype=np.uint8).reshape(gray.shape)
