"""A pull-request report between two revisions: headline metrics diff, plots as images, hardware.

    python scripts/pr_report.py --base main --head HEAD              # -> pr_report/report.md
    python scripts/pr_report.py --base HEAD~1 --head HEAD --out /tmp/pr
    python scripts/pr_report.py --base origin/main --head workspace   # after `dvc repro`

Writes OUT/report.md and OUT/*.png next to it (the markdown links them by relative path, so
`cml comment create --publish OUT/report.md` uploads them; .github/workflows/pr-report.yml does
exactly that on every pull request). The sections:

* the headline metrics (`dvc metrics diff --md`: the small reports/metrics/*.json files);
* every plot of dvc.yaml's top-level `plots:` that `dvc plots diff` returns: image plots as the
  two revisions side by side, data plots drawn with matplotlib, one line per revision and file;
* the CPU this report was made on (figures measured elsewhere name their own machine).

Reads git and DVC only (committed files and the DVC cache or remote for tracked outputs); takes a
few seconds. Needs to run inside the repository (or pass --repo).

Takes a few seconds on 2 cores (AMD EPYC).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from emorec.cli import script_parser
from emorec.hardware import cpu_info, describe  # noqa: E402

#: ``--head`` value for the files on disk rather than a commit.
WORKSPACE = "workspace"


class ReportError(RuntimeError):
    """A DVC command failed; the message says which and why."""


def dvc(repo: Path, *args: str) -> str:
    """stdout of ``dvc ARGS`` in ``repo``; a failure raises :class:`ReportError`."""
    done = subprocess.run(["dvc", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise ReportError(f"`dvc {' '.join(args)}` failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def revisions(base: str, head: str) -> list[str]:
    """DVC's revision arguments: ``head`` ``workspace`` compares with the files on disk (after
    the pipeline ran in a pull request's checkout)."""
    return [base] if head == WORKSPACE else [base, head]


def metrics_section(repo: Path, base: str, head: str) -> list[str]:
    table = dvc(repo, "metrics", "diff", *revisions(base, head), "--md").strip()
    if table.count("\n") < 2:  # header only
        return ["No headline metric changed."]
    return [table]


def _field(node: Any, axis: str) -> str | None:
    """The first ``encoding.<axis>.field`` in a vega-lite spec, depth first."""
    if isinstance(node, dict):
        enc = node.get("encoding", {}).get(axis)
        if isinstance(enc, dict) and isinstance(enc.get("field"), str):
            return enc["field"]
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _field(child, axis)
        if found:
            return found
    return None


def draw_vega(name: str, entry: dict[str, Any], out: Path) -> Path | None:
    """A line plot of a DVC vega plot's data (one line per revision and file); None when its
    x axis is not numeric (a confusion matrix, a bar chart: their PNGs are in the report)."""
    anchors = entry.get("anchor_definitions", {})
    rows = anchors.get("<DVC_METRIC_DATA>") or []
    x, y = _field(entry["content"], "x"), _field(entry["content"], "y")
    if not rows or not x or not y:
        return None
    try:
        [float(r[x]) for r in rows]
    except (KeyError, TypeError, ValueError):
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        try:
            point = (float(r[x]), float(r[y]))
        except (KeyError, TypeError, ValueError):  # another file's column, an empty cell
            continue
        lines.setdefault((r.get("rev", ""), r.get("filename", "")), []).append(point)
    for (rev, filename), points in sorted(lines.items()):
        points.sort()
        ax.plot(*zip(*points, strict=True), label=f"{rev} {filename}".strip(), linewidth=1.2)
    title = anchors.get("<DVC_METRIC_TITLE>") or name
    ax.set_title(str(title), fontsize=9)
    ax.set_xlabel(str(anchors.get("<DVC_METRIC_X_LABEL>") or x), fontsize=8)
    ax.set_ylabel(str(anchors.get("<DVC_METRIC_Y_LABEL>") or y), fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / f"{name.replace('/', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots_section(repo: Path, base: str, head: str, out: Path) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        raw = json.loads(dvc(repo, "plots", "diff", *revisions(base, head), "--json", "--split",
                             "-o", tmp))
        lines: list[str] = []
        for name, entries in raw.get("data", {}).items():
            images = [e for e in entries if e["type"] == "image"]
            if images:
                cells = []
                for e in images:
                    target = out / Path(e["url"]).name
                    shutil.copyfile(e["url"], target)
                    cells.append((", ".join(e.get("revisions", [])), target.name))
                lines += [f"**{name}**", "", "| " + " | ".join(r for r, _ in cells) + " |",
                          "|" + "---|" * len(cells),
                          "| " + " | ".join(f"![{name} {r}]({f})" for r, f in cells) + " |", ""]
            elif "/" not in name:  # named plots of dvc.yaml's `plots:`; file plots are raw data
                for e in entries:
                    drawn = draw_vega(name, e, out)
                    if drawn:
                        lines += [f"**{name}**", "", f"![{name}]({drawn.name})", ""]
        return lines or ["No plot changed."]


def build_report(repo: Path, base: str, head: str, out: Path) -> Path:
    """Write ``out/report.md`` (and its images) comparing ``base`` with ``head``."""
    out.mkdir(parents=True, exist_ok=True)
    text = [f"## emorec: `{base}` → `{head}`", "", "### Headline metrics", "",
            *metrics_section(repo, base, head), "", "### Plots", "",
            *plots_section(repo, base, head, out), "",
            f"_Report made on {describe(cpu_info())}. Speed figures in the metrics were measured "
            "by the pipeline on the machine that ran it; a figure from one CPU is no promise for "
            "another._", ""]
    report = out / "report.md"
    report.write_text("\n".join(text))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--base", default="main", help="revision to compare against")
    parser.add_argument("--head", default="HEAD",
                        help=f"revision under review, or '{WORKSPACE}' for the files on disk")
    parser.add_argument("--out", type=Path, default=Path("pr_report"),
                        help="folder for report.md and its images")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.repo, args.base, args.head, args.out)
    except (ReportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
