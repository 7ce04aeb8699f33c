"""Explain stage: attribution methods, faithfulness harness, randomization check, stage outputs.

The faithfulness harness is checked on a constructed case whose answer is known: a model whose
output depends only on the mean of one square region. An attribution that points at that region
must beat a random one on deletion and insertion AUC; one that points everywhere else must lose.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from stagerun import REPO, run_python
from torch import nn

from emorec.config import Params
from emorec.demo_faces import render_face
from emorec.errors import ParamsError
from emorec.models import create_model, load_checkpoint
from emorec.transforms import Preprocess
from emorec.xai import faithfulness as fx
from emorec.xai.methods import METHOD_NAMES, MethodSettings, build_methods, check_spatial_layer
from emorec.xai.pipeline import ExplainConfig, run_explain
from emorec.xai.sampling import choose_sample

SIZE = 32
REGION = (slice(4, 12), slice(18, 26))  # the only pixels the oracle model looks at


class RegionModel(nn.Module):
    """Two classes; logit of class 0 = ``gain * mean(region)``, class 1 fixed at 0.

    ``features`` (1x1 identity convolution + ReLU) gives the CAM methods a spatial, post-ReLU
    layer, as the last convolutional block of a real CNN is.
    """

    def __init__(self, gain: float = 4.0):
        super().__init__()
        conv = nn.Conv2d(1, 1, kernel_size=1, bias=False)
        nn.init.ones_(conv.weight)
        self.features = nn.Sequential(conv, nn.ReLU())
        mask = torch.zeros(1, 1, SIZE, SIZE)
        mask[0, 0, REGION[0], REGION[1]] = 1.0
        self.register_buffer("mask", mask / mask.sum())
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        region_mean = (self.features(x) * self.mask).sum(dim=(1, 2, 3))
        return torch.stack([self.gain * region_mean, torch.zeros_like(region_mean)], dim=1)


def region_images(n: int, seed: int = 0) -> np.ndarray:
    """Darkish noisy backgrounds with a bright region: the oracle model predicts class 0."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(-0.3, 0.4, size=(n, 1, SIZE, SIZE)), -1, 1).astype(np.float32)
    x[:, 0, REGION[0], REGION[1]] = 1.0
    return x


def oracle_map(value_in: float = 1.0, value_out: float = 0.0) -> np.ndarray:
    attribution = np.full((SIZE, SIZE), value_out, dtype=np.float32)
    attribution[REGION] = value_in
    return attribution


def small_settings(**overrides) -> MethodSettings:
    base = dict(target_layer="layer2", shap_evals=40, shap_blur_kernel=8, lime_samples=40,
                lime_segmentation="slic", lime_segments=16, lime_compactness=0.3, batch_size=64,
                seed=0)
    return MethodSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet10t", num_classes=6).eval()


# -- methods -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_method_gives_a_finite_map_of_input_size(tiny_model, name):
    (method,) = build_methods(small_settings(), [name])
    x = torch.from_numpy(region_images(1))
    attribution = method(tiny_model, x, target=2)
    assert attribution.shape == (SIZE, SIZE)
    assert attribution.dtype == np.float32
    assert np.isfinite(attribution).all()
    assert np.ptp(attribution) > 0, f"{name} returned a constant map"


def test_methods_find_the_region_the_model_looks_at():
    """Real methods on the constructed model: each must beat random on deletion AUC."""
    model = RegionModel().eval()
    images = region_images(2, seed=1)
    settings = small_settings(target_layer="features", lime_segmentation="grid",
                              lime_segments=16, shap_evals=80)
    for method in build_methods(settings, list(METHOD_NAMES)):
        for i, img in enumerate(images):
            attribution = method(model, torch.from_numpy(img[None]), target=0)
            base = fx.baseline_image(img, "mean", 0.0)
            got = fx.deletion_insertion(model, img, attribution, 0, base, 16,
                                        np.random.default_rng(i))
            rand = fx.deletion_insertion(model, img, fx.random_attribution(
                (SIZE, SIZE), np.random.default_rng(100 + i)), 0, base, 16,
                np.random.default_rng(i))
            assert got.deletion_auc < rand.deletion_auc, method.name
            assert got.insertion_auc > rand.insertion_auc, method.name


def test_missing_target_layer_lists_candidates(tiny_model):
    (method,) = build_methods(small_settings(target_layer="layer9"), ["gradcam"])
    with pytest.raises(ParamsError, match="explain.target_layer.*candidates: .*layer3"):
        method(tiny_model, torch.from_numpy(region_images(1)), target=0)
    with pytest.raises(ParamsError, match=r"convolutional layer.*'fc'"):
        check_spatial_layer(tiny_model, "fc", torch.from_numpy(region_images(1)))


