"""The explain stage's work: sample, attribute, measure faithfulness, draw, report.

Every attribution explains the class the model *predicted* (that is what a user of the model sees
and what deletion/insertion can test: removing the evidence should lower that probability).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.models import model_device
from emorec.transforms import Preprocess
from emorec.xai import faithfulness as fx
from emorec.xai import figures
from emorec.xai.methods import (
    METHOD_NAMES,
    AttributionMethod,
    MethodSettings,
    build_methods,
    check_spatial_layer,
)
from emorec.xai.sampling import LoadedSplit, Sample, load_split_images, predict_and_sample

log = logging.getLogger("emorec.xai")

RANDOM = "random"
CAM_METHODS = ("gradcam", "gradcampp")


@dataclass(frozen=True)
class ExplainConfig:
    """``params.yaml: explain``, validated."""

    sample_size: int
    seed: int
    misclassified_fraction: float
    enabled: list[str]
    methods: MethodSettings
    curve_steps: int
    curve_baseline: str
    curve_blur_sigma: float
    batch_size: int
    overlay_alpha: float
    overlay_scale: int

    @classmethod
    def from_params(cls, params: Params) -> ExplainConfig:
        p = params.section("explain")
        enabled = [m for m in METHOD_NAMES if p.boolean(f"run_{m}")]
        if not enabled:
            raise ParamsError("explain", "has every run_* toggle false: nothing to explain")
        seed = p.integer("seed")
        batch_size = p.integer("batch_size", low=1)
        return cls(
            sample_size=p.integer("sample_size", low=1),
            seed=seed,
            misclassified_fraction=p.number("misclassified_fraction", low=0, high=1),
            enabled=enabled,
            methods=MethodSettings(
                target_layer=p.string("target_layer"),
                shap_evals=p.integer("shap_evals", low=10),
                shap_blur_kernel=p.integer("shap_blur_kernel", low=1),
                lime_samples=p.integer("lime_samples", low=10),
                lime_segmentation=p.choice("lime_segmentation", ["slic", "grid"]),
                lime_segments=p.integer("lime_segments", low=2),
                lime_compactness=p.number("lime_compactness", low=0),
                batch_size=batch_size,
                seed=seed,
            ),
            curve_steps=p.integer("curve_steps", low=2),
            curve_baseline=p.choice("curve_baseline", fx.BASELINES),
            curve_blur_sigma=p.number("curve_blur_sigma", low=0),
            batch_size=batch_size,
            overlay_alpha=p.number("overlay_alpha", low=0, high=1),
            overlay_scale=p.integer("overlay_scale", low=1, high=16),
        )


@dataclass
class MethodResult:
    """Per-image outcomes of one method (or of the random baseline)."""

    maps: list[np.ndarray] = field(default_factory=list)
    curves: list[fx.Curves] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    rank_corr: list[float] = field(default_factory=list)

    def mean_curves(self) -> fx.Curves:
        return fx.Curves(self.curves[0].fractions,
                         np.mean([c.deletion for c in self.curves], axis=0),
                         np.mean([c.insertion for c in self.curves], axis=0))


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent, reproducible stream per (seed, image, purpose)."""
    return np.random.default_rng([seed, *keys])


def attribute_sample(model: nn.Module, randomized: nn.Module, method: AttributionMethod,
                     images: np.ndarray, targets: np.ndarray, baselines: np.ndarray,
                     cfg: ExplainConfig, method_key: int) -> MethodResult:
    """Maps, timing, deletion/insertion curves and randomization correlation for one method."""
    dev = model_device(model)
    result = MethodResult()
    for i in tqdm(range(len(images)), desc=method.name, unit="img"):
        x = torch.from_numpy(images[i][None]).to(dev)
        start = time.perf_counter()
        attribution = method(model, x, int(targets[i]))
        result.seconds.append(time.perf_counter() - start)
        result.maps.append(attribution)
        result.curves.append(fx.deletion_insertion(
            model, images[i], attribution, int(targets[i]), baselines[i], cfg.curve_steps,
            _rng(cfg.seed, i, method_key), cfg.batch_size))
        result.rank_corr.append(fx.rank_correlation(
            attribution, method(randomized, x, int(targets[i]))))
    return result


