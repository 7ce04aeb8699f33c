"""The unseen-source protocol: leave-one-source-out planning, held-out ingest, the table."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_sources import face, save, sources_params

from emorec.errors import ParamsError
from emorec.ingest import run_ingest
from emorec.split_balance import run_split
from emorec.unseen import (
    Protocol,
    decided_run,
    patch_sources,
    plan_run,
    protocol_table,
    run_name,
    start_weights,
    teacher_paths,
    training_sources,
)

CLASSES = ["angry", "fearful", "happy", "neutral", "sad", "surprised"]
LAB_MAP = {"a": "neutral", "b": "happy", "c": "sad", "d": "angry", "f": "fearful",
           "g": "surprised"}


def lab_source(name: str, path, split: str = "stratified") -> dict:
    return {"name": name, "reader": "folder", "path": str(path), "split": split,
            "label_pattern": r"^\d{4}([a-g])\d{2}", "map": LAB_MAP, "face_crop": False}


@pytest.fixture
def three_sources(tmp_path):
    """Two training sources and one always-unseen set; ``b`` holds a re-encoded copy of one of
    ``c``'s faces and ``a`` holds a near copy of one of ``unseen``'s."""
    roots = {n: tmp_path / n for n in ("a", "b", "c", "unseen")}
    for s, name in enumerate(roots):
        for k, code in enumerate("abcdfg" * 8):
            save(face(1000 * s + k, 64), roots[name] / f"{s}{k:03d}{code}01.png")
    noisy = np.asarray(face(2000 + 4, 64), dtype=np.int16) + np.random.default_rng(0).integers(
        -3, 4, (64, 64))
    save(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)), roots["b"] / "1999c01.png")
    save(face(3000 + 1, 64), roots["a"] / "0999b01.png")  # exact copy of an unseen face
    recipe = {"data.sources": [lab_source(n, roots[n]) for n in ("a", "b", "c")]}
    unseen = [{**lab_source("unseen", roots["unseen"]), "face_crop": "fallback"}]
    return recipe, unseen


def test_plan_marks_the_left_out_source_and_the_unseen_sets_and_scores_them(three_sources):
    recipe, unseen = three_sources
    before = copy.deepcopy(recipe)
    plan = plan_run(recipe, "c", unseen)
    assert recipe == before  # the recipe itself is untouched
    assert training_sources(plan) == ["a", "b"]
    held = {s["name"]: s.get("heldout", False) for s in plan["data.sources"]}
    assert held == {"a": False, "b": False, "c": True, "unseen": True}
    assert [e["name"] for e in plan["evaluate.external"]] == ["c", "unseen"]
    assert all("heldout" not in e and "face_crop" not in e for e in plan["evaluate.external"])
    assert training_sources(plan_run(recipe, None, unseen)) == ["a", "b", "c"]


def test_plan_rejects_unknown_holdouts_and_unseen_sets_that_train():
    recipe = {"data.sources": [{"name": "a"}, {"name": "b"}]}
    with pytest.raises(ParamsError, match="'x' is not a source"):
        plan_run(recipe, "x", [])
    with pytest.raises(ParamsError, match=r"\['b'\] are training sources"):
        plan_run(recipe, "a", [{"name": "b"}])


def test_no_face_of_a_held_out_source_trains_near_copies_included(three_sources, params_raw,
                                                                  tmp_path):
    recipe, unseen = three_sources
    plan = plan_run(recipe, "c", unseen)
    params = sources_params(params_raw, plan["data.sources"], CLASSES)
    report = run_ingest(params, tmp_path / "interim", tmp_path / "ingest.json")
    manifest = pd.read_csv(tmp_path / "interim" / "manifest.csv", keep_default_na=False)
    held = manifest[manifest["source"].isin(["c", "unseen"])]
    assert len(held) == 96 and set(held["usage"]) == {"test"}
    # the near copy of a c face in b and the exact copy of an unseen face in a are dropped
    assert report["sources"]["b"]["rejected_by_reason"] == {"near_duplicate": 1}
    assert report["sources"]["a"]["rejected_by_reason"] == {"duplicate": 1}

    run_split(params, tmp_path / "interim" / "manifest.csv", tmp_path / "processed",
              tmp_path / "split.json")
    ids = {name: set(pd.read_csv(tmp_path / "processed" / f"{name}.csv")["origin"])
           for name in ("train", "val", "test")}
    held_ids = set(held["id"])
    assert not held_ids & (ids["train"] | ids["val"])
    assert held_ids <= ids["test"]


def test_a_second_stage_holds_out_a_source_only_its_first_stage_had(three_sources, params_raw,
                                                                   tmp_path):
    recipe, unseen = three_sources
    first_stage = recipe["data.sources"]
    second = {"data.sources": first_stage[:2]}  # trains on a and b; its start weights saw c too
    with pytest.raises(ParamsError, match="'c' is not a source"):
        plan_run(second, "c", unseen)
    plan = plan_run(second, "c", unseen, first_stage)
    assert training_sources(plan) == ["a", "b"]
    assert [e["name"] for e in plan["evaluate.external"]] == ["c", "unseen"]
    params = sources_params(params_raw, plan["data.sources"], CLASSES)
    report = run_ingest(params, tmp_path / "interim", tmp_path / "ingest.json")
    # c's faces are scored, and b's near copy of one of them does not train the second stage
    assert report["sources"]["b"]["rejected_by_reason"] == {"near_duplicate": 1}


def test_heldout_must_be_a_boolean(params_raw, tmp_path):
    save(face(1), tmp_path / "lab" / "0001a01.png")
    params = sources_params(params_raw, [{**lab_source("lab", tmp_path / "lab"),
                                          "heldout": "yes"}])
    with pytest.raises(ParamsError, match=r"data.sources\[0\].heldout' must be true or false"):
        run_ingest(params, tmp_path / "interim", tmp_path / "ingest.json")


def _run(recipe: str, heldout: str | None, scores: dict[str, float]) -> dict:
    def entry(value: float) -> dict:
        figures = {"balanced_accuracy": value, "macro_f1": value, "accuracy": value,
                   "recall": {"angry": value, "happy": 1.0}}
        return {"n": 10, "found_rate": 1.0, "service": figures, "folded": figures}
    return {"name": run_name(recipe, heldout, False), "recipe": recipe, "heldout": heldout,
            "sets": {name: entry(v) for name, v in scores.items()}}


def test_table_takes_held_out_sources_from_their_run_and_averages_unseen_sets():
    runs = {r["name"]: r for r in [
        _run("r", "tfeid", {"tfeid": 0.4, "nimstim": 0.6}),
        _run("r", "sfew", {"sfew": 0.2, "nimstim": 0.8}),
        _run("shipped:m", None, {"nimstim": 0.5}),
    ]}
    table = protocol_table(runs, ["nimstim"])
    row = table["r"]
    assert row["sets"]["tfeid"]["balanced_accuracy"] == pytest.approx(0.4)
    assert row["sets"]["nimstim"]["balanced_accuracy"] == pytest.approx(0.7)  # mean of 2 runs
    assert row["sets"]["nimstim"]["runs"] == 2
    assert row["mean_balanced_accuracy"] == pytest.approx((0.4 + 0.2 + 0.7) / 3)
    assert row["mean_recall"]["happy"] == pytest.approx(1.0)
    assert table["shipped:m"]["mean_balanced_accuracy"] == pytest.approx(0.5)


def test_the_compact_table_keeps_the_rows_that_would_ship_and_says_where_the_rest_are():
    from emorec.unseen import markdown_table

    runs = {"plain": _run("r", "tfeid", {"tfeid": 0.4, "nimstim": 0.6}),
            "decided": _run("r + decision", "tfeid", {"tfeid": 0.5, "nimstim": 0.7}),
            "short": _run("q", "tfeid", {"tfeid": 0.1, "nimstim": 0.2}) | {"screen": True},
            "file": _run("shipped:m", None, {"nimstim": 0.5})}
    report = {"table": protocol_table(runs, ["nimstim"])}
    full, compact = markdown_table(report), markdown_table(report, compact=True)
    assert "recipe `r`" in full and "recipe `q (screen)`" in full
    assert "recipe `r`" not in compact and "(screen)" not in compact
    assert "recipe `r + decision`" in compact and "`m`, file" in compact
    assert "2 more rows" in compact and "2 more rows" not in full


def test_a_screen_run_is_a_row_of_its_own():
    runs = {"full": _run("r", "tfeid", {"tfeid": 0.4, "nimstim": 0.6}) | {"screen": False},
            "short": _run("r", "tfeid", {"tfeid": 0.1, "nimstim": 0.2}) | {"screen": True}}
    table = protocol_table(runs, ["nimstim"])
    assert table["r"]["sets"]["tfeid"]["balanced_accuracy"] == pytest.approx(0.4)
    assert table["r"]["sets"]["nimstim"]["runs"] == 1
    assert table["r (screen)"]["mean_balanced_accuracy"] == pytest.approx(0.15)


def test_protocol_file_names_what_is_wrong(tmp_path):
    path = tmp_path / "unseen.yaml"
    path.write_text("unseen: []\nrecipes: {x: {overrides: {}}}\n")
    with pytest.raises(ParamsError, match="recipes.x' needs a preset"):
        Protocol.load(path)
    path.write_text("unseen: [{reader: folder}]\nrecipes: {x: {preset: p}}\n")
    with pytest.raises(ParamsError, match="unseen' must be a list of source entries"):
        Protocol.load(path)


def test_a_recipe_sets_keys_on_one_source_and_no_other():
    recipe = {"data.sources": [{"name": "a", "reader": "ferplus"}, {"name": "b"}],
              "train.epochs": 3}
    patched = patch_sources(recipe, {"a": {"fer2013_view": {"weight": 0.5}}})
    assert patched["data.sources"] == [{"name": "a", "reader": "ferplus",
                                        "fer2013_view": {"weight": 0.5}}, {"name": "b"}]
    assert patched["train.epochs"] == 3 and "fer2013_view" not in recipe["data.sources"][0]
    with pytest.raises(ParamsError, match=r"\['c'\] are not sources .* needs at least reader"):
        patch_sources(recipe, {"c": {"heldout": True}})


def test_a_recipe_adds_a_whole_source_after_the_presets_own():
    recipe = {"data.sources": [{"name": "a", "reader": "ferplus"}]}
    added = patch_sources(recipe, {"c": {"reader": "expw", "path": "data/raw/expw"}})
    assert added["data.sources"] == [{"name": "a", "reader": "ferplus"},
                                     {"name": "c", "reader": "expw", "path": "data/raw/expw"}]
    assert recipe["data.sources"] == [{"name": "a", "reader": "ferplus"}]


def test_teachers_are_the_runs_that_left_out_the_same_source(tmp_path):
    for name in ("unseen-a-lo-tfeid", "unseen-b-lo-tfeid", "unseen-a-lo-sfew"):
        (tmp_path / f"{name}.int8.onnx").write_bytes(b"onnx")
    paths = teacher_paths(("a", "b"), "tfeid", False, tmp_path)
    assert [p.name for p in paths] == ["unseen-a-lo-tfeid.int8.onnx",
                                       "unseen-b-lo-tfeid.int8.onnx"]
    assert all(p.is_absolute() for p in paths)  # dvc runs the stage elsewhere
    # b has not been run with SFEW left out: a teacher that saw SFEW must not stand in for it
    with pytest.raises(ParamsError, match="unseen-b-lo-sfew.int8.onnx"):
        teacher_paths(("a", "b"), "sfew", False, tmp_path)


def test_a_second_stage_starts_from_the_run_that_left_out_the_same_source(tmp_path):
    (tmp_path / "unseen-a-lo-tfeid.fp16.safetensors").write_bytes(b"weights")
    path = start_weights("a", "tfeid", False, tmp_path)
    assert path == (tmp_path / "unseen-a-lo-tfeid.fp16.safetensors").resolve()
    # weights that saw SFEW must not start a run scored on SFEW
    with pytest.raises(ParamsError, match="unseen-a-lo-sfew.fp16.safetensors"):
        start_weights("a", "sfew", False, tmp_path)


@pytest.mark.parametrize("entry", ["{x: {preset: p, starts_from: y}}",
                                   "{x: {preset: p, starts_from: x}}",
                                   "{x: {preset: p, starts_from: y}, y: {preset: p, "
                                   "starts_from: z}, z: {preset: p}}"])
def test_starts_from_is_another_one_stage_recipe(tmp_path, entry):
    path = tmp_path / "unseen.yaml"
    path.write_text(f"unseen: []\nrecipes: {entry}\n")
    with pytest.raises(ParamsError, match="recipes.x.starts_from"):
        Protocol.load(path)


def test_teachers_must_be_other_recipes_of_the_file(tmp_path):
    path = tmp_path / "unseen.yaml"
    path.write_text("unseen: []\nrecipes: {x: {preset: p, teachers: [y]}}\n")
    with pytest.raises(ParamsError, match=r"recipes.x.teachers.*\['y'\]"):
        Protocol.load(path)
    path.write_text("unseen: []\nrecipes: {x: {preset: p, teachers: [x]}}\n")
    with pytest.raises(ParamsError, match="recipes.x.teachers"):
        Protocol.load(path)


def test_protocol_recipe_sources_must_be_mappings(tmp_path):
    path = tmp_path / "unseen.yaml"
    path.write_text("unseen: []\nrecipes: {x: {preset: p, sources: {a: 1}}}\n")
    with pytest.raises(ParamsError, match="recipes.x.sources"):
        Protocol.load(path)


def test_the_shipped_protocol_file_plans_every_recipe_and_holdout():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    protocol = Protocol.load(root / "presets/unseen.yaml")

    def overrides(recipe):
        preset = yaml.safe_load((root / "presets" / f"{recipe.preset}.yaml").read_text())
        return patch_sources(preset | recipe.overrides, recipe.sources)

    for recipe in protocol.recipes.values():
        first = (overrides(protocol.recipes[recipe.starts_from])["data.sources"]
                 if recipe.starts_from else None)
        for heldout in protocol.holdout:
            plan = plan_run(overrides(recipe), heldout, protocol.unseen, first)
            assert heldout not in training_sources(plan)
            assert not {u["name"] for u in protocol.unseen} & set(training_sources(plan))


def test_the_card_gets_the_table_once_and_keeps_the_rest():
    from emorec.unseen import CARD_START, card_with_table

    report = {"table": protocol_table({r["name"]: r for r in [
        _run("shipped:m", None, {"nimstim": 0.5})]}, ["nimstim"])}
    card = card_with_table("# card\n\nbody\n", report)
    assert card.count(CARD_START) == 1 and "| `m`, file | 50.0% | **50.0%** |" in card
    again = card_with_table(card.replace("50.0%", "old"), report)
    assert again == card and again.startswith("# card\n\nbody\n")
    noted = card_with_table(card, report, {"tau": 0.75, "chosen_on": ["nimstim"]})
    assert "logit-adjusted (tau 0.75, chosen on nimstim" in noted
    assert noted.count(CARD_START) == 1


def test_a_decided_run_scores_each_set_at_the_tau_chosen_without_it():
    def entry(value: float, n: int = 10) -> dict:
        figures = {"balanced_accuracy": value, "recall": {"angry": value}}
        return {"n": n, "service": figures, "folded": figures}

    trials = {"0": {"sets": {"a": entry(0.5), "b": entry(0.5), "c": entry(0.9), "e": entry(0, 0)}},
              "1": {"sets": {"a": entry(0.6), "b": entry(0.6), "c": entry(0.4), "e": entry(0, 0)}}}
    decision = {"recipe": "r", "model": "m.onnx", "chosen_tau": 0.0, "trials": trials}
    run = decided_run(decision, "a")
    assert run["name"] == "unseen-r-decided-lo-a"
    assert run["recipe"] == "r + decision" and run["heldout"] == "a"
    assert run["tau_by_set"] == {"a": 0.0, "b": 0.0, "c": 1.0}
    # c alone wants tau 0 (0.9); chosen on a and b it gets tau 1 and reads 0.4
    assert run["sets"]["c"]["folded"]["balanced_accuracy"] == pytest.approx(0.4)
    assert run["sets"]["e"]["n"] == 0  # an empty set is kept, at the file's tau
    assert "tau 0" in run["about"]


def test_a_shipped_files_row_at_the_tau_chosen_without_each_set_is_a_row_of_its_own():
    from emorec.unseen import decided_file_run

    def entry(value: float) -> dict:
        figures = {"balanced_accuracy": value, "macro_f1": value, "recall": {"angry": value}}
        return {"n": 10, "found_rate": 1.0, "service": figures, "folded": figures}

    trials = {"0": {"sets": {"a": entry(0.9), "b": entry(0.5)}},
              "1": {"sets": {"a": entry(0.5), "b": entry(0.6)}}}
    recipe_run = {"0": {"sets": {"a": entry(0.2), "c": entry(0.4)}},
                  "1": {"sets": {"a": entry(0.2), "c": entry(0.5)}}}
    decision = {"recipe": "r", "model": "models/m/model.int8.onnx", "chosen_tau": 0.0,
                "trials": trials}
    run = decided_file_run(decision, "m", [recipe_run])
    assert run["name"] == "shipped-m-tau-left-out" and run["heldout"] is None
    # without "a", b (0.6) and the recipe's c (0.5) pick tau 1, where a reads 0.5, not 0.9
    assert run["tau_by_set"] == {"a": 1.0, "b": 0.0}
    assert run["sets"]["a"]["folded"]["balanced_accuracy"] == pytest.approx(0.5)
    table = protocol_table({run["name"]: run}, ["a", "b"])
    assert list(table) == ["shipped:m (tau left out)"]
    assert table["shipped:m (tau left out)"]["mean_balanced_accuracy"] == pytest.approx(0.5)
