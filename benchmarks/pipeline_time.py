"""How long users wait for the pipeline: a full `dvc repro`, stage by stage, then a no-op one.

    python benchmarks/pipeline_time.py           # rebuild every stage here (dvc repro -f -s ...)
    python benchmarks/pipeline_time.py --noop    # only time a no-op `dvc repro` (outputs exist)

Stages run one at a time in dvc.yaml order (each a ``dvc repro --force --single-item``), so
every stage gets its own wall time; their sum plus DVC's start-up per call is the full run.
Writes ``reports/bench/pipeline.json`` with the CPU model, cores and flags: these timings only
hold for a CPU like that one (bf16 and VNNI support change the train and quantize stages most).

Takes about 5 min on 2 cores (AMD EPYC) for the full run, seconds with --noop.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from emorec.cli import script_parser
from emorec.hardware import cpu_info, describe


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def stage_times(stages: list[str]) -> dict[str, float]:
    times = {}
    for name in stages:
        print(f"dvc repro -f -s {name}", flush=True)
        times[name] = round(timed(["dvc", "repro", "--force", "--single-item", name]), 2)
    return times


def noop_times(repeats: int) -> list[float]:
    return [round(timed(["dvc", "repro"]), 2) for _ in range(repeats)]


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--noop", action="store_true", help="skip the full rebuild")
    parser.add_argument("--repeats", type=int, default=3, help="no-op runs timed")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/pipeline.json"))
    args = parser.parse_args(argv)
    stages = list(yaml.safe_load(Path("dvc.yaml").read_text())["stages"])
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if not args.noop:
        report["stages_s"] = stage_times(stages)
        report["full_repro_s"] = round(sum(report["stages_s"].values()), 1)
    noop = noop_times(args.repeats)
    report.update({"noop_repro_s": statistics.median(noop), "noop_runs_s": noop})
    cpu = cpu_info()
    report.update({"cpu": cpu, "hardware": describe(cpu)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    full = report.get("full_repro_s")
    print(f"{report['hardware']}: full repro {full if full is not None else '?'} s, "
          f"no-op repro {report['noop_repro_s']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
