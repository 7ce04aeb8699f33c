"""FER2013 through the service's own crop path: faces found, accuracy per face margin.

Replays what ``bento/service.py`` does with a photo (``faces.detector``, eye levelling, a square
crop with a margin) on the FER2013 run's PublicTest (validation) and PrivateTest (test) images,
with the committed FER2013 model (see ``emorec.service_path``). The margin is chosen on
PublicTest; PrivateTest is scored at that margin and at ``serve.face_margin``. Writes
``reports/fer2013_service_path.json``; ``scripts/readme_metrics.py`` puts it in the README.

    python scripts/fer2013_service_path.py --workspace /path/to/fer2013/run

Writes reports/fer2013_service_path.json. Takes about 10 min on 2 cores (AMD EPYC): face
detection on 7,178 images.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from emorec.cli import script_parser
from emorec.config import load_params
from emorec.faces import FaceSettings
from emorec.inference import OnnxClassifier
from emorec.provenance import file_sha256, git_commit
from emorec.service_path import best_margin, detect_split, score


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--workspace", type=Path, default=Path("."),
                        help="the FER2013 run's DVC workspace (its data/processed/*.csv)")
    parser.add_argument("--model", type=Path, default=Path("models/fer2013/model.int8.onnx"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the service's settings (faces, serve.face_margin)")
    parser.add_argument("--margins", type=float, nargs="+",
                        default=[0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
    parser.add_argument("--out", type=Path, default=Path("reports/fer2013_service_path.json"))
    args = parser.parse_args(argv)

    settings = FaceSettings.from_params(load_params(args.params))
    model = OnnxClassifier(args.model)
    splits = {}
    for name, csv in (("val", "val.csv"), ("test", "test.csv")):
        path = args.workspace / "data" / "processed" / csv
        if not path.is_file():
            print(f"error: {path} not found: --workspace must be a FER2013 run "
                  "(`make fer2013`)", file=sys.stderr)
            return 2
        frame = pd.read_csv(path)
        splits[name] = detect_split([args.workspace / p for p in frame["path"]],
                                    frame["label"], settings, f"{name} ({csv})")
    val = score(model, splits["val"], args.margins)
    chosen = best_margin(val)
    test = score(model, splits["test"], sorted({chosen, settings.margin}))
    report = {"dataset": "FER2013", "val_split": "PublicTest", "test_split": "PrivateTest",
              "model": {"path": str(args.model), "sha256": file_sha256(args.model)},
              "commit": git_commit(Path(".")),
              "detector": {"name": settings.detector, "min_size": settings.min_size,
                           "score_threshold": settings.score_threshold,
                           **settings.detector_options()},
              "configured_margin": settings.margin, "chosen_margin": chosen,
              "val": val, "test": test}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    acc = test["accuracy_on_found_by_margin"]
    print(f"faces found: val {val['found_rate']:.1%}, test {test['found_rate']:.1%}; margin "
          f"chosen on val {chosen:g}; test accuracy on found faces {acc[f'{chosen:g}']:.4f} "
          f"(configured {settings.margin:g}: {acc[f'{settings.margin:g}']:.4f}; whole images "
          f"{test['whole_image_accuracy_on_found']:.4f}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
