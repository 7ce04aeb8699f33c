"""Long training runs survive interruption.

In process (fast): a SIGINT/SIGTERM mid-epoch saves the state and a new run continues it to the
same weights, log and metrics as an uninterrupted run; damaged or foreign states (other params,
data, code, fewer epochs, a missing best checkpoint) are refused with one log line and training
starts at epoch 1. Through the stage script: SIGTERM ends with one line and status 143. With
the real ``dvc repro`` (slow): SIGINT and SIGKILL in the middle of training, then ``dvc repro``
resumes and ends where an uninterrupted run ends, with ``dvc status`` clean.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from stagerun import REPO, STAGES
from tinydata import make_dataset, tiny_params, write_params

from emorec.cli import Interrupted, run_stage, stage_parser
from emorec.config import Params
from emorec.training import (
    CODE_MODULES,
    STAGE_PARAMS,
    Trainer,
    TrainPaths,
    fit,
    read_state,
)

# -- helpers -------------------------------------------------------------------------------------


def _paths(root: Path, code: tuple[Path, ...] = ()) -> TrainPaths:
    return TrainPaths(
        train_csv=root / "data/synth/train.csv", val_csv=root / "data/processed/val.csv",
        label_map=root / "data/processed/label_map.json",
        class_weights=root / "data/processed/class_weights.json", best=root / "models/best.pt",
        state=root / "models/last.pt", live_dir=root / "reports/train", root=root, code=code)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def live_results(live_dir: Path) -> tuple[dict, dict]:
    """(metrics.json flattened, {metric: [(step, value)]} of every plot), timings left out."""
    summary = {k: v for k, v in _flat(json.loads((live_dir / "metrics.json").read_text())).items()
               if not k.startswith("time/")}
    plots = {}
    for tsv in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        name = tsv.relative_to(live_dir / "plots" / "metrics").with_suffix("").as_posix()
        if not name.startswith("time/"):
            frame = pd.read_csv(tsv, sep="\t")
            plots[name] = list(zip(frame["step"], frame[frame.columns[-1]], strict=True))
    return summary, plots


def assert_same_results(live_a: Path, live_b: Path, best_a: Path, best_b: Path,
                        rel: float = 0.0) -> None:
    """Same dvclive summary, same step series and values, same best weights (within ``rel``)."""
    summary_a, plots_a = live_results(live_a)
    summary_b, plots_b = live_results(live_b)
    assert summary_b.keys() == summary_a.keys()
    for key, value in summary_a.items():
        assert summary_b[key] == (value if isinstance(value, str) else
                                  pytest.approx(value, rel=rel, abs=rel)), key
    assert plots_b.keys() == plots_a.keys()
    for name, rows in plots_a.items():
        assert [s for s, _ in plots_b[name]] == [s for s, _ in rows], name
        assert [v for _, v in plots_b[name]] == pytest.approx([v for _, v in rows], rel=rel,
                                                              abs=rel), name
    weights_a = torch.load(best_a, map_location="cpu", weights_only=False)["state_dict"]
    weights_b = torch.load(best_b, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in weights_a.items():
        torch.testing.assert_close(weights_b[key], value, rtol=rel, atol=rel, msg=key)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def run_dir(tmp_path, data_root):
    """``run_dir(name)``: a folder seeing the tiny data, for one training run's outputs."""
    def make(name: str) -> Path:
        root = tmp_path / name
        root.mkdir()
        (root / "data").symlink_to(data_root / "data")
        return root
    return make


@pytest.fixture
def log_lines(caplog):
    caplog.set_level(logging.INFO, logger="emorec")

    def lines() -> str:
        text = caplog.text
        caplog.clear()
        return text
    return lines


def _fit(root: Path, raw: dict, **kwargs) -> dict:
    return fit(Params(raw), _paths(root, **kwargs), progress=False)


# -- stop and resume in process ------------------------------------------------------------------
def _signal_after_steps(monkeypatch, n: int, signum: int) -> None:
    """Make the process receive ``signum`` right after its ``n``-th training step."""
    original = Trainer.train_step
    calls = {"n": 0}

    def step(self, x, y):
        out = original(self, x, y)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signum)
        return out
    monkeypatch.setattr(Trainer, "train_step", step)


@pytest.mark.parametrize(("signum", "in_memory"), [(signal.SIGINT, True),
                                                   (signal.SIGTERM, False)])
