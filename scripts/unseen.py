"""The unseen-source protocol (presets/unseen.yaml, emorec.unseen) -> reports/unseen.json.

    python scripts/unseen.py run --recipes default balanced --holdout tfeid   # DVC experiments
    python scripts/unseen.py run --screen                 # every recipe x held-out source, short
    python scripts/unseen.py score models/multisource models/fer2013    # shipped files, as is
    python scripts/unseen.py report                       # reports/unseen.json from the runs
    python scripts/unseen.py run --print                  # the dvc commands only

`run` trains each recipe once per held-out source as `dvc exp run --name unseen-<recipe>-lo-
<source> ... cross_corpus` in this workspace (ingest through the cross-corpus scoring; unchanged
stages come from DVC's run cache) and writes reports/unseen/runs/<run>.json after each run, so an
interrupted protocol resumes where it stopped (a finished run is skipped unless --force). At the
recipe's own schedule one run takes about an hour on 2 cores, AMD EPYC (resnet18, 64 px, 20 epochs);
--screen (the file's `screen` overrides) about 10 minutes.

`score` classifies the always-unseen sets with model files as they are (a shipped model trained
on a held-out source cannot be scored on that source; only the always-unseen sets are fair to
every file). It takes about a minute per model. `report` needs no data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from run_preset import read_preset, set_args

from emorec.cli import script_parser
from emorec.config import Params, load_params
from emorec.cross_corpus import NO_FACE, external_sets, fold_map, predict_set, redecide, score_set
from emorec.decision import (
    META_ADJUSTMENT,
    adjust_onnx,
    class_prior,
    cross_fit,
    logit_offset,
    recalibrate,
)
from emorec.ensemble import Ensemble
from emorec.errors import EmorecError, ParamsError
from emorec.faces import DETECTORS, FaceSettings
from emorec.hardware import cpu_info, describe
from emorec.head_to_head import goals, head_to_head
from emorec.headline import unseen_headline, write_headline
from emorec.inference import META_MIN_CONFIDENCE, META_TEMPERATURE, OnnxClassifier
from emorec.provenance import git_commit
from emorec.sources import source_list, spec_candidates
from emorec.unseen import (
    KEPT_MODEL,
    KEPT_WEIGHTS,
    Protocol,
    brief,
    card_with_table,
    decided_file_run,
    decided_run,
    headline,
    patch_sources,
    plan_run,
    protocol_table,
    run_name,
    run_summary,
    scoring_entry,
    start_weights,
    teacher_paths,
)
from emorec.weights import export_weights

ROOT = Path(__file__).resolve().parents[1]
RUNS = Path("reports/unseen/runs")


def recipe_overrides(protocol: Protocol, recipe: str, screen: bool) -> dict[str, Any]:
    """A recipe's preset with its overrides, source patches and (``screen``) the short schedule."""
    spec = protocol.recipes[recipe]
    overrides = read_preset(spec.preset) | spec.overrides | (protocol.screen if screen else {})
    return patch_sources(overrides, spec.sources)


def recipe_plan(protocol: Protocol, recipe: str, heldout: str | None, screen: bool,
                models: Path | None = None) -> dict[str, Any]:
    spec = protocol.recipes[recipe]
    overrides = recipe_overrides(protocol, recipe, screen)
    needs = list(spec.teachers) + ([spec.starts_from] if spec.starts_from else [])
    if needs and models is None:
        raise ParamsError("--keep-models", f"recipe {recipe} learns from the runs of {needs}: "
                                           f"name the folder that keeps their models")
    if spec.teachers:
        paths = teacher_paths(spec.teachers, heldout, screen, models)
        overrides["train.distill.teachers"] = [str(p) for p in paths]
    first_stage = None
    if spec.starts_from:
        overrides["train.pretrained"] = str(start_weights(spec.starts_from, heldout, screen,
                                                          models))
        first_stage = recipe_overrides(protocol, spec.starts_from, screen).get("data.sources")
    return plan_run(overrides, heldout, protocol.unseen, first_stage)


