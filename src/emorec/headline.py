"""The headline figures of each stage: what `dvc metrics show` and `dvc metrics diff` compare.

Each stage keeps a full JSON report (per-class tables, CPU flags, latency percentiles, gradient
norms, file paths) as a plain output; those are for reading and for the docs pages. A person
comparing two runs wants a handful of numbers per stage, so each stage also writes
``reports/metrics/<stage>.json`` with only these, and only those files are DVC ``metrics``.
Keeping them few is what lets `dvc metrics diff` and `dvc exp show` fit on a screen (a test
counts them: at most 40 over the whole pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from emorec.unseen import SCREEN_ROW, final_rows


def _round(value: Any) -> float | int | None:
    """4 significant decimals: the diff shows changes, not float noise."""
    if value is None:
        return None
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    return round(float(value), 4)


def train_headline(summary: dict[str, Any]) -> dict[str, Any]:
    """From dvclive's ``metrics.json``: the checkpoint's val macro-F1, epochs run, speed."""
    best = summary.get("best", {})
    return {"val_macro_f1": _round(best.get("val_macro_f1")),
            "epochs": _round(int(summary.get("step", -1)) + 1),
            "images_per_s": _round(summary.get("time", {}).get("images_per_s"))}


def evaluate_headline(test: dict[str, Any], calibration: dict[str, Any] | None
                      ) -> dict[str, Any]:
    """Test accuracy, macro-F1, balanced accuracy (mean recall) and calibrated ECE."""
    recalls = [row["recall"] for row in test.get("per_class", {}).values()
               if row.get("support", 1)]
    out = {"accuracy": _round(test["accuracy"]), "macro_f1": _round(test["macro_f1"]),
           "balanced_accuracy": _round(np.mean(recalls)) if recalls else None}
    if calibration:
        out["ece"] = _round(calibration.get("test", {}).get("after", {}).get("ece"))
    return out


def quantize_headline(report: dict[str, Any]) -> dict[str, Any]:
    """INT8 test figures, the macro-F1 lost to INT8, batch-1 latency and size."""
    int8 = report["int8"]
    latency = report.get("latency", {}).get("batch_1", {}).get("onnx_int8", {})
    return {"int8_accuracy": _round(int8["test"]["accuracy"]),
            "int8_macro_f1": _round(int8["test"]["macro_f1"]),
            "int8_macro_f1_drop": _round(report["targets"]["macro_f1_drop"]),
            "int8_p50_ms": _round(latency.get("median_ms")),
            "int8_mb": _round(int8["bytes"] / 1e6)}


def cross_corpus_headline(report: dict[str, Any]) -> dict[str, Any]:
    """Means over the external sets (empty when none is listed, as in the demo)."""
    mean = report.get("mean") or {}
    return {k: _round(mean[k]) for k in ("balanced_accuracy", "macro_f1", "found_rate")
            if k in mean}


#: numbers one headline file may hold (tests/test_metrics_count.py holds every file to it)
MAX_HEADLINE_NUMBERS = 10


def unseen_headline(report: dict[str, Any]) -> dict[str, Any]:
    """The protocol's headline: mean balanced accuracy (6 classes) of every shipped file, then of
    the best recipe rows (ensembles left out) until :data:`MAX_HEADLINE_NUMBERS`.

    A recipe with a decided row is headlined by that row alone. Recipes keep being added, so the
    weaker ones leave the headline (they stay in ``reports/unseen.json`` and its tables).
    """
    means = {name: _round(row["mean_balanced_accuracy"])
             for name, row in report.get("table", {}).items()}
    # an ensemble (what a student could reach) and a screen (short schedule) are diagnostics
    means = {name: means[name] for name in final_rows(list(means))
             if not name.startswith("ensemble:") and not name.endswith(SCREEN_ROW)}
    shipped = {name: v for name, v in means.items() if name.startswith("shipped:")}
    recipes = sorted((item for item in means.items() if item[0] not in shipped),
                     key=lambda item: -(item[1] if item[1] is not None else -1.0))
    return shipped | dict(recipes[:max(0, MAX_HEADLINE_NUMBERS - len(shipped))])


def write_headline(path: Path, figures: dict[str, Any]) -> None:
    """``figures`` as a small sorted JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