def test_stop_mid_epoch_then_resume_equals_uninterrupted(run_dir, repo_params_raw, monkeypatch,
                                                         log_lines, signum, in_memory):
    raw = tiny_params(repo_params_raw, epochs=3, in_memory=in_memory)  # 3 steps per epoch
    straight, stopped = run_dir("straight"), run_dir("stopped")
    _fit(straight, raw)

    _signal_after_steps(monkeypatch, 5, signum)  # epoch 2, step 2 of 3
    with pytest.raises(Interrupted) as info:
        _fit(stopped, raw)
    assert info.value.exit_code == 128 + signum
    assert "in epoch 2/3 after step 2/3" in str(info.value) and "dvc repro" in str(info.value)
    state = read_state(stopped / "models/last.pt")
    assert state["epoch"] == 1 and state["partial"][0]["batches"] == 2
    assert signal.getsignal(signum) is not None  # handlers restored (pytest's own again)
    monkeypatch.undo()

    log_lines()
    summary = _fit(stopped, raw)
    assert "resuming in epoch 2/3 after step 2" in log_lines()
    assert summary["start_epoch"] == 1 and summary["epochs_run"] == 2
    assert_same_results(straight / "reports/train", stopped / "reports/train",
                        straight / "models/best.pt", stopped / "models/best.pt")
    final_a = read_state(straight / "models/last.pt")["trainer"]["model"]
    final_b = read_state(stopped / "models/last.pt")["trainer"]["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_stop_after_the_last_step_of_an_epoch(run_dir, repo_params_raw, monkeypatch):
    """The resumed run replays all batches of that epoch and goes on with its validation."""
    raw = tiny_params(repo_params_raw, epochs=3)
    root = run_dir("r")
    _signal_after_steps(monkeypatch, 3, signal.SIGINT)  # last step of epoch 1: stop at step 3/3
    with pytest.raises(Interrupted, match="epoch 1/3 after step 3/3"):
        _fit(root, raw)
    monkeypatch.undo()
    summary = _fit(root, raw)
    assert summary["start_epoch"] == 0 and summary["epochs_run"] == 3  # epoch 1 finished here


# -- refusing states that cannot be continued ----------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "reason"), [
    (_truncate, "unreadable (RuntimeError"),
    (_flip_middle_byte, "checksum mismatch"),
    (lambda p: p.write_bytes(b""), "unreadable"),
])
def test_damaged_state_restarts_from_epoch_1(run_dir, repo_params_raw, log_lines, damage,
                                             reason):
    root = run_dir("r")
    _fit(root, tiny_params(repo_params_raw, epochs=2))
    damage(root / "models/last.pt")
    log_lines()
    summary = _fit(root, tiny_params(repo_params_raw, epochs=3))
    text = log_lines()
    assert f"not resuming from {root / 'models/last.pt'}: {reason}" in text
    assert "training starts at epoch 1" in text and "Traceback" not in text
    assert summary["start_epoch"] == 0 and summary["epochs_run"] == 3
    assert read_state(root / "models/last.pt")["epoch"] == 3  # a sound state again


def test_changed_run_starts_fresh_and_says_why(run_dir, repo_params_raw, log_lines, tmp_path):
    """A finished run's state never leaks into a run with other params, code or data."""
    root = run_dir("r")
    script = tmp_path / "train_script.py"
    script.write_text("# v1\n")
    raw = tiny_params(repo_params_raw, epochs=2)
    _fit(root, raw, code=(script,))

    def rerun(raw: dict) -> tuple[dict, str]:
        log_lines()
        summary = _fit(root, raw, code=(script,))
        return summary, log_lines()

    changed = tiny_params(repo_params_raw, epochs=2, lr_head=5e-3)
    summary, text = rerun(changed)
    assert "params changed (train.lr_head)" in text and summary["start_epoch"] == 0

    script.write_text("# v2\n")
    summary, text = rerun(changed)
    assert "code changed (train_script.py)" in text and summary["start_epoch"] == 0

    summary, text = rerun(tiny_params(repo_params_raw, epochs=1, lr_head=5e-3))
    assert "train.epochs is now 1" in text and summary["start_epoch"] == 0

    (root / "models/best.pt").unlink()
    summary, text = rerun(changed)
    assert "best.pt is missing" in text and summary["start_epoch"] == 0

    summary, text = rerun({**changed, "seed": changed["seed"] + 1})
    assert "params changed (seed)" in text and summary["start_epoch"] == 0


def test_changed_data_starts_fresh(tmp_path, repo_params_raw, log_lines):
    root = make_dataset(tmp_path)
    raw = tiny_params(repo_params_raw, epochs=1)
    _fit(root, raw)
    assert _fit(root, tiny_params(repo_params_raw, epochs=2))["start_epoch"] == 1
    csv = root / "data/synth/train.csv"
    frame = pd.read_csv(csv)
    frame.iloc[:-1].to_csv(csv, index=False)
    log_lines()
    assert _fit(root, raw)["start_epoch"] == 0
    assert f"training data changed ({csv})" in log_lines()


