"""Model weights as a small fp16 ``.safetensors`` file that training can start from.

Why: the train stage's checkpoint (``models/best.pt``) is a pickle with the optimiser-free
weights in fp32 plus run metadata; it is twice the size it needs to be, and loading a pickle
runs code. A fine-tune start point for other people should be small and safe to open, so
``export`` writes the weights as fp16 safetensors (half the bytes; the rounding is far below
what one epoch of fine-tuning changes) and a JSON sidecar next to it (``OUT.json``) with the
model name, classes and image settings, which ``train.pretrained: OUT.safetensors`` checks.

Loading (:func:`load_safetensors_into`) casts back to fp32, and re-initialises the classifier
head when the file's class count differs from the run's ``classes`` (a fine-tune onto other
labels keeps every feature layer and learns a new head).

    python -m emorec.weights export models/best.pt models/fer2013/weights.fp16.safetensors

``checkpoint`` goes the other way, for the tools that read a train-stage checkpoint (the
evaluate and explain stages, ``scripts/real_face_pictures.py``): a shipped model's weights
become a ``best.pt`` again, in fp32 (the fp16 rounding stays).

    python -m emorec.weights checkpoint models/multisource/weights.fp16.safetensors ws/best.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emorec.errors import EmorecError

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
#: the dtype floating-point weights are stored in (integer buffers keep theirs)
STORED_DTYPE = torch.float16
FORMAT = "emorec.weights/1"


class WeightsError(EmorecError):
    """A weights file is missing, unreadable or does not fit the model it is loaded into."""


def sidecar_path(weights: Path) -> Path:
    """``OUT.json`` next to ``OUT.safetensors``: what the weights are for."""
    return weights.with_suffix(".json")


def export_weights(checkpoint: Path, out: Path) -> dict[str, Any]:
    """Write ``checkpoint``'s weights (train stage format) as fp16 safetensors + JSON sidecar.

    Returns the sidecar's content.
    """
    from safetensors.torch import save_file

    if out.suffix != SUFFIX:
        raise WeightsError(f"output must end in {SUFFIX}, got {out}")
    if not checkpoint.is_file():
        raise WeightsError(f"checkpoint not found: {checkpoint} (run `dvc repro train` first)")
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises pickle/zip errors of many kinds
        raise WeightsError(f"cannot read checkpoint {checkpoint}: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_name" not in ckpt:
        raise WeightsError(f"{checkpoint} is not a train-stage checkpoint (no state_dict / "
                           "model_name)")
    tensors = {k: (v.to(STORED_DTYPE) if v.is_floating_point() else v).contiguous()
               for k, v in ckpt["state_dict"].items()}
    meta = {"format": FORMAT, "model_name": ckpt["model_name"],
            "classes": list(ckpt.get("classes") or []), "image": ckpt.get("image"),
            "dtype": str(STORED_DTYPE).removeprefix("torch."),
            "cosine_head_scale": ckpt.get("cosine_head_scale"), "source": checkpoint.name,
            "epoch": ckpt.get("epoch")}
    out.parent.mkdir(parents=True, exist_ok=True)
    # safetensors' own header carries the strings too, so the file alone still says what it is
    save_file(tensors, str(out), metadata={k: json.dumps(v) for k, v in meta.items()})
    sidecar_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def checkpoint_from_weights(weights: Path, out: Path) -> dict[str, Any]:
    """Write ``weights`` (as :func:`export_weights` wrote them) as a train-stage checkpoint.

    The sidecar must say what model and classes they are for. Returns the sidecar's content.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from emorec.models import create_model, save_checkpoint

    meta = read_sidecar(weights)
    if not meta or not meta.get("model_name") or not meta.get("classes"):
        raise WeightsError(f"{weights}: no sidecar {sidecar_path(weights).name} with the model "
                           "name and classes: export the weights with `emorec.weights export`")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"cannot read {weights}: {err}") from err
    model = create_model(meta["model_name"], num_classes=len(meta["classes"]))
    if meta.get("cosine_head_scale"):  # an LDAM model: its head is a cosine classifier
        from emorec.losses import use_cosine_classifier

        use_cosine_classifier(model, float(meta["cosine_head_scale"]))
    own = model.state_dict()
    try:
        model.load_state_dict({k: v.to(own[k].dtype) if k in own else v
                               for k, v in state.items()})
    except RuntimeError as err:
        raise WeightsError(f"{weights} does not fit {meta['model_name']}: {err}") from err
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, model_name=meta["model_name"], classes=list(meta["classes"]),
                    image=meta.get("image"), epoch=meta.get("epoch"),
                    cosine_head_scale=meta.get("cosine_head_scale"), weights_file=str(weights))
    return meta


