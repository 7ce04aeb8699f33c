"""Stage `explain`: attribution maps (Grad-CAM, Grad-CAM++, SHAP, LIME) for a seeded sample of test
images, their faithfulness (deletion/insertion AUC vs random) and a parameter-randomization check.

Writes reports/xai/ (overlays per method, comparison.png, curves.png, curves/<method>.csv,
sample.csv) and reports/xai.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.transforms import Preprocess

log = logging.getLogger("emorec.explain")


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.add_argument("--model", type=Path, default=Path("models/best.pt"),
                        help="checkpoint written by the train stage")
    parser.add_argument("--test-csv", type=Path, default=Path("data/processed/test.csv"),
                        help="test split (columns path,label,source,origin,sha256)")
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="folder the image paths in the CSV are relative to")
    parser.add_argument("--out-dir", type=Path, default=Path("reports/xai"),
                        help="figures, overlays and curve data (replaced on every run)")
    parser.add_argument("--metrics", type=Path, default=Path("reports/xai.json"),
                        help="faithfulness and timing metrics per method")
    return parser


def preprocess_for(meta: dict, params: Params) -> Preprocess:
    """The preprocessing the model was trained with (from the checkpoint), else params.yaml."""
    image = meta.get("image")
    if not image:
        return Preprocess.from_params(params)
    pre = Preprocess.from_meta(image)
    if pre != Preprocess.from_params(params):
        log.warning("checkpoint image settings %s differ from params.yaml image; using the "
                    "checkpoint's (the model was trained on them)", image)
    return pre


def main(params: Params, args: argparse.Namespace) -> None:
    # torch, captum, shap and lime take seconds to import: not for `--help`
    from emorec.models import device, load_checkpoint
    from emorec.split_csv import read_split
    from emorec.xai.pipeline import ExplainConfig, run_explain

    cfg = ExplainConfig.from_params(params)
    model, meta = load_checkpoint(args.model, map_location=device())
    classes = list(meta["classes"])
    frame = read_split(args.test_csv, classes)
    report = run_explain(model.to(device()), classes, preprocess_for(meta, params), frame, cfg,
                         args.out_dir, args.metrics, root=args.root)
    for name, row in report["methods"].items():
        log.info("%-10s deletion AUC %.4f  insertion AUC %.4f", name, row["deletion_auc"],
                 row["insertion_auc"])


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
