"""Face detectors compared on real photos that ship inside installed packages.

Nothing is downloaded. The face images are real photographs bundled with scikit-image
(``astronaut``: Eileen Collins; ``camera``: a man in profile) and matplotlib
(``grace_hopper.jpg``), with hand-drawn ground-truth boxes for the three portraits. LFW photos
(scikit-image's ``lfw_subset``) are not used: they are held back for others' evaluation. From
the portraits the benchmark builds:

* ``portrait``   - the three photos as shipped (the cameraman is a profile: a hard case);
* ``variant``    - the two frontal portraits at half and quarter size, turned 20 and 35 degrees,
  darkened, in grey;
* ``group``      - several real photos tiled into one picture (every face must be found);
* ``small``      - the two frontal faces in ten variants each (mirrored, turned, darkened,
  contrast-stretched), tiled 5 a row at 75 px and at 40 px on a grey background;
* ``faceless``   - flat grey, coffee, chelsea (a cat), rocket, brick, coins, horse, Hubble deep
  field, scikit-learn's china and flower photos.

Each detector runs once per image with no score cut (timed), then its detections are scored at
its threshold (``params.yaml: faces.score_threshold`` for the configured detector, else the
detector's default in ``emorec.faces``) and at a sweep of thresholds: a ground-truth face counts
as found when a detection overlaps it with IoU >= 0.3 (detectors draw boxes of different
tightness); every other detection is a false positive. The recommendation is the detector with
the best F1 among those under the per-image time budget.

    python benchmarks/face_detectors.py        # writes reports/faces/detector_comparison.json

The dlib detectors take part when ``dlib-bin`` and ``face-recognition-models`` are installed
(``pip install dlib-bin face-recognition-models``; not project dependencies); otherwise the report
lists them under ``unavailable``.

Writes reports/faces/detector_comparison.json. Takes about 5 min on 2 cores (AMD EPYC), most of
it dlib's CNN detector (1 min without dlib).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emorec.cli import script_parser
from emorec.config import load_params
from emorec.faces import DETECTORS, DetectorUnavailable, Face, FaceSettings, make_detector
from emorec.hardware import cpu_info, describe

IOU_MATCH = 0.3
GROUPS = ("portrait", "variant", "group", "small", "faceless")
REFERENCE_STEP = 0.709  # MTCNN's pyramid step in the paper and its reference code
BUDGET_MS = 250.0  # median per image on the 2-core reference machine, for a live service
Box = tuple[int, int, int, int]

# Hand-drawn boxes (x, y, w, h) from the forehead to the chin, ear to ear.
PORTRAIT_FACES: dict[str, Box] = {
    "astronaut": (172, 62, 100, 108),
    "grace_hopper": (170, 125, 200, 210),
    "cameraman": (180, 95, 80, 100),
}
SWEEPS = {
    "haar": [2, 3, 5, 8, 12],
    "dlib_hog": [-0.3, 0.0, 0.3, 0.6, 1.0],
    "dlib_cnn": [0.0, 0.3, 0.5, 0.8],
    "mtcnn": [0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
    "yunet": [0.5, 0.6, 0.7, 0.8, 0.9],
}


@dataclass(frozen=True)
class Sample:
    name: str
    group: str
    rgb: np.ndarray
    faces: tuple[Box, ...]


# ---------------------------------------------------------------------------------------------
# The images


def portraits() -> dict[str, np.ndarray]:
    """The three real portraits as uint8 RGB."""
    import matplotlib.cbook
    from skimage import data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = cv2.cvtColor(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR),
                              cv2.COLOR_BGR2RGB)
    return {"astronaut": data.astronaut(), "grace_hopper": hopper,
            "cameraman": gray_to_rgb(data.camera())}


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def scale(rgb: np.ndarray, box: Box, factor: float) -> tuple[np.ndarray, Box]:
    size = (round(rgb.shape[1] * factor), round(rgb.shape[0] * factor))
    return (cv2.resize(rgb, size, interpolation=cv2.INTER_AREA),
            tuple(round(v * factor) for v in box))  # type: ignore[return-value]


def rotate(rgb: np.ndarray, box: Box, degrees: float) -> tuple[np.ndarray, Box]:
    """Turn about the face centre: the face keeps its centre and size, and is tilted."""
    x, y, w, h = box
    matrix = cv2.getRotationMatrix2D((x + w / 2, y + h / 2), degrees, 1.0)
    out = cv2.warpAffine(rgb, matrix, (rgb.shape[1], rgb.shape[0]),
                         borderMode=cv2.BORDER_REFLECT)
    return out, box


def tile_row(images: list[tuple[np.ndarray, tuple[Box, ...]]], height: int = 384,
             gap: int = 16) -> tuple[np.ndarray, tuple[Box, ...]]:
    """Photos side by side at one height, like a group picture; boxes moved along."""
    parts, boxes, x0 = [], [], 0
    for rgb, faces in images:
        f = height / rgb.shape[0]
        resized = cv2.resize(rgb, (round(rgb.shape[1] * f), height), interpolation=cv2.INTER_AREA)
        parts += [resized, np.full((height, gap, 3), 255, np.uint8)]
        boxes += [(x0 + round(x * f), round(y * f), round(w * f), round(h * f))
                  for x, y, w, h in faces]
        x0 += resized.shape[1] + gap
    return np.hstack(parts[:-1]), tuple(boxes)


def grid(patches: np.ndarray, tile: int, pad: int, cols: int = 5,
         background: int = 128) -> tuple[np.ndarray, tuple[Box, ...]]:
    """Greyscale patches (float 0-1) upscaled to ``tile`` px on a grey canvas."""
    rows, cell = -(-len(patches) // cols), tile + 2 * pad
    canvas = np.full((rows * cell, cols * cell), background, np.uint8)
    boxes = []
    for i, patch in enumerate(patches):
        r, c = divmod(i, cols)
        x, y = c * cell + pad, r * cell + pad
        canvas[y:y + tile, x:x + tile] = cv2.resize(
            (patch * 255).round().astype(np.uint8), (tile, tile), interpolation=cv2.INTER_CUBIC)
        boxes.append((x, y, tile, tile))
    return gray_to_rgb(canvas), tuple(boxes)


def face_patches(photos: dict[str, np.ndarray], margin: float = 0.15) -> np.ndarray:
    """Greyscale (float 0-1) square crops of the frontal faces in ten variants each."""
    patches = []
    for name in ("astronaut", "grace_hopper"):
        x, y, w, h = PORTRAIT_FACES[name]
        side = int(max(w, h) * (1 + 2 * margin))
        cx, cy = x + w // 2, y + h // 2
        gray = cv2.cvtColor(photos[name], cv2.COLOR_RGB2GRAY).astype(np.float64) / 255
        crop = gray[max(0, cy - side // 2):cy + side // 2, max(0, cx - side // 2):cx + side // 2]
        for flip in (False, True):
            base = crop[:, ::-1] if flip else crop
            centre = (base.shape[1] / 2, base.shape[0] / 2)
            turned = [cv2.warpAffine(base, cv2.getRotationMatrix2D(centre, a, 1.0),
                                     base.shape[::-1], borderMode=cv2.BORDER_REFLECT)
                      for a in (-12, 12)]
            patches += [base, *turned, base ** 2.2 * 0.7,
                        np.clip((base - base.mean()) * 1.5 + base.mean(), 0, 1)]
    return np.stack([cv2.resize(p, (96, 96), interpolation=cv2.INTER_AREA) for p in patches])


def samples() -> Iterator[Sample]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = portraits()
    for name, rgb in photos.items():
        yield Sample(name, "portrait", rgb, (PORTRAIT_FACES[name],))

    for name in ("astronaut", "grace_hopper"):
        rgb, box = photos[name], PORTRAIT_FACES[name]
        for factor in (0.5, 0.25):
            small, small_box = scale(rgb, box, factor)
            yield Sample(f"{name}_x{factor}", "variant", small, (small_box,))
        for degrees in (20, 35):
            turned, turned_box = rotate(rgb, box, degrees)
            yield Sample(f"{name}_turned{degrees}", "variant", turned, (turned_box,))
        dark = (255 * (rgb / 255.0) ** 2.2 * 0.6).astype(np.uint8)
        yield Sample(f"{name}_dark", "variant", dark, (box,))
        yield Sample(f"{name}_gray", "variant",
                     gray_to_rgb(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), (box,))

    two = [(photos[n], (PORTRAIT_FACES[n],)) for n in ("astronaut", "grace_hopper")]
    yield Sample("group_2", "group", *tile_row(two))
    three = two + [(photos["cameraman"], (PORTRAIT_FACES["cameraman"],))]
    yield Sample("group_3", "group", *tile_row(three))
    half_astronaut = scale(photos["astronaut"], PORTRAIT_FACES["astronaut"], 0.5)
    yield Sample("group_4_mixed_sizes", "group",
                 *tile_row(two + [(half_astronaut[0], (half_astronaut[1],))] + two[1:]))

    patches = face_patches(photos)
    for tile, pad in ((75, 40), (40, 24)):
        yield Sample(f"small_{tile}px", "small", *grid(patches, tile, pad))

    yield Sample("flat_grey", "faceless", np.full((480, 640, 3), 128, np.uint8), ())
    for name in ("coffee", "chelsea", "rocket", "brick", "coins", "horse", "hubble_deep_field"):
        image = getattr(data, name)()
        if image.dtype == bool:
            image = (image * 255).astype(np.uint8)
        yield Sample(name, "faceless", gray_to_rgb(image) if image.ndim == 2 else image, ())
    for name, image in zip(("china", "flower"), load_sample_images().images, strict=True):
        yield Sample(name, "faceless", image, ())


# ---------------------------------------------------------------------------------------------
# Scoring


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union else 0.0


def match(truth: tuple[Box, ...], found: list[Face]) -> tuple[int, int]:
    """(faces found, false positives): greedy one-to-one matching, best-scored detection first."""
    free = list(truth)
    hits = 0
    for face in sorted(found, key=lambda f: f.score, reverse=True):
        best = max(free, key=lambda t: iou(t, face.box), default=None)
        if best is not None and iou(best, face.box) >= IOU_MATCH:
            free.remove(best)
            hits += 1
    return hits, len(found) - hits


def score_at(runs: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Recall, false positives, precision and F1 of one detector's runs at one threshold."""
    per_group: dict[str, dict[str, int]] = {}
    for run in runs:
        kept = [f for f in run["faces"] if f.score >= threshold]
        hits, fps = match(run["truth"], kept)
        g = per_group.setdefault(run["group"], {"faces": 0, "found": 0, "false_positives": 0,
                                                "images": 0, "images_with_fp": 0})
        g["faces"] += len(run["truth"])
        g["found"] += hits
        g["false_positives"] += fps
        g["images"] += 1
        g["images_with_fp"] += int(fps > 0)
    total = {k: sum(g[k] for g in per_group.values())
             for k in ("faces", "found", "false_positives", "images", "images_with_fp")}
    detections = total["found"] + total["false_positives"]
    recall = total["found"] / total["faces"]
    precision = total["found"] / detections if detections else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    for g in per_group.values():
        g["recall"] = round(g["found"] / g["faces"], 3) if g["faces"] else None
    return {"threshold": threshold, "recall": round(recall, 3), "precision": round(precision, 3),
            "f1": round(f1, 3), "false_positives": total["false_positives"],
            "faceless_images_with_detections": per_group.get("faceless", {}).get(
                "images_with_fp", 0),
            **total, "by_group": per_group}


