// The PWA: load the pipeline's INT8 ONNX model with onnxruntime-web, take a photo (camera) or a
// file, find every face as the service does (./faces.js: the service's face detector, eye
// levelling, its margin), preprocess exactly as training did (./preprocess.js) and show each
// face's label on the photo and the largest face's class probabilities as bars. Everything runs
// on the device; the only requests go to this origin, unless the user (or a device that cannot
// run the model) hands the photo to the BentoML service (./service.js).
//
// Query parameters (all optional):
//   model=<url of a folder>  where config.json, label_map.json and the model live
//                            (default ./public/model/, written by `dvc repro mobile_assets`)
//   crop=auto|center|none    overrides config.json's crop mode
//   api=<service url>        the BentoML service to fall back to (overrides config.json's api.url)
//   infer=device|service     where photos are classified (default: on the device when it can)
//   sw=0                     do not register the service worker (development)
//   tfjs=wasm|webgl|cpu      TensorFlow.js backend of the live mode's face detector
//                            (default: the fastest on this device, timed the first time live
//                            mode starts and remembered in localStorage; tfjs=measure times again)
//
// For tests and tools the page exposes window.emorec = {ready, classifyBlob, last, live}; `last`
// is the latest result and every result is also dispatched as an `emorec:result` event; `live`
// starts/stops the live mode (./live.js) and reports its frame rate and faces.
import * as ort from 'onnxruntime-web';
import { drawFaces, scaleBox } from './draw.js';
import { createDetector, findFaces } from './faces.js';
import { createLive } from './live.js';
import { centerSquare, preprocess } from './preprocess.js';
import { askService, facesFromAnswer, hasWasmSimd } from './service.js';

const query = new URLSearchParams(window.location.search);
const modelBase = new URL(query.get('model') || './public/model/', window.location.href);
const NO_FACE = 'no face found'; // the service's words (emorec.serving.answers.NO_FACE)
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

