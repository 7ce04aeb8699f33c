"""Choose the served model on validation data: every shipped model scored on a run's val split.

    python scripts/choose_model.py models/multisource models/fer2013 --workspace RUN [--set-default]

``RUN`` is the DVC workspace of a multi-source run (its ``data/processed/val.csv`` has a source
per image). Each folder's INT8 model is scored per source; ``reports/model_choice.json`` names
the one with the highest mean balanced accuracy over the sources, the README's rule. Run it again
whenever one of the shipped models changes; ``ship_model.py --choose`` does the same after
shipping a new one.

Writes reports/model_choice.json (and serve.shipped_model with --set-default). Takes about a
minute per model on 2 cores (AMD EPYC).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ship_model import report_choice

from emorec.cli import script_parser
from emorec.shipping import record_choice


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("folders", nargs="+", type=Path, help="shipped model folders (models/*)")
    parser.add_argument("--workspace", type=Path, default=Path("."),
                        help="DVC workspace of the multi-source run whose val split decides")
    parser.add_argument("--out", type=Path, default=Path("reports/model_choice.json"))
    parser.add_argument("--set-default", action="store_true",
                        help="write the chosen folder into params.yaml serve.shipped_model")
    args = parser.parse_args(argv)
    val = args.workspace / "data/processed/val.csv"
    missing = [str(p) for p in [val, *(f / "model.int8.onnx" for f in args.folders)]
               if not p.is_file()]
    if missing:
        print(f"error: missing {missing} (run the multi-source preset in --workspace, and ship "
              "the models with scripts/ship_model.py)", file=sys.stderr)
        return 2
    candidates = {f.name: f / "model.int8.onnx" for f in args.folders}
    report_choice(record_choice(candidates, args.workspace, args.out), args.set_default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