def random_baseline(model: nn.Module, images: np.ndarray, targets: np.ndarray,
                    baselines: np.ndarray, cfg: ExplainConfig) -> MethodResult:
    """Curves of seeded random maps: the level a method has to beat."""
    result = MethodResult()
    key = len(METHOD_NAMES)
    for i in range(len(images)):
        attribution = fx.random_attribution(images[i].shape[-2:], _rng(cfg.seed, i, key, 0))
        result.maps.append(attribution)
        result.curves.append(fx.deletion_insertion(
            model, images[i], attribution, int(targets[i]), baselines[i], cfg.curve_steps,
            _rng(cfg.seed, i, key, 1), cfg.batch_size))
    return result


def summarize(results: dict[str, MethodResult], enabled: list[str]
              ) -> dict[str, Any]:
    """The per-method numbers of ``reports/xai.json``."""
    rand = results[RANDOM]
    rand_del = np.array([c.deletion_auc for c in rand.curves])
    rand_ins = np.array([c.insertion_auc for c in rand.curves])
    out: dict[str, Any] = {}
    for name in enabled:
        res = results[name]
        dels = np.array([c.deletion_auc for c in res.curves])
        ins = np.array([c.insertion_auc for c in res.curves])
        corr = np.array(res.rank_corr, dtype=np.float64)
        defined = corr[np.isfinite(corr)]
        out[name] = {
            "deletion_auc": float(dels.mean()),
            "insertion_auc": float(ins.mean()),
            "beats_random_deletion": bool(dels.mean() < rand_del.mean()),
            "beats_random_insertion": bool(ins.mean() > rand_ins.mean()),
            "deletion_win_rate": float(np.mean(dels < rand_del)),
            "insertion_win_rate": float(np.mean(ins > rand_ins)),
            "seconds_per_image": float(np.mean(res.seconds)),
            "randomization_spearman": float(defined.mean()) if defined.size else None,
            "randomization_undefined": int(corr.size - defined.size),
        }
    out[RANDOM] = {"deletion_auc": float(rand_del.mean()),
                   "insertion_auc": float(rand_ins.mean())}
    return out


def _write_curves(curves_dir: Path, results: dict[str, MethodResult]) -> dict[str, fx.Curves]:
    """One CSV per method (fraction, deletion, insertion): the data of the DVC plots."""
    curves_dir.mkdir(parents=True, exist_ok=True)
    mean = {name: res.mean_curves() for name, res in results.items()}
    for name, c in mean.items():
        pd.DataFrame({"fraction": c.fractions, "deletion": c.deletion,
                      "insertion": c.insertion}).to_csv(curves_dir / f"{name}.csv", index=False,
                                                        float_format="%.6f")
    return mean


def _write_sample_table(path: Path, split: LoadedSplit, sample: Sample, classes: list[str],
                        results: dict[str, MethodResult]) -> None:
    rows = split.frame.iloc[sample.indices]
    table = pd.DataFrame({
        "row": np.arange(len(sample)), "path": rows["path"].to_numpy(),
        "true": [classes[t] for t in sample.true], "pred": [classes[p] for p in sample.pred],
        "confidence": np.round(sample.confidence, 4), "correct": sample.correct,
    })
    for name, res in results.items():
        table[f"{name}_deletion_auc"] = np.round([c.deletion_auc for c in res.curves], 4)
        table[f"{name}_insertion_auc"] = np.round([c.insertion_auc for c in res.curves], 4)
    table.to_csv(path, index=False)