def read_sidecar(weights: Path) -> dict[str, Any] | None:
    """The JSON written next to the weights by :func:`export_weights`, if present."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path} is not valid JSON: {err}") from err


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the model's classifier head (timm's ``pretrained_cfg``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or "fc"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in names)


def load_safetensors_into(model: nn.Module, path: Path, model_name: str) -> list[str]:
    """Load fp16/fp32 safetensors weights into ``model`` (cast to the model's dtype, fp32).

    The stem and every feature layer must match; the classifier head is loaded when its shape
    fits and re-initialised (left as created) when the file has another number of classes.
    Returns the head keys that were re-initialised (empty when the head was loaded).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise WeightsError(f"train.pretrained: weights file not found: {path}")
    sidecar = read_sidecar(path)
    if sidecar and sidecar.get("model_name") not in (None, model_name):
        raise WeightsError(f"train.pretrained: {path} holds {sidecar['model_name']} weights, but "
                           f"train.model is {model_name}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"train.pretrained: cannot read {path}: {err}") from err
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v
             for k, v in state.items()}
    heads = head_prefixes(model)
    wrong = [k for k, v in state.items()
             if k in own and not k.startswith(heads) and v.shape != own[k].shape]
    if wrong:
        raise WeightsError(
            f"train.pretrained: {path} does not fit {model_name}: {wrong[0]} has shape "
            f"{list(state[wrong[0]].shape)}, the model {list(own[wrong[0]].shape)} ({len(wrong)} "
            f"such tensors; export it from a {model_name} checkpoint)")
    in_head = [k for k in own if k.startswith(heads)]
    mismatched = [k for k in in_head if k in state and state[k].shape != own[k].shape]
    reset: list[str] = []
    if mismatched or any(k not in state for k in in_head):
        reset = in_head
        file_classes = next((state[k].shape[0] for k in in_head
                             if k in state and k.endswith("weight")), None)
        own_classes = next(own[k].shape[0] for k in in_head if k.endswith("weight"))
        log.info("train.pretrained: %s has %s classes, train has %d: classifier head %s "
                 "re-initialised", path.name, file_classes or "no matching head for its",
                 own_classes, "/".join(h.rstrip(".") for h in heads))
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in reset]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"train.pretrained: {path} does not fit {model_name}: missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]} (export it from a {model_name} "
            "checkpoint)")
    return reset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m emorec.weights",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="checkpoint -> fp16 safetensors + JSON sidecar")
    export.add_argument("checkpoint", type=Path, help="train-stage checkpoint (models/best.pt)")
    export.add_argument("out", type=Path, help=f"weights file to write (*{SUFFIX})")
    back = sub.add_parser("checkpoint", help="fp16 safetensors + sidecar -> train-stage "
                                             "checkpoint (for evaluate, explain, pictures)")
    back.add_argument("weights", type=Path, help=f"weights file (*{SUFFIX}) with its sidecar")
    back.add_argument("out", type=Path, help="checkpoint to write (e.g. WS/models/best.pt)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "checkpoint":
            meta = checkpoint_from_weights(args.weights, args.out)
            log.info("wrote %s (%s, %d classes, fp32 from %s)", args.out, meta["model_name"],
                     len(meta["classes"]), args.weights)
            return 0
        meta = export_weights(args.checkpoint, args.out)
    except EmorecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("wrote %s (%.1f MB, %s, %d classes) and %s", args.out,
             args.out.stat().st_size / 1e6, meta["model_name"], len(meta["classes"]),
             sidecar_path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
