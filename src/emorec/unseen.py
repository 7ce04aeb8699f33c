"""The unseen-source protocol: every recipe is judged on faces from sources it never trained on.

A val split shares its source's people, camera and labelling habits with the train split, so a
rule on it rewards a model for learning a source rather than for reading a new one. The protocol
(``presets/unseen.yaml``) scores a recipe on two kinds of faces instead:

* **Leave one source out.** For each source with people of its own (``holdout``), one run of the
  recipe marks that source ``heldout: true`` (:mod:`emorec.sources`): its labelled faces go to
  the test split, so ingest's test-first rule drops every exact or near copy of them from the
  other sources, and none of them trains or picks a checkpoint. The run then scores the whole
  source through the service's path (:mod:`emorec.cross_corpus`).
* **Always-unseen sets** (``unseen``) are in every run the same way: held out, scored, never
  trained on.

:func:`plan_run` writes a run's overrides; :func:`run_summary` keeps the figures of one run;
:func:`protocol_table` turns the runs into the per-recipe table the README and the model card
render. The headline is the mean balanced accuracy, 6 classes (``evaluate.fold``), over the
unseen sets a recipe was scored on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from emorec.decision import tau_left_out
from emorec.errors import ParamsError
from emorec.head_to_head import HeadToHead, folded_counts, goals_markdown
from emorec.head_to_head import markdown as head_to_head_markdown

#: Figures kept per set from the cross_corpus report: service path, whole image, folded.
_KEPT = ("accuracy", "balanced_accuracy", "macro_f1", "recall", "confusion")


@dataclass(frozen=True)
class Recipe:
    """One recipe under test: a preset plus overrides."""

    name: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    about: str = ""
    #: keys to set on the preset's ``data.sources`` entries, by source name
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: recipes whose runs with the same held-out source teach this one (``train.distill``)
    teachers: tuple[str, ...] = ()
    #: a two-stage recipe: the recipe whose run with the same held-out source gives the start
    #: weights (``train.pretrained``), as ``models/fer2013`` starts from ``models/multisource``
    starts_from: str | None = None


@dataclass(frozen=True)
class Protocol:
    """``presets/unseen.yaml``, validated."""

    unseen: list[dict[str, Any]]
    holdout: list[str]
    screen: dict[str, Any]
    recipes: dict[str, Recipe]
    compare: HeadToHead = field(default_factory=HeadToHead)

    @classmethod
    def load(cls, path: Path) -> Protocol:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        where = str(path)
        unseen = raw.get("unseen") or []
        if not all(isinstance(e, dict) and "name" in e for e in unseen):
            raise ParamsError(f"{where}: unseen", "must be a list of source entries with a name")
        recipes = {}
        for name, entry in (raw.get("recipes") or {}).items():
            if not isinstance(entry, dict) or "preset" not in entry:
                raise ParamsError(f"{where}: recipes.{name}", "needs a preset")
            patches = entry.get("sources") or {}
            if not isinstance(patches, dict) or not all(isinstance(v, dict)
                                                        for v in patches.values()):
                raise ParamsError(f"{where}: recipes.{name}.sources",
                                  "must map source names to the keys to set on them")
            recipes[str(name)] = Recipe(str(name), str(entry["preset"]),
                                        dict(entry.get("overrides") or {}),
                                        str(entry.get("about", "")),
                                        {str(k): dict(v) for k, v in patches.items()},
                                        tuple(str(t) for t in entry.get("teachers") or ()),
                                        (str(entry["starts_from"]) if entry.get("starts_from")
                                         else None))
        if not recipes:
            raise ParamsError(f"{where}: recipes", "lists no recipe")
        for recipe in recipes.values():
            unknown = sorted(set(recipe.teachers) - set(recipes)) or (
                [recipe.name] if recipe.name in recipe.teachers else [])
            if unknown:
                raise ParamsError(f"{where}: recipes.{recipe.name}.teachers",
                                  f"{unknown} are no other recipe of this file")
            start = recipe.starts_from
            if start is not None and (start not in recipes or start == recipe.name
                                      or recipes[start].starts_from is not None):
                raise ParamsError(f"{where}: recipes.{recipe.name}.starts_from",
                                  f"{start!r} must be another one-stage recipe of this file")
        return cls(unseen=[dict(e) for e in unseen], holdout=[str(h) for h in
                                                              raw.get("holdout") or []],
                   screen=dict(raw.get("screen") or {}), recipes=recipes,
                   compare=HeadToHead.from_spec(raw.get("compare"), f"{where}: compare"))


def run_name(recipe: str, heldout: str | None, screen: bool) -> str:
    """``unseen-<recipe>-<lo-source | all>[-screen]``: a DVC experiment name."""
    return f"unseen-{recipe}-{'lo-' + heldout if heldout else 'all'}{'-screen' if screen else ''}"


def scoring_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An ``evaluate.external`` entry that scores every labelled image of a source whole: its
    own split (if it has one) all mapped in, and no training-only keys."""
    out = {k: v for k, v in entry.items() if k not in ("face_crop", "heldout")}
    if out.get("split") == "predefined" and out.get("usage"):
        out["usage"] = {name: "test" for name in out["usage"]}
    return out


