"""The synth stage: generate, filter, cap, merge and report.

Reads ``data/processed/train.csv`` (and val/test only as near-duplicate references), writes
``data/synth/train.csv`` plus ``data/synth/images/<class>/synth-<index>.png``, and reports every
generated image's fate in ``reports/synth/status.json``: nothing is dropped without a count.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from emorec.config import Params
from emorec.errors import DataError, ParamsError
from emorec.imageio import read_gray
from emorec.ingest import png_bytes, sha256_hex
from emorec.plots import image_rows_png
from emorec.split_csv import read_split
from emorec.synth.backends import Backend, make_backend, resolve_backend
from emorec.synth.embedding import EmbeddingConfig, EmbeddingFilter
from emorec.synth.filters import REASONS, FilterConfig, QualityFilter, SyntheticCap
from emorec.synth.merge import SYNTHETIC, merge_train, synthetic_fraction
from emorec.synth.prompts import PromptSpec, allocate, fresh_seed, image_rng, interleave
from emorec.transforms import Preprocess

log = logging.getLogger(__name__)

REFERENCE_SPLITS = ("train", "val", "test")


@dataclass
class Outcome:
    """Tallies of one run, per class, plus a few example images for the report grid."""

    classes: list[str]
    samples_per_group: int
    generated: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.generated = dict.fromkeys(self.classes, 0)
        self.accepted = dict.fromkeys(self.classes, 0)
        self.rejected = {r: dict.fromkeys(self.classes, 0) for r in REASONS}

    def record(self, label: str, reason: str | None, gray: np.ndarray) -> None:
        self.generated[label] += 1
        if reason is None:
            self.accepted[label] += 1
        else:
            self.rejected[reason][label] += 1
        group = f"accepted {label}" if reason is None else f"rejected: {reason}"
        kept = self.examples.setdefault(group, [])
        if len(kept) < self.samples_per_group:
            kept.append(gray)


def _with_total(counts: dict[str, int]) -> dict[str, int]:
    return {**counts, "total": int(sum(counts.values()))}


def _selected_classes(params: Params, classes: list[str]) -> list[str]:
    chosen = [str(c) for c in params.sequence("synth.classes")]
    unknown = [c for c in chosen if c not in classes]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ParamsError("synth.classes",
                          f"must list distinct names from 'classes' {classes}, got {chosen}")
    return chosen


def _load_gray(path: Path, preprocess: Preprocess) -> np.ndarray:
    """A real image as training sees it (grayscale, resized), for the near-duplicate index."""
    return preprocess.to_gray(Image.fromarray(read_gray(path)))


def _reference_paths(processed_dir: Path, train: pd.DataFrame, classes: list[str]) -> list[str]:
    """Every real image of train, val and test (the latter two only when present)."""
    paths = list(train["path"])
    for split in REFERENCE_SPLITS[1:]:
        csv = processed_dir / f"{split}.csv"
        if csv.is_file():
            paths.extend(read_split(csv, classes)["path"])
    return list(dict.fromkeys(paths))


def _save_png(gray: np.ndarray, path: Path) -> str:
    """Write the image; returns the sha256 of the file, as ingest records for real images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(Image.fromarray(np.asarray(gray, dtype=np.uint8)))
    path.write_bytes(data)
    return sha256_hex(data)


def generate_and_filter(params: Params, backend: Backend, qfilter: QualityFilter,
                        cap: SyntheticCap, out_dir: Path, outcome: Outcome
                        ) -> list[dict[str, Any]]:
    """Make ``synth.target_total`` images and return the CSV rows of those that pass.

    Image ``i`` draws its seed and prompt words from ``(synth.seed, i)`` alone, and labels are
    interleaved across classes, so a cap that is reached late affects all classes alike.
    """
    selected = _selected_classes(params, outcome.classes)
    target_total = params.integer("synth.target_total", low=0)
    base_seed = params.integer("synth.seed")
    order = interleave(allocate(target_total, selected))
    rows: list[dict[str, Any]] = []
    for index, label in enumerate(tqdm(order, desc=f"synth ({backend.name})", unit="img")):
        rng = image_rng(base_seed, index)
        seed = fresh_seed(rng)
        prompt, negative = backend.describe(label, rng)
        spec = PromptSpec(index=index, label=label, seed=seed, prompt=prompt,
                          negative_prompt=negative, model=backend.model,
                          settings=backend.settings)
        gray = backend.generate(label, prompt, negative, seed)
        reason = qfilter.check(gray) or cap.check(label)
        outcome.record(label, reason, gray)
        if reason is not None:
            continue
        qfilter.accept(gray)
        cap.take(label)
        image_id = f"synth-{index:06d}"
        path = out_dir / "images" / label / f"{image_id}.png"
        rows.append({"path": path.as_posix(), "label": label, "source": SYNTHETIC,
                     "origin": image_id, "sha256": _save_png(gray, path), "prompt": prompt,
                     "seed": seed, "prompt_hash": spec.prompt_hash})
    return rows


