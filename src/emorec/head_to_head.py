"""Head to head: does one row of the protocol table beat another on every unseen set, or only by
the luck of which faces the sets hold?

The sets are small (Yale has 59 faces, NimStim 110), so a lead of a few points on one of them
may be chance. Balanced accuracy is the mean of the recalls per class, and resampling a class's
faces with replacement (a stratified bootstrap) draws its correct count from
Binomial(n_c, recall_c). So the interval comes from the class sizes and recalls that
``reports/unseen.json`` already holds, without per-face predictions.

The two rows are resampled independently. They read the same faces, so a paired bootstrap would
give narrower intervals: the unpaired one errs on the side of "not shown". It covers the faces
drawn, not training noise (a second run of one recipe measures that; docs/unseen.md).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from emorec.errors import ParamsError


@dataclass(frozen=True)
class HeadToHead:
    """``compare`` in ``presets/unseen.yaml``: the rows every other row is held against."""

    against: tuple[str, ...] = ()
    draws: int = 10000
    level: float = 0.95
    seed: int = 0
    #: the bar the shipped recipe is held to (:func:`goals`)
    shipped: str | None = None
    must_beat: tuple[str, ...] = ()
    min_recall: float | None = None

    @classmethod
    def from_spec(cls, raw: Any, where: str) -> HeadToHead:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ParamsError(where, "must be a mapping: {against, draws, level, seed}")
        unknown = sorted(set(raw) - {"against", "draws", "level", "seed", "goals"})
        if unknown:
            raise ParamsError(where, f"unknown keys {unknown}")
        against = _rows(raw.get("against") or [], f"{where}.against")
        draws, level, seed = raw.get("draws", cls.draws), raw.get("level", cls.level), raw.get(
            "seed", cls.seed)
        if not isinstance(draws, int) or draws < 100:
            raise ParamsError(f"{where}.draws", f"must be an integer >= 100, got {draws!r}")
        if not isinstance(level, float) or not 0.5 <= level < 1:
            raise ParamsError(f"{where}.level", f"must be a number in [0.5, 1), not {level!r}")
        if not isinstance(seed, int):
            raise ParamsError(f"{where}.seed", f"must be an integer, got {seed!r}")
        goals = raw.get("goals") or {}
        if not isinstance(goals, dict) or set(goals) - {"shipped", "must_beat", "min_recall"}:
            raise ParamsError(f"{where}.goals", "must be a mapping: {shipped, must_beat, "
                                                "min_recall}")
        shipped = goals.get("shipped")
        if shipped is not None and not isinstance(shipped, str):
            raise ParamsError(f"{where}.goals.shipped", f"must be a table row, not {shipped!r}")
        min_recall = goals.get("min_recall")
        if min_recall is not None and not (isinstance(min_recall, float) and 0 < min_recall < 1):
            raise ParamsError(f"{where}.goals.min_recall",
                              f"must be a number in (0, 1), not {min_recall!r}")
        return cls(tuple(against), draws, level, seed, shipped,
                   tuple(_rows(goals.get("must_beat") or [], f"{where}.goals.must_beat")),
                   min_recall)


def _rows(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ParamsError(where, "must be a list of table rows (recipe names, "
                                 "'<recipe> + decision' or 'shipped:<file>')")
    return value


def folded_counts(per_class: dict[str, int], fold: dict[str, str]) -> dict[str, int]:
    """Faces per class after ``evaluate.fold`` (e.g. disgust counted as angry)."""
    counts: dict[str, int] = {}
    for cls, n in per_class.items():
        target = fold.get(cls, cls)
        counts[target] = counts.get(target, 0) + int(n)
    return counts


def balanced_accuracy_draws(cell: dict[str, Any], draws: int, rng: np.random.Generator
                            ) -> np.ndarray:
    """Bootstrap draws of one set's balanced accuracy from its class sizes (``counts``) and
    recalls: each class's correct count is Binomial(n_c, recall_c)."""
    counts, recall = cell["counts"], cell["recall"]
    classes = [c for c in recall if counts.get(c)]
    if not classes:
        raise ValueError(f"a cell with recalls {sorted(recall)} has no class sizes")
    return np.mean([rng.binomial(counts[c], min(max(recall[c], 0.0), 1.0), draws) / counts[c]
                    for c in classes], axis=0)


def compare(row: dict[str, Any], reference: dict[str, Any], settings: HeadToHead,
            rng: np.random.Generator) -> dict[str, Any] | None:
    """``row`` minus ``reference`` on the sets both were scored on: per set and the mean over
    them, each with its interval; ``None`` when they share no set."""
    common = [s for s in reference["sets"] if s in row["sets"]]
    if not common:
        return None
    tail = 100 * (1 - settings.level) / 2
    sets, diffs = {}, []
    for name in common:
        mine, theirs = row["sets"][name], reference["sets"][name]
        diff = (balanced_accuracy_draws(mine, settings.draws, rng)
                - balanced_accuracy_draws(theirs, settings.draws, rng))
        diffs.append(diff)
        sets[name] = _summary(mine["balanced_accuracy"] - theirs["balanced_accuracy"], diff, tail)
    mean = _summary(float(np.mean([v["difference"] for v in sets.values()])),
                    np.mean(diffs, axis=0), tail)
    return {"sets": sets, "mean": mean,
            "better_on_every_set": all(v["difference"] > 0 for v in sets.values()),
            "shown_better_on": [s for s, v in sets.items() if v["interval"][0] > 0],
            "shown_worse_on": [s for s, v in sets.items() if v["interval"][1] < 0]}


