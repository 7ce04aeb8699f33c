"""Attribution methods behind one interface: ``method(model, x, target) -> [H, W] float32 map``.

Every method explains the logit/probability of one class for one image ``x`` of shape
``[1, 1, H, W]`` (the preprocessed model input) and returns a map of the input's spatial size, so
the faithfulness harness and the figures treat all methods alike. The math lives in the field's
libraries:

- Grad-CAM: ``captum.attr.LayerGradCam`` (ReLU applied, bilinear upsampling to input size).
- Grad-CAM++: ``pytorch_grad_cam.GradCAMPlusPlus`` from the ``grad-cam`` package; captum has no
  Grad-CAM++.
- SHAP: ``shap.explainers.Partition`` with a blur ``shap.maskers.Image``. Chosen over the other
  SHAP explainers because it is model-agnostic (it only calls the model, so timm's in-place
  activations and fused modules, which break ``DeepExplainer``, do not matter), deterministic
  (a fixed hierarchical partition of the image, no sampling, unlike ``GradientExplainer`` or
  ``KernelExplainer``), and its cost is a fixed budget of model evaluations (``shap_evals``), which
  keeps it fast on CPU.
- LIME: ``lime.lime_image.LimeImageExplainer`` on superpixels from SLIC on the grayscale image
  (or a regular grid), with a batched classifier function.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import shap
import torch
from captum.attr import LayerAttribution, LayerGradCam
from lime import lime_image
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from skimage.segmentation import slic
from torch import nn

from emorec.errors import ParamsError
from emorec.models import batched_probabilities, model_device

log = logging.getLogger("emorec.xai")

METHOD_NAMES = ("gradcam", "gradcampp", "shap", "lime")


class AttributionMethod(Protocol):
    """What the harness needs from a method."""

    name: str
    #: True when the map has meaningful negative values (evidence against the class).
    signed: bool

    def __call__(self, model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray: ...


# -- helpers -----------------------------------------------------------------------------------
def resolve_layer(model: nn.Module, name: str, param_key: str = "explain.target_layer"
                  ) -> nn.Module:
    """The submodule called ``name``; a missing name lists the candidates a user could pick."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        candidates = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
        shown = ", ".join(candidates[:40]) + (" ..." if len(candidates) > 40 else "")
        raise ParamsError(param_key, f"names no module of {type(model).__name__}; "
                                     f"candidates: {shown}") from None


def check_spatial_layer(model: nn.Module, name: str, x: torch.Tensor,
                        param_key: str = "explain.target_layer") -> None:
    """CAM methods need a layer with a ``[N, C, h, w]`` output; fail early and clearly if not."""
    layer = resolve_layer(model, name, param_key)
    shapes: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not shapes or len(shapes[0]) != 4:
        got = shapes[0] if shapes else "no output (layer not used in forward)"
        raise ParamsError(param_key, f"must name a convolutional layer with a [N, C, h, w] "
                                     f"output, {name!r} gives {got}")


