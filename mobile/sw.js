// Service worker: makes the app installable and usable offline.
// Network first (so a new model or app version is picked up as soon as it is online), falling
// back to the cache; every same-origin GET that succeeds (app shell, onnxruntime-web's wasm, the
// model and its JSON) is cached on the way through.
const CACHE = 'emorec-v2';
const SHELL = [
  './', './index.html', './manifest.webmanifest', './src/app.js', './src/draw.js', './src/faces.js',
  './src/live.js', './src/preprocess.js', './src/service.js', './src/style.css', './icons/icon.svg', './icons/icon-192.png', './icons/icon-512.png',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  const { request } = event;
  if (request.method !== 'GET' || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const response = await fetch(request);
      if (response.ok && response.status === 200) cache.put(request, response.clone());
      return response;
    } catch (err) {
      const cached = await cache.match(request, { ignoreSearch: request.mode === 'navigate' });
      if (cached) return cached;
      throw err;
    }
  })());
});
