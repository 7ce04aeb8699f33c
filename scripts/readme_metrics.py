"""Render the README's metrics section from the pipeline's reports (never typed by hand).

Replaces everything between ``<!-- metrics:start -->`` and ``<!-- metrics:end -->`` in README.md
with tables built from ``reports/metrics/test.json`` (evaluate stage),
``reports/train/metrics.json`` (dvclive, train stage) and, when present,
``reports/bench/train_throughput.json``.

    python scripts/readme_metrics.py            # rewrite README.md in place
    python scripts/readme_metrics.py --check    # exit 1 if README.md is out of date (CI)
    python scripts/readme_metrics.py --print    # only print the section

``--check`` compares the README and the reports *as committed* (``git show HEAD:<path>``), not
the working tree: ``make repro`` on another CPU rewrites reports/ with slightly different
figures, and that local re-run must not make ``make test`` fail. Outside a git checkout (a
source archive, a test's temporary folder) it reads the working tree.

Standalone on purpose: no torch, no emorec import, so it runs anywhere the JSON files are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

START, END = "<!-- metrics:start -->", "<!-- metrics:end -->"
FER_START, FER_END = "<!-- fer2013:start -->", "<!-- fer2013:end -->"
LOSS_START, LOSS_END = "<!-- losses:start -->", "<!-- losses:end -->"
DETECT_START, DETECT_END = "<!-- detectors:start -->", "<!-- detectors:end -->"
PATH_START, PATH_END = "<!-- service_path:start -->", "<!-- service_path:end -->"
LIVE_START, LIVE_END = "<!-- live_mode:start -->", "<!-- live_mode:end -->"
MULTI_START, MULTI_END = "<!-- multisource:start -->", "<!-- multisource:end -->"
ABL_START, ABL_END = "<!-- ablation:start -->", "<!-- ablation:end -->"
CHOICE_START, CHOICE_END = "<!-- model_choice:start -->", "<!-- model_choice:end -->"
#: Published FER2013 PrivateTest accuracies (7 classes) the real-data section compares with.
FER_ANCHORS = (
    ("Khaireddin & Chen 2021, VGGNet (best single network)", 0.7328),
    ("Pham et al. 2021, Residual Masking Network", 0.7414),
    ("Ensembles (best published)", 0.7682),
)
#: The peer users already run (measured on the same images by issue #15's author).
PEER = ("`@vladmandic/face-api` expression net, 7 classes folded to 6", 0.600)
EXTRA_REPORTS = {"synth": "synth/status.json", "quantize": "quantize.json",
                 "serve_load": "bench/serve_load.json", "serve_soak": "bench/serve_soak.json",
                 "xai": "xai.json",
                 "pipeline": "bench/pipeline.json"}


Reader = Callable[[Path], str | None]


def working_tree_text(path: Path) -> str | None:
    """The file as it is on disk, or None if absent."""
    return path.read_text() if path.is_file() else None


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)


def _committed_root(folder: Path) -> Path | None:
    """Top of the git work tree holding ``folder`` if it has a HEAD commit, else None."""
    try:
        top = _git(folder, "rev-parse", "--show-toplevel")
        head = _git(folder, "rev-parse", "--verify", "-q", "HEAD")
    except OSError:  # git not installed
        return None
    if top.returncode != 0 or head.returncode != 0:
        return None
    return Path(top.stdout.strip()).resolve()


def committed_text(path: Path) -> str | None:
    """The file as committed at HEAD (None if HEAD lacks it).

    Falls back to the working tree when ``path`` is not in a git work tree with a commit (no
    git, a source archive, a temporary folder), where there is nothing committed to compare.
    """
    folder = path.resolve().parent
    while not folder.is_dir():
        folder = folder.parent
    root = _committed_root(folder)
    if root is None:
        return working_tree_text(path)
    shown = _git(root, "show", f"HEAD:{path.resolve().relative_to(root).as_posix()}")
    return shown.stdout if shown.returncode == 0 else None


def _load(path: Path, required: bool, read: Reader = working_tree_text) -> dict[str, Any] | None:
    text = read(path)
    if text is None:
        if required:
            raise SystemExit(f"error: {path} not found; run `dvc repro evaluate` first")
        return None
    return json.loads(text)


def render(test: dict[str, Any], train: dict[str, Any] | None,
           bench: dict[str, Any] | None, extra: dict[str, dict[str, Any] | None] | None = None
           ) -> str:
    """The markdown section (without the markers).

    ``extra`` holds the optional reports of later stages and benchmarks (quantize, xai, synth,
    serve_load); each one present adds its own short table.
    """
    classes = list(test["per_class"])
    model = test.get("model") or {}
    lines = [
        f"Test split ({test.get('n_images', '?')} images), model `{model.get('name', '?')}` "
        f"from epoch {int(model['epoch']) + 1 if model.get('epoch') is not None else '?'}; "
        f"chance macro-F1 is about {1 / len(classes):.2f}.",
        "",
        "| Metric | Value |",
        "|---|---|",
        f"| Test accuracy | {test['accuracy']:.3f} |",
        f"| Test macro-F1 | {test['macro_f1']:.3f} |",
    ]
    if train:
        best = train.get("best", {})
        if "val_macro_f1" in best:
            lines.append(f"| Best val macro-F1 (epoch {int(best['epoch']) + 1}) | "
                         f"{best['val_macro_f1']:.3f} |")
        if "step" in train:
            lines.append(f"| Epochs trained | {int(train['step']) + 1} |")
    lines += ["", "| Class | Precision | Recall | F1 | Support |", "|---|---|---|---|---|"]
    for name in classes:
        row = test["per_class"][name]
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | "
                     f"{row['f1']:.3f} | {row['support']} |")
    if bench:
        verdict = "pass" if bench.get("pass") else "below target"
        where = bench.get("hardware", bench["device"])
        lines += ["", f"Training throughput ({bench['model']}, batch {bench['batch_size']}, "
                      f"{where}): project loop end to end "
                      f"{bench['project_images_per_s']:.1f} img/s "
                      f"({bench.get('project', {}).get('precision', '?')}) vs fastest bare timm "
                      f"step {bench['bare_images_per_s']:.1f} img/s "
                      f"({bench.get('bare', {}).get('variant', '?')}), ratio "
                      f"**{bench['ratio']:.3f}** (target >= {bench['target']}: {verdict})."]
    extra = extra or {}
    for name, part in (("pipeline", _pipeline), ("synth", _synth), ("quantize", _quantize),
                       ("serve_load", _serve_load), ("serve_soak", _serve_soak), ("xai", _xai)):
        if extra.get(name):
            lines += ["", *part(extra[name])]
    lines += ["", "_Generated by `python scripts/readme_metrics.py` from `reports/`._"]
    return "\n".join(lines)


def _pipeline(report: dict[str, Any]) -> list[str]:
    slowest = sorted(report.get("stages_s", {}).items(), key=lambda kv: -kv[1])[:3]
    return [f"Pipeline on {report['hardware']} (`benchmarks/pipeline_time.py`): full demo "
            f"`dvc repro` {report.get('full_repro_s', 0) / 60:.1f} min (slowest: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in slowest)
            + f"); no-op `dvc repro` {report['noop_repro_s']:.1f} s."]


def _synth(report: dict[str, Any]) -> list[str]:
    fraction = report.get("synthetic_fraction") or {}
    if not report.get("enabled", True) or "overall" not in fraction:
        return ["Synthetic data: disabled for this run."]
    per_class = ", ".join(f"{c} {v:.1%}" for c, v in fraction.items() if c != "overall" and v)
    return [f"Synthetic data ({report.get('backend', '?')}): {fraction['overall']:.1%} of the "
            f"train split overall ({per_class})."]


def _quantize(report: dict[str, Any]) -> list[str]:
    lat = report["latency"]["batch_1"]
    targets = report["targets"]
    rows = [("ONNX FP32", report["fp32"], lat["onnx_fp32"]),
            ("ONNX INT8", report["int8"], lat["onnx_int8"])]
    lines = ["| Model | Test macro-F1 | Size (MB) | Latency batch 1 (ms) |", "|---|---|---|---|",
             f"| PyTorch eager | | | {lat['pytorch_eager']['median_ms']:.2f} |"]
    lines += [f"| {name} | {m['test']['macro_f1']:.3f} | {m['bytes'] / 1e6:.1f} | "
              f"{t['median_ms']:.2f} |" for name, m, t in rows]
    ratio = targets["int8_vs_eager_latency_ratio_batch_1"]
    lines += ["", f"INT8 latency vs eager at batch 1: **{ratio:.2f}x** "
                  f"(target <= {targets['max_latency_ratio']}); macro-F1 drop "
                  f"**{targets['macro_f1_drop'] * 100:.2f} points** "
                  f"(target <= {targets['max_f1_drop'] * 100:.0f})."]
    return lines


SERVE_SCENARIOS = {"single_cropped": "1 client, 64 px face (mode cropped)",
                   "single_faces": "1 client, 640x480 photo (face detection)",
                   "clients_50": "50 clients, 64 px faces", "burst_200": "200 connections at once",
                   "mixed": "good and malformed uploads mixed"}


def _serve_load(report: dict[str, Any]) -> list[str]:
    """benchmarks/serve_load.py (Locust): one row per scenario, the ceiling and the CPU."""
    if "scenarios" not in report:  # a report of the thread-client benchmark before Locust
        lat = report["latency_ms"]
        return [f"Service under load ({report['clients']} clients, {report['duration_s']:.0f} s, "
                f"{report['endpoint']}): {report['requests_per_s']:.1f} req/s, "
                f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, errors {report['errors']}."]
    roof = report["ceiling"]
    pinning = report.get("pinning") or {}
    where = (f"server on core(s) {pinning['server_cpus']}, Locust on {pinning['client_cpus']}"
             if pinning.get("server_cpus") else "server and Locust sharing the cores")
    workers = (report.get("batching") or {}).get("workers")
    where += f", {workers} server worker(s)" if workers else ""
    repeats = max(len(s.get("runs", [])) for s in report["scenarios"].values())
    medians = f"; medians of {repeats} runs per scenario" if repeats > 1 else ""
    lines = [f"Service under load ({report['tool']}, {report['cpu']['description']}, {where}; "
             f"model: {report['model']['what']}{medians}):", "",
             "| Scenario | req/s | p50 ms | p90 ms | p99 ms | Errors |"
             + (" p50 ms of each run |" if repeats > 1 else ""),
             "|---|---|---|---|---|---|" + ("---|" if repeats > 1 else "")]
    for name, s in report["scenarios"].items():
        lat = s["latency_ms"]
        each = (" " + ", ".join(f"{r['p50']:.1f}" for r in s.get("runs", [])) + " |"
                if repeats > 1 else "")
        lines.append(f"| {SERVE_SCENARIOS.get(name, name)} | {s['requests_per_s']:.1f} | "
                     f"{lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {s['errors']} |"
                     + each)
    line = (f"In-process onnxruntime ceiling ({roof['threads']} thread, batch 1): "
            f"{roof['batch_1_img_s']:.0f} img/s")
    if report.get("clients_50_vs_ceiling") is not None:
        line += f"; 50 clients reach **{report['clients_50_vs_ceiling']:.2f}x** of it"
    stream = report.get("targets", {}).get("stream_fps")
    if stream:
        line += f"; one 640x480 video stream over /stream: **{stream['value']:.1f} fps**"
    return [*lines, "", line + "."]


def _serve_soak(report: dict[str, Any]) -> list[str]:
    """benchmarks/serve_soak.py: errors, memory of every server process, /health."""
    load, rss, health = report["load"], report["rss_mb"], report["health"]
    memory = ", ".join(f"{rss['start'][pid]:.0f} -> {rss['end'][pid]:.0f}"
                       for pid in rss["start"])
    return [f"Soak ({report['duration_s'] / 60:.0f} min at {report['clients']} clients after "
            f"{report['warmup_s']:.0f} s of warm-up, {report['cpu']['description']}): "
            f"{load['requests']} requests, {load['errors']} errors, p99 "
            f"{load['latency_ms']['p99']:.0f} ms; server processes' RSS (MB) {memory}; /health "
            f"answered {health['probes'] - health['failures']} of {health['probes']} probes "
            f"during the load and {health['after_load_status']} after "
            f"({'pass' if report['pass'] else '**fail**'})."]


def _xai(report: dict[str, Any]) -> list[str]:
    methods = report["methods"]
    random = methods.get("random", {})
    lines = ["| XAI method | Deletion AUC (lower better) | Insertion AUC | Beats random | "
             "Randomization Spearman | s/image |", "|---|---|---|---|---|---|"]
    for name, m in methods.items():
        if name == "random":
            continue
        lines.append(f"| {name} | {m['deletion_auc']:.3f} | {m['insertion_auc']:.3f} | "
                     f"{'yes' if m['beats_random_deletion'] else '**no**'} | "
                     f"{m['randomization_spearman']:.2f} | {m['seconds_per_image']:.2f} |")
    if random:
        lines.append(f"| random | {random['deletion_auc']:.3f} | {random['insertion_auc']:.3f} "
                     "| | | |")
    return lines


def render_fer2013(fer: dict[str, Any]) -> str:
    """The "Real data: FER2013" section from ``reports/fer2013.json``."""
    test, six, int8 = fer["test"], fer.get("test_6_class"), fer["int8"]
    minutes = fer["train"]["wall_time_s"] / 60
    gpu = fer["hardware"].get("gpu")
    lines = [
        f"Official PrivateTest split ({test['n']} images after ingest), never used for tuning; "
        f"model `{fer['params']['train']['model']}` at {fer['params']['image']['size']} px, "
        f"{fer['train']['epochs']} epochs, {minutes:.0f} min of training on "
        f"{gpu or fer['hardware']['summary']} ({fer['train']['precision']}); "
        f"trained at commit `{(fer.get('train_commit') or fer.get('commit') or '?')[:10]}`, "
        f"scored at `{(fer.get('commit') or '?')[:10]}`, data `{fer['dataset_fingerprint'][:19]}`.",
        "",
        "| Model | Classes | PrivateTest accuracy | Macro-F1 |",
        "|---|---|---|---|",
        f"| emorec, FP32 | 7 | **{test['accuracy']:.2%}** | {test['macro_f1']:.3f} |",
    ]
    if six:
        lines.append(f"| emorec, FP32, disgust folded into angry | 6 | {six['accuracy']:.2%} | "
                     f"{six['macro_f1']:.3f} |")
    lines.append(f"| emorec, INT8 ONNX | 7 | {int8['accuracy']:.2%} | |")
    lines += [f"| {name} | 7 | {acc:.2%} | |" for name, acc in FER_ANCHORS]
    lines.append(f"| {PEER[0]} | 6 | {PEER[1]:.2%} | |")
    lines += ["", f"INT8 vs FP32 ONNX: {int8['accuracy_drop_points']:+.2f} points of accuracy "
                  "lost (target <= 0.5)."]
    last = fer["train"].get("last_epoch")
    if last:
        lines.append(f"Last epoch: training accuracy {last['train_accuracy']:.1%} (under "
                     f"augmentation), validation (PublicTest) {last['val_accuracy']:.1%}.")
    lines += ["",
              "| Class | F1 |", "|---|---|"]
    lines += [f"| {c} | {f1:.3f} |" for c, f1 in test["per_class_f1"].items()]
    lines += ["", "_Generated by `python scripts/readme_metrics.py` from `reports/fer2013.json`._"]
    return "\n".join(lines)


def render_losses(report: dict[str, Any]) -> str:
    """The loss comparison's sentence from ``reports/loss_comparison.json``."""
    runs = sorted(report["runs"].items(), key=lambda kv: -kv[1]["minority_mean_f1"])
    sources = sorted({run.get("data_source", "?") for _, run in runs})
    figures = ", ".join(f"{name} {run['minority_mean_f1']:.3f}" for name, run in runs)
    return (f"Mean {report['split']} F1 of {', '.join(report['classes'])} on the "
            f"{'/'.join(sources)} data, one seed each: {figures} "
            f"(best: {report['best_minority_mean_f1']}; macro-F1 "
            + ", ".join(f"{name} {run['macro_f1']:.3f}" for name, run in runs)
            + "). _Generated from `reports/loss_comparison.json`._")