def run_detector(name: str, items: list[Sample], min_size: int, **options: Any
                 ) -> tuple[list[dict[str, Any]], bool]:
    """Every image once (after one warm-up call), all detections kept, with the time taken;
    and whether the detector gives landmarks. ``options``: the detector's own knobs."""
    detector = make_detector(name, min_size=min_size, score_threshold=float("-inf"), **options)
    detector.detect(items[0].rgb)
    runs = []
    for item in items:
        start = time.perf_counter()
        faces = detector.detect(item.rgb)
        ms = (time.perf_counter() - start) * 1000
        runs.append({"image": item.name, "group": item.group, "truth": item.faces,
                     "faces": faces, "ms": ms, "pixels": item.rgb.shape[0] * item.rgb.shape[1]})
    return runs, detector.has_landmarks


def summarise(name: str, runs: list[dict[str, Any]], landmarks: bool,
              options: dict[str, Any], threshold: float | None = None) -> dict[str, Any]:
    """One detector's report, scored at ``threshold`` (None: the detector's default)."""
    cls = DETECTORS[name.split("@")[0]]
    threshold = cls.default_threshold if threshold is None else threshold
    default = score_at(runs, threshold)
    ms = [r["ms"] for r in runs]
    ms_per_mpx = [r["ms"] / (r["pixels"] / 1e6) for r in runs]
    misses = [r["image"] for r in runs
              if match(r["truth"], [f for f in r["faces"] if f.score >= threshold])[0]
              < len(r["truth"])]
    return {
        "detector": name,
        "options": options,
        "landmarks": landmarks,
        "threshold": threshold,
        "default_threshold": cls.default_threshold,
        **{k: default[k] for k in ("recall", "precision", "f1", "false_positives",
                                   "faceless_images_with_detections", "faces", "found")},
        "ms_per_image_median": round(statistics.median(ms), 1),
        "ms_per_image_mean": round(statistics.fmean(ms), 1),
        "ms_per_megapixel_median": round(statistics.median(ms_per_mpx), 1),
        "by_group": default["by_group"],
        "images_with_missed_faces": misses,
        "threshold_sweep": [{k: v for k, v in score_at(runs, t).items() if k != "by_group"}
                            for t in SWEEPS.get(name, [])],
    }


