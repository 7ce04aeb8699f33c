"""Pictures of real faces for the README and the model card: a finished run's model on one
source's test faces (FER+ Test = FER2013 PrivateTest by default).

    python scripts/real_face_pictures.py --workspace <the run> --source ferplus

runs the pipeline's own evaluate and explain stage scripts on the run's checkpoint, restricted to
that source's rows of the test split, and writes into ``--out`` (``reports/real_faces``): the
confusion matrix and reliability diagram (``evaluate/``, with ``test.json`` and
``calibration.json``) and the explain stage's gallery and faithfulness scores (``xai/``,
``xai.json``: Grad-CAM, Grad-CAM++, SHAP, LIME on ``explain.sample_size`` faces). Only those
few faces are written as pictures, never the dataset.

Writes reports/real_faces/. Takes about 5 min on 2 cores (AMD EPYC), most of it SHAP and LIME.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from emorec.cli import script_parser
from emorec.hardware import cpu_info, describe

ROOT = Path(__file__).resolve().parents[1]


def run(stage: str, workspace: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args],
                          cwd=workspace)
    if proc.returncode != 0:
        raise SystemExit(f"error: {stage} failed on {workspace}")


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--workspace", type=Path, required=True,
                        help="DVC workspace of the finished run (models/best.pt, data/)")
    parser.add_argument("--source", default="ferplus", help="test rows of this source only")
    parser.add_argument("--out", type=Path, default=Path("reports/real_faces"))
    args = parser.parse_args(argv)
    ws, out = args.workspace.resolve(), args.out.resolve()
    test = pd.read_csv(ws / "data/processed/test.csv")
    mine = test[test["source"] == args.source]
    if mine.empty:
        raise SystemExit(f"error: no test rows of source {args.source!r} in {ws}; sources: "
                         f"{sorted(set(test['source']))}")
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / f"test_{args.source}.csv"
        mine.to_csv(csv, index=False)
        run("evaluate", ws, "--split-csv", str(csv), "--metrics", str(out / "test.json"),
            "--calibration", str(out / "calibration.json"), "--plots-dir", str(out / "evaluate"),
            "--no-progress")
        run("explain", ws, "--test-csv", str(csv), "--out-dir", str(out / "xai"),
            "--metrics", str(out / "xai.json"))
    xai = json.loads((out / "xai.json").read_text())  # its s/image figures name their CPU
    xai["hardware"] = describe(cpu_info())
    (out / "xai.json").write_text(json.dumps(xai, indent=2) + "\n")
    print(f"{out}: confusion, reliability and XAI gallery of {len(mine)} {args.source} test "
          "faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
