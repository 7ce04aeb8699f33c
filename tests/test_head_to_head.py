"""Head to head: the intervals behind "better on every set" (emorec.head_to_head)."""

from __future__ import annotations

import numpy as np
import pytest

from emorec.errors import ParamsError
from emorec.head_to_head import (
    HeadToHead,
    balanced_accuracy_draws,
    compare,
    folded_counts,
    goals,
    goals_markdown,
    head_to_head,
    markdown,
)
from emorec.unseen import final_rows, protocol_table


def cell(recall: dict[str, float], n_per_class: int) -> dict:
    return {"balanced_accuracy": float(np.mean(list(recall.values()))), "recall": recall,
            "counts": {c: n_per_class for c in recall}}


def row(**sets: dict) -> dict:
    return {"sets": sets}


SETTINGS = HeadToHead(against=("ref",), draws=4000, level=0.95, seed=0)


def test_disgust_faces_count_as_angry_after_the_fold():
    counts = folded_counts({"angry": 20, "disgust": 5, "happy": 7}, {"disgust": "angry"})
    assert counts == {"angry": 25, "happy": 7}
    assert folded_counts({"angry": 20, "disgust": 5}, {}) == {"angry": 20, "disgust": 5}


def test_draws_centre_on_the_balanced_accuracy_and_narrow_with_more_faces():
    rng = np.random.default_rng(0)
    recall = {"angry": 0.3, "happy": 0.9, "sad": 0.6}
    small = balanced_accuracy_draws(cell(recall, 20), 20000, rng)
    large = balanced_accuracy_draws(cell(recall, 2000), 20000, rng)
    assert small.mean() == pytest.approx(0.6, abs=0.005)
    assert large.mean() == pytest.approx(0.6, abs=0.002)
    assert large.std() < small.std() / 5  # ~ 1/sqrt(n): 10x the faces, ~1/10 the spread


def test_a_lead_on_a_large_set_is_shown_and_the_same_lead_on_a_small_one_is_not():
    ours = {"angry": 0.55, "happy": 0.85}
    theirs = {"angry": 0.45, "happy": 0.75}
    mine = row(big=cell(ours, 1000), small=cell(ours, 15), only_mine=cell(ours, 50))
    ref = row(big=cell(theirs, 1000), small=cell(theirs, 15))
    result = compare(mine, ref, SETTINGS, np.random.default_rng(1))
    assert set(result["sets"]) == {"big", "small"}  # only the sets both were scored on
    assert result["sets"]["big"]["difference"] == pytest.approx(0.10)
    assert result["better_on_every_set"] is True
    assert result["shown_better_on"] == ["big"]
    low, high = result["sets"]["small"]["interval"]
    assert low < 0 < high
    assert result["mean"]["difference"] == pytest.approx(0.10)


def test_a_clear_loss_is_named_and_no_shared_set_gives_nothing():
    mine = row(big=cell({"angry": 0.2, "happy": 0.6}, 800))
    ref = row(big=cell({"angry": 0.5, "happy": 0.8}, 800))
    result = compare(mine, ref, SETTINGS, np.random.default_rng(2))
    assert result["shown_worse_on"] == ["big"] and result["better_on_every_set"] is False
    assert compare(row(other=cell({"angry": 0.5}, 10)), ref, SETTINGS,
                   np.random.default_rng(2)) is None


def test_each_pair_keeps_its_intervals_when_rows_are_added():
    table = {"ref": row(s=cell({"angry": 0.5, "happy": 0.7}, 40)),
             "a": row(s=cell({"angry": 0.6, "happy": 0.7}, 40))}
    before = head_to_head(table, SETTINGS)
    table["b"] = row(s=cell({"angry": 0.1, "happy": 0.2}, 40))
    after = head_to_head(table, SETTINGS)
    assert after["ref"]["a"] == before["ref"]["a"]
    assert set(after["ref"]) == {"a", "b"}
    assert head_to_head(table, HeadToHead(against=("missing",))) == {}