def _summary(difference: float, draws: np.ndarray, tail: float) -> dict[str, Any]:
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"difference": float(difference), "interval": [float(low), float(high)]}


def head_to_head(table: dict[str, dict[str, Any]], settings: HeadToHead) -> dict[str, Any]:
    """Every row of the protocol table against each row of ``settings.against`` that the table
    has. Each pair draws from its own seed, so adding a row changes no other pair's interval."""
    out: dict[str, Any] = {}
    for ref in settings.against:
        if ref not in table:
            continue
        pairs = {}
        for name, row in table.items():
            if name == ref:
                continue
            rng = np.random.default_rng([settings.seed, zlib.crc32(f"{name}|{ref}".encode())])
            result = compare(row, table[ref], settings, rng)
            if result is not None:
                pairs[name] = result
        out[ref] = pairs
    return out


def goals(table: dict[str, dict[str, Any]], settings: HeadToHead) -> dict[str, Any] | None:
    """Where the shipped recipe stands against its bar: ahead of each ``must_beat`` row on
    every set they share, and every class's recall (mean over the sets that have it) at least
    ``min_recall``. ``None`` when no bar is set or the table has no such row yet."""
    row = table.get(settings.shipped or "")
    if row is None:
        return None
    beats = {}
    for ref in settings.must_beat:
        if ref in table:
            rng = np.random.default_rng([settings.seed, zlib.crc32(f"{settings.shipped}|{ref}"
                                                                   .encode())])
            pair = compare(row, table[ref], settings, rng)
            beats[ref] = None if pair is None else {
                "better_on_every_set": pair["better_on_every_set"],
                "behind_on": [s for s, v in pair["sets"].items() if v["difference"] <= 0],
                "shown_worse_on": pair["shown_worse_on"]}
    low = ({c: v for c, v in row["mean_recall"].items() if v < settings.min_recall}
           if settings.min_recall is not None else {})
    met = all(b and b["better_on_every_set"] for b in beats.values()) and not low
    return {"shipped": settings.shipped, "met": met, "beats": beats,
            "min_recall": settings.min_recall, "classes_below": low}


def goals_markdown(status: dict[str, Any] | None, label: Callable[[str], str]) -> str:
    """The bar in a few lines: met, or what is missing."""
    if not status:
        return ""
    lines = [f"Where {label(status['shipped'])} stands against its bar "
             f"({'met' if status['met'] else 'not met'}):", ""]
    for ref, pair in status["beats"].items():
        if pair is None:
            lines.append(f"- ahead of {label(ref)} on every set: no set in common")
        elif pair["better_on_every_set"]:
            lines.append(f"- ahead of {label(ref)} on every set: yes")
        else:
            shown = pair["shown_worse_on"]
            lines.append(f"- ahead of {label(ref)} on every set: no, behind on "
                         f"{', '.join(pair['behind_on'])} ("
                         + (f"beyond chance on {', '.join(shown)}" if shown else
                            "none beyond chance") + ")")
    if status["min_recall"] is not None:
        below = status["classes_below"]
        lines.append(f"- every class read at {100 * status['min_recall']:g} % or more: "
                     + ("yes" if not below else "no, " + ", ".join(
                         f"{c} {100 * v:.0f} %" for c, v in below.items())))
    return "\n".join(lines)


def markdown(report: dict[str, Any], rows: list[str], label: Callable[[str], str]) -> str:
    """One table per reference row: the difference per set in points with its interval, the
    mean, and whether the row leads on every set. Bold: the interval lies above zero."""
    settings, blocks = report.get("head_to_head_settings", {}), []
    for ref, pairs in report.get("head_to_head", {}).items():
        sets = list(report["table"][ref]["sets"])
        lines = [f"Against {label(ref)}, on the sets both were scored on: difference in "
                 f"balanced accuracy (points) and its {100 * settings.get('level', 0.95):g} % "
                 "interval from resampling each set's faces; **bold** where the interval lies "
                 "above zero.", "",
                 "| model | " + " | ".join(sets) + " | **mean** | ahead on every set |",
                 "|---|" + "---:|" * (len(sets) + 1) + ":---:|"]
        for name in (r for r in rows if r in pairs):
            pair = pairs[name]
            cells = [_points(pair["sets"][s]) if s in pair["sets"] else "" for s in sets]
            lines.append(f"| {label(name)} | " + " | ".join(cells)
                         + f" | {_points(pair['mean'])} | "
                         + ("yes" if pair["better_on_every_set"] else "no") + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _points(entry: dict[str, Any]) -> str:
    low, high = (100 * v for v in entry["interval"])
    text = f"{100 * entry['difference']:+.1f} ({low:+.0f}, {high:+.0f})"
    return f"**{text}**" if low > 0 else text