def run(protocol: Protocol, args: argparse.Namespace) -> int:
    recipes = args.recipes or list(protocol.recipes)
    holdouts = args.holdout or protocol.holdout
    unknown = sorted(set(recipes) - set(protocol.recipes))
    if unknown:
        print(f"error: unknown recipes {unknown}; known: {list(protocol.recipes)}",
              file=sys.stderr)
        return 2
    for recipe in recipes:
        for heldout in holdouts:
            name = run_name(recipe, heldout, args.screen)
            out = RUNS / f"{name}.json"
            plan = recipe_plan(protocol, recipe, heldout, args.screen, args.keep_models)
            cmd = ["dvc", "exp", "run", "--name", name, *set_args(plan), "cross_corpus"]
            if args.print:
                print(shlex.join(cmd))
                continue
            if out.is_file() and not args.force:
                print(f"{name}: done before ({out}), skipped", flush=True)
                continue
            print(f"{name}: starting", flush=True)
            start = time.perf_counter()
            if subprocess.call(cmd) != 0:
                print(f"error: run {name} failed", file=sys.stderr)
                return 1
            cross = json.loads(Path("reports/cross_corpus.json").read_text())
            summary = run_summary(cross, recipe, heldout, [u["name"] for u in protocol.unseen])
            summary.update(name=name, screen=args.screen, commit=git_commit(Path(".")),
                           wall_time_s=round(time.perf_counter() - start),
                           hardware=describe(cpu_info()),
                           test=_test_figures(Path("reports/metrics/test.json")))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(summary, indent=2) + "\n")
            if args.keep_models:
                args.keep_models.mkdir(parents=True, exist_ok=True)
                shutil.copy2("models/model.int8.onnx", args.keep_models / f"{name}{KEPT_MODEL}")
                export_weights(Path("models/best.pt"), args.keep_models / f"{name}{KEPT_WEIGHTS}")
            print(f"{name}: " + ", ".join(f"{s} {100 * headline(v):.1f}%"
                                          for s, v in summary["sets"].items() if v["n"]),
                  flush=True)
    return 0


def _test_figures(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    test = json.loads(path.read_text())
    return {k: test.get(k) for k in ("accuracy", "macro_f1")}


def score(protocol: Protocol, args: argparse.Namespace) -> int:
    """Shipped model folders (or .onnx files) on the always-unseen sets; with ``--ensemble``,
    the models as one ensemble, and with ``--holdout`` its members' left-out source too."""
    base = load_params(args.params).to_dict()
    held = []
    if args.holdout:
        if not args.ensemble:
            print("error: --holdout scores an ensemble of runs that left that source out; "
                  "a single run's model is scored by `run` (or `score --into RUN`)",
                  file=sys.stderr)
            return 2
        if args.recipe not in protocol.recipes:
            print(f"error: unknown recipe {args.recipe!r}; known: {list(protocol.recipes)}",
                  file=sys.stderr)
            return 2
        held = [e for e in recipe_overrides(protocol, args.recipe, False)["data.sources"]
                if e["name"] == args.holdout]
        if not held:
            print(f"error: recipe {args.recipe!r} has no source {args.holdout!r}",
                  file=sys.stderr)
            return 2
    base.setdefault("evaluate", {})["external"] = [scoring_entry(u)
                                                   for u in [*held, *protocol.unseen]]
    if args.detector and args.detector != base["faces"]["detector"]:
        # another detector than the service's, at its own default threshold (the configured one
        # is in the service's detector's units)
        base["faces"].update(detector=args.detector, score_threshold=None)
    params = Params(base)
    faces = FaceSettings.from_params(params)
    paths = [t / "model.int8.onnx" if t.is_dir() else t for t in args.models]
    if args.ensemble:
        if not args.name:
            print("error: an ensemble needs --name", file=sys.stderr)
            return 2
        return _score_ensemble(protocol, args, params, faces, paths)
    for target, path in zip(args.models, paths, strict=True):
        name = args.name or (target.name if target.is_dir() else target.stem)
        model = OnnxClassifier(path)
        fold = fold_map(params, model.classes)
        if args.into:  # a protocol run's kept model: score the unseen sets it has not seen yet
            run_file = RUNS / f"{args.into}.json"
            record = json.loads(run_file.read_text())
            missing = [s for s in external_sets(params, model.classes)
                       if s.name not in record["sets"]]
            for spec in missing:
                # held out of that run's ingest: its near copies may have trained (unlikely)
                record["sets"][spec.name] = brief(score_set(predict_set(model, spec, faces),
                                                            fold)) | {"added_after_run": True}
            run_file.write_text(json.dumps(record, indent=2) + "\n")
            print(f"{args.into}: scored {[s.name for s in missing]} with {path}")
            continue
        sets = {spec.name: score_set(predict_set(model, spec, faces), fold)
                for spec in external_sets(params, model.classes)}
        summary = run_summary({"sets": sets, "model": str(path)}, f"shipped:{name}", None,
                              [u["name"] for u in protocol.unseen])
        summary.update(name=f"shipped-{name}", about=args.about, screen=False,
                       detector=faces.detector, commit=git_commit(Path(".")),
                       hardware=describe(cpu_info()))
        out = RUNS / f"shipped-{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{name}: " + ", ".join(f"{s} {100 * v['folded']['balanced_accuracy']:.1f}%"
                                      for s, v in summary["sets"].items() if v.get("folded")))
    return 0


