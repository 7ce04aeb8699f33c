"""Synth stage: filters on constructed images, caps, prompt bookkeeping, both backends, isolation.

The diffusers path runs a tiny randomly initialised Stable Diffusion pipeline that the test builds
from configs and saves to a temporary folder: the real loading and sampling code, no download.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import string
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from skimage import data as skdata

from emorec.config import Params
from emorec.demo_faces import render_face
from emorec.faces import detect_faces
from emorec.quality import laplacian_variance, perceptual_hash
from emorec.split_csv import COLUMNS
from emorec.synth.backends import ModelUnavailableError, make_backend, resolve_backend
from emorec.synth.filters import (
    REASONS,
    FilterConfig,
    QualityFilter,
    SyntheticCap,
    count_faces,
    max_synthetic,
)
from emorec.synth.merge import SYNTH_COLUMNS
from emorec.synth.prompts import PromptSpec, PromptTemplate, allocate, interleave
from emorec.transforms import Preprocess

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / "stages" / "synth.py"
CLASSES = ["angry", "fearful", "happy", "neutral", "sad", "surprised"]


# ---------------------------------------------------------------------------------------------
# constructed images
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut_face() -> np.ndarray:
    """The one real face of scikit-image's bundled astronaut photo, 64x64 grayscale."""
    gray = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY)
    boxes = detect_faces(gray)
    assert len(boxes) == 1, f"expected one face in astronaut(), found {boxes}"
    x, y, w, h = boxes[0]
    pad = int(0.3 * w)
    crop = gray[max(0, y - pad): y + h + pad, max(0, x - pad): x + w + pad]
    return cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA)


@pytest.fixture
def filter_config() -> FilterConfig:
    return FilterConfig(blur_threshold=20.0, require_one_face=True, detect_min_side=96,
                        phash_size=16, phash_distance=26)


def _demo_face(seed: int, label: str = "angry") -> np.ndarray:
    return render_face(label, np.random.default_rng(seed), 64, 14.0, 0.3)


def test_each_filter_rejects_for_its_own_reason(filter_config, astronaut_face) -> None:
    qf = QualityFilter(filter_config)
    good = _demo_face(1)
    assert qf.check(good) is None
    qf.accept(good)

    blank = np.full((64, 64), 128, np.uint8)
    assert laplacian_variance(blank) == 0.0
    assert qf.check(blank) == "blur"

    blurred = cv2.GaussianBlur(_demo_face(2), (0, 0), sigmaX=3.0)
    assert laplacian_variance(_demo_face(2)) > 20 > laplacian_variance(blurred)
    assert qf.check(blurred) == "blur"

    two = np.hstack([astronaut_face, astronaut_face])
    assert count_faces(astronaut_face, 96) == 1
    assert count_faces(two, 96) == 2, "the tiled image must really show two detectable faces"
    assert qf.check(astronaut_face) is None
    assert qf.check(two) == "multiple_faces"

    texture = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert qf.check(texture) == "no_face"

    rng = np.random.default_rng(3)
    copy = np.clip(good + rng.normal(0, 6, good.shape), 0, 255).astype(np.uint8)
    assert not np.array_equal(copy, good)
    assert qf.check(copy) == "near_duplicate_synthetic"

    real = _demo_face(4, "fearful")
    qf.add_reference(real)
    lookalike = np.clip(real * 0.9 + 12 + rng.normal(0, 4, real.shape), 0, 255).astype(np.uint8)
    assert qf.check(lookalike) == "near_duplicate_real"
    # a different face is still fine: the 256-bit hash keeps distinct faces apart
    assert qf.check(_demo_face(5, "surprised")) is None


def test_face_filter_can_be_switched_off_but_others_stay(filter_config) -> None:
    qf = QualityFilter(FilterConfig(**{**filter_config.__dict__, "require_one_face": False}))
    texture = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert qf.check(texture) is None
    assert qf.check(np.zeros((64, 64), np.uint8)) == "blur"


def test_procedural_faces_are_found_by_the_detector() -> None:
    """The default backend must survive require_one_face, or the stage yields nothing."""
    found = [count_faces(_demo_face(s, label), 96)
             for s in range(8) for label in ("angry", "fearful", "surprised")]
    assert sum(n == 1 for n in found) >= 0.9 * len(found), found


