"""Joining accepted synthetic rows to the processed train split, and the shares they take.

Only the train CSV is ever written here: val and test stay exactly as the split stage left them,
so evaluation never sees a generated face.
"""

from __future__ import annotations

import pandas as pd

from emorec.split_csv import COLUMNS

SYNTH_COLUMNS = ["prompt", "seed", "prompt_hash"]
SYNTHETIC = "synthetic"


def merge_train(train: pd.DataFrame, synthetic_rows: list[dict]) -> pd.DataFrame:
    """Processed train rows (unchanged, first) followed by the synthetic rows.

    Real rows get empty ``prompt``/``seed``/``prompt_hash`` so the CSV has one schema whether or
    not synthesis ran; extra columns a newer split stage adds are kept.
    """
    real = train.copy()
    for col in SYNTH_COLUMNS:
        if col not in real.columns:
            real[col] = pd.NA
    synth = pd.DataFrame(synthetic_rows, columns=[*COLUMNS, *SYNTH_COLUMNS])
    if synth.empty:
        merged = real
    else:
        merged = pd.concat([real, synth], ignore_index=True)
    merged["seed"] = merged["seed"].astype("Int64")
    ordered = [*COLUMNS, *SYNTH_COLUMNS]
    return merged[ordered + [c for c in merged.columns if c not in ordered]]


def synthetic_fraction(frame: pd.DataFrame, classes: list[str]) -> dict[str, float]:
    """Share of ``source == synthetic`` rows per class and ``overall`` (0 for an empty class)."""
    is_synth = frame["source"] == SYNTHETIC
    out = {}
    for c in classes:
        in_class = frame["label"] == c
        total = int(in_class.sum())
        out[c] = round(float((in_class & is_synth).sum()) / total, 6) if total else 0.0
    out["overall"] = round(float(is_synth.sum()) / len(frame), 6) if len(frame) else 0.0
    return out