def _score_ensemble(protocol: Protocol, args: argparse.Namespace, params: Params,
                    faces: FaceSettings, paths: list[Path]) -> int:
    model = Ensemble([OnnxClassifier(p) for p in paths])
    fold = fold_map(params, model.classes)
    sets = {spec.name: score_set(predict_set(model, spec, faces), fold)
            for spec in external_sets(params, model.classes)}
    recipe = f"ensemble:{args.name}"
    summary = run_summary({"sets": sets, "model": model.path}, recipe, args.holdout,
                          [u["name"] for u in protocol.unseen])
    name = (f"unseen-ensemble-{args.name}-lo-{args.holdout}" if args.holdout
            else f"ensemble-{args.name}")
    summary.update(name=name, about=args.about or f"mean probability of {len(paths)} models "
                   "(not shippable: what a distilled student could reach)", screen=False,
                   members=[str(p) for p in paths], detector=faces.detector,
                   commit=git_commit(Path(".")), hardware=describe(cpu_info()))
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{name}: " + ", ".join(f"{s} {100 * headline(v):.1f}%"
                                  for s, v in summary["sets"].items() if v["n"]))
    return 0


def pooled_trials(trials: dict[str, Any], recipe: str, holdout: str | None) -> dict[str, Any]:
    """Each tau's mean balanced accuracy, averaged with the recipe's leave-one-source-out
    decisions (``reports/unseen/decision-<recipe>-lo-*.json``) when this is the shipped file:
    tau is a choice for the recipe, so every unseen source it was scored on has a say."""
    others = [] if holdout else sorted(RUNS.parent.glob(f"decision-{recipe}-lo-*.json"))
    runs = [trials] + [json.loads(p.read_text())["trials"] for p in others]
    pooled: dict[str, Any] = {"from": ["this model", *map(str, others)]}
    for tau in trials:
        scores = [run[tau]["mean_balanced_accuracy"] for run in runs if tau in run]
        pooled[tau] = float(np.mean(scores))
    return pooled


#: the offset steps per class tried by ``decide --cross-fit`` around the chosen tau's offset
CROSS_FIT_STEPS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


