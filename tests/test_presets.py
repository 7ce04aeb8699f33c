"""Every preset in presets/ names real params.yaml keys and passes the stages' own validation.

A preset is only read when someone runs a long experiment with it; a typo in a key would make
`dvc exp run -S` add a param no stage reads, and the hour-long run would silently ignore it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from emorec.config import Params
from emorec.cross_corpus import external_sets
from emorec.sources import read_sources
from emorec.training.config import TrainConfig
from emorec.weights import read_sidecar

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


def run_preset_module():
    spec = importlib.util.spec_from_file_location("run_preset", ROOT / "scripts/run_preset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def has_key(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# ablation.yaml lists rows and unseen.yaml a protocol (tests/test_unseen.py), not keys
RUN_PRESETS = [p for p in PRESETS if p.stem not in ("ablation", "unseen")]


@pytest.mark.parametrize("preset", RUN_PRESETS, ids=lambda p: p.stem)
def test_preset_keys_exist_and_validate(preset: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = yaml.safe_load(preset.read_text())
    unknown = [key for key in overrides if not has_key(base, key)]
    assert not unknown, f"{preset.name}: keys not in params.yaml: {unknown}"

    params_path = tmp_path / "params.yaml"
    params_path.write_text((ROOT / "params.yaml").read_text())
    run_preset_module().apply(overrides, params_path)
    params = Params(yaml.safe_load(params_path.read_text()))
    monkeypatch.chdir(tmp_path)  # the datasets are not here: empty folders stand in for them
    for key in ("data.sources", "evaluate.external"):
        for entry in params.get(key, []):
            (tmp_path / entry["path"]).mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.from_params(params)
    assert cfg.epochs == overrides["train.epochs"]
    if params.get("data.source") == "sources":
        names = [s.name for s in read_sources(params)]
        assert names == [entry["name"] for entry in overrides["data.sources"]]
    external_sets(params, params.classes)


def test_two_stage_fer2013_preset_starts_from_the_shipped_multisource_weights() -> None:
    """fer2013-cpu fine-tunes the shipped multi-source weights: the file and its arch must match."""
    overrides = yaml.safe_load((ROOT / "presets/fer2013-cpu.yaml").read_text())
    weights = ROOT / overrides["train.pretrained"]
    assert weights.is_file()
    sidecar = read_sidecar(weights)
    assert sidecar["model_name"] == overrides["train.model"]
    assert sidecar["image"]["size"] == overrides["image.size"]
    assert sidecar["classes"] == overrides["classes"]