def _embedding_status(params: Params) -> dict[str, Any]:
    config = EmbeddingConfig.from_params(params)
    return {"enabled": config.enabled, "model": config.model or None,
            "threshold": config.threshold if config.enabled else None}


def build_status(params: Params, enabled: bool, backend: Backend | None, outcome: Outcome,
                 cap: SyntheticCap, real_counts: dict[str, int],
                 merged: pd.DataFrame) -> dict[str, Any]:
    """The metrics file: counts per class and reason, caps and the resulting synthetic shares."""
    rejected = {r: _with_total(c) for r, c in outcome.rejected.items()}
    return {
        "enabled": enabled,
        "status": "ok" if enabled else "disabled",
        "backend": backend.name if backend else params.get("synth.backend", None),
        "model": backend.model if backend else None,
        "target_total": params.get("synth.target_total", None),
        "max_fraction": params.get("synth.max_fraction", None),
        "max_fraction_overall": cap.overall_fraction,
        "real": _with_total(real_counts),
        "generated": _with_total(outcome.generated),
        "accepted": _with_total(outcome.accepted),
        "rejected": rejected,
        "rejected_total": int(sum(r["total"] for r in rejected.values())),
        "caps": {**cap.per_class, "overall": cap.overall},
        "embedding_filter": _embedding_status(params),
        "synthetic_fraction": synthetic_fraction(merged, outcome.classes),
        "train_rows": int(len(merged)),
    }


def write_reports(status: dict[str, Any], outcome: Outcome, report_dir: Path) -> None:
    """``status.json`` (metrics), ``counts.csv`` (DVC plot) and ``samples.png`` (example grid)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    pd.DataFrame({
        "class": outcome.classes,
        "real": [status["real"][c] for c in outcome.classes],
        "generated": [outcome.generated[c] for c in outcome.classes],
        "accepted": [outcome.accepted[c] for c in outcome.classes],
        "rejected": [sum(outcome.rejected[r][c] for r in REASONS) for c in outcome.classes],
        "synthetic_fraction": [status["synthetic_fraction"][c] for c in outcome.classes],
    }).to_csv(report_dir / "counts.csv", index=False)
    _sample_grid(outcome, report_dir / "samples.png")


def _sample_grid(outcome: Outcome, path: Path) -> None:
    """One row per group (accepted per class, rejected per reason) of example images."""
    groups = [(g, imgs) for g, imgs in sorted(outcome.examples.items()) if imgs]
    image_rows_png(groups, path, ncols=outcome.samples_per_group,
                   empty_text="no synthetic images generated")


def run_synth(params: Params, processed_dir: Path, out_dir: Path, report_dir: Path
              ) -> dict[str, Any]:
    """The whole stage; returns the status written to ``report_dir/status.json``.

    Paths in the CSVs are relative to the working directory (the repository root in DVC).
    """
    classes = params.classes
    preprocess = Preprocess.from_params(params)
    train = read_split(processed_dir / "train.csv", classes)
    if (train["source"] == SYNTHETIC).any():
        raise DataError(f"{processed_dir / 'train.csv'} already has source=synthetic rows; "
                        "the synth stage must run on the split stage's output")
    real_counts = {c: int((train["label"] == c).sum()) for c in classes}
    enabled = params.boolean("synth.enabled")
    backend_name, why = resolve_backend(params) if enabled else (None, "synth.enabled is false")
    if enabled and backend_name is None:
        log.warning("synth off: %s", why)
        enabled = False
    samples = params.integer("synth.report_samples", low=0)
    outcome = Outcome(classes, samples)
    backend, rows = None, []

    if out_dir.exists():  # the stage owns this folder: stale images must not survive a rerun
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / "images").mkdir()
    # caps are reported even when disabled, so `dvc metrics diff` lines up both runs
    overall = params.get("synth.max_fraction_overall", None)
    if overall is not None:
        overall = params.number("synth.max_fraction_overall", low=0, high=0.99)
    cap = SyntheticCap(real_counts, params.number("synth.max_fraction", low=0, high=0.99),
                       overall)
    if enabled:
        config = FilterConfig.from_params(params)
        backend = make_backend(params, preprocess, backend_name)  # fails fast without weights
        embedding = EmbeddingFilter.from_config(EmbeddingConfig.from_params(params))
        qfilter = QualityFilter(config, embedding)
        references = [_load_gray(Path(rel), preprocess) for rel in tqdm(
            _reference_paths(processed_dir, train, classes), desc="read real images", unit="img")]
        qfilter.add_references(references)  # pHash each; embeddings in batches when enabled
        rows = generate_and_filter(params, backend, qfilter, cap, out_dir, outcome)
    else:
        log.info("%s: data/synth/train.csv is the processed train split", why)

    merged = merge_train(train, rows)
    merged.to_csv(out_dir / "train.csv", index=False)
    status = build_status(params, enabled, backend, outcome, cap, real_counts, merged)
    status["backend_reason"] = why
    write_reports(status, outcome, report_dir)
    log.info("synth: %d generated, %d accepted, synthetic fraction %.3f",
             status["generated"]["total"], status["accepted"]["total"],
             status["synthetic_fraction"]["overall"])
    return status