def render_detectors(report: dict[str, Any]) -> str:
    """The face detector table from ``reports/faces/detector_comparison.json``."""
    machine = report["machine"]
    lines = [f"{report['faces_total']} real faces in {len(report['images'])} images, "
             f"{machine.get('cpu') or str(machine['cpus']) + ' cores'}:", "",
             "| Detector | Options | Faces found | Recall | False positives | Median ms/image |",
             "|---|---|---|---|---|---|"]
    for r in report["results"]:
        options = ", ".join(f"{k} {v}" for k, v in r.get("options", {}).items())
        lines.append(f"| {r['detector']} | {options} | {r['found']} of {r['faces']} | "
                     f"{r['recall']:.3f} | {r['false_positives']} | "
                     f"{r['ms_per_image_median']:.0f} |")
    best = report["recommended"]
    lines += ["", f"Recommended: **{best['detector']}** ({best['rule']}). "
                  "_Generated from `reports/faces/detector_comparison.json`._"]
    return "\n".join(lines)


def render_service_path(report: dict[str, Any]) -> str:
    """FER2013 through the service's crop path, from ``reports/fer2013_service_path.json``."""
    val, test = report["val"], report["test"]
    chosen, configured = report["chosen_margin"], report["configured_margin"]
    by_margin = ", ".join(f"{m} {acc:.1%}" for m, acc in val["accuracy_on_found_by_margin"].items())
    test_acc = test["accuracy_on_found_by_margin"]
    lines = [f"Through the service's own path ({report['detector']['name']}, eyes levelled, "
             f"square crop with a margin), the detector finds a face in "
             f"{val['found_rate']:.1%} of PublicTest and {test['found_rate']:.1%} of PrivateTest "
             f"(FER2013's 48 px images are tight crops, with little of the head around the "
             f"face). On those faces, PublicTest accuracy by margin: {by_margin}; chosen: "
             f"**{chosen:g}**. PrivateTest at {chosen:g}: **{test_acc[f'{chosen:g}']:.2%}**, "
             f"vs {test['whole_image_accuracy_on_found']:.2%} for the same images taken whole."]
    if f"{configured:g}" != f"{chosen:g}":
        lines.append(f"`serve.face_margin` is {configured:g}: "
                     f"{test_acc[f'{configured:g}']:.2%} on PrivateTest.")
    lines.append("_Generated from `reports/fer2013_service_path.json`._")
    return " ".join(lines)