def recommend(results: list[dict[str, Any]], budget_ms: float) -> dict[str, Any]:
    """Best F1 among the detectors whose median time fits the budget (ties: faster wins)."""
    results = [r for r in results if "@" not in r["detector"]] or results  # not the variants
    fast = [r for r in results if r["ms_per_image_median"] <= budget_ms] or results
    best = max(fast, key=lambda r: (r["f1"], -r["ms_per_image_median"]))
    return {"detector": best["detector"], "rule": f"highest F1 at its threshold among "
            f"detectors with median <= {budget_ms:.0f} ms per image", "f1": best["f1"],
            "recall": best["recall"], "false_positives": best["false_positives"],
            "ms_per_image_median": best["ms_per_image_median"]}


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--detectors", default=",".join(DETECTORS),
                        help="comma-separated names (default: all)")
    parser.add_argument("--groups", default=",".join(GROUPS),
                        help="comma-separated image groups (default: all)")
    parser.add_argument("--min-size", type=int, default=24, help="smallest face side, px")
    parser.add_argument("--budget-ms", type=float, default=BUDGET_MS)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="MTCNN's and YuNet's knobs, and the configured detector's "
                             "threshold, come from its faces section")
    parser.add_argument("--mtcnn-reference", type=float, default=REFERENCE_STEP,
                        help="also run MTCNN at this pyramid step, on 1 thread, as "
                             "'mtcnn@reference' (0: don't)")
    parser.add_argument("--out", type=Path, default=Path("reports/faces/detector_comparison.json"))
    args = parser.parse_args(argv)

    groups = set(args.groups.split(","))
    items = [s for s in samples() if s.group in groups]
    settings = FaceSettings.from_params(load_params(args.params))
    # MTCNN's and YuNet's knobs as params.yaml sets them; the configured detector is scored at
    # params.yaml's threshold, the others at their own defaults
    knobs = {"mtcnn": {"scale_factor": settings.scale_factor, "threads": settings.threads},
             "yunet": {"threads": settings.threads, "input_side": settings.input_side}}
    runs_of = [(name, dict(knobs.get(name, {}))) for name in args.detectors.split(",")]
    if "mtcnn" in args.detectors.split(",") and args.mtcnn_reference:
        runs_of.append(("mtcnn@reference", {"scale_factor": args.mtcnn_reference, "threads": 1}))
    results, unavailable = [], {}
    for name, options in runs_of:
        try:
            runs, landmarks = run_detector(name.split("@")[0], items, args.min_size, **options)
        except DetectorUnavailable as err:
            unavailable[name] = str(err)
            continue
        threshold = settings.score_threshold if name == settings.detector else None
        results.append(summarise(name, runs, landmarks, options, threshold))
        r = results[-1]
        print(f"{name:9s} recall {r['recall']:.3f}  precision {r['precision']:.3f}  "
              f"F1 {r['f1']:.3f}  FP {r['false_positives']:3d}  "
              f"median {r['ms_per_image_median']:.0f} ms/image", flush=True)
    if not results:
        print("error: no detector could run: " + "; ".join(unavailable.values()), file=sys.stderr)
        return 2
    report = {
        "images": [{"name": s.name, "group": s.group, "faces": len(s.faces),
                    "size": [int(s.rgb.shape[1]), int(s.rgb.shape[0])]} for s in items],
        "faces_total": sum(len(s.faces) for s in items),
        "match_iou": IOU_MATCH, "min_size": args.min_size,
        "machine": {"cpu": describe(cpu_info()), "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "note": "one image at a time; mtcnn and yunet on faces.threads threads, "
                            "the others on one"},
        "results": results,
        "unavailable": unavailable,
        "recommended": recommend(results, args.budget_ms),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"recommended: {report['recommended']['detector']}  ->  {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
