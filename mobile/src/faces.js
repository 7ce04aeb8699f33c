// Faces found and cut out as the service does it (emorec.faces, emorec.serving.answers):
//   * the service's detector (config.json faces.detector) on its own ONNX weights (copied next to
//     the model by the stage mobile_assets), on onnxruntime-web: YuNet, decoded as
//     src/emorec/faces/yunet.py does, or MTCNN's P-, R- and O-Net with the cascade, thresholds,
//     pyramid and NMS of src/emorec/faces/mtcnn.py, step for step;
//   * the eye-levelling square crop with serve.face_margin (emorec.faces.align_crop);
//   * the service's rules around them: a flat picture has no face, at most faces.max_faces
//     faces (largest first), and a small upload in which no face is found is taken whole.
// The image arithmetic follows OpenCV's (area and bilinear resizing, warpAffine with replicated
// borders) in floating point: a grey level may differ by one where OpenCV rounds in fixed point,
// which moves a box by a pixel at most. Pure functions on typed arrays, except createDetector,
// createYunet and createMtcnn, which load the networks.

const NORM_SHIFT = 127.5;
const NORM_SCALE = 0.0078125;
const BLANK_STD = 2.0; // emorec.faces.align.BLANK_STD
const NMS_STAGE = [0.5, 0.7]; // P-Net: within a pyramid level, then across levels
const NMS_REFINE = 0.7; // R-Net (union) and O-Net (over the smaller box)

// ---------------------------------------------------------------------------------------------
// Pixels

/** RGB bytes (3 per pixel) from RGBA bytes (canvas ImageData). */
export function rgbFromRgba(rgba) {
  const n = rgba.length / 4;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0, j = 0; i < n; i += 1, j += 4) {
    rgb[i * 3] = rgba[j];
    rgb[i * 3 + 1] = rgba[j + 1];
    rgb[i * 3 + 2] = rgba[j + 2];
  }
  return rgb;
}

/** True for a (near) flat picture, judged as emorec.faces.is_blank: OpenCV's grey levels on a
 * grid of about 128 pixels along the shorter side, population standard deviation below 2. */
export function isBlank(rgb, width, height) {
  const step = Math.max(1, Math.floor(Math.min(width, height) / 128));
  let n = 0;
  let sum = 0;
  let sum2 = 0;
  for (let y = 0; y < height; y += step) {
    for (let x = 0; x < width; x += step) {
      const i = (y * width + x) * 3;
      // cv2.COLOR_RGB2GRAY: 14-bit fixed-point 601 luma, rounded
      const g = (rgb[i] * 4899 + rgb[i + 1] * 9617 + rgb[i + 2] * 1868 + 8192) >> 14;
      n += 1;
      sum += g;
      sum2 += g * g;
    }
  }
  const mean = sum / n;
  return Math.sqrt(Math.max(0, sum2 / n - mean * mean)) < BLANK_STD;
}

/** Per-axis taps [{index, weight}[]] of OpenCV's INTER_LINEAR (half-pixel centres, edges
 * clamped). */
function linearTaps(inSize, outSize) {
  const scale = inSize / outSize;
  return Array.from({ length: outSize }, (_, d) => {
    let f = (d + 0.5) * scale - 0.5;
    let s = Math.floor(f);
    f -= s;
    if (s < 0) { s = 0; f = 0; }
    if (s >= inSize - 1) { s = inSize - 1; f = 0; }
    return f > 0 ? [{ index: s, weight: 1 - f }, { index: s + 1, weight: f }]
      : [{ index: s, weight: 1 }];
  });
}

/** OpenCV's INTER_AREA taps for a downscale (computeResizeAreaTab): each output pixel averages
 * the input cells it covers, partly covered cells by their share. */
function areaTaps(inSize, outSize) {
  const scale = inSize / outSize;
  return Array.from({ length: outSize }, (_, d) => {
    const f1 = d * scale;
    const f2 = f1 + scale;
    const cell = Math.min(scale, inSize - f1);
    let s1 = Math.ceil(f1);
    const s2 = Math.min(Math.floor(f2), inSize - 1);
    s1 = Math.min(s1, s2);
    const taps = [];
    if (s1 - f1 > 1e-3) taps.push({ index: s1 - 1, weight: (s1 - f1) / cell });
    for (let s = s1; s < s2; s += 1) taps.push({ index: s, weight: 1 / cell });
    if (f2 - s2 > 1e-3) {
      taps.push({ index: s2, weight: Math.min(Math.min(f2 - s2, 1), cell) / cell });
    }
    return taps;
  });
}

