"""Model construction and checkpoints.

Backbones come from timm by name. Input is single-channel (``in_chans=1``): timm folds pretrained
RGB stem weights into one channel, and the exported ONNX model takes the same ``[N, 1, H, W]``
tensor that training saw, so no channel replication has to be remembered downstream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import timm
import torch
from torch import nn

from emorec.errors import EmorecError, ParamsError

IN_CHANS = 1


def device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pretrained_overlay(pretrained: str) -> dict[str, Any] | None:
    """timm ``pretrained_cfg_overlay`` for ``train.pretrained``; ``None`` means random init.

    A value naming an existing file is a local checkpoint; anything else is a Hugging Face hub id.
    (``.safetensors`` files written by ``emorec.weights`` are loaded by :func:`create_model`
    itself, not through timm.)
    """
    if pretrained in ("", "none", None):
        return None
    if Path(pretrained).exists():
        return {"file": str(Path(pretrained).resolve()), "hf_hub_id": None, "url": None}
    return {"hf_hub_id": pretrained.removeprefix("hf-hub:"), "file": None, "url": None}


def create_model(name: str, num_classes: int, pretrained: str = "none", **kwargs: Any) -> nn.Module:
    """A timm classifier with ``num_classes`` outputs on single-channel input.

    Weights from a local file or the hub are adapted by timm (stem summed to one channel,
    classifier dropped when its size differs). A ``.safetensors`` file (e.g. this project's
    fp16 weights from ``python -m emorec.weights export``) is loaded here instead: timm would
    drop a head of the right size too, since it compares with ImageNet's 1000 classes, so a
    fine-tune on the same classes would lose its trained head. Failures become one clear
    :class:`EmorecError`.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise ParamsError("train.model", f"is not a timm model name: {name!r}")
    if str(pretrained).endswith(".safetensors"):
        from emorec.weights import load_safetensors_into

        model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                  in_chans=IN_CHANS, **kwargs)
        load_safetensors_into(model, Path(pretrained), name)
        return model
    overlay = pretrained_overlay(pretrained)
    try:
        return timm.create_model(
            name, pretrained=overlay is not None, pretrained_cfg_overlay=overlay,
            num_classes=num_classes, in_chans=IN_CHANS, **kwargs,
        )
    except (OSError, RuntimeError, ValueError) as err:
        if overlay and overlay.get("file"):
            raise EmorecError(
                f"train.pretrained: cannot load local checkpoint {pretrained!r} into "
                f"{name}: {err}") from err
        if overlay:
            raise EmorecError(
                f"train.pretrained: cannot fetch {pretrained!r} from the Hugging Face hub "
                f"(no network access?). Download the weights elsewhere and set train.pretrained "
                f"to the local file path. Cause: {type(err).__name__}: {err}") from err
        raise


def temp_path(path: str | Path) -> Path:
    """The temp file :func:`replacing` writes ``path`` through (hidden, next to it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def replacing(path: str | Path) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temp file in its folder, renamed over it once complete.

    Readers, and a run resumed after a crash, see the old file or the new one, never half of
    one: the data is flushed to disk before ``os.replace`` (atomic on one file system). A failed
    write leaves the old file alone and removes the temp file.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fobj:
            yield fobj
            fobj.flush()
            os.fsync(fobj.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path: str | Path, model: nn.Module, **meta: Any) -> None:
    """Weights plus everything needed to rebuild and interpret the model, written atomically."""
    with replacing(path) as fobj:
        torch.save({"state_dict": model.state_dict(), **meta}, fobj)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by the train stage; returns ``(model in eval mode, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise EmorecError(f"model checkpoint not found: {path} (run `dvc repro train` first)")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    model = create_model(ckpt["model_name"], num_classes=len(ckpt["classes"]))
    if ckpt.get("cosine_head_scale"):  # trained with LDAM: rebuild the cosine head first
        from emorec.losses import use_cosine_classifier

        use_cosine_classifier(model, float(ckpt["cosine_head_scale"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, meta


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def batched_probabilities(model: nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Softmax probabilities ``[N, C]`` for float32 ``[N, 1, H, W]`` inputs, in batches."""
    dev = model_device(model)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size],
                                                          dtype=np.float32)).to(dev)
            out.append(torch.softmax(model(chunk).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


#: Test-time augmentation modes (``evaluate.tta``, ``export.tta``).
TTA_MODES = ("none", "flip")


class FlipTTA(nn.Module):
    """Logits averaged over the image and its mirror image.

    Expressions are left-right symmetric, so the mirror is a second, free opinion: on FER2013 it
    is worth about half a point of accuracy. Wrapping the model (rather than looping in the
    caller) puts the flip inside the exported ONNX graph, so the service, the INT8 model and
    the browser all get it without code of their own.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) / 2


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """``model`` wrapped for test-time augmentation ``mode`` (one of :data:`TTA_MODES`)."""
    if mode not in TTA_MODES:
        raise ParamsError("tta", f"must be one of {list(TTA_MODES)}, got {mode!r}")
    return FlipTTA(model).eval() if mode == "flip" else model
