// `npm run build`: a self-contained static site in dist/ for any static host (HTTPS needed for the
// camera and the service worker, except on localhost). No bundler: the app is plain ES modules;
// this copies it and vendors the three onnxruntime-web files the app loads.
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const ORT = 'node_modules/onnxruntime-web/dist';
const ORT_FILES = ['ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm'];
if (!existsSync(ORT)) throw new Error('onnxruntime-web is not installed: run `npm ci` first');
if (!existsSync('public/model/config.json')) {
  console.warn('warning: public/model/ has no model; run `dvc repro mobile_assets` first');
}

rmSync('dist', { recursive: true, force: true });
mkdirSync('dist/vendor/ort', { recursive: true });
for (const path of ['src', 'icons', 'public', 'manifest.webmanifest', 'sw.js']) {
  if (existsSync(path)) cpSync(path, `dist/${path}`, { recursive: true });
}
for (const file of ORT_FILES) cpSync(`${ORT}/${file}`, `dist/vendor/ort/${file}`);
const html = readFileSync('index.html', 'utf8')
  .replace(`./${ORT}/ort.wasm.min.mjs`, './vendor/ort/ort.wasm.min.mjs');
writeFileSync('dist/index.html', html);
console.log('built dist/');