/** OpenCV's INTER_AREA when it upscales an axis: a bilinear blend with its own phase. */
function areaUpTaps(inSize, outSize) {
  const scale = inSize / outSize;
  return Array.from({ length: outSize }, (_, d) => {
    let s = Math.floor(d * scale);
    let f = (d + 1) - (s + 1) / scale;
    f = f <= 0 ? 0 : f - Math.floor(f);
    if (s >= inSize - 1) { s = inSize - 1; f = 0; }
    return f > 0 ? [{ index: s, weight: 1 - f }, { index: s + 1, weight: f }]
      : [{ index: s, weight: 1 }];
  });
}

/**
 * Resize RGB bytes as cv2.resize does: `area` (INTER_AREA: averaging when both axes shrink,
 * OpenCV's area-bilinear otherwise) or `linear` (INTER_LINEAR). Separable, in floating point,
 * rounded to bytes once at the end.
 */
export function resizeRgb(src, width, height, outW, outH, mode) {
  let taps;
  if (mode === 'linear') taps = [linearTaps(width, outW), linearTaps(height, outH)];
  else if (width >= outW && height >= outH) taps = [areaTaps(width, outW), areaTaps(height, outH)];
  else taps = [areaUpTaps(width, outW), areaUpTaps(height, outH)];
  const [xTaps, yTaps] = taps;
  const rows = new Float32Array(height * outW * 3); // horizontal pass
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < outW; x += 1) {
      let r = 0; let g = 0; let b = 0;
      for (const { index, weight } of xTaps[x]) {
        const i = (y * width + index) * 3;
        r += src[i] * weight; g += src[i + 1] * weight; b += src[i + 2] * weight;
      }
      const o = (y * outW + x) * 3;
      rows[o] = r; rows[o + 1] = g; rows[o + 2] = b;
    }
  }
  const out = new Uint8Array(outW * outH * 3); // vertical pass
  for (let y = 0; y < outH; y += 1) {
    for (let x = 0; x < outW; x += 1) {
      let r = 0; let g = 0; let b = 0;
      for (const { index, weight } of yTaps[y]) {
        const i = (index * outW + x) * 3;
        r += rows[i] * weight; g += rows[i + 1] * weight; b += rows[i + 2] * weight;
      }
      const o = (y * outW + x) * 3;
      out[o] = Math.round(r); out[o + 1] = Math.round(g); out[o + 2] = Math.round(b);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Boxes: rows [x1, y1, x2, y2, score, ...extra], as in mtcnn.py

/** Overlap of two boxes (inclusive pixels): over their union, or over the smaller one. */
function overlap(a, b, union) {
  const areaA = (a[2] - a[0] + 1) * (a[3] - a[1] + 1);
  const areaB = (b[2] - b[0] + 1) * (b[3] - b[1] + 1);
  const w = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]) + 1);
  const h = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]) + 1);
  const inter = w * h;
  return inter / (union ? areaA + areaB - inter : Math.min(areaA, areaB));
}

/** Indices kept by greedy non-maximum suppression, best score first (emorec.faces.nms). */
export function nms(boxes, threshold, union = true) {
  const order = boxes.map((_, i) => i).sort((i, j) => boxes[j][4] - boxes[i][4]);
  const suppressed = new Uint8Array(boxes.length);
  const keep = [];
  for (let a = 0; a < order.length; a += 1) {
    if (suppressed[a]) continue;
    keep.push(order[a]);
    for (let b = a + 1; b < order.length; b += 1) {
      if (!suppressed[b] && overlap(boxes[order[a]], boxes[order[b]], union) > threshold) {
        suppressed[b] = 1;
      }
    }
  }
  return keep;
}

