"""The pull-request report: headline metrics diff and plots between two commits of a real DVC
repository, and the CML workflow that posts it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from stagerun import REPO


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("pr_report", REPO / "scripts/pr_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(repo: Path, *cmd: str) -> None:
    subprocess.run(list(cmd), cwd=repo, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
                        "PATH": os.environ["PATH"], "HOME": str(repo), "DVC_NO_ANALYTICS": "1"})


def _commit(repo: Path, accuracy: float, losses: list[float], shade: int) -> None:
    (repo / "reports").mkdir(exist_ok=True)
    (repo / "reports/headline.json").write_text(json.dumps({"accuracy": accuracy}))
    (repo / "reports/loss.csv").write_text(
        "step,loss\n" + "".join(f"{k},{v}\n" for k, v in enumerate(losses)))
    Image.fromarray(np.full((8, 8), shade, np.uint8)).save(repo / "reports/confusion.png")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", f"accuracy {accuracy}")


@pytest.fixture
def two_commits(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({
        "metrics": ["reports/headline.json"],
        "plots": [{"loss": {"x": "step", "y": {"reports/loss.csv": "loss"}}},
                  "reports/confusion.png"]}))
    _commit(repo, 0.5, [2.0, 1.0, 0.8], 40)
    _commit(repo, 0.625, [1.5, 0.7, 0.4], 200)
    return repo


def test_report_has_the_metrics_diff_the_plots_as_images_and_the_hardware(tool, two_commits,
                                                                          tmp_path):
    out = tmp_path / "pr"
    report = tool.build_report(two_commits, "HEAD~1", "HEAD", out)
    text = report.read_text()
    assert "accuracy" in text and "0.5" in text and "0.625" in text
    linked = [part.split(")")[0] for line in text.splitlines() if "![" in line
              for part in line.split("](")[1:]]
    assert "loss.png" in linked and len(linked) == 3  # the drawn plot, the image at both revs
    assert all((out / name).is_file() and (out / name).stat().st_size for name in linked)
    assert "cores" in text  # the machine it was made on


def test_report_against_the_workspace_and_a_bad_revision(tool, two_commits, tmp_path):
    (two_commits / "reports/headline.json").write_text(json.dumps({"accuracy": 0.75}))
    text = tool.build_report(two_commits, "HEAD", tool.WORKSPACE, tmp_path / "ws").read_text()
    assert "0.75" in text
    assert tool.main(["--repo", str(two_commits), "--base", "no-such-rev",
                      "--out", str(tmp_path / "bad")]) == 2


def test_cml_workflow_is_valid_and_posts_the_report():
    workflow = yaml.safe_load((REPO / ".github/workflows/pr-report.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads on: True
    assert "pull_request" in triggers
    steps = workflow["jobs"]["report"]["steps"]
    runs = " ".join(str(s.get("run", "")) for s in steps)
    assert "make repro" in runs and "scripts/pr_report.py" in runs and "cml comment" in runs
    assert any(str(s.get("uses", "")).startswith("iterative/setup-cml") for s in steps)