def test_cap_counts_the_merged_total() -> None:
    assert max_synthetic(85, 0.15) == 15          # 15 / 100 == 0.15 exactly: allowed
    assert max_synthetic(84, 0.15) == 14
    assert max_synthetic(10, 0.0) == 0
    cap = SyntheticCap({"a": 17, "b": 100}, 0.15, overall_fraction=0.05)
    assert cap.per_class == {"a": 3, "b": 17} and cap.overall == 6
    reasons = []
    for label in ["a"] * 5 + ["b"] * 5:
        reason = cap.check(label)
        reasons.append(reason)
        if reason is None:
            cap.take(label)
    assert reasons == [None] * 3 + ["cap_class"] * 2 + [None] * 3 + ["cap_overall"] * 2


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------
def test_prompts_vary_and_hash_pins_every_ingredient(params) -> None:
    template = PromptTemplate.from_params(params, CLASSES)
    prompts = {template.render("fearful", np.random.default_rng([1, i])) for i in range(30)}
    assert len(prompts) > 10 and all("scared" in p for p in prompts)
    assert template.render("sad", np.random.default_rng(5)) == \
        template.render("sad", np.random.default_rng(5))

    base = PromptSpec(0, "sad", 7, "p", "n", "m", {"steps": 2})
    variants = [PromptSpec(0, "sad", 8, "p", "n", "m", {"steps": 2}),
                PromptSpec(0, "sad", 7, "q", "n", "m", {"steps": 2}),
                PromptSpec(0, "sad", 7, "p", "", "m", {"steps": 2}),
                PromptSpec(0, "sad", 7, "p", "n", "m2", {"steps": 2}),
                PromptSpec(0, "sad", 7, "p", "n", "m", {"steps": 3})]
    assert len(base.prompt_hash) == 64
    assert base.prompt_hash == PromptSpec(9, "sad", 7, "p", "n", "m", {"steps": 2}).prompt_hash
    assert len({v.prompt_hash for v in variants} | {base.prompt_hash}) == 6


def test_bad_template_names_the_key(params_raw) -> None:
    params_raw["synth"]["diffusers"]["prompt_template"] = "a {mood} face"
    with pytest.raises(Exception, match="synth.diffusers.prompt_template"):
        PromptTemplate.from_params(Params(params_raw), CLASSES)


def test_allocation_is_even_and_interleaved() -> None:
    counts = allocate(10, ["angry", "fearful", "surprised"])
    assert counts == {"angry": 4, "fearful": 3, "surprised": 3}
    order = interleave(counts)
    assert order[:3] == ["angry", "fearful", "surprised"] and len(order) == 10


# ---------------------------------------------------------------------------------------------
# the stage on a tiny processed dataset
# ---------------------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def workdir(tmp_path, monkeypatch, params_raw) -> Path:
    """A repository-like folder with data/processed/{train,val,test}.csv and its images."""
    monkeypatch.chdir(tmp_path)
    params_raw["image"]["size"] = 64
    splits = {"train": 8, "val": 2, "test": 2}
    index = 0
    for split, per_class in splits.items():
        rows = []
        for label in CLASSES:
            for _ in range(per_class):
                image_id = f"demo-{index:04d}"
                path = Path("data/interim/images") / label / f"{image_id}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(render_face(label, np.random.default_rng([99, index]))).save(path)
                rows.append({"path": path.as_posix(), "label": label, "source": "demo",
                             "origin": image_id, "sha256": _sha(path)})
                index += 1
        Path("data/processed").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=COLUMNS).to_csv(f"data/processed/{split}.csv", index=False)
    synth = params_raw["synth"]
    synth.update(enabled=True, backend="procedural", target_total=15, max_fraction=0.3,
                 max_fraction_overall=None, classes=["angry", "fearful", "surprised"])
    return tmp_path


def _run_stage(params_raw: dict, *extra: str) -> int:
    Path("params.yaml").write_text(yaml.safe_dump(params_raw, sort_keys=False))
    stage = runpy.run_path(str(STAGE))
    return stage["run_stage"](stage["main"], stage["build_parser"](), list(extra))