/** Boxes grown to squares about their centres (mtcnn._square). */
function square(box) {
  const w = box[2] - box[0];
  const h = box[3] - box[1];
  const side = Math.max(w, h);
  const x1 = box[0] + w * 0.5 - side * 0.5;
  const y1 = box[1] + h * 0.5 - side * 0.5;
  return [x1, y1, x1 + side, y1 + side, ...box.slice(4)];
}

/** A net's box regression, offsets as shares of the (inclusive) box size (mtcnn._regress). */
function regress(box, reg) {
  const w = box[2] - box[0] + 1;
  const h = box[3] - box[1] + 1;
  return [box[0] + reg[0] * w, box[1] + reg[1] * h, box[2] + reg[2] * w, box[3] + reg[3] * h,
    ...box.slice(4)];
}

const fix = (box) => box.map((v, i) => (i < 4 ? Math.trunc(v) : v));

// ---------------------------------------------------------------------------------------------
// Network inputs. The nets were trained on transposed images: every input is (W, H), not (H, W).

/** An RGB image as a P-Net input [1, W, H, 3], normalised. */
function pnetInput(rgb, width, height) {
  const data = new Float32Array(width * height * 3);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const s = (y * width + x) * 3;
      const d = (x * height + y) * 3;
      for (let c = 0; c < 3; c += 1) data[d + c] = (rgb[s + c] - NORM_SHIFT) * NORM_SCALE;
    }
  }
  return { data, dims: [1, width, height, 3] };
}

/** Each box cut out (zeros outside the image) and area-resized to `side`, as [N, side, side, 3]
 * transposed and normalised (mtcnn._crops). */
function cropInputs(rgb, width, height, boxes, side) {
  const data = new Float32Array(boxes.length * side * side * 3);
  boxes.forEach((box, n) => {
    const [x1, y1, x2, y2] = box.slice(0, 4).map(Math.trunc);
    const w = x2 - x1 + 1;
    const h = y2 - y1 + 1;
    if (w < 1 || h < 1) { // an empty box: a black crop, as the zero-filled array in Python
      data.fill(-NORM_SHIFT * NORM_SCALE, n * side * side * 3, (n + 1) * side * side * 3);
      return;
    }
    const patch = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y += 1) {
      const sy = y1 + y;
      if (sy < 0 || sy >= height) continue;
      for (let x = 0; x < w; x += 1) {
        const sx = x1 + x;
        if (sx < 0 || sx >= width) continue;
        const s = (sy * width + sx) * 3;
        const d = (y * w + x) * 3;
        patch[d] = rgb[s]; patch[d + 1] = rgb[s + 1]; patch[d + 2] = rgb[s + 2];
      }
    }
    const small = resizeRgb(patch, w, h, side, side, 'area');
    const base = n * side * side * 3;
    for (let y = 0; y < side; y += 1) {
      for (let x = 0; x < side; x += 1) {
        const s = (y * side + x) * 3;
        const d = base + (x * side + y) * 3;
        for (let c = 0; c < 3; c += 1) data[d + c] = (small[s + c] - NORM_SHIFT) * NORM_SCALE;
      }
    }
  });
  return { data, dims: [boxes.length, side, side, 3] };
}

/** The outputs of a run, told apart by their last dimension (box 4, landmarks 10, prob 2). */
function byWidth(outputs) {
  const found = {};
  for (const tensor of Object.values(outputs)) found[tensor.dims[tensor.dims.length - 1]] = tensor;
  return found;
}

// ---------------------------------------------------------------------------------------------
// The cascade

/** Pyramid scales mapping `minSize` faces to P-Net's 12 px window (MtcnnDetector._scales). */
export function pyramidScales(width, height, minSize, factor) {
  let scale = 12.0 / Math.max(minSize, 12);
  let side = Math.min(width, height) * scale;
  const scales = [];
  while (side >= 12) {
    scales.push(scale);
    scale *= factor;
    side *= factor;
  }
  return scales;
}