# -- faithfulness harness ----------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["mean", "blur"])
def test_harness_orders_oracle_random_anti_oracle(baseline):
    model = RegionModel().eval()
    img = region_images(1)[0]
    base = fx.baseline_image(img, baseline, 2.0)
    rng = np.random.default_rng(0)

    def curves(attribution: np.ndarray) -> fx.Curves:
        return fx.deletion_insertion(model, img, attribution, 0, base, 20, rng)

    oracle = curves(oracle_map(1.0, 0.0))
    anti = curves(oracle_map(0.0, 1.0))
    rand = curves(fx.random_attribution((SIZE, SIZE), np.random.default_rng(1)))
    assert oracle.deletion_auc < rand.deletion_auc < anti.deletion_auc
    assert oracle.insertion_auc > rand.insertion_auc > anti.insertion_auc
    # the curves start at the full image (deletion) and at the baseline (insertion)
    full = torch.softmax(model(torch.from_numpy(img[None])), 1)[0, 0].item()
    assert oracle.deletion[0] == pytest.approx(full, abs=1e-5)
    assert oracle.insertion[-1] == pytest.approx(full, abs=1e-5)
    assert oracle.fractions[0] == 0 and oracle.fractions[-1] == 1 and len(oracle.fractions) == 21


def test_pixel_order_breaks_ties_with_the_seed():
    flat = np.zeros((4, 4))
    flat[0, 0] = 1.0
    a = fx.pixel_order(flat, np.random.default_rng(0))
    b = fx.pixel_order(flat, np.random.default_rng(0))
    c = fx.pixel_order(flat, np.random.default_rng(1))
    assert a[0] == 0 and c[0] == 0  # the one attributed pixel always comes first
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[1:], np.arange(1, 16))  # ties are not in raster order


# -- randomization sanity check ----------------------------------------------------------------
def test_randomized_copy_reinitialises_every_weight_and_keeps_the_original(tiny_model):
    before = copy.deepcopy(tiny_model.state_dict())
    clone = fx.randomized_copy(tiny_model, seed=3)
    again = fx.randomized_copy(tiny_model, seed=3)
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[name]), f"original changed: {name}"
    for (name, p), q in zip(tiny_model.named_parameters(), clone.parameters(), strict=True):
        if p.numel() > 1 and p.std() > 0:
            assert not torch.equal(p, q), f"not re-initialised: {name}"
    for p, q in zip(clone.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)  # seeded


def test_randomization_check_correlation_below_one(tiny_model):
    (method,) = build_methods(small_settings(), ["gradcampp"])
    x = torch.from_numpy(region_images(1))
    original = method(tiny_model, x, target=1)
    randomized = method(fx.randomized_copy(tiny_model, seed=3), x, target=1)
    assert fx.rank_correlation(original, original) == pytest.approx(1.0)
    assert fx.rank_correlation(original, randomized) < 0.9
    assert np.isnan(fx.rank_correlation(np.zeros((4, 4)), original[:4, :4]))


# -- sampling ----------------------------------------------------------------------------------
def test_sample_mixes_correct_and_misclassified_and_is_seeded():
    true = np.array([0] * 20 + [1] * 20)
    pred = np.array([0] * 30 + [0] * 10)  # 20 correct, 20 wrong
    a = choose_sample(true, pred, 10, 0.5, seed=5)
    assert np.array_equal(a, choose_sample(true, pred, 10, 0.5, seed=5))
    assert not np.array_equal(a, choose_sample(true, pred, 10, 0.5, seed=6))
    assert len(set(a)) == 10
    assert (true[a] == pred[a]).sum() == 5
    # only 2 misclassified available: correct ones fill the rest
    pred_few = true.copy()
    pred_few[[3, 7]] = 1 - true[[3, 7]]
    b = choose_sample(true, pred_few, 10, 0.5, seed=5)
    assert len(b) == 10 and (true[b] != pred_few[b]).sum() == 2


# -- stage -------------------------------------------------------------------------------------
def write_test_split(root: Path, per_class: int, classes: list[str]) -> Path:
    """A tiny test split of demo faces plus one corrupt file (must be counted, not hidden)."""
    rng = np.random.default_rng(0)
    rows = []
    for label in classes:
        for k in range(per_class):
            rel = Path("images") / label / f"{label}_{k}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render_face(label, rng, size=48)).save(root / rel)
            rows.append({"path": rel.as_posix(), "label": label, "source": "demo",
                         "origin": rel.stem, "sha256": "0"})
    bad = Path("images") / classes[0] / "broken.png"
    (root / bad).write_bytes(b"not a png")
    rows.append({"path": bad.as_posix(), "label": classes[0], "source": "demo",
                 "origin": "broken", "sha256": "0"})
    csv = root / "test.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def tiny_explain_params(params_raw: dict, **explain) -> dict:
    raw = copy.deepcopy(params_raw)
    raw["explain"].update({"sample_size": 4, "lime_samples": 30, "shap_evals": 30,
                           "shap_blur_kernel": 8, "lime_segments": 16, "curve_steps": 5,
                           "overlay_scale": 2, **explain})
    return raw