def patch_sources(overrides: dict[str, Any], patches: dict[str, dict[str, Any]]
                  ) -> dict[str, Any]:
    """``overrides`` with each ``data.sources`` entry named in ``patches`` updated by its keys
    (a recipe that changes one source, e.g. FER+ with a second label view); a patch naming no
    source of the preset is a source the recipe adds, so it must be a whole entry (``reader``
    and ``path``), appended after the preset's own.

    Raises :class:`ParamsError` when a patch names no source and is no whole entry.
    """
    sources = [dict(s) for s in overrides.get("data.sources") or []]
    names = {s["name"] for s in sources}
    added = {n: p for n, p in patches.items() if n not in names}
    partial = sorted(n for n, p in added.items() if not {"reader", "path"} <= set(p))
    if partial:
        raise ParamsError("recipes.sources", f"{partial} are not sources of the preset "
                                             f"({sorted(names)}); a source the recipe adds "
                                             f"needs at least reader and path")
    patched = [dict(s, **patches.get(s["name"], {})) for s in sources]
    patched += [{"name": n, **p} for n, p in added.items()]
    return {**overrides, "data.sources": patched} if patched else dict(overrides)


#: what ``run --keep-models DIR`` keeps of a run, by file suffix: the INT8 model (to score again,
#: or to teach) and the fp16 weights (to start a second stage from)
KEPT_MODEL = ".int8.onnx"
KEPT_WEIGHTS = ".fp16.safetensors"


def kept_files(recipes: tuple[str, ...], heldout: str | None, screen: bool, folder: Path,
               suffix: str, key: str) -> list[Path]:
    """The kept files (``suffix``) of the runs of ``recipes`` that left out the same source,
    so nothing a run learns from has seen a face it is scored on.

    Raises :class:`ParamsError` (at ``key``) naming the runs to do first when a file is missing.
    """
    paths = [Path(folder) / f"{run_name(r, heldout, screen)}{suffix}" for r in recipes]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ParamsError(key, f"{missing} not in {folder}: run those recipes first with "
                               f"--keep-models {folder}")
    return [p.resolve() for p in paths]


def teacher_paths(teachers: tuple[str, ...], heldout: str | None, screen: bool, folder: Path
                  ) -> list[Path]:
    """The kept INT8 models of the teacher recipes' runs that left out the same source."""
    return kept_files(teachers, heldout, screen, folder, KEPT_MODEL, "recipes.teachers")


def start_weights(start: str, heldout: str | None, screen: bool, folder: Path) -> Path:
    """The kept fp16 weights of ``start``'s run that left out the same source: a two-stage
    recipe's first stage, so neither stage has seen the held-out faces."""
    return kept_files((start,), heldout, screen, folder, KEPT_WEIGHTS,
                      "recipes.starts_from")[0]


