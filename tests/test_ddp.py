"""``torchrun --nproc_per_node=2 stages/train.py``: DistributedDataParallel with gloo on CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from tinydata import make_dataset, tiny_params, write_params

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_share_the_data(tmp_path, repo_params_raw):
    make_dataset(tmp_path)
    params = write_params(tmp_path / "params.yaml",
                          tiny_params(repo_params_raw, model="test_convnext", epochs=2,
                                      batch_size=8))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "stages/train.py"), "--params", str(params), "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # only rank 0 logs and writes
    assert proc.stderr.count("epoch 2/2: train loss") == 1
    assert "on 2 process(es)" in proc.stderr
    best = torch.load(tmp_path / "models/best.pt", map_location="cpu", weights_only=False)
    assert best["world_size"] == 2
    assert best["metrics"]["macro_f1"] > 0.8  # learned, on the val set gathered from both ranks
    assert best["metrics"]["per_class"]["angry"]["support"] == 8  # all 24 val images scored
    # DistributedSampler: each rank sees half of the 48 train images -> 24 // 8 = 3 steps/epoch
    state = torch.load(tmp_path / "models/last.pt", map_location="cpu", weights_only=False)
    assert state["trainer"]["num_updates"] == 2 * 3
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["best.pt", "last.pt"]
    shutil.rmtree(tmp_path / "data")
