"""Bad params.yaml values stop the data stages with exit status 2 and one line naming the key.

The stage scripts run as the pipeline runs them: a separate process, in a working directory,
reading a params file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from stagerun import STAGES, run_python

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.split_balance import run_split


def run_stage(stage: str, params_raw: dict, cwd: Path) -> subprocess.CompletedProcess:
    params = cwd / "params.yaml"
    params.write_text(yaml.safe_dump(params_raw))
    return run_python([str(STAGES / f"{stage}.py"), "--params", str(params)], cwd, timeout=120)


def edit_unknown_source(raw: dict, tmp: Path) -> None:
    raw["data"]["source"] = "imagenet"


def edit_missing_folder(raw: dict, tmp: Path) -> None:
    raw["data"]["source"] = "folder"
    raw["data"]["folder"]["root"] = str(tmp / "no" / "such" / "folder")


def edit_missing_fer_csv(raw: dict, tmp: Path) -> None:
    raw["data"]["source"] = "fer2013"
    raw["data"]["fer2013"]["path"] = str(tmp / "fer2013.csv")


def edit_ratios(raw: dict, tmp: Path) -> None:
    raw["split"]["ratios"] = {"train": 0.7, "val": 0.15, "test": 0.05}


def edit_bad_transform(raw: dict, tmp: Path) -> None:
    raw["balance"]["augment"] = [{"HorizontalFlip": {"p": 0.5}}, {"Rotate90Please": {}}]


def edit_strategy(raw: dict, tmp: Path) -> None:
    raw["balance"]["strategy"] = "smote"


@pytest.mark.parametrize(("stage", "edit", "key", "words"), [
    ("ingest", edit_unknown_source, "data.source", "must be one of"),
    ("ingest", edit_missing_folder, "data.folder.root", "does not exist"),
    ("ingest", edit_missing_fer_csv, "data.fer2013.path", "does not exist"),
    ("split", edit_ratios, "split.ratios", "must sum to 1"),
])
def test_bad_value_gives_exit_2_and_one_line_naming_the_key(params_raw, tmp_path, stage, edit,
                                                            key, words):
    edit(params_raw, tmp_path)
    result = run_stage(stage, params_raw, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"'{key}'" in lines[0] and words in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing half-written


@pytest.mark.parametrize(("edit", "key", "words"), [
    (edit_strategy, "balance.strategy", "must be one of"),
    (edit_bad_transform, "balance.augment[1]", "'Rotate90Please' is not an albumentations"),
])
def test_bad_balance_values_fail_before_reading_data(params_raw, tmp_path, edit, key, words):
    """Same validation as the stage process, run in-process (split imports torch: slow to spawn)."""
    edit(params_raw, tmp_path)
    with pytest.raises(ParamsError) as err:
        run_split(Params(params_raw), tmp_path / "missing.csv", tmp_path / "out", tmp_path / "r")
    assert err.value.key == key and words in str(err.value)
    assert not (tmp_path / "out").exists()


def test_help_describes_the_stage():
    result = run_python([str(STAGES / "ingest.py"), "--help"], timeout=60)
    assert result.returncode == 0 and "data.source" in result.stdout
    assert "--params" in result.stdout and "--report" in result.stdout
