"""Fine-tune on your own labelled faces: a learning curve, from scratch vs from shipped weights.

    python scripts/learning_curve.py --weights models/multisource/weights.fp16.safetensors \\
        --manifest <ingest manifest of your faces> --per-class 5 10 20 40

Takes the face crops of one labelled source (an ingest manifest: run ingest with that folder as
a source first, ``face_crop: fallback``), keeps a fixed group of people for testing (``--group``
is a regex whose group 1 in the file name identifies the person, so no face of a test person is
ever trained on), and for each N trains the same recipe on N images per class twice: from
random weights and from ``--weights`` (``train.pretrained``). Writes
``reports/learning_curve.json`` (accuracy and balanced accuracy on the test people per N and
start point) and ``reports/learning_curve.png``.

Writes reports/learning_curve.json and .png. Takes about 20 min on 2 cores (AMD EPYC) for 4
sizes x 2 starts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from emorec.cli import script_parser
from emorec.hardware import cpu_info, describe
from emorec.labels import write_label_map
from emorec.weights import read_sidecar

ROOT = Path(__file__).resolve().parents[1]


def people_split(manifest: pd.DataFrame, pattern: str, test_share: float, seed: int
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool, test): every image of a person lands on one side."""
    regex = re.compile(pattern)
    person = manifest["path"].map(lambda p: (regex.search(Path(p).name) or [None, "?"])[1])
    people = sorted(set(person))
    if len(people) < 2:
        raise SystemExit(f"error: --group {pattern!r} finds {len(people)} person(s) in the file "
                         "names (ingest names files <source>-<original name>-<hash>.png)")
    rng = np.random.default_rng(seed)
    test_people = set(rng.choice(people, size=max(1, round(test_share * len(people))),
                                 replace=False))
    is_test = person.isin(test_people)
    return manifest[~is_test], manifest[is_test]


def sample(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` images per class (all of a class that has fewer)."""
    parts = [g.sample(min(n, len(g)), random_state=seed) for _, g in pool.groupby("label")]
    return pd.concat(parts).sort_values("path")


def as_split(frame: pd.DataFrame) -> pd.DataFrame:
    absolute = frame["path"].map(lambda p: str(Path(p).resolve()))
    rows = frame.assign(origin=frame["id"], path=absolute)
    return rows[["path", "label", "source", "origin", "sha256"]]


def train_and_score(work: Path, params: dict[str, Any], train: pd.DataFrame, test: pd.DataFrame,
                    classes: list[str]) -> dict[str, float]:
    """Run the train and evaluate stage scripts in ``work``; the test metrics."""
    if work.exists():
        shutil.rmtree(work)
    (work / "data/synth").mkdir(parents=True)
    (work / "data/processed").mkdir(parents=True)
    as_split(train).to_csv(work / "data/synth/train.csv", index=False)
    as_split(test).to_csv(work / "data/processed/val.csv", index=False)
    as_split(test).to_csv(work / "data/processed/test.csv", index=False)
    write_label_map(classes, work / "data/processed/label_map.json")
    (work / "data/processed/class_weights.json").write_text(json.dumps(
        {c: 1.0 for c in classes}))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage, extra in (("train", []), ("evaluate", ["--calibration", "calibration.json"])):
        proc = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"),
                               "--params", "params.yaml", "--no-progress", *extra],
                              cwd=work, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: {stage} failed in {work}:\n{proc.stderr[-2000:]}")
    metrics = json.loads((work / "reports/metrics/test.json").read_text())
    recall = [metrics["per_class"][c]["recall"] for c in classes
              if metrics["per_class"][c]["support"]]
    return {"accuracy": metrics["accuracy"], "balanced_accuracy": float(np.mean(recall)),
            "macro_f1": metrics["macro_f1"], "n_test": metrics["n_images"]}


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for start, style in (("scratch", "o--"), ("pretrained", "o-")):
        ns = [int(n) for n in report["curve"]]
        ax.plot(ns, [100 * report["curve"][str(n)][start]["balanced_accuracy"] for n in ns],
                style, label="from scratch" if start == "scratch" else
                f"from {Path(report['weights']).name}")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("balanced accuracy on unseen people (%)")
    ax.set_title(f"Fine-tuning on {report['source']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--weights", type=Path, required=True,
                        help="fp16 safetensors written by python -m emorec.weights export")
    parser.add_argument("--manifest", type=Path, required=True,
                        help="ingest manifest.csv of the new source's face crops")
    parser.add_argument("--source", default=None, help="keep only this manifest source")
    parser.add_argument("--group", default=r"^[^-]+-(\d{2})",
                        help="person id regex, group 1, on the ingested file name "
                             "(<source>-<original name>-<hash>.png; default: TFEID's performer)")
    parser.add_argument("--per-class", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--test-share", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/learning_curve.json"))
    args = parser.parse_args(argv)
    meta = read_sidecar(args.weights)
    if meta is None:
        raise SystemExit(f"error: {args.weights} has no .json sidecar (export it with "
                         "python -m emorec.weights export)")
    manifest = pd.read_csv(args.manifest)
    if args.source:
        manifest = manifest[manifest["source"] == args.source]
    classes = [c for c in meta["classes"] if c in set(manifest["label"])]
    manifest = manifest[manifest["label"].isin(classes)]
    pool, test = people_split(manifest, args.group, args.test_share, args.seed)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["classes"] = classes
    base["image"] = meta["image"]
    base["train"].update({"model": meta["model_name"], "epochs": args.epochs, "batch_size": 32,
                          "lr_head": 1e-3, "lr_backbone": 1e-3, "warmup_epochs": 1,
                          "freeze_backbone_epochs": 2, "early_stopping_patience": 0,
                          "mixup": {**base["train"]["mixup"], "enabled": False},
                          "use_class_weights": False, "in_memory": True, "ema": False,
                          "augment": {"flip": 0.5, "scale": [0.9, 1.1], "rotate": 10.0,
                                      "translate": 0.05, "erasing": 0.0}})
    report: dict[str, Any] = {"source": args.source or "manifest", "weights": str(args.weights),
                              "model": meta["model_name"], "classes": classes,
                              "test_images": len(test), "pool_images": len(pool),
                              "epochs": args.epochs, "hardware": describe(cpu_info()),
                              "curve": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.per_class:
            train = sample(pool, n, args.seed)
            row = {}
            for start, pretrained in (("scratch", "none"), ("pretrained",
                                                              str(args.weights.resolve()))):
                params = json.loads(json.dumps(base))
                params["train"]["pretrained"] = pretrained
                row[start] = train_and_score(Path(tmp) / f"{n}-{start}", params, train, test,
                                             classes)
                print(f"{n}/class {start}: balanced accuracy "
                      f"{100 * row[start]['balanced_accuracy']:.1f}%", flush=True)
            report["curve"][str(n)] = row | {"train_images": len(train)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
