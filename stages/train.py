"""Train stage: fine-tune ``train.model`` on the training split, keep the best epoch's weights.

Single process: ``python stages/train.py``. Data parallel on N processes (gloo on CPU, NCCL on
CUDA): ``torchrun --nproc_per_node=N stages/train.py`` (rank 0 logs and writes the outputs).

An interrupted run resumes by itself: the state in ``--state`` (a persistent DVC output, kept
across reruns) is continued when it was written under the same params (``train.epochs`` may
grow), data, code and process count; anything else starts at epoch 1 with a log line saying why.
SIGINT/SIGTERM stop after the current step with the state saved (exit status 128 + signal).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from emorec.cli import run_stage, stage_parser
from emorec.headline import train_headline, write_headline
from emorec.training import TrainPaths, run


def build_parser():
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--train-csv", type=Path, default=Path("data/synth/train.csv"),
                        help="training split (processed train + accepted synthetic rows)")
    parser.add_argument("--val-csv", type=Path, default=Path("data/processed/val.csv"),
                        help="validation split: early stopping and best-epoch choice")
    parser.add_argument("--label-map", type=Path, default=Path("data/processed/label_map.json"),
                        help="class -> index; must match params 'classes'")
    parser.add_argument("--class-weights", type=Path,
                        default=Path("data/processed/class_weights.json"),
                        help="per-class loss weights (used when train.use_class_weights)")
    parser.add_argument("--out", type=Path, default=Path("models/best.pt"),
                        help="best checkpoint (highest val macro-F1)")
    parser.add_argument("--state", type=Path, default=Path("models/last.pt"),
                        help="resumable training state, written every epoch and on SIGINT/SIGTERM")
    parser.add_argument("--live-dir", type=Path, default=Path("reports/train"),
                        help="dvclive directory: metrics.json and per-epoch plots")
    parser.add_argument("--headline", type=Path, default=Path("reports/metrics/train.json"),
                        help="the DVC metrics: best val macro-F1, epochs, images/s")
    parser.add_argument("--fresh", action="store_true",
                        help="start at epoch 1 even when --state holds a run to continue")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(params, args) -> None:
    paths = TrainPaths(train_csv=args.train_csv, val_csv=args.val_csv, label_map=args.label_map,
                       class_weights=args.class_weights, best=args.out, state=args.state,
                       live_dir=args.live_dir, code=(Path(__file__),))
    run(params, paths, resume=not args.fresh, progress=not args.no_progress)
    summary = args.live_dir / "metrics.json"
    if summary.is_file():  # every rank runs main; dvclive writes on rank 0 only
        write_headline(args.headline, train_headline(json.loads(summary.read_text())))


if __name__ == "__main__":
    sys.exit(run_stage(main, build_parser()))
