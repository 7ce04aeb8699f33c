"""Stage model_card: models/README.md, a Hugging Face model card rendered from reports/.

Reads the test metrics, calibration, quantize and split reports, plus reports/fer2013.json when
it exists (not a DVC dependency, since it may not: `dvc repro -f model_card` after adding it).
Publishing is a separate command: `python -m emorec.publish --repo-id USER/NAME [--dry-run DIR]`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.model_card import CardInputs, write_model_card

log = logging.getLogger("emorec.stages.model_card")


def main(params: Params, args: argparse.Namespace) -> None:
    inputs = CardInputs.from_paths(args.test, args.calibration, args.quantize, args.split,
                                   args.fer2013)
    write_model_card(params, inputs, args.out, license_id=args.license, repo_id=args.repo_id)
    log.info("wrote %s (FER2013 figures: %s)", args.out,
             "yes" if inputs.fer2013 is not None else f"no, {args.fer2013} absent")


def build_parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--test", type=Path, default=Path("reports/metrics/test.json"),
                   help="evaluate stage metrics (required)")
    p.add_argument("--calibration", type=Path, default=Path("reports/metrics/calibration.json"),
                   help="temperature and ECE/NLL/Brier (optional)")
    p.add_argument("--quantize", type=Path, default=Path("reports/quantize.json"),
                   help="FP32 vs INT8 figures and sizes (optional)")
    p.add_argument("--split", type=Path, default=Path("reports/split.json"),
                   help="split sizes (optional)")
    p.add_argument("--fer2013", type=Path, default=Path("reports/fer2013.json"),
                   help="FER2013 figures (optional; may not exist)")
    p.add_argument("--out", type=Path, default=Path("models/README.md"), help="card to write")
    p.add_argument("--license", default="mit", help="license id for the card header")
    p.add_argument("--repo-id", default=None, help="Hub repo named in the usage snippet")
    return p


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
