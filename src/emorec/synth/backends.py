"""Image generators behind one small interface: the embedded procedural faces and Stable Diffusion.

A backend turns a :class:`~emorec.synth.prompts.PromptSpec` into a uint8 grayscale image at the
project's ``image.size`` (what training will see, so the filters judge exactly that). The
procedural backend needs nothing beyond this package; the diffusers backend loads a Stable
Diffusion pipeline from disk only (``local_files_only=True``), because this environment has no
network, and says so in one line when the weights are not there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from emorec.config import Params
from emorec.demo_faces import render_face
from emorec.errors import EmorecError, ParamsError
from emorec.synth.prompts import PromptTemplate
from emorec.transforms import Preprocess

BACKENDS = ("procedural", "diffusers")


class ModelUnavailableError(EmorecError):
    """The configured diffusion model is not on this machine (and cannot be downloaded here)."""


class Backend(Protocol):
    """What the synth stage needs from a generator."""

    name: str
    model: str
    settings: dict[str, Any]

    def describe(self, label: str, rng: np.random.Generator) -> tuple[str, str]:
        """``(prompt, negative_prompt)`` for one image of class ``label``."""

    def generate(self, label: str, prompt: str, negative_prompt: str, seed: int) -> np.ndarray:
        """uint8 ``[size, size]`` grayscale image."""


class ProceduralBackend:
    """The demo face generator with fresh seeds: runs anywhere, no download.

    The "prompt" records what was asked for in words; the pixels depend only on label and seed.
    """

    name = "procedural"
    model = "emorec.demo_faces"

    def __init__(self, size: int, noise_std: float, ambiguity: float):
        self.size, self.noise_std, self.ambiguity = size, noise_std, ambiguity
        self.settings = {"size": size, "noise_std": noise_std, "ambiguity": ambiguity}

    def describe(self, label: str, rng: np.random.Generator) -> tuple[str, str]:
        return f"procedural demo face, expression: {label}", ""

    def generate(self, label: str, prompt: str, negative_prompt: str, seed: int) -> np.ndarray:
        return render_face(label, np.random.default_rng(seed), self.size, self.noise_std,
                           self.ambiguity)


def _looks_like_path(model: str) -> bool:
    """Hub ids are ``owner/name``; anything else that names a file system location is a path."""
    return (Path(model).expanduser().exists() or model.startswith((".", "/", "~"))
            or model.count("/") > 1 or "\\" in model)


def load_pipeline(model: str, dev: Any = None) -> Any:
    """A ``StableDiffusionPipeline`` from a local folder or the local Hugging Face cache.

    Never downloads. Any failure to find or read the weights becomes one
    :class:`ModelUnavailableError` that tells the user what to put where.
    """
    import torch  # heavy imports only on this path
    from diffusers import StableDiffusionPipeline

    from emorec.models import device as default_device

    dev = dev or default_device()
    hint = ("download it on a machine with network access (e.g. `hf download "
            f"{model if not _looks_like_path(model) else 'runwayml/stable-diffusion-v1-5'} "
            "--local-dir models/sd`) and set synth.diffusers.model to that folder, "
            "or run with -S synth.backend=procedural")
    source = model
    if _looks_like_path(model):
        folder = Path(model).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"synth.diffusers.model: {folder} is not a diffusers model folder "
                f"(no model_index.json); {hint}")
        source = str(folder)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(
            f"synth.diffusers.model: Stable Diffusion model {model!r} is not available locally "
            f"(there is no network here): {hint}. Cause: {first}") from err
    pipe = pipe.to(dev, dtype)  # half precision on GPU only: CPU kernels want float32
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersBackend:
    """Stable Diffusion txt2img, seeded per image; output reduced to the project's grayscale."""

    name = "diffusers"

    def __init__(self, model: str, template: PromptTemplate, steps: int, guidance_scale: float,
                 resolution: int, preprocess: Preprocess, dev: Any = None):
        self.model = model
        self.template = template
        self.steps, self.guidance_scale, self.resolution = steps, guidance_scale, resolution
        self.preprocess = preprocess
        self.settings = {"steps": steps, "guidance_scale": guidance_scale,
                         "resolution": resolution, "size": preprocess.size}
        self.pipe = load_pipeline(model, dev)

    def describe(self, label: str, rng: np.random.Generator) -> tuple[str, str]:
        return self.template.render(label, rng), self.template.negative_prompt

    def generate(self, label: str, prompt: str, negative_prompt: str, seed: int) -> np.ndarray:
        import torch

        # A CPU generator makes the initial latents identical on CPU and GPU for one seed.
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            out = self.pipe(prompt=prompt, negative_prompt=negative_prompt or None,
                            num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                            height=self.resolution, width=self.resolution, generator=generator,
                            output_type="pil")
        image: Image.Image = out.images[0]
        return self.preprocess.to_gray(image)


def diffusers_model_available(model: str) -> bool:
    """Whether ``model`` is a local diffusers folder or already in the Hugging Face cache."""
    if _looks_like_path(model):
        return (Path(model).expanduser() / "model_index.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model, "model_index.json"), str)


def resolve_backend(params: Params) -> tuple[str | None, str]:
    """The backend ``synth.backend`` means here, or None (synth off), and why.

    ``auto`` keeps the demo's procedural cartoons with the demo data only: a real dataset gets
    diffusers faces when a local model is configured, and no synthetic data otherwise, since
    drawings among real photos would teach the model what a drawing looks like.
    """
    name = params.choice("synth.backend", ("auto", *BACKENDS))
    if name != "auto":
        return name, f"synth.backend is {name}"
    if params.get("data.source") == "demo":
        return "procedural", "synth.backend auto: procedural faces for the procedural demo data"
    model = params.string("synth.diffusers.model")
    if diffusers_model_available(model):
        return "diffusers", f"synth.backend auto: diffusers model {model!r} is available locally"
    return None, (f"synth.backend auto: data.source is {params.get('data.source')!r} (real "
                  f"faces) and diffusers model {model!r} is not available locally, so no "
                  "synthetic faces are made (procedural drawings never mix into real data)")


def make_backend(params: Params, preprocess: Preprocess, name: str | None = None) -> Backend:
    """The backend ``name`` (default: ``synth.backend``), configured from params."""
    name = name or params.choice("synth.backend", BACKENDS)
    if name == "procedural":
        return ProceduralBackend(
            size=preprocess.size,
            noise_std=params.number("synth.procedural.noise_std", low=0),
            ambiguity=params.number("synth.procedural.ambiguity", low=0, high=1))
    section = params.section("synth.diffusers")
    resolution = section.integer("resolution", low=8)
    if resolution % 8:
        raise ParamsError("synth.diffusers.resolution",
                          f"must be a multiple of 8, got {resolution}")
    return DiffusersBackend(
        model=section.string("model"),
        template=PromptTemplate.from_params(params, params.classes),
        steps=section.integer("steps", low=1),
        guidance_scale=section.number("guidance_scale", low=0),
        resolution=resolution, preprocess=preprocess)
