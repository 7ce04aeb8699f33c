"""Real photos shipped by packages, with hand-drawn face boxes, for every face-related test.

They come from ``benchmarks/face_detectors.py`` (scikit-image's astronaut, matplotlib's Grace
Hopper, ...), so tests and the detector benchmark agree on the truth.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_bench() -> ModuleType:
    """``benchmarks/face_detectors.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "face_detectors_bench", REPO / "benchmarks" / "face_detectors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BENCH = load_bench()
PHOTOS = BENCH.portraits()
TRUTH = BENCH.PORTRAIT_FACES
