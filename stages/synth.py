"""Stage synth: add filtered synthetic faces to the train split (never to val or test).

Writes data/synth/train.csv (processed train rows + accepted synthetic rows with
source=synthetic, prompt, seed, prompt_hash), data/synth/images/<class>/ and reports/synth/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.config import Params
from emorec.synth.pipeline import run_synth


def main(params: Params, args: argparse.Namespace) -> None:
    run_synth(params, args.processed, args.out, args.reports)


def build_parser() -> argparse.ArgumentParser:
    p = stage_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--processed", type=Path, default=Path("data/processed"),
                   help="split stage output folder (train.csv, val.csv, test.csv)")
    p.add_argument("--out", type=Path, default=Path("data/synth"),
                   help="output folder: train.csv and images/<class>/")
    p.add_argument("--reports", type=Path, default=Path("reports/synth"),
                   help="status.json, counts.csv and samples.png go here")
    return p


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
