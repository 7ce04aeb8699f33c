"""``torchrun --nproc_per_node=2 stages/train.py``: DistributedDataParallel with gloo on CPU."""

from __future__ import annotations

import shutil

import torch
from stagerun import STAGES, run_python
from tinydata import make_dataset, tiny_params, write_params


def test_torchrun_two_processes_share_the_data(tmp_path, repo_params_raw):
    make_dataset(tmp_path)
    params = write_params(tmp_path / "params.yaml",
                          tiny_params(repo_params_raw, model="test_convnext", epochs=2,
                                      batch_size=8))
    proc = run_python(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       str(STAGES / "train.py"), "--params", str(params), "--no-progress"],
                      tmp_path)
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