def _draw(out_dir: Path, split: LoadedSplit, sample: Sample, classes: list[str],
          methods: list[AttributionMethod], results: dict[str, MethodResult],
          summary: dict[str, Any], preprocess: Preprocess, cfg: ExplainConfig) -> None:
    images = split.images[sample.indices]
    grays = [preprocess.denormalize(img) for img in images]
    stems = [Path(p).stem for p in split.frame["path"].iloc[sample.indices]]
    for method in methods:
        for r, gray in enumerate(grays):
            figures.save_overlay(out_dir / method.name / f"{r:02d}_{stems[r]}.png", gray,
                                 results[method.name].maps[r], method.signed, cfg.overlay_alpha,
                                 cfg.overlay_scale)
    titles = [f"true {classes[t]}\npred {classes[p]} ({c:.2f})"
              for t, p, c in zip(sample.true, sample.pred, sample.confidence, strict=True)]
    column_titles = {
        m.name: f"{m.name}\ndel {summary[m.name]['deletion_auc']:.3f} "
                f"(rand {summary[RANDOM]['deletion_auc']:.3f})" for m in methods}
    figures.comparison_grid(out_dir / "comparison.png", grays, titles, list(sample.correct),
                            {m.name: results[m.name].maps for m in methods},
                            {m.name: m.signed for m in methods}, column_titles,
                            cfg.overlay_alpha)


def run_explain(model: nn.Module, classes: list[str], preprocess: Preprocess,
                frame: pd.DataFrame, cfg: ExplainConfig, out_dir: Path, metrics_path: Path,
                root: str | Path = ".") -> dict[str, Any]:
    """Everything the stage produces; returns the metrics written to ``metrics_path``."""
    model.eval()
    split = load_split_images(frame, preprocess, root)
    sample = predict_and_sample(model, split, classes, cfg.sample_size,
                                cfg.misclassified_fraction, cfg.seed, cfg.batch_size)
    images = split.images[sample.indices]
    targets = sample.pred
    baselines = np.stack([fx.baseline_image(img, cfg.curve_baseline, cfg.curve_blur_sigma)
                          for img in images])
    dev = model_device(model)
    if any(m in cfg.enabled for m in CAM_METHODS):
        check_spatial_layer(model, cfg.methods.target_layer, torch.from_numpy(images[:1]).to(dev))
    methods = build_methods(cfg.methods, cfg.enabled)
    randomized = fx.randomized_copy(model, cfg.seed)

    results: dict[str, MethodResult] = {}
    for method in methods:
        results[method.name] = attribute_sample(model, randomized, method, images, targets,
                                                baselines, cfg, METHOD_NAMES.index(method.name))
    results[RANDOM] = random_baseline(model, images, targets, baselines, cfg)
    summary = summarize(results, cfg.enabled)
    for name in cfg.enabled:
        if not summary[name]["beats_random_deletion"]:
            log.warning("%s does NOT beat random attribution on deletion AUC (%.4f vs %.4f)",
                        name, summary[name]["deletion_auc"], summary[RANDOM]["deletion_auc"])

    if out_dir.exists():
        shutil.rmtree(out_dir)  # a declared output: stale overlays of disabled methods must go
    out_dir.mkdir(parents=True)
    mean_curves = _write_curves(out_dir / "curves", results)
    figures.curves_figure(out_dir / "curves.png", mean_curves)
    _write_sample_table(out_dir / "sample.csv", split, sample, classes, results)
    _draw(out_dir, split, sample, classes, methods, results, summary, preprocess, cfg)

    report = {
        "methods": summary,
        "enabled": {m: m in cfg.enabled for m in METHOD_NAMES},
        "sample": {
            "size": len(sample), "correct": int(sample.correct.sum()),
            "misclassified": int((~sample.correct).sum()),
            "test_images_read": len(split.frame),
            "test_images_rejected": int(sum(split.rejected.values())),
            "rejected_by_reason": split.rejected,
        },
        "settings": {
            "target": "predicted class", "score": "softmax probability",
            "curve_baseline": cfg.curve_baseline, "curve_steps": cfg.curve_steps,
            "target_layer": cfg.methods.target_layer, "device": str(dev),
        },
    }
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
