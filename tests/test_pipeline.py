"""DVC behaviour of the real dvc.yaml on a temporary copy of the repository.

Runs the stages with a tiny demo dataset and model, then checks the everyday promises: a second
``dvc repro`` has nothing to do, changing only ``split.seed`` makes split stale but nothing
upstream of it, and a new model rebuilds export and quantize but no data stage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _copy_worktree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files, as a clean clone with local edits would have."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/", "models/", "reports/", "mobile/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (dest / "data" / "raw" / ".gitkeep").touch()


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("repo")
    _copy_worktree(dest)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["demo"]["n_images"] = 60
    params["image"]["size"] = 32
    params["synth"]["target_total"] = 6
    params["train"].update(epochs=1, batch_size=16)
    params["export"]["parity_batch"] = 8
    params["quantize"].update(calibration_images=8, latency_batch_sizes=[1], latency_repeats=2,
                              latency_warmup=1)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], dest)
    (dest / "dvc.lock").unlink(missing_ok=True)
    _run(["dvc", "repro", "split"], dest)
    return dest


def _stale_stages(repo: Path, target: str = "split") -> set[str]:
    out = _run(["dvc", "status", target, "--with-deps", "--json"], repo).stdout
    return set(yaml.safe_load(out) or {})


def test_second_repro_has_nothing_to_do(repo_copy: Path) -> None:
    assert _stale_stages(repo_copy) == set()
    out = _run(["dvc", "repro", "split"], repo_copy).stdout
    assert "Running stage" not in out


def test_split_seed_change_reruns_only_split(repo_copy: Path) -> None:
    params_path = repo_copy / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["split"]["seed"] += 1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    assert _stale_stages(repo_copy) == {"split"}
    out = _run(["dvc", "repro", "split"], repo_copy).stdout
    assert "Running stage 'split'" in out
    assert "Running stage 'ingest'" not in out and "Running stage 'eda'" not in out


def test_new_model_rebuilds_export_and_quantize_only(repo_copy: Path) -> None:
    _run(["dvc", "repro", "quantize"], repo_copy)
    assert _stale_stages(repo_copy, "quantize") == set()

    params_path = repo_copy / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"]["lr_head"] *= 0.5
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    assert _stale_stages(repo_copy, "quantize") == {"train"}  # the rest follows from its outs
    out = _run(["dvc", "repro", "quantize"], repo_copy).stdout
    for stage in ("train", "export", "quantize"):
        assert f"Running stage '{stage}'" in out
    for stage in ("ingest", "split", "synth"):
        assert f"Running stage '{stage}'" not in out
