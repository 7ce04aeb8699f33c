// Preprocessing that reproduces emorec.transforms.Preprocess bit for bit, so the browser feeds the
// model exactly the tensor that training, evaluation and the Python service feed it:
//   1. grayscale as PIL's Image.convert("L"): ITU-R 601-2 luma, L = R*299/1000 + G*587/1000 +
//      B*114/1000, computed the way Pillow does it (16-bit fixed point, rounded);
//   2. resize to size x size with Pillow's BILINEAR resampling. Pillow's "bilinear" is a separable
//      convolution whose triangle filter widens when downscaling (antialiasing) and which works in
//      22-bit fixed point with an 8-bit intermediate image. Canvas scaling is NOT the same, so it
//      is re-implemented here after Pillow's libImaging/Resample.c;
//   3. x = (pixel / 255 - mean) / std as float32, layout [1, 1, size, size].
// Pure functions on typed arrays: no DOM, so tests and workers can import this module directly.

const PRECISION_BITS = 32 - 8 - 2;

/** Grayscale bytes from RGBA bytes (canvas ImageData layout); alpha is ignored as PIL does. */
export function rgbaToGray(rgba, width, height) {
  const n = width * height;
  if (rgba.length !== n * 4) {
    throw new Error(`rgbaToGray: expected ${n * 4} bytes for ${width}x${height}, got ${rgba.length}`);
  }
  const gray = new Uint8Array(n);
  for (let i = 0, j = 0; i < n; i += 1, j += 4) {
    // Pillow's L24 macro: the 601-2 weights scaled by 65536 (sum 65536), rounded.
    gray[i] = (rgba[j] * 19595 + rgba[j + 1] * 38470 + rgba[j + 2] * 7471 + 0x8000) >>> 16;
  }
  return gray;
}

function bilinearFilter(x) {
  const a = Math.abs(x);
  return a < 1.0 ? 1.0 - a : 0.0;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the BILINEAR filter (support 1). */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx += 1) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x += 1) {
      k[x] = bilinearFilter((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (let x = 0; x < xmax; x += 1) {
      const w = ww !== 0.0 ? k[x] / ww : k[x];
      // Rounded to fixed point exactly as C's (int)(0.5 + w * 2^22); weights are >= 0 here.
      kk[xx * ksize + x] = Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss) {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Resize a grayscale image to outW x outH as PIL's Image.resize(..., Image.BILINEAR):
 * horizontal pass first over the rows the vertical pass needs, then the vertical pass.
 */
export function resizeBilinear(gray, width, height, outW, outH) {
  if (gray.length !== width * height) {
    throw new Error(`resizeBilinear: expected ${width * height} pixels, got ${gray.length}`);
  }
  if (width === outW && height === outH) return Uint8Array.from(gray);
  const needH = width !== outW;
  const needV = height !== outH;
  const vert = coefficients(height, outH);
  const first = vert.bounds[0];
  const last = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
  const half = 1 << (PRECISION_BITS - 1);

  let src = gray;
  let srcW = width;
  let rowOffset = 0; // first source row held in `src`
  if (needH) {
    const hor = coefficients(width, outW);
    const rows = last - first;
    const tmp = new Uint8Array(outW * rows);
    for (let yy = 0; yy < rows; yy += 1) {
      const rowStart = (yy + first) * width;
      for (let xx = 0; xx < outW; xx += 1) {
        const xmin = hor.bounds[xx * 2];
        const xmax = hor.bounds[xx * 2 + 1];
        const kOff = xx * hor.ksize;
        let ss = half;
        for (let x = 0; x < xmax; x += 1) ss += gray[rowStart + xmin + x] * hor.kk[kOff + x];
        tmp[yy * outW + xx] = clip8(ss);
      }
    }
    src = tmp;
    srcW = outW;
    rowOffset = first;
  }
  if (!needV) return src;
  const out = new Uint8Array(srcW * outH);
  for (let yy = 0; yy < outH; yy += 1) {
    const ymin = vert.bounds[yy * 2] - rowOffset;
    const ymax = vert.bounds[yy * 2 + 1];
    const kOff = yy * vert.ksize;
    for (let xx = 0; xx < srcW; xx += 1) {
      let ss = half;
      for (let y = 0; y < ymax; y += 1) ss += src[(ymin + y) * srcW + xx] * vert.kk[kOff + y];
      out[yy * srcW + xx] = clip8(ss);
    }
  }
  return out;
}

/** float32 (x / 255 - mean) / std, computed in float32 like numpy does for the Python side. */
export function normalize(gray, mean, std) {
  const out = new Float32Array(gray.length);
  const f = Math.fround;
  const m = f(mean);
  const s = f(std);
  for (let i = 0; i < gray.length; i += 1) out[i] = f(f(f(gray[i] / 255) - m) / s);
  return out;
}

/**
 * Crop rectangle {x, y, width, height} (integers) for a face box with a relative margin, clipped to
 * the image; mirrors emorec.faces.crop_largest_face.
 */
export function faceCrop(box, width, height, margin) {
  // Detector boxes are fractional; the Haar boxes of the Python side are whole pixels.
  const [x, y, w, h] = [box.x, box.y, box.width, box.height].map(Math.round);
  const dx = Math.trunc(w * margin);
  const dy = Math.trunc(h * margin);
  const left = Math.max(0, x - dx);
  const top = Math.max(0, y - dy);
  const right = Math.min(width, x + w + dx);
  const bottom = Math.min(height, y + h + dy);
  return { x: left, y: top, width: right - left, height: bottom - top };
}

/** The largest centred square: the crop used when no face detector is available. */
export function centerSquare(width, height) {
  const side = Math.min(width, height);
  return {
    x: Math.floor((width - side) / 2), y: Math.floor((height - side) / 2), width: side, height: side,
  };
}

/**
 * Model input for an RGBA image: {gray (uint8 size*size), data (float32), dims [1, 1, S, S]}.
 * `config` is {size, mean, std} from the model's config.json.
 */
export function preprocess(rgba, width, height, config) {
  const gray = resizeBilinear(rgbaToGray(rgba, width, height), width, height,
    config.size, config.size);
  return { gray, data: normalize(gray, config.mean, config.std), dims: [1, 1, config.size, config.size] };
}
