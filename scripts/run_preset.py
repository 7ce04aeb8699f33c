"""Run a named experiment preset: ``presets/<name>.yaml`` overrides as one ``dvc exp run``.

    python scripts/run_preset.py fer2013-cpu            # runs the experiment in the workspace
    python scripts/run_preset.py fer2013-cpu --print    # only print the dvc command
    python scripts/run_preset.py fer2013-cpu --apply    # only write the values to params.yaml

A preset is a flat mapping of dotted params.yaml keys to values; each becomes ``-S key=value``,
so `dvc exp show` lists the run by name beside every other experiment, with its params.

Writes what the experiment writes (dvc exp show lists it). Takes the preset's training time:
fer2013-cpu about 61 min, multisource-cpu about 45 min on 2 cores (AMD EPYC).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from emorec.cli import script_parser

PRESETS = Path(__file__).resolve().parents[1] / "presets"


def read_preset(name: str) -> dict:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise SystemExit(f"error: no preset {name!r} in {PRESETS} (known: {known})")
    return yaml.safe_load(path.read_text()) or {}


def apply(overrides: dict, params_path: Path) -> None:
    """Write the overrides into a params file (for running stage scripts by hand)."""
    params = yaml.safe_load(params_path.read_text())
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def set_args(overrides: dict) -> list[str]:
    """``-S key=value`` arguments of ``dvc exp run`` for dotted-key overrides."""
    args = []
    for key, value in overrides.items():
        # DVC parses -S values as YAML; flow style keeps integer keys (FER codes) integers
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        args += ["-S", f"{key}={text.removesuffix('...').strip()}"]
    return args


def dvc_command(name: str, extra: list[str]) -> list[str]:
    return ["dvc", "exp", "run", "--name", name, *extra, *set_args(read_preset(name))]


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("name", help="preset file name without .yaml (see presets/)")
    parser.add_argument("--print", action="store_true", help="print the command, run nothing")
    parser.add_argument("--apply", nargs="?", const=Path("params.yaml"), type=Path,
                        metavar="PARAMS", help="write the overrides into PARAMS, run nothing")
    args, extra = parser.parse_known_args()
    if args.apply:
        apply(read_preset(args.name), args.apply)
        print(f"{args.name} written into {args.apply}")
        return 0
    cmd = dvc_command(args.name, extra)
    print(shlex.join(cmd), flush=True)
    return 0 if args.print else subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
