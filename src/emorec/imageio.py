"""Opening untrusted images with a precise reason when they cannot be used.

Used by ingest (files on disk) and by the service (request bodies), so both reject bad input
for the same reasons: ``empty``, ``corrupt``, ``truncated``, ``too_small``, ``too_large``.
Images that an earlier stage wrote are read back with :func:`read_gray`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from emorec.errors import DataError, ImageError

# Refuse half-written files instead of padding them with grey: a truncated face is not a face.
ImageFile.LOAD_TRUNCATED_IMAGES = False

REJECT_REASONS = ("empty", "corrupt", "truncated", "too_small", "too_large")


def open_image(source: str | Path | bytes, min_side: int = 1, max_side: int = 4096) -> Image.Image:
    """Decode an image fully and check its size.

    ``source`` is a path or the raw bytes. Returns a loaded PIL image in its original mode; raises
    :class:`ImageError` whose ``reason`` is one of :data:`REJECT_REASONS`.
    """
    data = Path(source).read_bytes() if isinstance(source, str | Path) else source
    where = str(source) if isinstance(source, str | Path) else "request body"
    if not data:
        raise ImageError("empty", f"{where} has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if max(width, height) > max_side:
                raise ImageError("too_large", f"{where} is {width}x{height}, limit {max_side} px")
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("too_large", f"{where}: {err}") from err
    except UnidentifiedImageError as err:
        raise ImageError("corrupt", f"{where} is not a recognised image format") from err
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated" if "truncated" in str(err).lower() else "corrupt"
        raise ImageError(reason, f"{where} could not be decoded ({err})") from err
    if min(width, height) < min_side:
        raise ImageError("too_small", f"{where} is {width}x{height}, minimum {min_side} px")
    return image


def read_gray(path: str | Path) -> np.ndarray:
    """uint8 ``[H, W]`` pixels (PIL ``convert("L")``) of an image file listed in a stage's CSV.

    A missing or undecodable file is a :class:`DataError` naming it, not a traceback.
    """
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except FileNotFoundError as err:
        raise DataError(f"image listed in a CSV is missing: {path} (rerun the stage that "
                        "wrote it)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"image listed in a CSV cannot be decoded: {path} ({err})") from err