def _finish(attribution: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    attribution = np.asarray(attribution, dtype=np.float32).reshape(shape)
    return np.nan_to_num(attribution, nan=0.0, posinf=0.0, neginf=0.0)


# -- methods -----------------------------------------------------------------------------------
@dataclass
class GradCam:
    """Grad-CAM (Selvaraju et al. 2017) via captum's ``LayerGradCam`` on ``target_layer``."""

    target_layer: str
    name: str = "gradcam"
    signed: bool = False

    def __call__(self, model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
        model.eval()
        x = x.to(model_device(model))
        layer = resolve_layer(model, self.target_layer)
        cam = LayerGradCam(model, layer).attribute(x, target=int(target), relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return _finish(cam.detach().cpu().numpy(), tuple(x.shape[-2:]))


@dataclass
class GradCamPlusPlus:
    """Grad-CAM++ (Chattopadhyay et al. 2018) via ``pytorch_grad_cam.GradCAMPlusPlus``.

    The library rescales each map to [0, 1]; only the ranking matters for the harness.
    """

    target_layer: str
    name: str = "gradcampp"
    signed: bool = False

    def __call__(self, model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
        model.eval()
        x = x.to(model_device(model))
        layer = resolve_layer(model, self.target_layer)
        with GradCAMPlusPlus(model=model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target))])
        return _finish(maps[0], tuple(x.shape[-2:]))


@dataclass
class ShapPartition:
    """Owen-value SHAP over a hierarchical partition of the pixels, hidden pixels blurred."""

    max_evals: int
    blur_kernel: int
    batch_size: int
    name: str = "shap"
    signed: bool = True

    def __call__(self, model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
        model.eval()
        image = x[0].detach().cpu().permute(1, 2, 0).numpy().astype(np.float32)  # [H, W, 1]

        def predict(batch: np.ndarray) -> np.ndarray:
            nchw = np.asarray(batch, dtype=np.float32).reshape(-1, *image.shape)
            return batched_probabilities(model, nchw.transpose(0, 3, 1, 2), self.batch_size)

        k = self.blur_kernel
        masker = shap.maskers.Image(f"blur({k},{k})", image.shape)
        explainer = shap.Explainer(predict, masker, algorithm="partition")
        values = explainer(image[None], max_evals=self.max_evals, batch_size=self.batch_size,
                           outputs=[int(target)], silent=True).values  # [1, H, W, 1, 1]
        return _finish(values, image.shape[:2])


def slic_segmentation(n_segments: int, compactness: float) -> Callable[[np.ndarray], np.ndarray]:
    """SLIC superpixels on the grayscale channel (LIME hands over a 3-channel copy).

    The channel is stretched to 0-1 first, so ``compactness`` means the same whatever the input
    normalisation (``image.mean``/``image.std``) is.
    """

    def segment(image: np.ndarray) -> np.ndarray:
        gray = np.asarray(image[..., 0] if image.ndim == 3 else image, dtype=np.float64)
        gray = (gray - gray.min()) / (np.ptp(gray) or 1.0)
        segments = slic(gray, n_segments=n_segments, compactness=compactness,
                        channel_axis=None, start_label=0)
        if segments.max() == 0:
            # One superpixel cannot explain anything (happens on flat or pure-noise images
            # with a low compactness); a grid keeps LIME informative and the log says so.
            log.warning("SLIC gave a single superpixel (raise explain.lime_compactness); "
                        "using a %d-cell grid for this image", n_segments)
            return grid_segmentation(n_segments)(gray)
        return segments

    return segment


def grid_segmentation(n_segments: int) -> Callable[[np.ndarray], np.ndarray]:
    """A regular ``k x k`` grid, ``k = round(sqrt(n_segments))``: shape-agnostic, exact count."""
    k = max(1, round(float(np.sqrt(n_segments))))

    def segment(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        rows = np.minimum(np.arange(h) * k // h, k - 1)
        cols = np.minimum(np.arange(w) * k // w, k - 1)
        return (rows[:, None] * k + cols[None, :]).astype(np.int64)

    return segment


@dataclass
class Lime:
    """LIME (Ribeiro et al. 2016): a weighted linear model over superpixels switched on and off.

    Hidden superpixels take their own mean value (LIME's ``hide_color=None``). The map assigns
    every pixel the linear weight of its superpixel.
    """

    num_samples: int
    segmentation: Callable[[np.ndarray], np.ndarray]
    seed: int
    batch_size: int
    name: str = "lime"
    signed: bool = True

    def __call__(self, model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
        model.eval()
        image = x[0, 0].detach().cpu().numpy().astype(np.float64)  # [H, W]

        def classify(batch: np.ndarray) -> np.ndarray:
            gray = np.asarray(batch, dtype=np.float32)[..., 0][:, None]  # [N, 1, H, W]
            return batched_probabilities(model, gray, self.batch_size)

        explainer = lime_image.LimeImageExplainer(random_state=self.seed)
        # lime 0.2 draws an unconditional tqdm bar per image; keep the stage log readable.
        with contextlib.redirect_stderr(io.StringIO()):
            explanation = explainer.explain_instance(
                image, classify, labels=(int(target),), top_labels=None, hide_color=None,
                num_samples=self.num_samples, batch_size=self.batch_size,
                segmentation_fn=self.segmentation, random_seed=self.seed)
        weights = np.zeros(int(explanation.segments.max()) + 1, dtype=np.float32)
        for segment, weight in explanation.local_exp[int(target)]:
            weights[segment] = weight
        return _finish(weights[explanation.segments], image.shape)


@dataclass(frozen=True)
class MethodSettings:
    """Everything the four methods need, read from ``params.yaml: explain``."""

    target_layer: str
    shap_evals: int
    shap_blur_kernel: int
    lime_samples: int
    lime_segmentation: str
    lime_segments: int
    lime_compactness: float
    batch_size: int
    seed: int


def build_methods(settings: MethodSettings, enabled: list[str]) -> list[AttributionMethod]:
    """The enabled methods, in :data:`METHOD_NAMES` order."""
    if settings.lime_segmentation == "slic":
        segmentation = slic_segmentation(settings.lime_segments, settings.lime_compactness)
    else:
        segmentation = grid_segmentation(settings.lime_segments)
    factories: dict[str, Callable[[], AttributionMethod]] = {
        "gradcam": lambda: GradCam(settings.target_layer),
        "gradcampp": lambda: GradCamPlusPlus(settings.target_layer),
        "shap": lambda: ShapPartition(settings.shap_evals, settings.shap_blur_kernel,
                                      settings.batch_size),
        "lime": lambda: Lime(settings.lime_samples, segmentation, settings.seed,
                             settings.batch_size),
    }
    return [factories[name]() for name in METHOD_NAMES if name in enabled]
