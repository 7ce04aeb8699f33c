// `npm start`: a dependency-free static server for development, on 127.0.0.1 (a secure context,
// so the camera and the service worker work). Usage: node serve.mjs [port] [folder]
import { createReadStream, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, normalize, resolve } from 'node:path';

const port = Number(process.argv[2] || 8080);
const root = resolve(process.argv[3] || '.');
const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.css': 'text/css', '.json': 'application/json', '.webmanifest': 'application/manifest+json',
  '.wasm': 'application/wasm', '.png': 'image/png', '.svg': 'image/svg+xml',
  '.onnx': 'application/octet-stream', '.ort': 'application/octet-stream',
};
// Cross-origin isolation (crossOriginIsolated === true) unlocks SharedArrayBuffer, which the
// multi-threaded wasm builds of TensorFlow.js (live mode's face detector) and onnxruntime-web
// need. Everything the app loads is same-origin, so require-corp blocks nothing.
const ISOLATION = {
  'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp',
};

createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  let file = join(root, normalize(path));
  if (!file.startsWith(root)) { res.writeHead(403).end(); return; }
  try {
    if (statSync(file).isDirectory()) file = join(file, 'index.html');
    const size = statSync(file).size;
    res.writeHead(200, { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream',
      'Content-Length': size, 'Cache-Control': 'no-cache', ...ISOLATION });
    createReadStream(file).pipe(res);
  } catch {
    res.writeHead(404).end('not found');
  }
}).listen(port, '127.0.0.1', () => console.log(`emorec mobile: http://127.0.0.1:${port}/`));