/** P-Net cells at or above `threshold` as boxes [x1, y1, x2, y2, score, 4 offsets]. */
function pnetBoxes(scale, reg, prob, threshold) {
  const [, w, h] = prob.dims; // (W', H'): transposed
  const boxes = [];
  for (let y = 0; y < h; y += 1) {
    for (let x = 0; x < w; x += 1) {
      const cell = x * h + y;
      const score = prob.data[cell * 2 + 1];
      if (score >= threshold) {
        boxes.push([Math.trunc((2 * x + 1) / scale), Math.trunc((2 * y + 1) / scale),
          Math.trunc((2 * x + 12) / scale), Math.trunc((2 * y + 12) / scale), score,
          ...reg.data.slice(cell * 4, cell * 4 + 4)]);
      }
    }
  }
  return boxes;
}

/**
 * Load MTCNN (three ONNX files under `baseUrl`) on onnxruntime-web. `settings` is config.json's
 * `faces`: {min_size, score_threshold, scale_factor, stage_thresholds, max_side, files}. Returns
 * {detect(rgb, width, height) -> faces, largest first}; a face is {box: {x, y, width, height},
 * score, landmarks: {left_eye: [x, y], right_eye, nose, mouth_left, mouth_right}}.
 */
export async function createMtcnn(ort, baseUrl, settings) {
  const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
  const [pnet, rnet, onet] = await Promise.all(['pnet', 'rnet', 'onet'].map(
    (name) => ort.InferenceSession.create(new URL(settings.files[name], baseUrl).href, options)));
  const [pThreshold, rThreshold] = settings.stage_thresholds;
  const run = async (session, input) => byWidth(await session.run({
    [session.inputNames[0]]: new ort.Tensor('float32', input.data, input.dims) }));

  async function propose(rgb, width, height) {
    const found = [];
    let level = null;
    let levelW = width;
    let levelH = height;
    for (const scale of pyramidScales(width, height, settings.min_size, settings.scale_factor)) {
      // First level: area average of the photo; each next one: bilinear from the one before.
      const w = Math.ceil(width * scale);
      const h = Math.ceil(height * scale);
      level = level ? resizeRgb(level, levelW, levelH, w, h, 'linear')
        : resizeRgb(rgb, width, height, w, h, 'area');
      levelW = w;
      levelH = h;
      const out = await run(pnet, pnetInput(level, w, h));
      const boxes = pnetBoxes(scale, out[4], out[2], pThreshold);
      for (const i of nms(boxes, NMS_STAGE[0])) found.push(boxes[i]);
    }
    return nms(found, NMS_STAGE[1]).map((i) => {
      const b = found[i];
      const w = b[2] - b[0];
      const h = b[3] - b[1];
      return fix(square([b[0] + b[5] * w, b[1] + b[6] * h, b[2] + b[7] * w, b[3] + b[8] * h,
        b[4]]));
    });
  }

  async function refine(rgb, width, height, boxes) {
    const out = await run(rnet, cropInputs(rgb, width, height, boxes, 24));
    const kept = [];
    boxes.forEach((box, i) => {
      const score = out[2].data[i * 2 + 1];
      if (score > rThreshold) kept.push({ box: [...box.slice(0, 4), score], reg: out[4].data.slice(i * 4, i * 4 + 4) });
    });
    return nms(kept.map((k) => k.box), NMS_REFINE)
      .map((i) => fix(square(regress(kept[i].box, kept[i].reg))));
  }

  async function output(rgb, width, height, boxes) {
    const out = await run(onet, cropInputs(rgb, width, height, boxes, 48));
    const done = boxes.map((b, i) => {
      const w = b[2] - b[0] + 1;
      const h = b[3] - b[1] + 1;
      const p = out[10].data.slice(i * 10, i * 10 + 10);
      const xs = Array.from(p.slice(0, 5), (v) => v * w + b[0] - 1);
      const ys = Array.from(p.slice(5, 10), (v) => v * h + b[1] - 1);
      const box = regress([...b.slice(0, 4), out[2].data[i * 2 + 1]], out[4].data.slice(i * 4, i * 4 + 4));
      return { box, xs, ys };
    });
    return nms(done.map((d) => d.box), NMS_REFINE, false).map((i) => done[i]);
  }

  /** Raw faces of an image: boxes truncated to whole pixels as in mtcnn.py, no filtering. */
  async function cascade(rgb, width, height) {
    let boxes = await propose(rgb, width, height);
    if (boxes.length) boxes = await refine(rgb, width, height, boxes);
    if (!boxes.length) return [];
    return (await output(rgb, width, height, boxes)).map(({ box, xs, ys }) => {
      const [x1, y1, x2, y2, score] = box;
      const eyes = [[xs[0], ys[0]], [xs[1], ys[1]]].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      return {
        box: [Math.trunc(x1), Math.trunc(y1), Math.trunc(x2 - x1), Math.trunc(y2 - y1)],
        score,
        landmarks: { left_eye: eyes[0], right_eye: eyes[1], nose: [xs[2], ys[2]],
          mouth_left: [xs[3], ys[3]], mouth_right: [xs[4], ys[4]] },
      };
    });
  }

  return { detect: frontDetect(cascade, settings) };
}