def test_stage_adds_capped_synthetic_rows_to_train_only(workdir, params_raw) -> None:
    before = {p: _sha(p) for p in Path("data/processed").iterdir()}
    assert _run_stage(params_raw) == 0

    # val/test untouched, and data/synth holds only the train CSV and synthetic images
    assert {p: _sha(p) for p in Path("data/processed").iterdir()} == before
    assert sorted(p.name for p in Path("data/synth").iterdir()) == ["images", "train.csv"]

    train = pd.read_csv("data/processed/train.csv")
    merged = pd.read_csv("data/synth/train.csv")
    assert list(merged.columns) == COLUMNS + SYNTH_COLUMNS
    real, synth = merged[merged.source != "synthetic"], merged[merged.source == "synthetic"]
    pd.testing.assert_frame_equal(real[COLUMNS].reset_index(drop=True), train)
    assert real[SYNTH_COLUMNS].isna().all().all()

    status = json.loads(Path("reports/synth/status.json").read_text())
    assert status["enabled"] is True and status["generated"]["total"] == 15
    # cap: 0.3 of the merged class total, 8 real -> at most 3 synthetic per class
    assert status["caps"]["angry"] == 3
    for c in CLASSES:
        rejected = sum(status["rejected"][r][c] for r in REASONS)
        assert status["generated"][c] == status["accepted"][c] + rejected
        assert status["accepted"][c] == int((synth.label == c).sum())
        assert status["synthetic_fraction"][c] <= 0.3
    assert status["rejected"]["cap_class"]["total"] > 0
    assert status["accepted"]["total"] == len(synth) > 0
    assert status["synthetic_fraction"]["overall"] == round(len(synth) / len(merged), 6)
    assert set(synth.label) <= {"angry", "fearful", "surprised"}

    for row in synth.itertuples():
        path = Path(row.path)
        assert path.parts[:3] == ("data", "synth", "images") and path.parent.name == row.label
        assert _sha(path) == row.sha256
        assert row.prompt and len(row.prompt_hash) == 64 and int(row.seed) >= 0
    assert synth.prompt_hash.is_unique and synth.seed.is_unique

    # no synthetic image is a near duplicate of a val/test image
    held_out = pd.concat([pd.read_csv(f"data/processed/{s}.csv") for s in ("val", "test")])
    held = [perceptual_hash(Image.open(p), 16) for p in held_out.path]
    for p in synth.path:
        h = perceptual_hash(Image.open(p), 16)
        assert min(h - other for other in held) > params_raw["synth"]["phash_distance"]

    assert Path("reports/synth/counts.csv").is_file()
    assert Image.open("reports/synth/samples.png").size[0] > 100

    # deterministic for a seed: a rerun writes the same CSV (same pixels, same hashes)
    first = Path("data/synth/train.csv").read_bytes()
    assert _run_stage(params_raw) == 0
    assert Path("data/synth/train.csv").read_bytes() == first


def test_overall_cap_binds_when_lower(workdir, params_raw) -> None:
    params_raw["synth"]["max_fraction_overall"] = 0.03   # 48 real rows -> at most 1 synthetic
    assert _run_stage(params_raw) == 0
    status = json.loads(Path("reports/synth/status.json").read_text())
    assert status["caps"]["overall"] == 1 and status["accepted"]["total"] == 1
    assert status["rejected"]["cap_overall"]["total"] > 0


def test_disabled_stage_passes_the_train_split_through(workdir, params_raw) -> None:
    params_raw["synth"]["enabled"] = False
    assert _run_stage(params_raw) == 0
    merged = pd.read_csv("data/synth/train.csv")
    pd.testing.assert_frame_equal(merged[COLUMNS], pd.read_csv("data/processed/train.csv"))
    assert list(Path("data/synth/images").iterdir()) == []
    status = json.loads(Path("reports/synth/status.json").read_text())
    assert status["status"] == "disabled" and status["generated"]["total"] == 0
    assert status["synthetic_fraction"]["overall"] == 0.0


def test_bad_synth_classes_is_a_one_line_error(workdir, params_raw, capsys) -> None:
    params_raw["synth"]["classes"] = ["angry", "bored"]
    assert _run_stage(params_raw) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "synth.classes" in err[0]


