"""Run the #19 ablation (presets/ablation.yaml) as DVC experiments -> reports/ablation.json.

    python scripts/ablation.py                  # every row, in the workspace (needs data/raw)
    python scripts/ablation.py --rows ferplus-soft more-faces
    python scripts/ablation.py --print          # the dvc commands only

Each row is the multisource-cpu preset, then the file's ``common`` overrides, then the row's own
sources and switches, run with ``dvc exp run --name abl-<row> cross_corpus`` (train, evaluate,
export, quantize and the cross-corpus scoring; unchanged stages come from DVC's run cache). The
report keeps, per row, the test split per source, the validation sets (the rows are chosen on
them) and the held-out source, each through the service path and whole.

Writes reports/ablation.json (after every row, so it resumes). Takes 6-12 min per row on 2 cores
(AMD EPYC), plus the first ingest of the sources (about an hour for FER2013).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from run_preset import read_preset, set_args

from emorec.cli import script_parser
from emorec.hardware import cpu_info, describe

ROOT = Path(__file__).resolve().parents[1]


def row_overrides(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Dotted-key overrides of one row (see the module docstring for the order)."""
    row = spec["rows"][name]
    overrides = read_preset("multisource-cpu") | dict(spec["common"])
    sources = []
    for source in row["sources"]:
        entry = dict(spec["sources"][source])
        if source == "sfew" and "sfew_face_crop" in row:
            entry["face_crop"] = row["sfew_face_crop"]
        sources.append(entry)
    overrides["data.sources"] = sources
    if row.get("camera"):
        overrides["train.camera"] = read_preset("multisource-cpu")["train.camera"]
    return overrides


def summarise(workspace: Path, row: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The figures of the experiment just run in ``workspace``."""
    test = json.loads((workspace / "reports/metrics/test.json").read_text())
    cross = json.loads((workspace / "reports/cross_corpus.json").read_text())

    def brief(entry: dict[str, Any]) -> dict[str, float]:
        return {"n": entry["n"], "found_rate": entry["found_rate"],
                "service_accuracy": entry["service"]["accuracy"],
                "service_balanced_accuracy": entry["service"]["balanced_accuracy"],
                "whole_accuracy": entry["whole"]["accuracy"],
                "whole_balanced_accuracy": entry["whole"]["balanced_accuracy"]}

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True,
                            text=True).stdout.strip()
    return {"adds": row["adds"], "sources": row["sources"], "wall_time_s": round(seconds),
            "commit": commit or None,
            "test": {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
                     "by_source": test.get("by_source")},
            "sets": {name: brief(entry) for name, entry in cross["sets"].items()}}


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--spec", type=Path, default=ROOT / "presets/ablation.yaml")
    parser.add_argument("--rows", nargs="*", default=None, help="rows to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("reports/ablation.json"))
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    spec = yaml.safe_load(args.spec.read_text())
    names = args.rows or list(spec["rows"])
    unknown = sorted(set(names) - set(spec["rows"]))
    if unknown:
        print(f"error: unknown rows {unknown}; known: {list(spec['rows'])}", file=sys.stderr)
        return 2
    report: dict[str, Any] = (json.loads(args.out.read_text()) if args.out.is_file()
                              else {"rows": {}})
    report.update({"spec": str(args.spec.relative_to(ROOT)), "common": spec["common"],
                   "hardware": describe(cpu_info())})
    for name in names:
        cmd = ["dvc", "exp", "run", "--name", f"abl-{name}",
               *set_args(row_overrides(spec, name)), "cross_corpus"]
        if args.print:
            print(" ".join(cmd))
            continue
        start = time.perf_counter()
        if subprocess.call(cmd) != 0:
            print(f"error: row {name} failed", file=sys.stderr)
            return 1
        report["rows"][name] = summarise(Path("."), spec["rows"][name],
                                         time.perf_counter() - start)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every row: resumable
        print(f"{name}: {json.dumps(report['rows'][name]['sets'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