def render_live(report: dict[str, Any]) -> str:
    """The PWA's live-mode frame rate, from ``reports/faces/live_mode.json``."""
    wasm = report.get("wasm")
    on = report["tfjs_backend"] + (
        f" ({'SIMD' if wasm['simd'] else 'no SIMD'}, {wasm['threads']} thread(s))" if wasm else "")
    bench = ", ".join(f"{name} {ms:.0f} ms" for name, ms in report["backend_benchmark_ms"].items())
    width, height = report["frame"]
    # fps counts frames processed, so it may exceed the camera's rate (a frame done twice).
    return (f"Live mode at {width}x{height}, {report['faces']} faces, {report['camera_fps']} fps "
            f"camera: **{report['fps']:.1f} frames processed per second** "
            f"(per frame: detection {report['ms_detect_per_frame']:.1f} ms, emotion model "
            f"{report['ms_model_per_frame']:.1f} ms: {report['emotion_model']}); face detector "
            f"on TensorFlow.js {on}, chosen at start as the fastest of {bench} per detection; "
            f"{report['browser']}; {report['cpu']}, {report['cores']} cores. "
            "_Generated from `reports/faces/live_mode.json`._")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def render_multisource(report: dict[str, Any]) -> str:
    """The shipped multi-source model, from ``reports/multisource.json``."""
    test, int8 = report["test"], report["int8"]
    lines = [f"Model `{report['recipe']['train']['model']}` at {report['recipe']['image']['size']}"
             f" px, {report['train']['epochs']} epochs, {len(report['recipe']['classes'])} "
             f"classes; trained at commit `{(report['commit'] or '?')[:10]}` on "
             f"{report['hardware']}.", "",
             "| source | reader | split | images | face crops from the dataset (no face found) |",
             "|---|---|---|---:|---:|"]
    for name, src in report["sources"].items():
        lines.append(f"| {name} | {src['reader']} | {src['split']} | {src['accepted']} | "
                     f"{src['face_fallbacks'] if src['face_crop'] == 'fallback' else ''} |")
    lines += ["", "| test split, per source | images | accuracy | balanced acc. | macro-F1 |",
              "|---|---:|---:|---:|---:|"]
    for name, m in (test.get("by_source") or {}).items():
        lines.append(f"| {name} | {m['n']} | {_pct(m['accuracy'])} | "
                     f"{_pct(m['balanced_accuracy'])} | {m['macro_f1']:.3f} |")
    lines.append(f"| all | {test['n_images']} | {_pct(test['accuracy'])} | | "
                 f"{test['macro_f1']:.3f} |")
    if int8.get("accuracy_drop_points") is not None:
        lines += ["", f"INT8 vs FP32 ONNX on the test split: {int8['accuracy_drop_points']:.2f} "
                      "points of accuracy lost (target <= 0.5)."]
    cross = report.get("cross_corpus")
    if cross and cross.get("sets"):
        lines += ["", f"Through the service path ({cross['path']}; no face found counts as "
                      f"wrong), and the same images whole; {cross['hardware']}:", ""]
        lines += ["| set | images | face found | accuracy | balanced acc. | macro-F1 | "
                  "whole-image acc. |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, s in cross["sets"].items():
            if s["n"]:
                lines.append(f"| {name} | {s['n']} | {_pct(s['found_rate'])} | "
                             f"{_pct(s['service']['accuracy'])} | "
                             f"{_pct(s['service']['balanced_accuracy'])} | "
                             f"{s['service']['macro_f1']:.3f} | {_pct(s['whole']['accuracy'])} |")
    lines += ["", "_Generated by `python scripts/readme_metrics.py` from "
                  "`reports/multisource.json`._"]
    return "\n".join(lines)


def render_ablation(report: dict[str, Any]) -> str:
    """The #19 ablation rows, from ``reports/ablation.json``."""
    rows = report["rows"]
    sets = list(next(iter(rows.values()))["sets"]) if rows else []
    head = " | ".join(f"{s} (service bal. / whole acc.)" for s in sets)
    lines = [f"| row | adds | FER+ test acc. | {head} |",
             "|---|---|---:|" + "---:|" * len(sets)]
    for name, row in rows.items():
        fer = (row["test"].get("by_source") or {}).get("ferplus", {}).get("accuracy")
        cells = " | ".join(f"{_pct(row['sets'][s]['service_balanced_accuracy'])} / "
                           f"{_pct(row['sets'][s]['whole_accuracy'])}" for s in sets)
        lines.append(f"| {name} | {row['adds']} | {_pct(fer)} | {cells} |")
    common = report["common"]
    lines += ["", f"Short schedule for every row: `{common['train.model']}` at "
                  f"{common['image.size']} px, {common['train.epochs']} epochs; "
                  f"{report['hardware']}. _Generated from `reports/ablation.json`._"]
    return "\n".join(lines)


def render_model_choice(report: dict[str, Any]) -> str:
    """Which shipped model serves, from ``reports/model_choice.json``."""
    cands = report["candidates"]
    sources = sorted({s for c in cands.values() for s in c["by_source"]})
    lines = ["| model | " + " | ".join(f"{s} val bal. acc." for s in sources)
             + " | mean |", "|---|" + "---:|" * (len(sources) + 1)]
    for name, c in cands.items():
        cells = " | ".join(_pct(c["by_source"].get(s, {}).get("balanced_accuracy"))
                           for s in sources)
        bold = "**" if name == report["chosen"] else ""
        lines.append(f"| {bold}{name}{bold} | {cells} | {bold}"
                     f"{_pct(c['mean_balanced_accuracy'])}{bold} |")
    lines += ["", f"Rule: {report['rule']}; chosen: **{report['chosen']}**. "
                  "_Generated from `reports/model_choice.json`._"]
    return "\n".join(lines)


def splice(readme: str, section: str, where: Path, start: str = START, end: str = END) -> str:
    if (readme.count(start) != 1 or readme.count(end) != 1
            or readme.index(start) > readme.index(end)):
        raise SystemExit(f"error: {where} needs exactly one '{start}' ... '{end}' pair")
    head, rest = readme.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{section}\n{end}{tail}"


#: Sections of their own, each rendered when its report exists: (report under reports/,
#: renderer, start marker, end marker).
OPTIONAL_SECTIONS = (
    ("fer2013.json", render_fer2013, FER_START, FER_END),
    ("fer2013_service_path.json", render_service_path, PATH_START, PATH_END),
    ("faces/detector_comparison.json", render_detectors, DETECT_START, DETECT_END),
    ("loss_comparison.json", render_losses, LOSS_START, LOSS_END),
    ("faces/live_mode.json", render_live, LIVE_START, LIVE_END),
    ("multisource.json", render_multisource, MULTI_START, MULTI_END),
    ("ablation.json", render_ablation, ABL_START, ABL_END),
    ("model_choice.json", render_model_choice, CHOICE_START, CHOICE_END),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--test", type=Path, default=Path("reports/metrics/test.json"))
    parser.add_argument("--train", type=Path, default=Path("reports/train/metrics.json"))
    parser.add_argument("--bench", type=Path, default=Path("reports/bench/train_throughput.json"))
    parser.add_argument("--reports", type=Path, default=Path("reports"),
                        help="folder of the optional reports (quantize, xai, synth, bench)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="fail if README.md is out of date (both as committed at git HEAD)")
    mode.add_argument("--print", action="store_true", help="print the section only")
    args = parser.parse_args(argv)

    read = committed_text if args.check else working_tree_text
    extra = {name: _load(args.reports / rel, False, read) for name, rel in EXTRA_REPORTS.items()}
    section = render(_load(args.test, True, read), _load(args.train, False, read),
                     _load(args.bench, False, read), extra)
    if args.print:
        print(section)
        return 0
    old = read(args.readme)
    if old is None:
        raise SystemExit(f"error: {args.readme} not found")
    new = splice(old, section, args.readme)
    for rel, render_part, start, end in OPTIONAL_SECTIONS:
        report = _load(args.reports / rel, False, read)
        if report is not None:
            new = splice(new, render_part(report), args.readme, start, end)
    if args.check:
        if new != old:
            print(f"{args.readme} metrics section is out of date with reports/ (as committed); "
                  "run `python scripts/readme_metrics.py` and commit README and reports together",
                  file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