/** config.json + label_map.json -> {size, mean, std, classes, crop, margin, faces, modelUrl, ...}. */
async function loadConfig() {
  const config = await fetchJson(new URL('config.json', modelBase));
  const labelMap = await fetchJson(new URL(config.label_map || 'label_map.json', modelBase));
  const classes = Object.entries(labelMap).sort((a, b) => a[1] - b[1]).map(([name]) => name);
  if (classes.length !== config.classes.length
      || classes.some((name, i) => name !== config.classes[i])) {
    throw new Error('label_map.json and config.json disagree on the classes; re-run mobile_assets');
  }
  const crop = query.get('crop') || config.crop.mode;
  if (crop === 'auto' && !config.faces) {
    throw new Error('config.json has no face detector settings; re-run mobile_assets');
  }
  return {
    size: config.image.size,
    mean: config.image.mean,
    std: config.image.std,
    classes,
    crop,
    margin: config.crop.face_margin,
    faces: config.faces,
    modelUrl: new URL(config.model, modelBase),
    inputName: config.input_name,
    // Calibration temperature fitted on val (ONNX metadata emorec.temperature); 1 = plain softmax.
    temperature: config.temperature > 0 ? config.temperature : 1,
    minConfidence: config.min_confidence || 0,
    apiUrl: config.api?.url || null,
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

/** The model and the face detector on this device; throws why they cannot run here. */
async function loadOnDevice(config) {
  if (!hasWasmSimd()) throw new Error('this browser has no WebAssembly SIMD');
  const session = await createSession(config.modelUrl);
  const detector = config.crop === 'auto' ? await createDetector(ort, modelBase, config.faces) : null;
  return { session, detector };
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

/**
 * The faces of a photo with their crop pixels, by the crop mode: `auto` finds them as the
 * service does (./faces.js: its detector, eye-levelled crops, the blank and small-upload rules);
 * `center` takes the largest centred square, `none` the whole photo.
 * Returns [{box, score, landmarks, angle, rgba, width, height, method}].
 */
async function photoFaces(app, bitmap) {
  const { width, height } = bitmap;
  const { crop: mode, faces: settings, margin } = app.config;
  if (mode === 'center' || mode === 'none') {
    const box = mode === 'center' ? centerSquare(width, height) : { x: 0, y: 0, width, height };
    return [{ box, score: null, landmarks: null, angle: 0, rgba: readPixels(bitmap, box),
      width: box.width, height: box.height, method: mode }];
  }
  const pixels = readPixels(bitmap, { x: 0, y: 0, width, height });
  const found = await findFaces(app.detector, pixels, width, height, settings, margin);
  return found.map((face) => ({ ...face, method: face.landmarks ? 'face' : 'whole' }));
}

/** softmax(logits / temperature), as emorec.inference.OnnxClassifier.probabilities. */
function softmax(logits, temperature = 1) {
  const scaled = Array.from(logits, (v) => v / temperature);
  const max = Math.max(...scaled);
  const exps = scaled.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / sum);
}

/** A face's answer as the service words it (emorec.inference.describe_row): the top class, or
 * "uncertain" below the model's confidence threshold, `predicted` keeping the top class. */
function describe(probs, classes, minConfidence) {
  const best = probs.indexOf(Math.max(...probs));
  const uncertain = minConfidence > 0 && probs[best] < minConfidence;
  return {
    label: uncertain ? 'uncertain' : classes[best],
    predicted: classes[best],
    confidence: probs[best],
    probabilities: Object.fromEntries(classes.map((c, i) => [c, probs[i]])),
    probs,
  };
}

/** Every face of the photo through the model as one batch: the faces with their answers. */
async function classifyOnDevice(app, bitmap) {
  const started = performance.now();
  const faces = await photoFaces(app, bitmap);
  const msDetect = performance.now() - started;
  if (!faces.length) return { faces, msDetect, ms: performance.now() - started };
  const { size, mean, std, classes } = app.config;
  const inputs = faces.map((f) => preprocess(f.rgba, f.width, f.height, { size, mean, std }));
  const data = new Float32Array(faces.length * size * size);
  inputs.forEach((input, i) => data.set(input.data, i * size * size));
  const feeds = { [app.inputName]: new ort.Tensor('float32', data, [faces.length, 1, size, size]) };
  const logits = (await app.session.run(feeds))[app.outputName].data;
  const n = classes.length;
  const answered = faces.map(({ rgba, ...face }, i) => {
    const row = Array.from(logits.slice(i * n, (i + 1) * n));
    return { ...face, ...describe(softmax(row, app.config.temperature), classes,
      app.config.minConfidence), logits: row, input: Array.from(inputs[i].data) };
  });
  return { faces: answered, msDetect, ms: performance.now() - started };
}

/** The photo, with a box and a label on every face, scaled to the preview canvas. */
function drawPreview(bitmap, faces) {
  const canvas = $('preview');
  const scale = Math.min(1, 480 / Math.max(bitmap.width, bitmap.height));
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  drawFaces(ctx, faces.map((face) => ({
    box: scaleBox(face.box, scale),
    text: `${face.label} ${(face.confidence * 100).toFixed(0)}%`,
  })));
  canvas.hidden = false;
}

let seq = 0;

/** Show and publish one answer, from the device or the service: preview, bars, status line. */
function publish(app, bitmap, answer, where) {
  const [largest] = answer.faces;
  seq += 1;
  const result = {
    seq,
    source: where.source,
    faces: answer.faces,
    message: largest ? null : NO_FACE,
    ms: answer.ms,
    msDetect: answer.msDetect ?? null,
    ...(largest ? {
      label: largest.label, predicted: largest.predicted, confidence: largest.confidence,
      probabilities: largest.probabilities, probs: largest.probs, logits: largest.logits,
      input: largest.input, crop: { ...largest.box, method: largest.method },
    } : {}),
  };
  drawPreview(bitmap, answer.faces);
  if (largest) {
    renderBars(app.config?.classes || Object.keys(largest.probabilities), largest.probs);
    const more = answer.faces.length > 1 ? ` and ${answer.faces.length - 1} more face(s)` : '';
    $('result').textContent = `${largest.label} (${(largest.confidence * 100).toFixed(1)}%)${more}`;
  } else {
    $('bars').replaceChildren();
    $('result').textContent = NO_FACE;
  }
  const count = `${answer.faces.length} face(s)`;
  setStatus(where.source === 'service'
    ? `Answered by the service at ${where.url} in ${answer.ms.toFixed(0)} ms (${count}).`
    : `Done on this device in ${answer.ms.toFixed(0)} ms (${count}, `
      + `crop: ${largest ? largest.method : app.config.crop}).`);
  window.emorec.last = result;
  window.dispatchEvent(new CustomEvent('emorec:result', { detail: result }));
  return result;
}

/** A camera frame as a JPEG file, for the service. */
async function toJpeg(bitmap) {
  const canvas = document.createElement('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext('2d').drawImage(bitmap, 0, 0);
  return new Promise((resolve, reject) => {
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('could not encode the frame'))),
      'image/jpeg', 0.92);
  });
}

