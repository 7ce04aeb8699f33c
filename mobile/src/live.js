// Live mode: classify the camera stream continuously, every face, with boxes drawn over the
// video, per-class bars of the largest face, smoothed probabilities and the frame rate.
//
// Faces are found by face-api's Tiny Face Detector (@vladmandic/face-api, TensorFlow.js bundled):
// its weights ship inside the npm package and are served from this app's own origin, so live
// mode needs neither the browser's FaceDetector (absent outside Chrome on some platforms) nor any
// other server. The detector is loaded on first use only: the photo mode stays as light as before.
//
// Per frame: copy the video frame to a canvas, detect faces on it, crop each face with the
// configured margin (faceCrop: the Tiny Face Detector gives no landmarks to level the eyes by,
// as photo mode does), preprocess exactly as training did, run
// all faces as one batch, then blend each face's probabilities with the same face's in the
// previous frames (exponential moving average; a face is "the same" when its box overlaps the old
// one by IoU >= 0.3), so labels do not flicker frame to frame.
import { drawFaces } from './draw.js';
import { faceCrop, preprocess } from './preprocess.js';

const DEFAULTS = {
  inputSize: 224,        // Tiny Face Detector input side (multiple of 32): speed vs small faces
  scoreThreshold: 0.5,   // detector confidence
  maxFaces: 4,           // faces classified per frame, largest first
  smoothing: 0.35,       // EMA weight of the newest frame (1 = no smoothing)
  matchIou: 0.3,         // box overlap that continues a face's track
};

/** Intersection over union of two {x, y, width, height} boxes. */
export function iou(a, b) {
  const w = Math.max(0, Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x));
  const h = Math.max(0, Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y));
  const inter = w * h;
  const union = a.width * a.height + b.width * b.height - inter;
  return union > 0 ? inter / union : 0;
}

/**
 * Blend new per-face probabilities with the tracks of the previous frame.
 * `faces` is [{box, probs, ...}], `tracks` the previous result; returns the new tracks (same
 * order as `faces`), each the face with probs smoothed, raw (this frame's probs) and an id.
 */
export function smoothTracks(faces, tracks, alpha, matchIou, nextId) {
  const free = [...tracks];
  return faces.map((face) => {
    let best = null;
    let bestIou = matchIou;
    for (const track of free) {
      const overlap = iou(face.box, track.box);
      if (overlap >= bestIou) { best = track; bestIou = overlap; }
    }
    if (best) free.splice(free.indexOf(best), 1);
    const probs = best
      ? face.probs.map((p, i) => alpha * p + (1 - alpha) * best.probs[i]) : [...face.probs];
    return { ...face, probs, raw: face.probs, id: best ? best.id : nextId() };
  });
}

/** Frames per second over a sliding window of frame end times (ms). */
export class FpsMeter {
  constructor(windowMs = 2000) { this.windowMs = windowMs; this.times = []; }

  tick(now) {
    this.times.push(now);
    while (this.times.length > 2 && now - this.times[0] > this.windowMs) this.times.shift();
    return this.fps();
  }

  fps() {
    const n = this.times.length;
    if (n < 2) return 0;
    return ((n - 1) * 1000) / (this.times[n - 1] - this.times[0]);
  }
}

// Backends tried at start, fastest first on most machines. The choice is measured, not guessed:
// WebGL wins with a real GPU but is several times slower than wasm when rendered in software
// (no GPU, or a blocklisted one), and cpu is plain JavaScript, the fallback of last resort.
const BACKENDS = ['wasm', 'webgl', 'cpu'];
const BENCH_RUNS = 3;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Median ms of `detect(input)` on each backend that initialises, after one untimed warm-up run
 * (wasm compilation, shader compilation, weight upload). A backend whose first timed run is over
 * twice the best median so far stops there: it cannot win, and the cpu one is slow to wait for.
 */
async function benchmarkBackends(tf, detect, input, names) {
  const ms = {};
  for (const name of names) {
    try {
      if (!(await tf.setBackend(name))) continue; // false: the backend failed to initialise
      await detect(input);
    } catch (err) {
      console.warn(`tfjs backend ${name} unavailable`, err);
      continue;
    }
    const best = Math.min(...Object.values(ms));
    const runs = [];
    while (runs.length < BENCH_RUNS && !(runs.length && runs[0] > 2 * best)) {
      const t0 = performance.now();
      await detect(input);
      runs.push(performance.now() - t0);
    }
    ms[name] = median(runs);
  }
  return ms;
}

// The timed choice is remembered per browser (localStorage, keyed by the user agent, so a browser
// update measures again): timing every backend costs seconds at each start, the answer rarely
// changes on one device. `tfjs=measure` times again and remembers the new answer.
const CHOICE_KEY = 'emorec.tfjs-backend';