def plan_run(overrides: dict[str, Any], heldout: str | None, unseen: list[dict[str, Any]],
             first_stage: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The overrides of one protocol run: ``overrides`` (a recipe) with ``heldout`` (a name in
    its ``data.sources``, or None to train on every source) and every ``unseen`` set marked
    ``heldout: true``, and ``evaluate.external`` scoring exactly those sets.

    A second stage (``first_stage``: the source entries its start weights were trained on)
    may hold out a source only its first stage had: that entry joins the run held out, so it
    is scored, and its near copies leave this stage's sources too.

    Raises :class:`ParamsError` when ``heldout`` is not one of the recipe's sources, or when an
    unseen set's name collides with a training source.
    """
    plan = copy.deepcopy(overrides)
    sources = [dict(s) for s in plan.get("data.sources") or []]
    names = [s["name"] for s in sources]
    earlier = [dict(s) for s in first_stage or [] if s["name"] == heldout]
    if heldout is not None and heldout not in names:
        if not earlier:
            raise ParamsError("holdout", f"{heldout!r} is not a source of this recipe ({names})")
        sources += earlier
        names.append(heldout)
    clash = sorted({u["name"] for u in unseen} & set(names))
    if clash:
        raise ParamsError("unseen", f"{clash} are training sources of this recipe too")
    scored = []
    for source in sources:
        if source["name"] == heldout:
            source["heldout"] = True
            scored.append(scoring_entry(source))
    held = [dict(u, heldout=True) for u in unseen]
    plan["data.sources"] = sources + held
    plan["evaluate.external"] = scored + [scoring_entry(u) for u in unseen]
    return plan


def training_sources(plan: dict[str, Any]) -> list[str]:
    """Names of the sources a planned run trains on (those not held out)."""
    return [s["name"] for s in plan.get("data.sources") or [] if not s.get("heldout")]


def brief(entry: dict[str, Any]) -> dict[str, Any]:
    """One set's figures from a cross_corpus report entry: 7-class and folded, service path."""
    out: dict[str, Any] = {"n": entry["n"], "found_rate": entry["found_rate"],
                           "per_class": entry.get("per_class", {})}
    if not entry["n"]:
        return out
    out["service"] = {k: entry["service"][k] for k in _KEPT}
    out["whole_balanced_accuracy"] = entry["whole"]["balanced_accuracy"]
    folded = entry.get("folded", {}).get("service")
    if folded:
        out["folded"] = {k: folded[k] for k in _KEPT}
    return out


def run_summary(cross_corpus: dict[str, Any], recipe: str, heldout: str | None,
                unseen: list[str]) -> dict[str, Any]:
    """What the protocol keeps of one run: the held-out source and the unseen sets."""
    keep = ([heldout] if heldout else []) + list(unseen)
    sets = cross_corpus.get("sets", {})
    missing = [name for name in keep if name not in sets]
    if missing:
        raise ParamsError("evaluate.external", f"the run scored no {missing}: was it planned "
                                               f"by emorec.unseen.plan_run?")
    return {"recipe": recipe, "heldout": heldout, "model": cross_corpus.get("model"),
            "sets": {name: brief(sets[name]) for name in keep}}


def headline(entry: dict[str, Any]) -> float:
    """The figure a set is compared by: balanced accuracy after folding (else 7-class)."""
    return float((entry.get("folded") or entry["service"])["balanced_accuracy"])


def _set_scores(trials: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {t: {s: headline(v) for s, v in trial["sets"].items() if v["n"]}
            for t, trial in trials.items()}


def _at_left_out_tau(decision: dict[str, Any], pooled: list[dict[str, Any]]
                     ) -> dict[str, Any]:
    """Each set of ``decision`` scored at the tau chosen without it (``pooled``: the trials of
    other decisions the choice averaged in), and those taus."""
    trials, chosen = decision["trials"], f"{decision['chosen_tau']:g}"
    by_set = tau_left_out(_set_scores(trials), [_set_scores(p) for p in pooled])
    return {"model": decision["model"], "tau_by_set": {s: float(t) for s, t in by_set.items()},
            "sets": {s: trials[by_set.get(s, chosen)]["sets"][s]  # an empty set has no tau
                     for s in trials[chosen]["sets"]}}


def decided_run(decision: dict[str, Any], heldout: str) -> dict[str, Any]:
    """A leave-one-out decision as a protocol run of its own: each set scored at the tau chosen
    on the other sets (:func:`emorec.decision.tau_left_out`), never at one chosen on itself.
    The file keeps the tau chosen on all of them: that is what would ship."""
    return {"name": f"unseen-{decision['recipe']}-decided-lo-{heldout}",
            "recipe": f"{decision['recipe']} + decision", "heldout": heldout,
            "about": f"logit-adjusted, each set at the tau chosen on the others (file: tau "
                     f"{decision['chosen_tau']:g})", **_at_left_out_tau(decision, [])}


#: how a shipped file's row at the tau chosen without each set is named in the table
LEFT_OUT_TAU_ROW = " (tau left out)"


def decided_file_run(decision: dict[str, Any], name: str, pooled: list[dict[str, Any]]
                     ) -> dict[str, Any]:
    """A shipped file's decision as a row of its own: each always-unseen set scored at the tau
    the file's rule (pooled with its recipe's leave-one-out decisions, ``pooled``) picks
    without that set. The file's own row is scored at the tau chosen with every set, which
    flatters it; this row is what a new set would get."""
    return {"name": f"shipped-{name}-tau-left-out", "recipe": f"shipped:{name}{LEFT_OUT_TAU_ROW}",
            "heldout": None, "screen": False,
            "about": f"the shipped file's decision, each set at the tau chosen without it (file: "
                     f"tau {decision['chosen_tau']:g})", **_at_left_out_tau(decision, pooled)}


CARD_START, CARD_END = "<!-- unseen:start -->", "<!-- unseen:end -->"
CARD_HEADING = "## Faces it has never seen (unseen-source protocol)"


def card_with_table(card: str, report: dict[str, Any], decision: dict[str, Any] | None = None
                    ) -> str:
    """A model card with the protocol table between its unseen markers (a section with the
    markers is appended when the card has none); ``decision`` (the file's logit adjustment
    record, :data:`emorec.decision.META_ADJUSTMENT`) is stated above the table."""
    note = ""
    if decision:
        note = (f"The file's answer is logit-adjusted (tau {decision['tau']:g}, chosen on "
                f"{', '.join(decision.get('chosen_on', []))}; `emorec.decision`): the test-split "
                "figures above were measured before that, with a plain argmax.\n\n")
    section = f"{CARD_START}\n{note}{markdown_table(report)}\n{CARD_END}"
    if CARD_START in card and CARD_END in card:
        head, rest = card.split(CARD_START, 1)
        return head + section + rest.split(CARD_END, 1)[1]
    return f"{card.rstrip()}\n\n{CARD_HEADING}\n\n{section}\n"


#: the suffix of a table row made of ``--screen`` runs
SCREEN_ROW = " (screen)"


def protocol_table(runs: dict[str, dict[str, Any]], unseen: list[str],
                   fold: dict[str, str] | None = None) -> dict[str, Any]:
    """Per recipe (or shipped model): each unseen set's headline figure, recall per class, the
    face-found rate, the faces per class (folded by ``fold``, ``evaluate.fold``), and the mean
    over sets.

    A held-out source comes from the run that left it out. An always-unseen set is scored in
    every run; its figure is the mean over the recipe's runs, so a recipe is judged on the same
    footing whether it ran once or once per held-out source.
    """
    table: dict[str, Any] = {}
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for run in runs.values():  # a screen (short schedule) is its own row, never the recipe's
        row = f"{run['recipe']}{SCREEN_ROW if run.get('screen') else ''}"
        by_recipe.setdefault(row, []).append(run)
    for recipe, recipe_runs in by_recipe.items():
        sets: dict[str, Any] = {}
        for run in recipe_runs:
            if run["heldout"] and run["sets"].get(run["heldout"], {}).get("n"):
                sets[run["heldout"]] = _cell([run["sets"][run["heldout"]]], fold or {})
        for name in unseen:
            entries = [r["sets"][name] for r in recipe_runs if r["sets"].get(name, {}).get("n")]
            if entries:
                sets[name] = _cell(entries, fold or {})
        table[recipe] = {"sets": sets, "runs": sorted(r.get("name", "") for r in recipe_runs),
                         "about": next((r["about"] for r in recipe_runs if r.get("about")), ""),
                         "mean_balanced_accuracy": (float(np.mean([c["balanced_accuracy"]
                                                                   for c in sets.values()]))
                                                    if sets else None),
                         "mean_recall": _mean_recall(sets)}
    return table


def _cell(entries: list[dict[str, Any]], fold: dict[str, str]) -> dict[str, Any]:
    recall: dict[str, list[float]] = {}
    for e in entries:
        for cls, value in (e.get("folded") or e["service"])["recall"].items():
            recall.setdefault(cls, []).append(value)
    folded = bool(entries[0].get("folded"))
    return {"n": entries[0]["n"], "runs": len(entries),
            "counts": folded_counts(entries[0].get("per_class", {}), fold if folded else {}),
            "balanced_accuracy": float(np.mean([headline(e) for e in entries])),
            "balanced_accuracy_7": float(np.mean([e["service"]["balanced_accuracy"]
                                                  for e in entries])),
            "macro_f1": float(np.mean([(e.get("folded") or e["service"])["macro_f1"]
                                       for e in entries])),
            "found_rate": float(np.mean([e["found_rate"] for e in entries])),
            "recall": {c: float(np.mean(v)) for c, v in sorted(recall.items())}}


def _mean_recall(sets: dict[str, Any]) -> dict[str, float]:
    """Recall per class averaged over the sets that have the class."""
    pooled: dict[str, list[float]] = {}
    for cell in sets.values():
        for cls, value in cell["recall"].items():
            pooled.setdefault(cls, []).append(value)
    return {c: float(np.mean(v)) for c, v in sorted(pooled.items())}


# -- rendering -------------------------------------------------------------------------------------
#: Display order of classes in the recall table (6-class fold).
TABLE_CLASSES = ("angry", "fearful", "happy", "neutral", "sad", "surprised")


def final_rows(names: list[str]) -> list[str]:
    """The rows that stand for what would ship: a recipe with a decided row (``<recipe> +
    decision``) is represented by that row alone, its plain-argmax row dropped."""
    return [n for n in names if f"{n} + decision" not in names]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _label(name: str, row: dict[str, Any]) -> str:
    if name.startswith("shipped:"):
        label = f"`{name.removeprefix('shipped:')}`, file"
    elif name.startswith("ensemble:"):
        label = f"ensemble `{name.removeprefix('ensemble:')}`"
    else:
        label = f"recipe `{name}`"
    return f"{label}: {row['about']}" if row.get("about") else label


def markdown_table(report: dict[str, Any], compact: bool = False) -> str:
    """Balanced accuracy per unseen set (6 classes), the mean, then recall per class.

    ``compact`` (the README's) keeps the rows that stand for what would ship
    (:func:`final_rows`, screens left out) and says where the full table is (the card's)."""
    table = report["table"]
    sets: list[str] = []
    for row in table.values():
        sets += [s for s in row["sets"] if s not in sets]
    sizes = {s: next(row["sets"][s]["n"] for row in table.values() if s in row["sets"])
             for s in sets}
    order = sorted(table, key=lambda r: -(table[r]["mean_balanced_accuracy"] or 0))
    left_out = []
    if compact:
        kept = [n for n in final_rows(order) if not n.endswith(SCREEN_ROW)]
        left_out, order = [n for n in order if n not in kept], kept
    lines = ["| model | " + " | ".join(f"{s} ({sizes[s]})" for s in sets) + " | **mean** |",
             "|---|" + "---:|" * (len(sets) + 1)]
    for name in order:
        row = table[name]
        cells = [_pct(row["sets"].get(s, {}).get("balanced_accuracy")) for s in sets]
        lines.append(f"| {_label(name, table[name])} | " + " | ".join(cells)
                     + f" | **{_pct(row['mean_balanced_accuracy'])}** |")
    lines += ["", "Recall per class, averaged over the sets that have the class:", "",
              "| model | " + " | ".join(TABLE_CLASSES) + " |",
              "|---|" + "---:|" * len(TABLE_CLASSES)]
    for name in order:
        recall = table[name]["mean_recall"]
        lines.append(f"| {_label(name, table[name])} | "
                     + " | ".join(_pct(recall.get(c)) for c in TABLE_CLASSES) + " |")
    if left_out:
        lines += ["", f"{len(left_out)} more rows (plain argmax beside a decided row, short "
                  "screens): the full table is in the shipped model's card "
                  "([models/multisource/README.md](models/multisource/README.md))."]
    bar = goals_markdown(report.get("goals"), lambda n: f"`{n.removeprefix('shipped:')}`")
    if bar:
        lines += ["", bar]
    versus = head_to_head_markdown(report, final_rows(order), lambda n: _label(n, table[n]))
    if versus:
        lines += ["", "<details><summary>Head to head: is a lead more than the luck of the faces "
                  "drawn?</summary>", "", versus, "", "</details>"]
    hardware = "; ".join(report.get("hardware", [])) or "hardware not recorded"
    lines += ["", "Balanced accuracy with disgust folded into angry, through the service's own "
              "path (face found, eyes levelled, cropped; no face found counts as wrong); a "
              "held-out source is scored by the run that left it out. Scored on "
              f"{hardware}. _Generated from `reports/unseen.json` "
              "(`scripts/unseen.py`)._"]
    return "\n".join(lines)
