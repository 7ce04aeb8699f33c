"""The train stage: end to end via the script, resume, early stopping, class weights, MixUp,
pretrained weights from a local file or (failing cleanly) from the hub, and the benchmark."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from stagerun import REPO, STAGES, run_python
from tinydata import CLASSES, make_dataset, tiny_params, write_params

from emorec.config import Params
from emorec.losses import SoftTargetCrossEntropy as WeightedCE
from emorec.models import create_model, load_checkpoint
from emorec.training import (
    TrainConfig,
    Trainer,
    TrainPaths,
    effective_freeze_epochs,
    fit,
)


def _paths(root: Path) -> TrainPaths:
    return TrainPaths(
        train_csv=root / "data/synth/train.csv", val_csv=root / "data/processed/val.csv",
        label_map=root / "data/processed/label_map.json",
        class_weights=root / "data/processed/class_weights.json", best=root / "models/best.pt",
        state=root / "models/last.pt", live_dir=root / "reports/train", root=root)


def _tsv_steps(live_dir: Path, metric: str) -> list[int]:
    return pd.read_csv(live_dir / "plots" / "metrics" / f"{metric}.tsv", sep="\t")["step"].tolist()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def workdir(tmp_path, data_root) -> Path:
    """A private copy of the tiny data (runs write models/ and reports/ next to it)."""
    import shutil

    shutil.copytree(data_root / "data", tmp_path / "data")
    return tmp_path


# -- end to end through the stage script ---------------------------------------------------------
def test_train_stage_learns_then_resumes(workdir, repo_params_raw):
    params = write_params(workdir / "params.yaml",
                          tiny_params(repo_params_raw, model="test_convnext", epochs=2))
    proc = run_python([str(STAGES / "train.py"), "--params", str(params), "--no-progress"],
                      workdir)
    assert proc.returncode == 0, proc.stderr

    ckpt = torch.load(workdir / "models/best.pt", map_location="cpu", weights_only=False)
    assert ckpt["model_name"] == "test_convnext" and ckpt["classes"] == CLASSES
    assert ckpt["image"]["size"] == 32 and ckpt["params"]["train"]["epochs"] == 2
    assert set(ckpt["data_version"]) == {"data/synth/train.csv", "data/processed/val.csv",
                                         "data/processed/label_map.json",
                                         "data/processed/class_weights.json"}
    assert ckpt["metrics"]["macro_f1"] > 0.8  # chance is 1/3
    live = workdir / "reports/train"
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["step"] == 1
    for key in ("loss", "accuracy", "macro_f1"):
        assert key in metrics["train"] and key in metrics["val"]
    assert set(metrics["lr"]) == {"backbone", "head"} and metrics["norm"]["grad_mean"] > 0
    assert metrics["data"] == {"train_images_per_epoch": 48, "val_images": 24}
    assert metrics["train"]["backbone_frozen"] == 0  # epoch 2 trains the whole network
    assert _tsv_steps(live, "train/backbone_frozen") == [0, 1]
    assert not (live / "dvc.yaml").exists()  # dvc.yaml at the repo root declares the plots

    # more epochs continue the saved run (schedules are re-evaluated) without any flag
    params.write_text(yaml.safe_dump(tiny_params(repo_params_raw, model="test_convnext",
                                                 epochs=3)))
    proc = run_python([str(STAGES / "train.py"), "--params", str(params), "--no-progress"],
                      workdir)
    assert proc.returncode == 0, proc.stderr
    assert "resuming after epoch 2/3" in proc.stderr
    assert "epoch 3/3" in proc.stderr and "epoch 1/3" not in proc.stderr
    assert json.loads((live / "metrics.json").read_text())["step"] == 2
    assert _tsv_steps(live, "val/macro_f1") == [0, 1, 2]
    state = torch.load(workdir / "models/last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 3 and state["trainer"]["num_updates"] == 3 * (48 // 16)


def test_resume_is_exact(tmp_path, data_root, repo_params_raw):
    """Stopping after 2 of 3 epochs and resuming gives the weights of an uninterrupted run.

    A constant schedule makes the learning rate independent of ``train.epochs``, so the only
    difference between the runs is the interruption.
    """
    def run(root: Path, epochs: int, resume: bool) -> dict:
        raw = tiny_params(repo_params_raw, model="test_convnext", epochs=epochs,
                          scheduler="constant")
        fit(Params(raw), _paths(root), resume=resume, progress=False)
        return torch.load(root / "models/last.pt", weights_only=False)["trainer"]["model"]

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "data").symlink_to(data_root / "data")
    straight = run(a, 3, False)
    run(b, 2, False)
    resumed = run(b, 3, True)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_early_stopping_stops_after_patience(workdir, repo_params_raw):
    """With learning rate 0 the val macro-F1 never improves after epoch 1."""
    raw = tiny_params(repo_params_raw, model="test_convnext", epochs=10, lr_head=0.0,
                      lr_backbone=0.0, warmup_lr=0.0, min_lr=0.0, ema=False,
                      early_stopping_patience=2)
    summary = fit(Params(raw), _paths(workdir), progress=False)
    assert summary["stopped_early"] and summary["epochs_run"] == 3
    assert summary["best_epoch"] == 0
    assert json.loads((workdir / "reports/train/metrics.json").read_text())["step"] == 2


# -- class weights and MixUp: behaviour of the real training step ---------------------------------
def _trainer(repo_params_raw, weights, **train) -> Trainer:
    raw = tiny_params(repo_params_raw, model="test_convnext", ema=False, weight_decay=0.0,
                      label_smoothing=0.0, freeze_backbone_epochs=0, **train)
    cfg = TrainConfig.from_params(Params(raw))
    torch.manual_seed(0)
    model = create_model(cfg.model, num_classes=len(CLASSES))
    w = torch.tensor(weights, dtype=torch.float32) if weights is not None else None
    trainer = Trainer(model, cfg, CLASSES, w, updates_per_epoch=1, device=torch.device("cpu"))
    trainer.set_backbone_frozen(False)
    trainer.model.train()
    return trainer


def test_class_weights_scale_loss_and_gradients(repo_params_raw):
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 32, 32), torch.zeros(8, dtype=torch.long)  # all class 0
    no_mix = {"mixup": {"enabled": False, "mixup_alpha": 0.2, "cutmix_alpha": 0.0, "prob": 0.0,
                        "switch_prob": 0.5}}

    plain = _trainer(repo_params_raw, [1.0, 1.0, 1.0], **no_mix)
    tripled = _trainer(repo_params_raw, [3.0, 1.0, 1.0], **no_mix)
    loss_plain, _, grad_plain = plain.train_step(x.clone(), y)
    loss_tripled, _, grad_tripled = tripled.train_step(x.clone(), y)
    assert torch.isclose(loss_tripled, 3 * loss_plain, rtol=1e-2)
    assert torch.isclose(grad_tripled, 3 * grad_plain, rtol=5e-2)

    # weight 0 for the only class in the batch: no gradient, weights stay exactly as they were
    ignored = _trainer(repo_params_raw, [0.0, 1.0, 1.0], **no_mix, grad_clip=0.0)
    before = copy.deepcopy(ignored.model.state_dict())
    _, _, grad = ignored.train_step(x.clone(), y)
    assert grad == 0
    assert all(torch.equal(before[k], v) for k, v in ignored.model.state_dict().items())


def test_class_weights_file_drives_training(workdir, repo_params_raw):
    """A zero weight in class_weights.json means that class is never learned."""
    (workdir / "data/processed/class_weights.json").write_text(
        json.dumps({"angry": 0.0, "happy": 1.0, "sad": 1.0}))
    raw = tiny_params(repo_params_raw, model="test_convnext", epochs=2, label_smoothing=0.0,
                      mixup={"enabled": False, "mixup_alpha": 0.2, "cutmix_alpha": 0.0,
                             "prob": 0.0, "switch_prob": 0.5})
    fit(Params(raw), _paths(workdir), progress=False)
    metrics = torch.load(workdir / "models/best.pt", weights_only=False)["metrics"]["per_class"]
    assert metrics["angry"]["recall"] == 0.0
    assert metrics["happy"]["recall"] > 0.8 and metrics["sad"]["recall"] > 0.8


def test_weighted_soft_ce_matches_timm_without_weights():
    from timm.loss import SoftTargetCrossEntropy

    torch.manual_seed(0)
    logits, target = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), dim=1)
    ones = WeightedCE(torch.ones(3))(logits, target)
    assert torch.isclose(ones, SoftTargetCrossEntropy()(logits, target))


def test_mixup_feeds_convex_combinations_and_soft_targets(repo_params_raw):
    mix = {"mixup": {"enabled": True, "mixup_alpha": 1.0, "cutmix_alpha": 0.0, "prob": 1.0,
                     "switch_prob": 0.5}}
    trainer = _trainer(repo_params_raw, None, **mix)
    seen: dict[str, torch.Tensor] = {}
    trainer.model.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].clone()))
    trainer.criterion.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("target", a[1].clone()))
    torch.manual_seed(2)
    x = torch.randn(6, 1, 32, 32)
    y = torch.tensor([0, 0, 1, 1, 2, 2])  # flipped pairs: (0,2) (0,2) (1,1) (1,1) (2,0) (2,0)
    trainer.train_step(x.clone(), y)

    lam = float(seen["target"][0, 0])
    assert 0.0 < lam < 1.0 and lam != 0.5
    expected_x = lam * x + (1 - lam) * x.flip(0)
    assert torch.allclose(seen["x"], expected_x, atol=1e-5)
    assert torch.allclose(seen["target"][0], torch.tensor([lam, 0.0, 1 - lam]), atol=1e-6)
    assert torch.allclose(seen["target"].sum(dim=1), torch.ones(6))

    plain = _trainer(repo_params_raw, None, mixup={**mix["mixup"], "enabled": False})
    plain.model.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].clone()))
    plain.train_step(x.clone(), y)
    assert torch.equal(seen["x"], x)


# -- pretrained weights ---------------------------------------------------------------------------
def test_pretrained_local_checkpoint_is_loaded_and_stem_adapted(workdir, repo_params_raw):
    """An RGB timm state_dict on disk becomes the start point; stem summed to one channel."""
    torch.manual_seed(3)
    rgb = timm.create_model("test_convnext", num_classes=10, in_chans=3)
    weights = workdir / "rgb_weights.pth"
    torch.save(rgb.state_dict(), weights)
    stem_key = "stem.0.weight"
    assert rgb.state_dict()[stem_key].shape[1] == 3

    raw = tiny_params(repo_params_raw, model="test_convnext", epochs=1, pretrained=str(weights),
                      lr_head=0.0, lr_backbone=0.0, warmup_lr=0.0, min_lr=0.0, ema=False)
    fit(Params(raw), _paths(workdir), progress=False)
    saved = torch.load(workdir / "models/best.pt", weights_only=False)["state_dict"]
    assert saved[stem_key].shape[1] == 1
    assert torch.allclose(saved[stem_key], rgb.state_dict()[stem_key].sum(dim=1, keepdim=True))
    assert saved["head.fc.weight"].shape[0] == len(CLASSES)


def test_pretrained_hub_id_offline_fails_with_one_clear_line(workdir, repo_params_raw):
    params = write_params(workdir / "params.yaml",
                          tiny_params(repo_params_raw, pretrained="hf-hub:timm/resnet10t.c3_in1k",
                                      model="resnet10t"))
    proc = run_python([str(STAGES / "train.py"), "--params", str(params), "--no-progress"],
                      workdir, HF_HUB_OFFLINE="1")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "train.pretrained" in errors[0] and "timm/resnet10t.c3_in1k" in errors[0]
    assert not (workdir / "models/best.pt").exists()


# -- benchmark ---------------------------------------------------------------------------------
def test_throughput_benchmark_writes_ratio(tmp_path, repo_params_raw):
    spec = importlib.util.spec_from_file_location(
        "train_throughput", REPO / "benchmarks/train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    raw = copy.deepcopy(repo_params_raw)
    raw["image"]["size"] = 32
    params = write_params(tmp_path / "params.yaml", raw)
    out = tmp_path / "bench.json"
    assert bench.main(["--params", str(params), "--out", str(out), "--model", "test_convnext",
                       "--batch-size", "8", "--steps", "2", "--repeats", "2",
                       "--warmup", "0"]) == 0
    report = json.loads(out.read_text())
    assert report["project_images_per_s"] > 0 and report["bare_images_per_s"] > 0
    assert report["ratio"] == pytest.approx(sorted(report["ratio_runs"])[0] / 2
                                            + sorted(report["ratio_runs"])[1] / 2)
    assert report["pass"] == (report["ratio"] >= 0.9)
    variants = report["bare"]["variants_images_per_s"]
    assert len(variants) >= 2 and variants[report["bare"]["variant"]] == max(variants.values())
    assert report["cpu"]["logical_cores"] >= 1 and report["cpu"]["model_name"]
    assert "avx512_bf16" in report["cpu"]["flags"] and "cores" in report["hardware"]


# -- losses and phases ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["ce", "focal", "ldam"])
def test_each_loss_trains_and_its_checkpoint_loads(workdir, repo_params_raw, loss):
    raw = tiny_params(repo_params_raw, model="test_convnext", epochs=3, loss=loss,
                      freeze_backbone_epochs=0)
    raw["train"]["loss_options"]["drw_at"] = 0.5  # LDAM re-weights from epoch 2 of 3
    fit(Params(raw), _paths(workdir), progress=False)
    losses = pd.read_csv(workdir / "reports/train/plots/metrics/train/loss.tsv", sep="\t")
    assert losses["loss"].iloc[-1] < losses["loss"].iloc[0]
    model, meta = load_checkpoint(workdir / "models/best.pt")
    assert bool(meta.get("cosine_head_scale")) == (loss == "ldam")
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, len(CLASSES))
    assert meta["metrics"]["macro_f1"] > 0.5  # the tiny classes are easy to tell apart


def test_no_head_warmup_without_pretrained_weights(repo_params_raw):
    raw = tiny_params(repo_params_raw, freeze_backbone_epochs=2, pretrained="none")
    assert effective_freeze_epochs(TrainConfig.from_params(Params(raw))) == 0
    raw["train"]["pretrained"] = "some/hub-id"
    assert effective_freeze_epochs(TrainConfig.from_params(Params(raw))) == 2


# -- label distributions (FER+ votes) ------------------------------------------------------------
def test_soft_targets_reach_the_loss_unsmoothed_and_mix_with_their_images(repo_params_raw):
    seen: dict[str, torch.Tensor] = {}
    votes = torch.tensor([[0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.1, 0.0, 0.9], [0.5, 0.5, 0.0]])
    x = torch.randn(4, 1, 32, 32)
    plain = _trainer(repo_params_raw, None, mixup={"enabled": False, "mixup_alpha": 1.0,
                                                   "cutmix_alpha": 0.0, "prob": 1.0,
                                                   "switch_prob": 0.5})
    plain.cfg = dataclasses.replace(plain.cfg, label_smoothing=0.2)
    plain.criterion.register_forward_pre_hook(lambda m, a: seen.__setitem__("t", a[1].clone()))
    plain.train_step(x.clone(), votes)
    assert torch.equal(seen["t"], votes)  # the taggers' spread is the target: no smoothing on top

    mix = {"mixup": {"enabled": True, "mixup_alpha": 1.0, "cutmix_alpha": 0.0, "prob": 1.0,
                     "switch_prob": 0.5}}
    mixed = _trainer(repo_params_raw, None, **mix)
    mixed.model.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].clone()))
    mixed.criterion.register_forward_pre_hook(lambda m, a: seen.__setitem__("t", a[1].clone()))
    mixed.train_step(x.clone(), votes)
    lam = float(((seen["x"] - x.flip(0)) / (x - x.flip(0))).flatten().median())
    assert 0 < lam < 1
    assert torch.allclose(seen["t"], lam * votes + (1 - lam) * votes.flip(0), atol=1e-4)


def test_soft_column_fills_label_only_rows_with_smoothed_one_hot():
    from emorec.data import soft_targets

    frame = pd.DataFrame({"label": ["angry", "sad", "happy"],
                          "soft": ["0.5 0.5 0", "", "0 2 2"]})
    got = soft_targets(frame, CLASSES, smoothing=0.3)
    expected = [[0.5, 0.5, 0.0], [0.1, 0.1, 0.8], [0.0, 0.5, 0.5]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert soft_targets(frame.drop(columns="soft"), CLASSES) is None
    with pytest.raises(Exception, match="row 4"):  # the CSV line, after the header
        soft_targets(frame.assign(soft=["", "", "1 2"]), CLASSES)


@pytest.mark.parametrize("in_memory", [True, False])
def test_train_stage_learns_from_vote_distributions(workdir, repo_params_raw, in_memory):
    """A train split whose rows carry votes trains on both data paths, camera looks on."""
    train_csv = workdir / "data/synth/train.csv"
    frame = pd.read_csv(train_csv)
    index = {c: i for i, c in enumerate(CLASSES)}
    dist = []
    for k, label in enumerate(frame["label"]):
        p = [0.0] * len(CLASSES)
        p[index[label]] = 0.8
        p[(index[label] + 1) % len(CLASSES)] = 0.2
        dist.append(" ".join(map(str, p)) if k % 2 == 0 else "")  # half the rows: label alone
    frame.assign(soft=dist).to_csv(train_csv, index=False)
    raw = tiny_params(repo_params_raw, model="test_convnext", epochs=3, in_memory=in_memory)
    for name in raw["train"]["camera"]:
        raw["train"]["camera"][name]["p"] = 0.3
    params = write_params(workdir / "params.yaml", raw)
    proc = run_python([str(STAGES / "train.py"), "--params", str(params), "--no-progress"],
                      workdir)
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(workdir / "models/best.pt", map_location="cpu", weights_only=False)
    assert ckpt["metrics"]["macro_f1"] > 0.8  # chance is 1/3
