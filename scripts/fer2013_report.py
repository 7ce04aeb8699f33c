"""Collect a finished FER2013 experiment's reports into ``reports/fer2013.json``.

    python scripts/run_preset.py fer2013-cpu     # the experiment (see presets/)
    python scripts/fer2013_report.py             # this: commit, data hash, hardware, scores
    python scripts/readme_metrics.py             # README's "Real data: FER2013" section

``--workspace`` reads the reports of another checkout (e.g. a git worktree where the run was
made); the JSON is written to ``--out`` in this one.

Writes reports/fer2013.json. Takes about a minute on 2 cores (AMD EPYC): it reads reports and
checksums files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from emorec.cli import script_parser
from emorec.real_data import build_report


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--workspace", type=Path, default=Path("."),
                        help="DVC workspace holding the run's params.yaml, reports/ and data/")
    parser.add_argument("--out", type=Path, default=Path("reports/fer2013.json"))
    parser.add_argument("--train-commit", default=None,
                        help="commit that trained the model, when later stages were rerun on "
                             "newer code (default: the workspace's commit made everything)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.workspace)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {args.workspace} has no complete FER2013 run ({err}); run "
              "`python scripts/run_preset.py fer2013-cpu` first", file=sys.stderr)
        return 2
    report["train_commit"] = args.train_commit or report["commit"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    test = report["test"]
    six = report.get("test_6_class")
    print(f"FER2013 test ({test['n']} images): accuracy {test['accuracy']:.4f}, macro-F1 "
          f"{test['macro_f1']:.4f}" + (f"; 6 classes {six['accuracy']:.4f}" if six else "")
          + f"; INT8 drop {report['int8']['accuracy_drop_points']:.2f} points -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