def test_the_table_cells_carry_folded_class_sizes():
    figures = {"balanced_accuracy": 0.5, "macro_f1": 0.5, "accuracy": 0.5,
               "recall": {"angry": 0.5, "happy": 0.5}}
    entry = {"n": 30, "found_rate": 1.0, "per_class": {"angry": 10, "disgust": 5, "happy": 15},
             "service": figures, "folded": figures}
    runs = {"x": {"name": "x", "recipe": "r", "heldout": None, "sets": {"s": entry}}}
    table = protocol_table(runs, ["s"], {"disgust": "angry"})
    assert table["r"]["sets"]["s"]["counts"] == {"angry": 15, "happy": 15}


def test_the_markdown_bolds_only_intervals_above_zero():
    table = {"ref": {**row(big=cell({"angry": 0.4, "happy": 0.6}, 1000)), "about": ""},
             "win": {**row(big=cell({"angry": 0.6, "happy": 0.8}, 1000)), "about": ""},
             "lose": {**row(big=cell({"angry": 0.2, "happy": 0.4}, 1000)), "about": ""}}
    report = {"table": table, "head_to_head": head_to_head(table, SETTINGS),
              "head_to_head_settings": {"level": 0.95}}
    text = markdown(report, ["win", "lose"], lambda name: name)
    win = next(line for line in text.splitlines() if line.startswith("| win"))
    lose = next(line for line in text.splitlines() if line.startswith("| lose"))
    assert "**+20.0" in win and win.endswith("| yes |")
    assert "**" not in lose and lose.startswith("| lose | -20.0") and lose.endswith("| no |")


def scored(recall: dict[str, float], n: int, **sets: str) -> dict:
    one = cell(recall, n)
    return {"sets": {name: one for name in sets}, "mean_recall": recall}


BAR = HeadToHead(draws=2000, shipped="ship", must_beat=("old", "other"), min_recall=0.3)


def test_the_bar_is_met_only_ahead_on_every_shared_set_with_every_class_read():
    table = {"ship": scored({"angry": 0.6, "fearful": 0.35}, 200, a="", b=""),
             "old": scored({"angry": 0.5, "fearful": 0.3}, 200, a="", b=""),
             "other": scored({"angry": 0.4, "fearful": 0.3}, 200, b="")}
    status = goals(table, BAR)
    assert status["met"] is True and status["classes_below"] == {}
    assert status["beats"]["old"]["better_on_every_set"] is True

    table["ship"]["sets"]["b"] = cell({"angry": 0.3, "fearful": 0.1}, 200)
    table["ship"]["mean_recall"] = {"angry": 0.45, "fearful": 0.2}
    status = goals(table, BAR)
    assert status["met"] is False
    assert status["beats"]["old"]["behind_on"] == ["b"]
    assert status["beats"]["other"]["shown_worse_on"] == ["b"]
    assert status["classes_below"] == {"fearful": 0.2}
    text = goals_markdown(status, lambda n: f"`{n}`")
    assert "(not met)" in text and "behind on b (beyond chance on b)" in text
    assert "fearful 20 %" in text


def test_no_bar_without_the_shipped_row():
    assert goals({"old": scored({"angry": 0.5}, 10, a="")}, BAR) is None
    assert goals_markdown(None, str) == ""


@pytest.mark.parametrize("spec, key", [
    ({"goals": {"shipped": 3}}, "goals.shipped"),
    ({"goals": {"must_beat": "fer2013"}}, "goals.must_beat"),
    ({"goals": {"min_recall": 30}}, "goals.min_recall"),
    ({"goals": {"minimum": 0.3}}, "goals"),
    ("yunet", "compare"),
    ({"against": "yunet"}, "against"),
    ({"against": ["yunet"], "draws": 10}, "draws"),
    ({"against": ["yunet"], "level": 1.5}, "level"),
    ({"against": ["yunet"], "seed": "zero"}, "seed"),
    ({"against": ["yunet"], "rounds": 3}, "compare"),
])
def test_a_bad_compare_block_names_its_key(spec, key):
    with pytest.raises(ParamsError, match=key):
        HeadToHead.from_spec(spec, "presets/unseen.yaml: compare")


def test_a_decided_row_stands_for_its_recipe():
    assert final_rows(["a", "a + decision", "b", "shipped:m"]) == ["a + decision", "b",
                                                                   "shipped:m"]