def test_train_and_evaluate_read_val_test_from_processed() -> None:
    """Synthetic rows can only reach training: val/test inputs come from data/processed."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    synth = stages["synth"]
    data_outs = [o for o in synth["outs"] if str(o).startswith("data/")]
    assert data_outs == ["data/synth"] and "data/processed/train.csv" in synth["deps"]
    train_deps = stages["train"]["deps"]
    assert "data/synth/train.csv" in train_deps and "data/processed/val.csv" in train_deps
    assert not any(str(d).startswith("data/synth/") and d != "data/synth/train.csv"
                   for d in train_deps)
    assert "data/processed/test.csv" in stages["evaluate"]["deps"]
    assert not any(str(d).startswith("data/synth") for d in stages["evaluate"]["deps"])

    defaults = {}
    for name in ("train", "evaluate"):
        parser = runpy.run_path(str(REPO / "stages" / f"{name}.py"))["build_parser"]()
        defaults[name] = {k: str(v) for k, v in vars(parser.parse_args([])).items()
                          if isinstance(v, Path) and str(v).endswith(".csv")}
    assert defaults["train"]["train_csv"] == "data/synth/train.csv"
    assert all(v.startswith("data/processed/") for k, v in defaults["train"].items()
               if k != "train_csv")
    assert all(v.startswith("data/processed/") for v in defaults["evaluate"].values())


# ---------------------------------------------------------------------------------------------
# diffusers backend on a tiny random pipeline
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    """A randomly initialised Stable Diffusion pipeline (~0.5 MB) saved in diffusers layout."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_sd")
    tok_dir = root / "tokenizer_src"
    tok_dir.mkdir()
    # character-level BPE: every character and its end-of-word form, no merges
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + ",.-'":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32,
        num_attention_heads=2, num_hidden_layers=2, vocab_size=len(vocab),
        max_position_embeddings=77))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = root / "sd"
    pipe.save_pretrained(folder)
    return folder


def _diffusers_params(params_raw: dict, model: str) -> dict:
    params_raw["synth"].update(backend="diffusers", require_one_face=False, blur_threshold=0.0,
                               target_total=4, max_fraction=0.5)
    params_raw["synth"]["diffusers"].update(model=model, steps=2, resolution=32)
    return params_raw


def test_diffusers_backend_from_local_folder(workdir, params_raw, tiny_sd) -> None:
    raw = _diffusers_params(params_raw, str(tiny_sd))
    backend = make_backend(Params(raw), Preprocess.from_params(Params(raw)))
    prompt, negative = backend.describe("fearful", np.random.default_rng(0))
    assert "scared" in prompt and negative == raw["synth"]["diffusers"]["negative_prompt"]
    a = backend.generate("fearful", prompt, negative, seed=11)
    b = backend.generate("fearful", prompt, negative, seed=11)
    c = backend.generate("fearful", prompt, negative, seed=12)
    assert a.shape == (64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)

    # through the stage: rows carry the diffusion prompt, its seed and hash
    assert _run_stage(raw) == 0
    synth = pd.read_csv("data/synth/train.csv").query("source == 'synthetic'")
    status = json.loads(Path("reports/synth/status.json").read_text())
    assert status["backend"] == "diffusers" and status["generated"]["total"] == 4
    assert len(synth) == status["accepted"]["total"] > 0
    assert synth.prompt.str.startswith("a close-up photo of the face of a").all()


