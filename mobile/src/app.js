// The PWA: load the pipeline's INT8 ONNX model with onnxruntime-web, take a photo (camera) or a
// file, crop the face, preprocess exactly as training did (./preprocess.js) and show the class
// probabilities as bars. Everything runs on the device; the only requests go to this origin.
//
// Query parameters (all optional):
//   model=<url of a folder>  where config.json, label_map.json and the model live
//                            (default ./public/model/, written by `dvc repro mobile_assets`)
//   crop=auto|center|none    overrides config.json's crop mode
//   sw=0                     do not register the service worker (development)
//   tfjs=wasm|webgl|cpu      TensorFlow.js backend of the live mode's face detector
//                            (default: the fastest on this device, timed the first time live
//                            mode starts and remembered in localStorage; tfjs=measure times again)
//
// For tests and tools the page exposes window.emorec = {ready, classifyBlob, last, live}; `last`
// is the latest result and every result is also dispatched as an `emorec:result` event; `live`
// starts/stops the live mode (./live.js) and reports its frame rate and faces.
import * as ort from 'onnxruntime-web';
import { createLive } from './live.js';
import { centerSquare, faceCrop, preprocess } from './preprocess.js';

const query = new URLSearchParams(window.location.search);
const modelBase = new URL(query.get('model') || './public/model/', window.location.href);
const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const el = $('status');
  el.textContent = text;
  el.classList.toggle('error', isError);
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url.pathname}: HTTP ${response.status}`);
  return response.json();
}

/** config.json + label_map.json -> {size, mean, std, classes, crop, margin, modelUrl, ...}. */
async function loadConfig() {
  const config = await fetchJson(new URL('config.json', modelBase));
  const labelMap = await fetchJson(new URL(config.label_map || 'label_map.json', modelBase));
  const classes = Object.entries(labelMap).sort((a, b) => a[1] - b[1]).map(([name]) => name);
  if (classes.length !== config.classes.length
      || classes.some((name, i) => name !== config.classes[i])) {
    throw new Error('label_map.json and config.json disagree on the classes; re-run mobile_assets');
  }
  return {
    size: config.image.size,
    mean: config.image.mean,
    std: config.image.std,
    classes,
    crop: query.get('crop') || config.crop.mode,
    margin: config.crop.face_margin,
    modelUrl: new URL(config.model, modelBase),
    inputName: config.input_name,
    // Calibration temperature fitted on val (ONNX metadata emorec.temperature); 1 = plain softmax.
    temperature: config.temperature > 0 ? config.temperature : 1,
  };
}

async function createSession(modelUrl) {
  // One thread: the model takes a few ms for a 64x64 grayscale input, and in live mode the face
  // detector needs the other cores (a second thread here made live mode slower on 2 cores).
  ort.env.wasm.numThreads = 1;
  return ort.InferenceSession.create(modelUrl.href, {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
  });
}

/** Where to crop: a detected face (FaceDetector, where the browser has it) or the centre. */
async function chooseCrop(bitmap, mode, margin) {
  const { width, height } = bitmap;
  if (mode === 'none') return { x: 0, y: 0, width, height, method: 'none' };
  if (mode === 'auto' && 'FaceDetector' in window) {
    try {
      const faces = await new window.FaceDetector({ fastMode: true, maxDetectedFaces: 4 })
        .detect(bitmap);
      if (faces.length > 0) {
        const area = (f) => f.boundingBox.width * f.boundingBox.height;
        const largest = faces.reduce((a, b) => (area(b) > area(a) ? b : a));
        return { ...faceCrop(largest.boundingBox, width, height, margin), method: 'face' };
      }
    } catch (err) {
      console.warn('FaceDetector failed, using the centre crop', err);
    }
  }
  return { ...centerSquare(width, height), method: 'center' };
}

/** RGBA pixels of a region of a bitmap, copied 1:1 (no scaling, so no browser resampling). */
function readPixels(bitmap, region) {
  const canvas = document.createElement('canvas');
  canvas.width = region.width;
  canvas.height = region.height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(bitmap, region.x, region.y, region.width, region.height,
    0, 0, region.width, region.height);
  return ctx.getImageData(0, 0, region.width, region.height).data;
}

/** softmax(logits / temperature), as emorec.inference.OnnxClassifier.probabilities. */
function softmax(logits, temperature = 1) {
  const scaled = Array.from(logits, (v) => v / temperature);
  const max = Math.max(...scaled);
  const exps = scaled.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / sum);
}

function renderBars(classes, probs) {
  const list = $('bars');
  list.replaceChildren(...classes.map((name, i) => {
    const row = document.createElement('li');
    row.dataset.class = name;
    row.dataset.prob = String(probs[i]);
    const label = document.createElement('span');
    label.className = 'label';
    label.textContent = name;
    const bar = document.createElement('span');
    bar.className = 'bar';
    bar.style.setProperty('--p', String(probs[i]));
    const value = document.createElement('span');
    value.className = 'value';
    value.textContent = `${(probs[i] * 100).toFixed(1)}%`;
    row.append(label, bar, value);
    return row;
  }));
}

function drawPreview(bitmap, crop) {
  const canvas = $('preview');
  const scale = Math.min(1, 480 / Math.max(bitmap.width, bitmap.height));
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = '#ffcc00';
  ctx.lineWidth = 3;
  ctx.strokeRect(crop.x * scale, crop.y * scale, crop.width * scale, crop.height * scale);
  canvas.hidden = false;
}

let seq = 0;

async function classifyBitmap(app, bitmap) {
  const crop = await chooseCrop(bitmap, app.config.crop, app.config.margin);
  const { size, mean, std, classes } = app.config;
  const input = preprocess(readPixels(bitmap, crop), crop.width, crop.height, { size, mean, std });
  const started = performance.now();
  const feeds = { [app.inputName]: new ort.Tensor('float32', input.data, input.dims) };
  const output = await app.session.run(feeds);
  const logits = Array.from(output[app.outputName].data);
  const probs = softmax(logits, app.config.temperature);
  const best = probs.indexOf(Math.max(...probs));
  seq += 1;
  const result = {
    seq,
    label: classes[best],
    confidence: probs[best],
    probabilities: Object.fromEntries(classes.map((c, i) => [c, probs[i]])),
    probs,
    logits,
    crop,
    input: Array.from(input.data),
    ms: performance.now() - started,
  };
  drawPreview(bitmap, crop);
  renderBars(classes, probs);
  $('result').textContent = `${result.label} (${(result.confidence * 100).toFixed(1)}%)`;
  setStatus(`Done in ${result.ms.toFixed(0)} ms (crop: ${crop.method}).`);
  window.emorec.last = result;
  window.dispatchEvent(new CustomEvent('emorec:result', { detail: result }));
  return result;
}

async function classifyBlob(app, blob) {
  // colorSpaceConversion 'none' and premultiplyAlpha 'none' keep the decoded bytes as PIL reads
  // them (PIL ignores embedded colour profiles).
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: 'none', premultiplyAlpha: 'none',
  });
  try {
    return await classifyBitmap(app, bitmap);
  } finally {
    bitmap.close();
  }
}

function setupCamera(app) {
  const video = $('video');
  let stream = null;
  const stop = () => {
    stream?.getTracks().forEach((t) => t.stop());
    stream = null;
    video.hidden = true;
    $('snap').hidden = true;
    $('camera').textContent = 'Use camera';
  };
  $('camera').addEventListener('click', async () => {
    if (stream) return stop();
    if (!navigator.mediaDevices?.getUserMedia) {
      return setStatus('This browser has no camera access (needs HTTPS or localhost).', true);
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: 'user', width: { ideal: 1280 } }, audio: false,
      });
    } catch (err) {
      return setStatus(`Camera unavailable: ${err.message}`, true);
    }
    video.srcObject = stream;
    video.hidden = false;
    $('snap').hidden = false;
    $('camera').textContent = 'Stop camera';
    return video.play();
  });
  $('snap').addEventListener('click', async () => {
    const bitmap = await createImageBitmap(video);
    try {
      await classifyBitmap(app, bitmap);
    } catch (err) {
      setStatus(`Could not classify: ${err.message}`, true);
    } finally {
      bitmap.close();
    }
  });
}

/** `tfjs=` as live-mode options: a backend name, `measure` (time the backends again and
 * remember the new answer), or nothing (the remembered choice, else time and remember). */
function liveBackendOptions(tfjs) {
  if (tfjs && tfjs !== 'measure') return { backend: tfjs };
  return { storage: window.localStorage, remeasure: tfjs === 'measure' };
}

/** The live mode: camera stream -> every face, boxed and classified, continuously. */
function setupLive(app) {
  const video = $('video');
  const live = createLive(app, {
    video, canvas: $('live-view'), fps: $('fps'), renderBars, setStatus,
  }, liveBackendOptions(query.get('tfjs')));
  let stream = null;
  const start = async () => {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error('This browser has no camera access (needs HTTPS or localhost).');
    }
    stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: 'user', width: { ideal: 640 } }, audio: false,
    });
    video.srcObject = stream;
    await video.play();
    await live.start();
    $('live').textContent = 'Stop live';
  };
  const stop = () => {
    live.stop();
    stream?.getTracks().forEach((t) => t.stop());
    stream = null;
    $('live-view').hidden = true;
    $('fps').hidden = true;
    $('live').textContent = 'Live';
  };
  $('live').addEventListener('click', async () => {
    if (stream) return stop();
    try {
      return await start();
    } catch (err) {
      stop();
      return setStatus(`Live mode unavailable: ${err.message}`, true);
    }
  });
  return { start, stop, stats: live.stats, options: live.options };
}

async function main() {
  setStatus('Loading model…');
  const config = await loadConfig();
  const session = await createSession(config.modelUrl);
  // Where live mode's vendored files are: node_modules in development, vendor/ once built.
  const meta = (name, fallback) => new URL(
    document.querySelector(`meta[name="${name}"]`)?.content || fallback, window.location.href).href;
  const app = {
    config,
    session,
    inputName: config.inputName && session.inputNames.includes(config.inputName)
      ? config.inputName : session.inputNames[0],
    outputName: session.outputNames[0],
    ort,
    softmax,
    urls: {
      faceModel: meta('emorec-face-model', './node_modules/@vladmandic/face-api/model/'),
      tfjsWasm: meta('emorec-tfjs-wasm', './node_modules/@tensorflow/tfjs-backend-wasm/dist/'),
    },
  };
  $('file').addEventListener('change', async (event) => {
    const [file] = event.target.files;
    if (!file) return;
    setStatus('Classifying…');
    try {
      await classifyBlob(app, file);
    } catch (err) {
      setStatus(`Could not classify ${file.name}: ${err.message}`, true);
    }
  });
  setupCamera(app);
  const live = setupLive(app);
  window.emorec.live = live;
  $('controls').hidden = false;
  setStatus(`Ready: ${config.classes.length} classes, ${config.size}px input, `
    + `crop ${config.crop}${'FaceDetector' in window ? '' : ' (no FaceDetector: centre crop)'}.`);
  return {
    classes: config.classes, size: config.size, crop: config.crop, model: config.modelUrl.href,
    classifyBlob: (blob) => classifyBlob(app, blob),
  };
}

const ready = main();
window.emorec = { ready, last: null, classifyBlob: async (blob) => (await ready).classifyBlob(blob) };
ready.catch((err) => {
  console.error(err);
  setStatus(`Cannot start: ${err.message}`, true);
});

if ('serviceWorker' in navigator && query.get('sw') !== '0') {
  navigator.serviceWorker.register('./sw.js').catch((err) => console.warn('no offline mode', err));
}
