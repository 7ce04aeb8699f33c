// `npm run build`: a self-contained static site in dist/ for any static host (HTTPS needed for the
// camera and the service worker, except on localhost). No bundler: the app is plain ES modules;
// this copies it and vendors the three onnxruntime-web files the app loads, face-api's bundle
// with the Tiny Face Detector weights (live mode) and the TensorFlow.js wasm binaries that run
// the detector (the JS of that backend is inside face-api's bundle; the versions must match).
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const ORT = 'node_modules/onnxruntime-web/dist';
const ORT_FILES = ['ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm'];
const FACE_API = 'node_modules/@vladmandic/face-api';
const FACE_FILES = ['dist/face-api.esm.js', 'model/tiny_face_detector_model-weights_manifest.json',
  'model/tiny_face_detector_model.bin'];
const TFJS_WASM = 'node_modules/@tensorflow/tfjs-backend-wasm/dist';
const TFJS_WASM_FILES = ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm',
  'tfjs-backend-wasm-threaded-simd.wasm'];
for (const dir of [ORT, FACE_API, TFJS_WASM]) {
  if (!existsSync(dir)) throw new Error(`${dir} is not installed: run \`npm ci\` first`);
}
if (!existsSync('public/model/config.json')) {
  console.warn('warning: public/model/ has no model; run `dvc repro mobile_assets` first');
}

rmSync('dist', { recursive: true, force: true });
mkdirSync('dist/vendor/ort', { recursive: true });
for (const path of ['src', 'icons', 'public', 'manifest.webmanifest', 'sw.js']) {
  if (existsSync(path)) cpSync(path, `dist/${path}`, { recursive: true });
}
for (const file of ORT_FILES) cpSync(`${ORT}/${file}`, `dist/vendor/ort/${file}`);
for (const file of FACE_FILES) cpSync(`${FACE_API}/${file}`, `dist/vendor/face-api/${file}`);
for (const file of TFJS_WASM_FILES) cpSync(`${TFJS_WASM}/${file}`, `dist/vendor/tfjs-wasm/${file}`);
const html = readFileSync('index.html', 'utf8')
  .replace(`./${ORT}/ort.wasm.min.mjs`, './vendor/ort/ort.wasm.min.mjs')
  .replace(`./${FACE_API}/dist/face-api.esm.js`, './vendor/face-api/dist/face-api.esm.js')
  .replace(`./${FACE_API}/model/`, './vendor/face-api/model/')
  .replace(`./${TFJS_WASM}/`, './vendor/tfjs-wasm/');
writeFileSync('dist/index.html', html);
// Cross-origin isolation headers (what serve.mjs sends) for hosts that read a _headers file
// (Netlify, Cloudflare Pages); elsewhere set them in the host's config, or the detector runs
// its wasm on one thread.
writeFileSync('dist/_headers', '/*\n  Cross-Origin-Opener-Policy: same-origin\n'
  + '  Cross-Origin-Embedder-Policy: require-corp\n');
console.log('built dist/');