def test_stage_writes_declared_outputs(tmp_path, tiny_checkpoint, params_raw, repo_params_raw):
    classes = list(repo_params_raw["classes"])
    csv = write_test_split(tmp_path, per_class=2, classes=classes)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_explain_params(params_raw)))
    out_dir, metrics = tmp_path / "reports" / "xai", tmp_path / "reports" / "xai.json"
    proc = run_python(
        ["stages/explain.py", "--params", str(params_file), "--model",
         str(tiny_checkpoint), "--test-csv", str(csv), "--root", str(tmp_path), "--out-dir",
         str(out_dir), "--metrics", str(metrics)],
        cwd=REPO, timeout=300, PYTHONWARNINGS="ignore")
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads(metrics.read_text())
    assert report["sample"]["size"] == 4
    assert report["sample"]["test_images_rejected"] == 1
    assert report["sample"]["rejected_by_reason"] == {"corrupt": 1}
    assert report["sample"]["correct"] + report["sample"]["misclassified"] == 4
    for name in METHOD_NAMES:
        row = report["methods"][name]
        for key in ("deletion_auc", "insertion_auc", "seconds_per_image"):
            assert np.isfinite(row[key]) and row[key] >= 0
        assert row["beats_random_deletion"] == (
            row["deletion_auc"] < report["methods"]["random"]["deletion_auc"])
        assert isinstance(row["beats_random_insertion"], bool)
        assert row["randomization_spearman"] is None or -1 <= row["randomization_spearman"] <= 1
        assert len(list((out_dir / name).glob("*.png"))) == 4

    # every file the dvc.yaml plots name for this stage exists and has the declared columns
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stage = dvc["stages"]["explain"]
    assert stage["cmd"] == "python stages/explain.py"
    assert "models/best.pt" in stage["deps"] and "data/processed/test.csv" in stage["deps"]
    declared = [next(iter(p)) for p in dvc["plots"] if isinstance(p, dict)]
    for plot in (p for p in dvc["plots"] if isinstance(p, dict)):
        (name, spec), = plot.items()
        if not name.startswith("xai_"):
            continue
        for file, column in spec["y"].items():
            data = pd.read_csv(tmp_path / file)
            assert list(data.columns) == ["fraction", "deletion", "insertion"], file
            assert column in data.columns and len(data) == 6
    assert {"xai_deletion", "xai_insertion"} <= set(declared)
    with Image.open(out_dir / "comparison.png") as fig:
        assert fig.width > 300 and fig.height > 300
    sample = pd.read_csv(out_dir / "sample.csv")
    assert len(sample) == 4 and set(sample["true"]) <= set(classes)


def test_toggles_and_determinism(tmp_path, tiny_checkpoint, params_raw, repo_params_raw):
    classes = list(repo_params_raw["classes"])
    csv = write_test_split(tmp_path, per_class=1, classes=classes)
    raw = tiny_explain_params(params_raw, run_gradcampp=False, run_lime=False,
                              sample_size=3)
    cfg = ExplainConfig.from_params(Params(raw))
    model, meta = load_checkpoint(tiny_checkpoint)
    pre = Preprocess(**meta["image"])
    frame = pd.read_csv(csv)

    def run(tag: str) -> dict:
        return run_explain(model, classes, pre, frame, cfg, tmp_path / tag / "xai",
                           tmp_path / tag / "xai.json", root=tmp_path)

    first, second = run("a"), run("b")
    assert set(first["methods"]) == {"gradcam", "shap", "random"}
    assert first["enabled"] == {"gradcam": True, "gradcampp": False, "shap": True,
                                "lime": False}
    assert not (tmp_path / "a" / "xai" / "lime").exists()
    for name in ("gradcam", "shap", "random"):
        for key in ("deletion_auc", "insertion_auc"):
            assert first["methods"][name][key] == second["methods"][name][key]

    raw["explain"].update(run_gradcam=False, run_shap=False)
    with pytest.raises(ParamsError, match="nothing to explain"):
        ExplainConfig.from_params(Params(raw))
