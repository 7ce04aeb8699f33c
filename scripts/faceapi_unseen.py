"""@vladmandic/face-api on the protocol's always-unseen sets: the browser model to beat (#25).

    python scripts/faceapi_unseen.py              # -> reports/unseen/runs/shipped-faceapi.json
    python scripts/unseen.py report               # the row joins reports/unseen.json and the table

face-api's own pipeline, as its README uses it, runs in headless Chromium (Playwright, Debian's
/usr/bin/chromium; `bash scripts/setup_browser.sh` installs both and the npm packages it reads
from mobile/node_modules): the SSD MobileNet v1 detector, the 68-point landmarks and the 310 KB
expression network, on TensorFlow.js's wasm backend. The largest face found is the answer, as in
the service; no face counts as wrong. "whole" is the expression network on the whole picture.
Its seven expressions are this project's seven classes (``disgusted`` is ``disgust``), so the
figures are scored by the same code as every other row (:func:`emorec.cross_corpus.score_set`).

Writes reports/unseen/runs/shipped-faceapi.json (--out); about 8 minutes on 2 cores for the
1,338 pictures of NimStim, Yale and CAFE.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from emorec.cli import script_parser
from emorec.config import Params, load_params
from emorec.cross_corpus import NO_FACE, Predictions, fold_map, score_set
from emorec.errors import EmorecError
from emorec.hardware import cpu_info, describe
from emorec.provenance import git_commit
from emorec.sources import source_list, spec_candidates
from emorec.unseen import Protocol, run_summary, scoring_entry

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "mobile" / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
#: face-api's expression names -> this project's classes
EXPRESSIONS = {"angry": "angry", "disgusted": "disgust", "fearful": "fearful", "happy": "happy",
               "neutral": "neutral", "sad": "sad", "surprised": "surprised"}

PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import * as faceapi from '/fa/dist/face-api.esm.js';
const { tf } = faceapi;
tf.setWasmPaths('/wasm/');
await tf.setBackend('wasm');
await faceapi.nets.ssdMobilenetv1.loadFromUri('/fa/model/');
await faceapi.nets.faceLandmark68Net.loadFromUri('/fa/model/');
await faceapi.nets.faceExpressionNet.loadFromUri('/fa/model/');
const options = new faceapi.SsdMobilenetv1Options({ minConfidence: %(min_confidence)s });
const load = (url) => new Promise((ok, fail) => {
  const img = new Image(); img.onload = () => ok(img); img.onerror = fail; img.src = url; });
window.classify = async (urls) => {
  const out = [];
  for (const url of urls) {
    const img = await load(url);
    const found = await faceapi.detectAllFaces(img, options).withFaceLandmarks()
      .withFaceExpressions();
    const area = (f) => f.detection.box.width * f.detection.box.height;
    const best = found.sort((a, b) => area(b) - area(a))[0];
    const whole = await faceapi.nets.faceExpressionNet.predictExpressions(img);
    out.push({ face: best ? { ...best.expressions } : null,
               whole: { ...(Array.isArray(whole) ? whole[0] : whole) } });
  }
  return out;
};
window.ready = tf.getBackend();
</script>"""


def top(expressions: dict[str, float]) -> str:
    """The class of face-api's most probable expression."""
    name = max(expressions, key=expressions.get)  # type: ignore[arg-type]
    return EXPRESSIONS[name]


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``folder`` over loopback HTTP (face-api's bundle is an ES module: no file:// URLs)."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript"}

    def log_message(self, *args: Any) -> None:  # one line per image would drown the progress
        pass


def write_images(spec: Any, classes: list[str], folder: Path) -> tuple[list[str], list[str],
                                                                        Counter[str]]:
    """The set's labelled pictures as PNGs under ``folder``: (file names, labels, skipped)."""
    names, labels, skipped = [], [], Counter()
    for cand in spec_candidates(spec, classes):
        if cand.label is None:
            skipped["not_in_set"] += 1
            continue
        try:
            loaded = cand.load()
            image = loaded if isinstance(loaded, Image.Image) else Image.open(io.BytesIO(loaded))
            image = image.convert("RGB")
        except Exception:  # noqa: BLE001 - a broken file is counted, not fatal
            skipped["unreadable"] += 1
            continue
        name = f"{len(names):05d}.png"
        image.save(folder / name)
        names.append(name)
        labels.append(cand.label)
    return names, labels, skipped


def predict(page: Any, base: str, names: list[str], batch: int, desc: str
            ) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(names), batch), desc=desc, unit="batch", mininterval=2):
        urls = [f"{base}/{n}" for n in names[start:start + batch]]
        answers.extend(page.evaluate("(urls) => window.classify(urls)", urls))
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--protocol", type=Path, default=ROOT / "presets" / "unseen.yaml")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "reports" / "unseen" / "runs" / "shipped-faceapi.json")
    parser.add_argument("--min-confidence", type=float, default=0.5,
                        help="SSD MobileNet's face threshold (face-api's default: 0.5)")
    parser.add_argument("--batch", type=int, default=16, help="images per page call")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (EmorecError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from playwright.sync_api import sync_playwright

    protocol = Protocol.load(args.protocol)
    classes = list(EXPRESSIONS.values())
    if not (MODULES / "@vladmandic" / "face-api").is_dir():
        raise EmorecError(f"{MODULES}/@vladmandic/face-api missing: run "
                          f"`bash scripts/setup_browser.sh` first")
    params = Params(load_params(args.params).to_dict() | {"classes": classes})
    fold = fold_map(params, classes)
    specs = source_list(Params({"s": [scoring_entry(u) for u in protocol.unseen]}), "s",
                        classes)
    sets: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="emorec_faceapi_") as tmp:
        root = Path(tmp)
        (root / "fa").symlink_to(MODULES / "@vladmandic" / "face-api")
        (root / "wasm").symlink_to(MODULES / "@tensorflow" / "tfjs-backend-wasm" / "dist")
        (root / "index.html").write_text(PAGE % {"min_confidence": args.min_confidence})
        with serve(root) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page()
            page.goto(f"{url}/index.html")
            page.wait_for_function("() => window.ready !== undefined", timeout=120_000)
            backend = page.evaluate("() => window.ready")
            for spec in specs:
                folder = root / "img" / spec.name
                folder.mkdir(parents=True)
                names, labels, skipped = write_images(spec, classes, folder)
                answers = predict(page, f"{url}/img/{spec.name}", names, args.batch,
                                  f"face-api {spec.name}")
                pred = Predictions(labels, [top(a["face"]) if a["face"] else NO_FACE
                                            for a in answers],
                                   [top(a["whole"]) for a in answers], skipped)
                sets[spec.name] = score_set(pred, fold)
            browser.close()
    summary = run_summary({"sets": sets, "model": "@vladmandic/face-api"}, "shipped:faceapi",
                          None, [s.name for s in specs])
    summary.update(name="shipped-faceapi", screen=False, commit=git_commit(ROOT),
                   about="@vladmandic/face-api (SSD MobileNet v1, 68 landmarks, expression "
                         f"net; TensorFlow.js {backend} in headless Chromium)",
                   hardware=describe(cpu_info()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.out}: " + ", ".join(f"{s} {100 * v['folded']['balanced_accuracy']:.1f}%"
                                      for s, v in summary["sets"].items() if v.get("folded")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
