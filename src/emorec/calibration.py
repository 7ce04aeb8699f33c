"""Confidence calibration (temperature scaling) and selective prediction, in plain numpy.

Why: a network trained with cross-entropy is usually over-confident, so "90 %" on the service or
the phone does not mean right nine times in ten. Temperature scaling (Guo et al., 2017) divides
the logits by one scalar ``T`` fitted on the validation split; it never changes the predicted
class, only how sure the model claims to be. With calibrated probabilities a confidence
threshold becomes meaningful, which is what selective prediction needs: answer "uncertain"
below the threshold and trade coverage for accuracy along the risk-coverage curve.

Everything here works on arrays (logits ``[N, C]``, integer labels ``[N]``) and imports neither
torch nor onnxruntime, so the evaluate stage, the tests and any notebook can share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

#: Search interval for ``log T``: T in [0.05, 20] covers anything a sane network needs.
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def scaled_probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` in float64 (rows sum to 1)."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class (natural log) at ``temperature``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def at_search_bound(temperature: float, rel: float = 1e-3) -> bool:
    """True when the fit stopped at an end of :data:`LOG_T_BOUNDS` (val set separable or at
    chance, or too small): the temperature is then a limit, not an estimate."""
    return any(abs(math.log(temperature) - bound) < rel for bound in LOG_T_BOUNDS)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` minimising validation NLL.

    A 1-d bounded search over ``log T`` (NLL is smooth and unimodal in it for practical
    purposes), so the result is deterministic and needs no torch. Empty input gives 1.0.
    """
    if len(labels) == 0:
        return 1.0
    result = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)),
                             bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-6})
    return float(math.exp(result.x))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean squared distance to the one-hot target (sum over classes)."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def bin_edges(n_bins: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n_bins + 1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Per confidence bin: count, mean confidence and accuracy (NaN where the bin is empty).

    Bins are ``(lo, hi]`` on the top-1 probability, equal width, as in the usual ECE.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = bin_edges(n_bins)
    # np.digitize with right=True puts c in bin i when edges[i] < c <= edges[i+1].
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    rows = []
    for i in range(n_bins):
        mask = index == i
        n = int(mask.sum())
        rows.append({"bin": i, "lower": edges[i], "upper": edges[i + 1],
                     "center": (edges[i] + edges[i + 1]) / 2, "count": n,
                     "confidence": float(confidence[mask].mean()) if n else np.nan,
                     "accuracy": float(correct[mask].mean()) if n else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: bin-weighted mean |accuracy - confidence| over ``n_bins`` equal-width bins."""
    if len(labels) == 0:
        return 0.0
    table = reliability_bins(probs, labels, n_bins)
    full = table[table["count"] > 0]
    gaps = (full["accuracy"] - full["confidence"]).abs()
    return float((gaps * full["count"]).sum() / len(labels))


def calibration_scores(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15
                       ) -> dict[str, float]:
    """ECE, NLL, Brier, accuracy and mean confidence of one set of probabilities."""
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": float(-np.log(picked).mean()),
        "brier": brier(probs, labels),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "mean_confidence": float(probs.max(axis=1).mean()),
    }


# -- selective prediction ----------------------------------------------------------------------


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Accuracy of the answered images when abstaining below each confidence threshold.

    One row per distinct confidence (descending): answering every image whose confidence is
    ``>= threshold`` covers ``coverage`` of the set with that ``accuracy``; ``risk`` is
    ``1 - accuracy``. Ties share a row, since a threshold cannot split them.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, hits = confidence[order], np.cumsum(correct[order])
    n = len(labels)
    # last index of each run of equal confidences: where a threshold can stop
    ends = np.flatnonzero(np.append(np.diff(conf_sorted) != 0, True)) if n else np.array([], int)
    answered = ends + 1
    accuracy = hits[ends] / answered
    return pd.DataFrame({"threshold": conf_sorted[ends], "coverage": answered / max(n, 1),
                         "accuracy": accuracy, "risk": 1.0 - accuracy,
                         "answered": answered.astype(int)})


def threshold_for_coverage(probs: np.ndarray, coverage: float) -> float:
    """The highest confidence threshold that still answers at least ``coverage`` of the images."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    confidence = np.sort(probs.max(axis=1))[::-1]
    if len(confidence) == 0:
        return 0.0
    k = max(1, math.ceil(coverage * len(confidence) - 1e-9))
    return float(confidence[k - 1])


def selective_at(probs: np.ndarray, labels: np.ndarray, threshold: float
                 ) -> dict[str, float | None]:
    """Coverage and accuracy (of the answered images; None if none) below ``threshold``."""
    answered = probs.max(axis=1) >= threshold
    correct = probs.argmax(axis=1) == labels
    return {"threshold": float(threshold),
            "coverage": float(answered.mean()) if len(labels) else 0.0,
            "accuracy": float(correct[answered].mean()) if answered.any() else None}


def accuracy_at_coverage(probs: np.ndarray, labels: np.ndarray, coverage: float
                         ) -> float | None:
    """Accuracy of the ``coverage`` most confident images (ties broken by order)."""
    n = len(labels)
    if n == 0:
        return None
    k = max(1, math.ceil(coverage * n - 1e-9))
    order = np.argsort(-probs.max(axis=1), kind="stable")[:k]
    return float((probs[order].argmax(axis=1) == labels[order]).mean())


@dataclass(frozen=True)
class CalibrationResult:
    """A fitted temperature plus everything the evaluate stage reports about it."""

    temperature: float
    report: dict
    reliability: pd.DataFrame
    risk_coverage: pd.DataFrame


def reliability_table(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Before/after reliability bins side by side (the DVC plot CSV); ``ideal`` is the diagonal."""
    out = before[["bin", "lower", "upper", "center"]].copy()
    out["ideal"] = out["center"]
    for name, table in (("before", before), ("after", after)):
        for column in ("count", "confidence", "accuracy"):
            out[f"{column}_{name}"] = table[column].to_numpy()
    return out


def _coverage_key(coverage: float) -> str:
    return f"accuracy_at_{round(coverage * 100)}_coverage"


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray, test_logits: np.ndarray,
              test_labels: np.ndarray, n_bins: int = 15,
              coverages: tuple[float, ...] = (0.8, 0.9),
              threshold_coverage: float = 0.9) -> CalibrationResult:
    """Fit ``T`` on val, score test before/after, and derive the selective-prediction figures.

    The suggested ``min_confidence`` is chosen on *val* (calibrated) so that it answers
    ``threshold_coverage`` of the images; test then shows what that threshold really gives.
    """
    temperature = fit_temperature(val_logits, val_labels)
    raw = scaled_probabilities(test_logits)
    cal = scaled_probabilities(test_logits, temperature)
    val_cal = scaled_probabilities(val_logits, temperature)
    min_confidence = threshold_for_coverage(val_cal, threshold_coverage)
    selective = {_coverage_key(c): accuracy_at_coverage(cal, test_labels, c) for c in coverages}
    selective.update({
        "min_confidence": min_confidence,
        "min_confidence_target_coverage": threshold_coverage,
        "val_at_min_confidence": selective_at(val_cal, val_labels, min_confidence),
        "test_at_min_confidence": selective_at(cal, test_labels, min_confidence),
    })
    report = {
        "temperature": temperature,
        "min_confidence": min_confidence,
        "bins": n_bins,
        "fit": {"split": "val", "n_images": int(len(val_labels)),
                "at_search_bound": at_search_bound(temperature),
                "nll_before": nll(val_logits, val_labels) if len(val_labels) else None,
                "nll_after": nll(val_logits, val_labels, temperature) if len(val_labels) else None},
        "test": {"n_images": int(len(test_labels)),
                 "before": calibration_scores(raw, test_labels, n_bins),
                 "after": calibration_scores(cal, test_labels, n_bins)},
        "selective": selective,
    }
    reliability = reliability_table(reliability_bins(raw, test_labels, n_bins),
                                    reliability_bins(cal, test_labels, n_bins))
    return CalibrationResult(temperature, report, reliability, risk_coverage(cal, test_labels))