def test_uncached_hub_model_fails_with_one_clear_line(workdir, params_raw, monkeypatch,
                                                     capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = _diffusers_params(params_raw, "emorec-tests/no-such-stable-diffusion")
    with pytest.raises(ModelUnavailableError, match="not available locally"):
        make_backend(Params(raw), Preprocess.from_params(Params(raw)))
    assert _run_stage(raw) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "emorec-tests/no-such-stable-diffusion" in err[0]
    assert "synth.diffusers.model" in err[0] and "local" in err[0]

    raw["synth"]["diffusers"]["model"] = str(workdir / "models" / "sd")
    with pytest.raises(ModelUnavailableError, match="no model_index.json"):
        make_backend(Params(raw), Preprocess.from_params(Params(raw)))


# ---------------------------------------------------------------------------------------------
# embedding near-duplicate filter (tiny random CLIP built here, no download)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised CLIP vision tower with projection, saved like a hub snapshot."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return folder


def _no_phash_config() -> FilterConfig:
    """pHash can never match (distance <= -1), so only the embedding check can reject."""
    return FilterConfig(blur_threshold=20.0, require_one_face=False, detect_min_side=96,
                        phash_size=16, phash_distance=-1)


def test_embedding_filter_rejects_copies_of_real_and_accepted_images(tiny_clip) -> None:
    from emorec.synth.embedding import EmbeddingFilter, ImageEmbedder

    embedder = ImageEmbedder(str(tiny_clip), batch_size=2)
    a, b, c = _demo_face(1), _demo_face(2, "sad"), _demo_face(3, "happy")
    vectors = embedder.embed([a, b, c])
    assert vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed([a.copy()])[0], vectors[0], atol=1e-6)
    similarity = float(vectors[0] @ vectors[1])
    assert similarity < 0.9999  # different faces do not look identical to it
    threshold = (similarity + 1.0) / 2  # exact copies (1.0) above, a vs b below

    qf = QualityFilter(_no_phash_config(), EmbeddingFilter(embedder, threshold))
    qf.add_references([a])
    assert qf.check(a.copy()) == "embedding_duplicate_real"
    assert qf.check(b) is None
    qf.accept(b)
    assert qf.check(b.copy()) == "embedding_duplicate_synthetic"
    assert {"embedding_duplicate_real", "embedding_duplicate_synthetic"} <= set(REASONS)


def test_embedding_encoder_from_automodel_folder(tmp_path) -> None:
    """A non-CLIP encoder goes through AutoModel (its pooled output is the embedding)."""
    import torch
    from transformers import ViTConfig, ViTModel

    from emorec.synth.embedding import ImageEmbedder

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    vectors = ImageEmbedder(str(tmp_path)).embed([_demo_face(1), _demo_face(2)])
    assert vectors.shape == (2, 32)


def test_stage_counts_embedding_rejections(workdir, params_raw, tiny_clip) -> None:
    # threshold -1: every candidate that passes the other filters is an embedding duplicate
    params_raw["synth"]["embedding"] = {"enabled": True, "model": str(tiny_clip),
                                        "threshold": -1.0, "batch_size": 16}
    assert _run_stage(params_raw) == 0
    status = json.loads(Path("reports/synth/status.json").read_text())
    assert status["embedding_filter"] == {"enabled": True, "model": str(tiny_clip),
                                          "threshold": -1.0}
    others = sum(status["rejected"][r]["total"] for r in REASONS
                 if r != "embedding_duplicate_real")
    assert status["rejected"]["embedding_duplicate_real"]["total"] == 15 - others > 0
    assert status["accepted"]["total"] == 0


def test_embedding_filter_off_by_default_and_clear_error_when_missing(
        workdir, params_raw, monkeypatch, capsys) -> None:
    assert params_raw["synth"]["embedding"]["enabled"] is False  # the demo has no weights
    assert _run_stage(params_raw) == 0
    status = json.loads(Path("reports/synth/status.json").read_text())
    assert status["embedding_filter"]["enabled"] is False
    assert status["rejected"]["embedding_duplicate_real"]["total"] == 0

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params_raw["synth"]["embedding"].update(enabled=True, model="emorec-tests/no-such-clip")
    assert _run_stage(params_raw) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "synth.embedding.model" in err[0]
    assert "emorec-tests/no-such-clip" in err[0] and "not available locally" in err[0]


def test_auto_backend_keeps_cartoons_out_of_real_data(params_raw, tmp_path) -> None:
    params_raw["synth"]["backend"] = "auto"
    assert resolve_backend(Params(params_raw))[0] == "procedural"  # demo data: demo drawings
    params_raw["data"]["source"] = "fer2013"
    params_raw["synth"]["diffusers"]["model"] = str(tmp_path / "no-such-model")
    name, why = resolve_backend(Params(params_raw))
    assert name is None and "not available locally" in why and "fer2013" in why
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    params_raw["synth"]["diffusers"]["model"] = str(tmp_path / "sd")
    assert resolve_backend(Params(params_raw))[0] == "diffusers"
    params_raw["synth"]["backend"] = "procedural"  # an explicit choice is honoured
    assert resolve_backend(Params(params_raw))[0] == "procedural"