def test_fingerprint_lists_match_dvc_yaml():
    """The code and params a resume checks are the train stage's deps in dvc.yaml."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    package = "src/emorec/training"  # one dep for the whole package, one fingerprint entry per file

    def dep(module: str) -> str:
        path = "src/" + module.replace(".", "/")
        return package if path.startswith(package) else path + ".py"

    code_deps = {d for d in stage["deps"] if d.startswith(("stages/", "src/"))}
    assert code_deps == {"stages/train.py"} | {dep(m) for m in CODE_MODULES}
    in_package = {"emorec.training" + ("" if p.stem == "__init__" else "." + p.stem)
                  for p in (REPO / package).glob("*.py")}
    assert in_package == {m for m in CODE_MODULES if m.startswith("emorec.training")}
    assert tuple(stage["params"]) == STAGE_PARAMS
    outs = {next(iter(o)): o[next(iter(o))] for o in stage["outs"] if isinstance(o, dict)}
    assert outs == {"models/best.pt": {"persist": True}, "models/last.pt": {"persist": True},
                    "reports/train/metrics.json": {"cache": False}}


# -- the stage script ----------------------------------------------------------------------------
def test_stage_stops_on_sigterm_with_one_line(tmp_path, repo_params_raw):
    make_dataset(tmp_path)
    params = write_params(tmp_path / "params.yaml", tiny_params(repo_params_raw, epochs=40))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(STAGES / "train.py"), "--params", str(params),
                             "--no-progress"], cwd=tmp_path, env=env, text=True,
                            stderr=subprocess.PIPE)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "epoch 1/40: train loss" in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    rc = proc.wait(timeout=120)
    text = "".join(lines)
    assert rc == 128 + signal.SIGTERM, text
    assert "Traceback" not in text
    last = [ln for ln in lines if ln.startswith("stopped: ")]
    assert len(last) == 1 and "SIGTERM" in last[0] and "run `dvc repro` to resume" in last[0]
    assert read_state(tmp_path / "models/last.pt")["epoch"] >= 1


def test_run_stage_turns_ctrl_c_into_one_line(capsys, tmp_path):
    def main(params, args):
        raise KeyboardInterrupt

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    rc = run_stage(main, stage_parser("x"), ["--params", str(tmp_path / "params.yaml")])
    assert rc == 130
    assert capsys.readouterr().err.startswith("stopped: interrupted (SIGINT)")


# -- the real dvc repro --------------------------------------------------------------------------
EPOCHS = 8


def _dvc_env(repo: Path) -> dict[str, str]:
    """The copy imports its own ``src/`` (not the editable install's), so the code DVC tracks is
    the code that runs and its md5s stay put while the working tree is edited."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo / "src"), "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
            "SHELL": "/bin/bash"}


def _dvc(args: list[str], repo: Path) -> str:
    proc = subprocess.run(["dvc", *args], cwd=repo, env=_dvc_env(repo), capture_output=True,
                          text=True)
    assert proc.returncode == 0, f"dvc {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _dvc_until(args: list[str], repo: Path, marker: str, signum: int) -> str:
    """Run ``dvc *args`` and send ``signum`` to its process group (as a terminal's Ctrl-C does)
    once a line containing ``marker`` appears; returns the whole output."""
    proc = subprocess.Popen(["dvc", *args], cwd=repo, env=_dvc_env(repo), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            os.killpg(proc.pid, signum)
            break
    lines += proc.stdout.readlines()
    proc.wait(timeout=300)
    text = "".join(lines)
    assert marker in text and proc.returncode != 0, text
    return text


def _copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        if (REPO / rel).is_file() and not rel.startswith(("data/", "models/", "reports/",
                                                          "mobile/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    (dest / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (dest / "data" / "raw" / ".gitkeep").touch()
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["demo"]["n_images"] = 120
    params["image"]["size"] = 32
    params["synth"]["target_total"] = 6
    params["train"].update(model="resnet10t", epochs=EPOCHS, batch_size=16,
                           early_stopping_patience=0)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    (dest / "dvc.lock").unlink(missing_ok=True)
    return dest


@pytest.mark.slow
def test_dvc_repro_resumes_after_sigint_and_sigkill(tmp_path):
    repo = _copy_repo(tmp_path / "repo")
    _dvc(["repro", "train"], repo)  # the uninterrupted run to compare with
    reference = tmp_path / "reference"
    shutil.copytree(repo / "reports/train", reference / "train")
    shutil.copy2(repo / "models/best.pt", reference / "best.pt")
    (repo / "models/last.pt").unlink()  # the next run starts at epoch 1 again

    text = _dvc_until(["repro", "-f", "-s", "train"], repo, f"epoch 1/{EPOCHS}: train loss",
                      signal.SIGINT)
    assert "stopped: SIGINT" in text and "run `dvc repro` to resume" in text, text
    assert "Traceback" not in text

    text = _dvc_until(["repro", "train"], repo, f"/{EPOCHS}: train loss", signal.SIGKILL)
    assert "resuming " in text and f"epoch 1/{EPOCHS}: train loss" not in text, text
    assert f"epoch {EPOCHS}/{EPOCHS}: train loss" not in text, "the run ended before SIGKILL"

    text = _dvc(["repro", "train"], repo)
    assert "resuming after epoch" in text and f"epoch 1/{EPOCHS}: train loss" not in text, text
    assert_same_results(reference / "train", repo / "reports/train", reference / "best.pt",
                        repo / "models/best.pt", rel=1e-5)
    assert "up to date" in _dvc(["status", "train"], repo)
    assert sorted(p.name for p in (repo / "models").iterdir()) == [".gitignore", "best.pt",
                                                                   "last.pt"]
