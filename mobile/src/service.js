// The API fallback: a photo sent to the BentoML service (bento/service.py, POST /classify) instead
// of being classified on the device. Used when the device cannot run the model (no WebAssembly
// SIMD, the model fails to load) or when the user asks for it. The service must allow this
// page's origin (params.yaml: serve.cors_origins). Its answer is turned into the shape of an
// on-device result, so both are drawn the same way.

/** True when this browser runs WebAssembly SIMD, which onnxruntime-web's wasm build needs: the
 * smallest module using a v128 instruction, validated (the wasm-feature-detect test). */
export function hasWasmSimd() {
  try {
    return WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1,
      123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]));
  } catch (err) {
    return false;
  }
}

/** The service's answer as on-device faces: box {x, y, width, height}, probs in `classes`
 * order (the answer's own order when `classes` is null), label, predicted, confidence. */
export function facesFromAnswer(answer, classes) {
  return (answer.faces || []).map((face) => {
    const names = classes || Object.keys(face.probabilities);
    const [x, y, width, height] = face.box;
    return {
      box: { x, y, width, height },
      score: face.detection_score,
      landmarks: face.landmarks,
      label: face.label,
      predicted: face.predicted || face.label,
      confidence: face.confidence,
      probabilities: face.probabilities,
      probs: names.map((name) => face.probabilities[name]),
      method: 'service',
    };
  });
}

/**
 * POST `blob` to `<apiUrl>/classify` (mode `faces`); resolves to {answer, ms, timing}. An HTTP
 * error becomes an Error carrying the service's own message; a network or CORS failure says
 * which origin the service must allow.
 */
export async function askService(apiUrl, blob, filename = 'photo.jpg') {
  const form = new FormData();
  form.append('image', blob, filename);
  const url = new URL('classify', apiUrl.endsWith('/') ? apiUrl : `${apiUrl}/`);
  url.searchParams.set('mode', 'faces');
  const started = performance.now();
  let response;
  try {
    response = await fetch(url, { method: 'POST', body: form, mode: 'cors' });
  } catch (err) {
    throw new Error(`the service at ${url.origin} did not answer (is it running, and does `
      + `serve.cors_origins allow ${window.location.origin}?)`);
  }
  const text = await response.text();
  if (!response.ok) {
    let detail = text;
    try { detail = JSON.parse(text).error || text; } catch (err) { /* plain text */ }
    throw new Error(`the service answered HTTP ${response.status}: ${detail}`.slice(0, 300));
  }
  return {
    answer: JSON.parse(text),
    ms: performance.now() - started,
    timing: response.headers.get('server-timing'),
  };
}