function rememberedChoice(storage) {
  try {
    const saved = JSON.parse(storage?.getItem(CHOICE_KEY) || 'null');
    return saved && saved.userAgent === navigator.userAgent ? saved : null;
  } catch (err) {
    return null; // unreadable (storage disabled, or not ours): measure
  }
}

function rememberChoice(storage, backend, benchmark) {
  try {
    storage?.setItem(CHOICE_KEY, JSON.stringify({
      backend, benchmark, userAgent: navigator.userAgent, at: new Date().toISOString(),
    }));
  } catch (err) {
    console.warn('live: cannot remember the backend choice', err); // private mode, quota
  }
}

/** The backend a remembered choice names, if it still initialises and runs the detector. */
async function tryRemembered(tf, detect, sample, saved) {
  try {
    if (!saved || !(await tf.setBackend(saved.backend))) return false;
    await detect(sample);
    return true;
  } catch (err) {
    console.warn(`live: remembered backend ${saved.backend} failed, timing again`, err);
    return false;
  }
}

/**
 * Load the Tiny Face Detector and pick its TensorFlow.js backend: `options.backend` when given,
 * else the one remembered for this browser, else the fastest on `sample` (a camera frame).
 * Returns {detect, backend, choice ('requested', 'remembered' or 'measured'), benchmark (median
 * ms per backend), wasm ({simd, threads} when on wasm), msChoice (time the choice took)}.
 */
async function loadDetector(urls, options, sample) {
  const faceapi = await import('@vladmandic/face-api');
  const { tf } = faceapi;
  // The wasm binaries (plain, SIMD, SIMD + threads; the backend fetches the one the browser
  // supports) are served by this app, not a CDN. Threads need cross-origin isolation.
  tf.setWasmPaths(urls.tfjsWasm);
  await tf.setBackend(options.backend || BACKENDS[0]);
  await faceapi.nets.tinyFaceDetector.loadFromUri(urls.faceModel);
  const detectorOptions = new faceapi.TinyFaceDetectorOptions({
    inputSize: options.inputSize, scoreThreshold: options.scoreThreshold,
  });
  const detect = async (canvas) => (await faceapi.detectAllFaces(canvas, detectorOptions))
    .map((d) => ({ x: d.box.x, y: d.box.y, width: d.box.width, height: d.box.height,
      score: d.score }));
  let benchmark = null;
  let choice = 'requested';
  const t0 = performance.now();
  const saved = options.backend || options.remeasure ? null : rememberedChoice(options.storage);
  if (saved && await tryRemembered(tf, detect, sample, saved)) {
    ({ benchmark } = saved);
    choice = 'remembered';
  } else if (!options.backend) {
    benchmark = await benchmarkBackends(tf, detect, sample, BACKENDS);
    const [fastest] = Object.entries(benchmark).sort((a, b) => a[1] - b[1])[0] || [];
    if (!fastest) throw new Error('no TensorFlow.js backend could run the face detector');
    await tf.setBackend(fastest);
    rememberChoice(options.storage, fastest, benchmark);
    choice = 'measured';
  }
  await tf.ready();
  const backend = tf.getBackend();
  const wasm = backend === 'wasm' ? {
    simd: await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT'),
    threads: tf.getThreadsCount(),
  } : null;
  const msChoice = performance.now() - t0;
  console.info('live: face detector on', backend, `(${choice})`, wasm || '', 'benchmark ms',
    benchmark);
  return { detect, backend, choice, benchmark, wasm, msChoice };
}

/** Model inputs of several crops of one frame as a single [N, 1, S, S] batch. */
function batchInputs(ctx, crops, config) {
  const { size } = config;
  const data = new Float32Array(crops.length * size * size);
  crops.forEach((crop, i) => {
    const pixels = ctx.getImageData(crop.x, crop.y, crop.width, crop.height).data;
    data.set(preprocess(pixels, crop.width, crop.height, config).data, i * size * size);
  });
  return { data, dims: [crops.length, 1, size, size] };
}

function drawOverlay(ctx, tracks, classes) {
  drawFaces(ctx, tracks.map((track) => {
    const best = track.probs.indexOf(Math.max(...track.probs));
    return { box: track.box, text: `${classes[best]} ${(track.probs[best] * 100).toFixed(0)}%` };
  }));
}

/**
 * Wire the live mode into the page. `app` is the photo mode's {config, session, inputName,
 * outputName, softmax, ort}; `ui` gives {video, canvas, fps, status, renderBars, setStatus}.
 * Returns {start(stream), stop(), stats()}: stats are exposed to tests as window.emorec.live.
 */
