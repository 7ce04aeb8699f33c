"""Render the README's and docs/ pages' figures from the pipeline's reports (never typed by hand).

Every section lives between a pair of markers in exactly one page: README.md or a page of
``docs/`` beside it. ``<!-- metrics:start -->`` ... ``<!-- metrics:end -->`` is filled with
tables built from ``reports/metrics/test.json`` (evaluate stage),
``reports/train/metrics.json`` (dvclive, train stage) and, when present,
``reports/bench/train_throughput.json``.

    python scripts/readme_metrics.py            # rewrite README.md and docs/*.md in place
    python scripts/readme_metrics.py --check    # exit 1 if a page is out of date (CI)
    python scripts/readme_metrics.py --print    # only print the section

``--check`` compares the README and the reports *as committed* (``git show HEAD:<path>``), not
the working tree: ``make repro`` on another CPU rewrites reports/ with slightly different
figures, and that local re-run must not make ``make test`` fail. Outside a git checkout (a
source archive, a test's temporary folder) it reads the working tree.

No torch and nothing heavy: only emorec.cli (argparse, PyYAML), so it runs wherever the JSON
files are.

Writes README.md and docs/*.md (the marked sections only). Takes under a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # readme_sections, also under importlib
from readme_sections.pipeline import render  # noqa: E402
from readme_sections.real_data import (  # noqa: E402
    render_ablation,
    render_fer2013,
    render_learning_curve,
    render_losses,
    render_model_choice,
    render_multisource,
    render_real_faces,
)
from readme_sections.serving import (  # noqa: E402, F401 (serve_*: the tests render them)
    render_detectors,
    render_live,
    render_parity,
    render_service_path,
    serve_load,
    serve_soak,
)
from readme_sections.unseen import render_unseen  # noqa: E402

from emorec.cli import script_parser

START, END = "<!-- metrics:start -->", "<!-- metrics:end -->"
FER_START, FER_END = "<!-- fer2013:start -->", "<!-- fer2013:end -->"
LOSS_START, LOSS_END = "<!-- losses:start -->", "<!-- losses:end -->"
DETECT_START, DETECT_END = "<!-- detectors:start -->", "<!-- detectors:end -->"
PATH_START, PATH_END = "<!-- service_path:start -->", "<!-- service_path:end -->"
LIVE_START, LIVE_END = "<!-- live_mode:start -->", "<!-- live_mode:end -->"
PARITY_START, PARITY_END = "<!-- parity:start -->", "<!-- parity:end -->"
MULTI_START, MULTI_END = "<!-- multisource:start -->", "<!-- multisource:end -->"
ABL_START, ABL_END = "<!-- ablation:start -->", "<!-- ablation:end -->"
CHOICE_START, CHOICE_END = "<!-- model_choice:start -->", "<!-- model_choice:end -->"
CURVE_START, CURVE_END = "<!-- learning_curve:start -->", "<!-- learning_curve:end -->"
REAL_START, REAL_END = "<!-- real_faces:start -->", "<!-- real_faces:end -->"
UNSEEN_START, UNSEEN_END = "<!-- unseen:start -->", "<!-- unseen:end -->"
#: Published FER2013 PrivateTest accuracies (7 classes) the real-data section compares with.
EXTRA_REPORTS = {"synth": "synth/status.json", "quantize": "quantize.json",
                 "serve_load": "bench/serve_load.json", "serve_soak": "bench/serve_soak.json",
                 "xai": "xai.json",
                 "pipeline": "bench/pipeline.json"}


Reader = Callable[[Path], str | None]


def working_tree_text(path: Path) -> str | None:
    """The file as it is on disk, or None if absent."""
    return path.read_text() if path.is_file() else None


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)


def _committed_root(folder: Path) -> Path | None:
    """Top of the git work tree holding ``folder`` if it has a HEAD commit, else None."""
    try:
        top = _git(folder, "rev-parse", "--show-toplevel")
        head = _git(folder, "rev-parse", "--verify", "-q", "HEAD")
    except OSError:  # git not installed
        return None
    if top.returncode != 0 or head.returncode != 0:
        return None
    return Path(top.stdout.strip()).resolve()


def committed_text(path: Path) -> str | None:
    """The file as committed at HEAD (None if HEAD lacks it).

    Falls back to the working tree when ``path`` is not in a git work tree with a commit (no
    git, a source archive, a temporary folder), where there is nothing committed to compare.
    """
    folder = path.resolve().parent
    while not folder.is_dir():
        folder = folder.parent
    root = _committed_root(folder)
    if root is None:
        return working_tree_text(path)
    shown = _git(root, "show", f"HEAD:{path.resolve().relative_to(root).as_posix()}")
    return shown.stdout if shown.returncode == 0 else None


def _load(path: Path, required: bool, read: Reader = working_tree_text) -> dict[str, Any] | None:
    text = read(path)
    if text is None:
        if required:
            raise SystemExit(f"error: {path} not found; run `dvc repro evaluate` first")
        return None
    return json.loads(text)


def splice(readme: str, section: str, where: Path, start: str = START, end: str = END) -> str:
    if (readme.count(start) != 1 or readme.count(end) != 1
            or readme.index(start) > readme.index(end)):
        raise SystemExit(f"error: {where} needs exactly one '{start}' ... '{end}' pair")
    head, rest = readme.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{section}\n{end}{tail}"


#: Sections of their own, each rendered when its report exists: (report under reports/,
#: renderer, start marker, end marker).
OPTIONAL_SECTIONS = (
    ("fer2013.json", render_fer2013, FER_START, FER_END),
    ("fer2013_service_path.json", render_service_path, PATH_START, PATH_END),
    ("faces/detector_comparison.json", render_detectors, DETECT_START, DETECT_END),
    ("loss_comparison.json", render_losses, LOSS_START, LOSS_END),
    ("faces/live_mode.json", render_live, LIVE_START, LIVE_END),
    ("mobile/parity.json", render_parity, PARITY_START, PARITY_END),
    ("multisource.json", render_multisource, MULTI_START, MULTI_END),
    ("ablation.json", render_ablation, ABL_START, ABL_END),
    ("model_choice.json", render_model_choice, CHOICE_START, CHOICE_END),
    ("learning_curve.json", render_learning_curve, CURVE_START, CURVE_END),
    ("real_faces/xai.json", render_real_faces, REAL_START, REAL_END),
    ("unseen.json", render_unseen, UNSEEN_START, UNSEEN_END),
)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--test", type=Path, default=Path("reports/metrics/test.json"))
    parser.add_argument("--train", type=Path, default=Path("reports/train/metrics.json"))
    parser.add_argument("--bench", type=Path, default=Path("reports/bench/train_throughput.json"))
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="folder of the optional reports (quantize, xai, synth, bench)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="fail if README.md is out of date (both as committed at git HEAD)")
    mode.add_argument("--print", action="store_true", help="print the section only")
    args = parser.parse_args(argv)

    read = committed_text if args.check else working_tree_text
    extra = {name: _load(args.reports / rel, False, read) for name, rel in EXTRA_REPORTS.items()}
    section = render(_load(args.test, True, read), _load(args.train, False, read),
                     _load(args.bench, False, read), extra)
    if args.print:
        print(section)
        return 0
    if read(args.readme) is None:
        raise SystemExit(f"error: {args.readme} not found")
    old = {page: text for page in pages(args.readme) if (text := read(page)) is not None}
    new = dict(old)
    place(new, section, START, END)
    for rel, render_part, start, end in OPTIONAL_SECTIONS:
        report = _load(args.reports / rel, False, read)
        if report is not None:
            place(new, render_part(report), start, end)
    stale = [page for page in new if new[page] != old[page]]
    if args.check:
        if stale:
            print(f"{', '.join(map(str, stale))}: out of date with reports/ (as committed); "
                  "run `python scripts/readme_metrics.py` and commit the pages and reports "
                  "together",
                  file=sys.stderr)
            return 1
        return 0
    for page in stale:
        page.write_text(new[page])
    print(f"updated {', '.join(map(str, stale)) or 'nothing (all pages up to date)'}")
    return 0


def pages(readme: Path) -> list[Path]:
    """README.md and the markdown pages of ``docs/`` beside it."""
    return [readme, *sorted((readme.parent / "docs").glob("*.md"))]


def place(texts: dict[Path, str], section: str, start: str, end: str) -> None:
    """Splice ``section`` into the one page of ``texts`` that holds ``start``."""
    holders = [page for page, text in texts.items() if start in text]
    if len(holders) != 1:
        where = ", ".join(map(str, holders)) or "none of " + ", ".join(map(str, texts))
        raise SystemExit(f"error: exactly one page must hold '{start}' ... '{end}'; found in "
                         f"{where}")
    texts[holders[0]] = splice(texts[holders[0]], section, holders[0], start, end)


if __name__ == "__main__":
    sys.exit(main())