/** Whether a photo goes to the service: the device cannot classify it, or the user said so. */
function useService(app) {
  return Boolean(app.apiUrl) && (!app.session || $('use-service').checked);
}

async function classifyBitmap(app, bitmap, blob = null) {
  if (useService(app)) {
    const sent = blob || await toJpeg(bitmap);
    const { answer, ms } = await askService(app.apiUrl, sent, blob?.name || 'photo.jpg');
    const faces = facesFromAnswer(answer, app.config?.classes || null);
    return publish(app, bitmap, { faces, ms }, { source: 'service', url: app.apiUrl });
  }
  if (!app.session) throw new Error(`the model cannot run here (${app.deviceError})`);
  return publish(app, bitmap, await classifyOnDevice(app, bitmap), { source: 'device' });
}

async function classifyBlob(app, blob) {
  // colorSpaceConversion 'none' and premultiplyAlpha 'none' keep the decoded bytes as PIL reads
  // them (PIL ignores embedded colour profiles).
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: 'none', premultiplyAlpha: 'none',
  });
  try {
    return await classifyBitmap(app, bitmap, blob);
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

/** The status line once ready: what runs where. */
function readyText(app) {
  const { config } = app;
  if (!app.session) {
    return `The model cannot run on this device (${app.deviceError}): photos go to the service `
      + `at ${app.apiUrl}.`;
  }
  const crop = config.crop === 'auto' ? 'faces found as the service finds them'
    : `crop ${config.crop}`;
  const service = app.apiUrl ? ` The service at ${app.apiUrl} can answer instead.` : '';
  return `Ready: ${config.classes.length} classes, ${config.size}px input, ${crop}.${service}`;
}

async function main() {
  setStatus('Loading model…');
  // On the device when it can run the model; otherwise every photo goes to the service, when
  // one is configured (config.json api.url, or ?api=).
  let config = null;
  let device = { session: null, detector: null };
  let deviceError = null;
  try {
    config = await loadConfig();
    device = await loadOnDevice(config);
  } catch (err) {
    console.warn('on-device inference unavailable', err);
    deviceError = err.message;
  }
  const apiUrl = query.get('api') || config?.apiUrl || null;
  if (!device.session && !apiUrl) throw new Error(deviceError);
  // Where live mode's vendored files are: node_modules in development, vendor/ once built.
  const meta = (name, fallback) => new URL(
    document.querySelector(`meta[name="${name}"]`)?.content || fallback, window.location.href).href;
  const { session } = device;
  const app = {
    config,
    session,
    detector: device.detector,
    deviceError,
    apiUrl,
    inputName: session && (config.inputName && session.inputNames.includes(config.inputName)
      ? config.inputName : session.inputNames[0]),
    outputName: session?.outputNames[0],
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
  const choice = $('use-service');
  choice.checked = !session || query.get('infer') === 'service';
  choice.disabled = !session;
  $('service-choice').hidden = !apiUrl;
  setupCamera(app);
  if (session) window.emorec.live = setupLive(app);
  else $('live').hidden = true;
  $('controls').hidden = false;
  setStatus(readyText(app));
  return {
    classes: config?.classes ?? null,
    size: config?.size ?? null,
    crop: config?.crop ?? null,
    model: config?.modelUrl.href ?? null,
    infer: useService(app) ? 'service' : 'device',
    apiUrl,
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