export function createLive(app, ui, overrides = {}) {
  const options = { ...DEFAULTS, ...(app.config.live || {}), ...overrides };
  const frame = document.createElement('canvas');
  const frameCtx = frame.getContext('2d', { willReadFrequently: true });
  const overlayCtx = ui.canvas.getContext('2d');
  const meter = new FpsMeter();
  let detector = null;
  let running = false;
  let tracks = [];
  let ids = 0;
  // msDetect/msModel are the last frame's; the *Total sums and `time` (end of the last frame)
  // let a caller average over any span of frames.
  const stats = {
    frames: 0, fps: 0, faces: 0, tracks: [], backend: null, choice: null, wasm: null,
    benchmark: null,
    msChoice: 0, msDetect: 0, msModel: 0, msDetectTotal: 0, msModelTotal: 0, time: 0,
  };

  /** Copy the current video frame to `frame`; false while the video has no frame yet. */
  function grabFrame() {
    const { video } = ui;
    const width = video.videoWidth;
    const height = video.videoHeight;
    if (!width || !height) return false;
    if (frame.width !== width || frame.height !== height) {
      frame.width = ui.canvas.width = width;
      frame.height = ui.canvas.height = height;
    }
    frameCtx.drawImage(video, 0, 0, width, height);
    return true;
  }

  async function step() {
    if (!grabFrame()) return;
    const { width, height } = frame;
    const t0 = performance.now();
    const boxes = (await detector.detect(frame))
      .sort((a, b) => b.width * b.height - a.width * a.height).slice(0, options.maxFaces);
    const t1 = performance.now();
    let faces = boxes
      .map((box) => ({ box, crop: faceCrop(box, width, height, app.config.margin) }))
      .filter(({ crop }) => crop.width > 0 && crop.height > 0);
    if (faces.length) {
      const input = batchInputs(frameCtx, faces.map((f) => f.crop), app.config);
      const feeds = { [app.inputName]: new app.ort.Tensor('float32', input.data, input.dims) };
      const logits = (await app.session.run(feeds))[app.outputName].data;
      const n = app.config.classes.length;
      faces = faces.map((face, i) => ({
        ...face, probs: app.softmax(logits.slice(i * n, (i + 1) * n), app.config.temperature),
      }));
    }
    const t2 = performance.now();
    const nextId = () => { ids += 1; return ids; };
    tracks = smoothTracks(faces, tracks, options.smoothing, options.matchIou, nextId);
    overlayCtx.drawImage(frame, 0, 0);
    drawOverlay(overlayCtx, tracks, app.config.classes);
    if (tracks.length) ui.renderBars(app.config.classes, tracks[0].probs);
    stats.frames += 1;
    stats.time = performance.now();
    stats.fps = meter.tick(stats.time);
    stats.faces = tracks.length;
    stats.tracks = tracks.map((t) => ({
      id: t.id, box: t.box, crop: t.crop, probs: t.probs, raw: t.raw,
    }));
    stats.msDetect = t1 - t0;
    stats.msModel = t2 - t1;
    stats.msDetectTotal += stats.msDetect;
    stats.msModelTotal += stats.msModel;
    stats.width = width;
    stats.height = height;
    ui.fps.textContent = `${stats.fps.toFixed(1)} fps · ${stats.faces} face(s) · `
      + `detect ${stats.msDetect.toFixed(0)} ms · model ${stats.msModel.toFixed(0)} ms`;
  }

  async function loop() {
    while (running) {
      try {
        await step();
      } catch (err) {
        running = false;
        ui.setStatus(`Live mode stopped: ${err.message}`, true);
        throw err;
      }
      // Yield to the page (paint, input) between frames.
      await new Promise((resolve) => { requestAnimationFrame(() => resolve()); });
    }
  }

  return {
    async start() {
      if (!detector) {
        ui.setStatus(options.backend ? 'Loading the face detector…'
          : 'Loading the face detector (timing each backend the first time)…');
        // The backends are timed on a camera frame: the work live mode will do.
        grabFrame();
        detector = await loadDetector(app.urls, options, frame);
        Object.assign(stats, {
          backend: detector.backend, choice: detector.choice, wasm: detector.wasm,
          benchmark: detector.benchmark, msChoice: detector.msChoice,
        });
      }
      running = true;
      ui.canvas.hidden = false;
      ui.fps.hidden = false;
      const wasm = stats.wasm
        ? ` (${stats.wasm.simd ? 'SIMD' : 'no SIMD'}, ${stats.wasm.threads} thread(s))` : '';
      ui.setStatus(`Live: face detector on TensorFlow.js ${stats.backend}${wasm}, `
        + `${stats.choice}, model on onnxruntime-web.`);
      loop().catch((err) => console.error(err));
    },
    stop() {
      running = false;
      tracks = [];
    },
    stats: () => stats,
    options,
  };
}