/** The detector config.json names (faces.detector: yunet or mtcnn), loaded. */
export async function createDetector(ort, baseUrl, settings) {
  if (settings.detector === 'yunet') return createYunet(ort, baseUrl, settings);
  if (settings.detector === 'mtcnn') return createMtcnn(ort, baseUrl, settings);
  throw new Error(`config.json: faces.detector ${JSON.stringify(settings.detector)} is not one `
    + 'the app runs (yunet, mtcnn)');
}

/**
 * FaceDetector.detect around a detector's raw faces (`raw(rgb, width, height)`): a photo longer
 * than `max_side` searched shrunk to it, the faces scaled back, cut to the photo, filtered by
 * score and size, largest first.
 */
function frontDetect(raw, settings) {
  return async function detect(rgb, width, height) {
    const scale = shrinkScale(width, height, settings.max_side || 0);
    let faces;
    if (scale === 1) {
      faces = await raw(rgb, width, height);
    } else {
      const w = Math.max(1, roundHalfEven(width * scale));
      const h = Math.max(1, roundHalfEven(height * scale));
      faces = (await raw(resizeRgb(rgb, width, height, w, h, 'area'), w, h))
        .map((face) => unscale(face, scale));
    }
    return faces.map((face) => clip(face, width, height))
      .filter((f) => f.score >= settings.score_threshold
        && Math.min(f.box.width, f.box.height) >= settings.min_size)
      .sort((a, b) => b.box.width * b.box.height - a.box.width * a.box.height);
  };
}

// ---------------------------------------------------------------------------------------------
// YuNet (emorec.faces.yunet)

const YUNET_STRIDES = [8, 16, 32];
const YUNET_PAD = 32;
const padded = (side) => Math.max(YUNET_PAD, Math.ceil(side / YUNET_PAD) * YUNET_PAD);

/** RGB bytes as YuNet's input [1, 3, H', W']: BGR 0-255, zero-padded to multiples of 32. */
export function yunetInput(rgb, width, height) {
  const h = padded(height);
  const w = padded(width);
  const data = new Float32Array(3 * h * w);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const s = (y * width + x) * 3;
      const d = y * w + x;
      data[d] = rgb[s + 2];
      data[h * w + d] = rgb[s + 1];
      data[2 * h * w + d] = rgb[s];
    }
  }
  return { data, dims: [1, 3, h, w] };
}

/** Anchors scoring at or above `threshold` as rows [x1, y1, x2, y2, score, 10 landmark
 * coordinates] (yunet.decode): score = sqrt(class x objectness), centre = (cell + offset) x
 * stride, size = exp(offset) x stride. */
export function yunetDecode(outputs, height, width, threshold) {
  const rows = [];
  for (const stride of YUNET_STRIDES) {
    const cols = Math.floor(width / stride);
    const cls = outputs[`cls_${stride}`].data;
    const obj = outputs[`obj_${stride}`].data;
    const bbox = outputs[`bbox_${stride}`].data;
    const kps = outputs[`kps_${stride}`].data;
    const clamp = (v) => Math.min(1, Math.max(0, v));
    for (let i = 0; i < cls.length; i += 1) {
      const score = Math.sqrt(clamp(cls[i]) * clamp(obj[i]));
      if (score < threshold) continue;
      const c = i % cols;
      const r = Math.floor(i / cols);
      const cx = (c + bbox[i * 4]) * stride;
      const cy = (r + bbox[i * 4 + 1]) * stride;
      const w = Math.exp(bbox[i * 4 + 2]) * stride;
      const h = Math.exp(bbox[i * 4 + 3]) * stride;
      const marks = [];
      for (let k = 0; k < 5; k += 1) {
        marks.push((kps[i * 10 + 2 * k] + c) * stride, (kps[i * 10 + 2 * k + 1] + r) * stride);
      }
      rows.push([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score, ...marks]);
    }
  }
  return rows;
}