def per_class_cross_fit(preds: dict[str, Any], classes: list[str], fold: dict[str, str],
                        offset: np.ndarray) -> dict[str, Any]:
    """Would a free offset per class beat the one tau? Each set is scored with offsets fitted
    on the others (:func:`emorec.decision.cross_fit`), beside the chosen tau's offset."""
    def score(pred: Any, bias: np.ndarray) -> float:
        return headline(brief(score_set(redecide(pred, classes, bias), fold)))

    sets = cross_fit(preds, score, offset, CROSS_FIT_STEPS)
    for name, v in sets.items():
        print(f"per-class offsets fitted on {v['fitted_on']}: {name} "
              f"{100 * v['score']:.1f}% (tau alone {100 * v['score_at_start']:.1f}%)")
    means = {k: float(np.mean([v[k] for v in sets.values()])) for k in ("score", "score_at_start")}
    return {"steps_tried": list(CROSS_FIT_STEPS), "sets": sets,
            "mean_balanced_accuracy": means["score"],
            "mean_balanced_accuracy_tau": means["score_at_start"]}


def decide(protocol: Protocol, args: argparse.Namespace) -> int:
    """Post-hoc logit adjustment of a model, tau chosen on the always-unseen sets."""
    base = load_params(args.params).to_dict()
    recipe = protocol.recipes[args.recipe]
    sources = recipe_overrides(protocol, args.recipe, False)["data.sources"]  # its labels
    # a second stage is scored on a source only its first stage had, too
    first = (recipe_overrides(protocol, recipe.starts_from, False)["data.sources"]
             if recipe.starts_from else [])
    params = Params(base)
    faces = FaceSettings.from_params(params)
    model = OnnxClassifier(args.model)
    classes = model.classes
    entries = [e for e in sources if e["name"] != args.holdout]
    train_specs = source_list(Params({"s": entries}), "s", classes)
    prior = class_prior((c for spec in train_specs for c in spec_candidates(spec, classes)
                         if c.usage in ("train", "")), classes)
    print("train prior: " + ", ".join(f"{c} {p:.3f}" for c, p in zip(classes, prior,
                                                                     strict=True)))
    fold = fold_map(params, classes)
    held = [e for e in [*sources, *first] if e["name"] == args.holdout][:1]
    unseen = source_list(Params({"s": [scoring_entry(u) for u in [*held, *protocol.unseen]]}),
                         "s", classes)
    preds = {spec.name: predict_set(model, spec, faces) for spec in unseen}
    trials = {}
    for tau in args.taus:
        offset = logit_offset(prior, tau)
        sets = {name: brief(score_set(redecide(pred, classes, offset), fold))
                for name, pred in preds.items()}
        trials[f"{tau:g}"] = {"sets": sets, "mean_balanced_accuracy": float(np.mean(
            [headline(v) for v in sets.values()]))}
        print(f"tau {tau:g}: mean {100 * trials[f'{tau:g}']['mean_balanced_accuracy']:.1f}% "
              + " ".join(f"{n} {100 * headline(v):.1f}%" for n, v in sets.items()))
    pooled = pooled_trials(trials, args.recipe, args.holdout)
    best = min(args.taus, key=lambda t: (-pooled[f"{t:g}"], t))
    if len(pooled.get("from", [])) > 1:
        print(f"pooled with {pooled['from'][1:]}: " + ", ".join(
            f"tau {t:g} {100 * pooled[f'{t:g}']:.1f}%" for t in args.taus))
    offset = logit_offset(prior, best)
    cross = per_class_cross_fit(preds, classes, fold, offset) if args.cross_fit else None
    # the temperature and threshold are fitted again on the training sources' val faces
    val_specs = [replace(spec, usage={k: v for k, v in spec.usage.items() if v == "val"})
                 for spec in train_specs if "val" in spec.usage.values()]
    logits, labels = [], []
    for spec in val_specs:
        pred = predict_set(model, spec, faces)
        found = [lab for lab, ans in zip(pred.labels, pred.service, strict=True)
                 if ans != NO_FACE]
        logits.append(pred.service_logits + offset)
        labels += [classes.index(lab) for lab in found]
    fitted = recalibrate(np.concatenate(logits), np.asarray(labels),
                         params.number("evaluate.min_confidence_coverage", low=0, high=1))
    record = {"tau": best, "prior": dict(zip(classes, map(float, prior), strict=True)),
              "chosen_on": [spec.name for spec in unseen], "pooled_with": pooled["from"][1:],
              "recalibrated_on": [f"{s.name} val" for s in val_specs], **fitted}
    out = args.out or args.model
    tmp = out.with_suffix(".adjusted.onnx")
    adjust_onnx(args.model, tmp, offset, record, {
        META_TEMPERATURE: repr(fitted["temperature"]),
        META_MIN_CONFIDENCE: repr(fitted["min_confidence"])})
    tmp.replace(out)
    decision = {"model": str(out), "recipe": args.recipe, "chosen_tau": best, **record,
                "trials": trials, "hardware": describe(cpu_info())}
    if cross is not None:
        decision["per_class_cross_fit"] = cross
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(decision, indent=2) + "\n")
    if args.holdout:  # the recipe with this decision, as a protocol run of its own
        run_record = decided_run(decision, args.holdout) | {"commit": git_commit(Path(".")),
                                                            "hardware": describe(cpu_info())}
        (RUNS / f"{run_record['name']}.json").write_text(json.dumps(run_record, indent=2) + "\n")
    else:  # the shipped file: its row at the tau its rule picks without each set
        pooled_runs = [json.loads(Path(p).read_text())["trials"] for p in pooled["from"][1:]]
        run_record = decided_file_run(decision, out.parent.name, pooled_runs) | {
            "commit": git_commit(Path(".")), "hardware": describe(cpu_info())}
        (RUNS / f"{run_record['name']}.json").write_text(json.dumps(run_record, indent=2) + "\n")
    print(f"tau {best:g} -> {out} (T {fitted['temperature']:.2f}, min_confidence "
          f"{fitted['min_confidence']:.2f}); {args.report}")
    return 0


