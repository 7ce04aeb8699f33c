"""`dvc metrics show` holds the numbers people compare, and only those (issue #27).

Each stage's full report stays a plain output; its ``metrics:`` file is a handful of headline
figures (:mod:`emorec.headline`). This counts them over the whole pipeline, as committed.
"""

from __future__ import annotations

import json
import subprocess

import yaml
from stagerun import REPO

from emorec.headline import MAX_HEADLINE_NUMBERS, unseen_headline

MAX_NUMBERS = 40


def _numbers(node) -> int:
    if isinstance(node, dict):
        return sum(_numbers(v) for v in node.values())
    if isinstance(node, list):
        return sum(_numbers(v) for v in node)
    return int(isinstance(node, int | float) and not isinstance(node, bool))


def _declared_metrics() -> list[str]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    files = [next(iter(m)) if isinstance(m, dict) else m
             for stage in spec["stages"].values() for m in stage.get("metrics", [])]
    return files + list(spec.get("metrics", []))


def test_every_metrics_file_is_a_small_headline_file_under_reports_metrics():
    files = _declared_metrics()
    assert files and all(f.startswith("reports/metrics/") for f in files), files
    for name in files:
        path = REPO / name
        assert path.is_file(), f"{name} is declared as metrics but missing: run `dvc repro`"
        assert _numbers(json.loads(path.read_text())) <= MAX_HEADLINE_NUMBERS, \
            f"{name} holds more than headlines"


def test_dvc_metrics_show_has_at_most_40_numbers():
    shown = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=REPO, capture_output=True,
                           text=True, check=True)
    total = _numbers(json.loads(shown.stdout))
    assert 0 < total <= MAX_NUMBERS, f"dvc metrics show has {total} numbers"


def test_unseen_headline_keeps_every_shipped_file_and_the_best_recipes():
    """However many recipes the protocol grows, the headline stays a headline."""
    table = {f"shipped:file{k}": {"mean_balanced_accuracy": 0.5 + k / 100} for k in range(3)}
    table |= {f"recipe{k}": {"mean_balanced_accuracy": k / 100} for k in range(20)}
    table |= {"recipe19 + decision": {"mean_balanced_accuracy": 0.001},
              "unscored": {"mean_balanced_accuracy": None},
              "ensemble:best": {"mean_balanced_accuracy": 0.99},
              "recipe0 (screen)": {"mean_balanced_accuracy": 0.98}}
    got = unseen_headline({"table": table})
    assert "ensemble:best" not in got and "recipe0 (screen)" not in got  # diagnostics
    assert len(got) == MAX_HEADLINE_NUMBERS
    assert {f"shipped:file{k}" for k in range(3)} <= set(got)
    assert "recipe19" not in got  # a decided row stands for its recipe
    assert set(got) - {f"shipped:file{k}" for k in range(3)} == {f"recipe{k}"
                                                                 for k in range(12, 19)}