/**
 * Load YuNet (config.json faces.files.yunet under `baseUrl`) on onnxruntime-web. `settings`:
 * {min_size, score_threshold, candidate_threshold, nms_threshold, input_side, max_side, files}.
 * Returns {detect(rgb, width, height) -> faces, largest first}, faces as createMtcnn's.
 */
export async function createYunet(ort, baseUrl, settings) {
  const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
  const session = await ort.InferenceSession.create(
    new URL(settings.files.yunet, baseUrl).href, options);

  async function run(rgb, width, height) {
    const input = yunetInput(rgb, width, height);
    const outputs = await session.run({
      [session.inputNames[0]]: new ort.Tensor('float32', input.data, input.dims) });
    const rows = yunetDecode(outputs, input.dims[2], input.dims[3], settings.candidate_threshold);
    return nms(rows, settings.nms_threshold).map((i) => {
      const [x1, y1, x2, y2, score, ...m] = rows[i];
      const eyes = [[m[0], m[1]], [m[2], m[3]]].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      return {
        box: [Math.trunc(x1), Math.trunc(y1), Math.trunc(x2 - x1), Math.trunc(y2 - y1)],
        score,
        landmarks: { left_eye: eyes[0], right_eye: eyes[1], nose: [m[4], m[5]],
          mouth_left: [m[6], m[7]], mouth_right: [m[8], m[9]] },
      };
    });
  }

  /** YunetDetector._detect: a photo shorter than input_side enlarged to it (bilinear) first. */
  async function raw(rgb, width, height) {
    const factor = settings.input_side / Math.max(width, height);
    if (factor <= 1) return run(rgb, width, height);
    const w = Math.max(1, roundHalfEven(width * factor));
    const h = Math.max(1, roundHalfEven(height * factor));
    return (await run(resizeRgb(rgb, width, height, w, h, 'linear'), w, h))
      .map((face) => unscale(face, factor));
  }

  return { detect: frontDetect(raw, settings) };
}

/** The factor that brings the longer side down to `maxSide` (1 when it fits, or 0). */
function shrinkScale(width, height, maxSide) {
  const longer = Math.max(width, height);
  return maxSide > 0 && maxSide < longer ? maxSide / longer : 1;
}

/** A raw face found in a photo shrunk by `scale`, in the full photo's pixels. */
function unscale(face, scale) {
  const landmarks = Object.fromEntries(Object.entries(face.landmarks)
    .map(([k, [x, y]]) => [k, [x / scale, y / scale]]));
  return { box: face.box.map((v) => roundHalfEven(v / scale)), score: face.score, landmarks };
}

/** A raw face's box [x, y, w, h] cut to the image (emorec.faces.detectors._clip). */
function clip(face, width, height) {
  const [x, y, w, h] = face.box;
  const left = Math.max(0, x);
  const top = Math.max(0, y);
  const right = Math.min(width, x + w);
  const bottom = Math.min(height, y + h);
  return {
    box: { x: left, y: top, width: Math.max(0, right - left), height: Math.max(0, bottom - top) },
    score: face.score,
    landmarks: face.landmarks,
  };
}