def report(protocol: Protocol, args: argparse.Namespace) -> int:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}
    if not runs:
        print(f"error: no runs in {RUNS}: `run` or `score` first", file=sys.stderr)
        return 2
    unseen = [u["name"] for u in protocol.unseen]
    params = load_params(args.params)
    labelled = sorted({c for r in runs.values() for e in r["sets"].values()
                       for c in e.get("per_class", {})})
    table = protocol_table(runs, unseen, fold_map(params, labelled))
    for name, row in table.items():  # recipe rows say what the recipe is
        row["about"] = row["about"] or getattr(protocol.recipes.get(name), "about", "")
    out = {"protocol": str(args.spec.relative_to(ROOT)) if args.spec.is_absolute() else
           str(args.spec), "unseen": unseen, "holdout": protocol.holdout,
           "headline": "mean balanced accuracy (6 classes: disgust folded into angry) over the "
                       "unseen sets a recipe was scored on, through the service path",
           "hardware": sorted({r.get("hardware", "") for r in runs.values()} - {""}),
           "recipes": {name: {"about": r.about} for name, r in protocol.recipes.items()},
           "table": table,
           "head_to_head_settings": dataclasses.asdict(protocol.compare),
           "head_to_head": head_to_head(table, protocol.compare),
           "goals": goals(table, protocol.compare), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    write_headline(args.headline, unseen_headline(out))
    card = args.card or Path(str(params.get("serve.shipped_model"))) / "README.md"
    if card.is_file():
        served = OnnxClassifier(card.parent / "model.int8.onnx")
        decision = json.loads(served.metadata.get(META_ADJUSTMENT, "null"))
        card.write_text(card_with_table(card.read_text(), out, decision))
        print(f"table written into {card}")
    for name, row in table.items():
        mean = row["mean_balanced_accuracy"]
        print(f"{name}: mean {100 * mean:.1f}% over {sorted(row['sets'])}" if mean is not None
              else f"{name}: no set")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__)
    parser.add_argument("--spec", type=Path, default=ROOT / "presets/unseen.yaml",
                        help="the protocol file (default: presets/unseen.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train and score recipes as DVC experiments")
    p_run.add_argument("--recipes", nargs="*", help="recipes to run (default: all)")
    p_run.add_argument("--holdout", nargs="*", help="sources to leave out (default: the file's)")
    p_run.add_argument("--screen", action="store_true", help="the file's short schedule")
    p_run.add_argument("--force", action="store_true", help="run again what is done")
    p_run.add_argument("--print", action="store_true", help="print the commands, run nothing")
    p_run.add_argument("--keep-models", type=Path, metavar="DIR",
                       help="keep each run's INT8 model as DIR/<run>.int8.onnx (to score it "
                            "again, e.g. with another decision rule, or to teach) and its fp16 "
                            "weights as DIR/<run>.fp16.safetensors (a second stage starts there)")
    p_score = sub.add_parser("score", help="score model files on the always-unseen sets")
    p_score.add_argument("models", nargs="+", type=Path, help="model folders or .onnx files")
    p_score.add_argument("--name", help="record name (default: the folder's name)")
    p_score.add_argument("--about", default="", help="what the table says of this model")
    p_score.add_argument("--into", metavar="RUN",
                         help="add the sets a protocol run RUN lacks (a set added to the file "
                              "after it ran), scored with its kept model")
    p_score.add_argument("--params", type=Path, default=Path("params.yaml"))
    p_score.add_argument("--ensemble", action="store_true",
                         help="score the models as one ensemble (mean calibrated probability; "
                              "needs --name): the most a student distilled from them could read")
    p_score.add_argument("--holdout", metavar="SOURCE",
                         help="with --ensemble: every member left SOURCE out, so score it too")
    p_score.add_argument("--recipe", default="yunet",
                         help="with --holdout: the recipe whose sources define SOURCE")
    p_score.add_argument("--detector", choices=sorted(DETECTORS),
                         help="find faces with this detector (at its default threshold) instead "
                              "of the service's faces.detector, to compare detectors")
    p_decide = sub.add_parser("decide", help="logit-adjust a model: tau chosen on the "
                                             "always-unseen sets, baked into the file")
    p_decide.add_argument("model", type=Path, help="unadjusted INT8 ONNX model")
    p_decide.add_argument("--recipe", default="default",
                          help="the recipe it was trained by (its sources give the prior)")
    p_decide.add_argument("--holdout", metavar="SOURCE",
                          help="the model is a protocol run that left SOURCE out: the prior "
                               "leaves it out too, and it is scored with the unseen sets")
    p_decide.add_argument("--taus", type=float, nargs="+",
                          default=[0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    p_decide.add_argument("--out", type=Path, help="adjusted model (default: in place)")
    p_decide.add_argument("--cross-fit", action="store_true",
                          help="also fit a free offset per class on all sets but one and score "
                               "the one left out (does a richer decision carry to new faces?)")
    p_decide.add_argument("--report", type=Path, default=Path("reports/decision.json"))
    p_decide.add_argument("--params", type=Path, default=Path("params.yaml"))
    p_report = sub.add_parser("report", help="write reports/unseen.json from the runs")
    p_report.add_argument("--out", type=Path, default=Path("reports/unseen.json"))
    p_report.add_argument("--card", type=Path, default=None,
                          help="model card to put the table in (default: the card of "
                               "params.yaml's serve.shipped_model)")
    p_report.add_argument("--params", type=Path, default=Path("params.yaml"))
    p_report.add_argument("--headline", type=Path, default=Path("reports/metrics/unseen.json"),
                          help="the DVC metrics: each model's mean balanced accuracy")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        protocol = Protocol.load(args.spec)
        return {"run": run, "score": score, "decide": decide,
                "report": report}[args.command](protocol, args)
    except (EmorecError, OSError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