/** Python's round(): halves to even, so sizes and boxes are the service's to the pixel. */
function roundHalfEven(v) {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// ---------------------------------------------------------------------------------------------
// Crops

/** Degrees of the line from the left to the right eye (emorec.faces.eye_angle). */
export function eyeAngle(face) {
  if (!face.landmarks) return 0;
  const [lx, ly] = face.landmarks.left_eye;
  const [rx, ry] = face.landmarks.right_eye;
  return (Math.atan2(ry - ly, rx - lx) * 180) / Math.PI;
}

/**
 * emorec.faces.align_crop: a square of side max(w, h) * (1 + 2 margin) about the face centre,
 * turned so the eyes are level; pixels outside the photo repeat its border. Bilinear sampling at
 * OpenCV's 1/32 pixel steps. Returns {rgba, side, angle}.
 */
export function alignCrop(rgb, width, height, face, margin) {
  const { x, y, width: w, height: h } = face.box;
  const cx = x + w / 2;
  const cy = y + h / 2;
  const side = Math.max(w, h) * (1 + 2 * margin);
  const angle = eyeAngle(face);
  const out = Math.max(1, roundHalfEven(side));
  // cv2.getRotationMatrix2D(centre, angle, 1), then the centre moved to the crop's middle.
  const a = Math.cos((angle * Math.PI) / 180);
  const b = Math.sin((angle * Math.PI) / 180);
  const m = [a, b, (1 - a) * cx - b * cy + side / 2 - cx,
    -b, a, b * cx + (1 - a) * cy + side / 2 - cy];
  // warpAffine samples the source at the inverse map of every crop pixel.
  const det = m[0] * m[4] - m[1] * m[3];
  const inv = det !== 0 ? 1 / det : 0;
  const i0 = m[4] * inv;
  const i1 = -m[1] * inv;
  const i3 = -m[3] * inv;
  const i4 = m[0] * inv;
  const i2 = -i0 * m[2] - i1 * m[5];
  const i5 = -i3 * m[2] - i4 * m[5];
  const rgba = new Uint8ClampedArray(out * out * 4);
  const at = (px, py, c) => rgb[(Math.min(height - 1, Math.max(0, py)) * width
    + Math.min(width - 1, Math.max(0, px))) * 3 + c];
  for (let v = 0; v < out; v += 1) {
    for (let u = 0; u < out; u += 1) {
      const sx = Math.round((i0 * u + i1 * v + i2) * 32);
      const sy = Math.round((i3 * u + i4 * v + i5) * 32);
      const ix = sx >> 5;
      const iy = sy >> 5;
      const fx = (sx & 31) / 32;
      const fy = (sy & 31) / 32;
      const o = (v * out + u) * 4;
      for (let c = 0; c < 3; c += 1) {
        const top = at(ix, iy, c) * (1 - fx) + at(ix + 1, iy, c) * fx;
        const bottom = at(ix, iy + 1, c) * (1 - fx) + at(ix + 1, iy + 1, c) * fx;
        rgba[o + c] = Math.round(top * (1 - fy) + bottom * fy);
      }
      rgba[o + 3] = 255;
    }
  }
  return { rgba, side: out, angle };
}

/** RGBA of a whole RGB image (the face of an upload taken whole). */
function rgbaFromRgb(rgb) {
  const n = rgb.length / 3;
  const rgba = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i += 1) {
    rgba[i * 4] = rgb[i * 3];
    rgba[i * 4 + 1] = rgb[i * 3 + 1];
    rgba[i * 4 + 2] = rgb[i * 3 + 2];
    rgba[i * 4 + 3] = 255;
  }
  return rgba;
}

/**
 * The faces of one photo as the service's find_faces gives them (mode `faces`): none for a flat
 * picture; else every detected face up to `settings.max_faces`, each cut by alignCrop; else, for
 * an upload no larger than `settings.whole_image_max_side`, the whole image as one face (score 0).
 * Returns [{box, score, landmarks, angle, rgba, side}] (crop pixels `side` x `side`).
 */
export async function findFaces(detector, rgba, width, height, settings, margin) {
  const rgb = rgbFromRgba(rgba);
  if (isBlank(rgb, width, height)) return [];
  const faces = (await detector.detect(rgb, width, height)).slice(0, settings.max_faces);
  if (!faces.length && Math.max(width, height) <= settings.whole_image_max_side) {
    return [{ box: { x: 0, y: 0, width, height }, score: 0, landmarks: null, angle: 0,
      rgba: rgbaFromRgb(rgb), width, height }];
  }
  return faces.map((face) => {
    const crop = alignCrop(rgb, width, height, face, margin);
    return { ...face, angle: crop.angle, rgba: crop.rgba, width: crop.side, height: crop.side };
  });
}
