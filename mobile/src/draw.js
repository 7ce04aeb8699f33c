// Boxes and labels drawn over a picture, the same in photo and live mode.

/** A {x, y, width, height} box scaled by `s` (photo pixels -> preview canvas pixels). */
export function scaleBox(box, s) {
  return { x: box.x * s, y: box.y * s, width: box.width * s, height: box.height * s };
}

/** A yellow box per face and its label on a dark tag above it; `faces` is [{box, text}]. */
export function drawFaces(ctx, faces) {
  ctx.lineWidth = Math.max(2, ctx.canvas.width / 240);
  ctx.font = `${Math.max(12, Math.round(ctx.canvas.width / 32))}px system-ui, sans-serif`;
  ctx.textBaseline = 'bottom';
  for (const { box, text } of faces) {
    const { x, y, width, height } = box;
    ctx.strokeStyle = '#ffcc00';
    ctx.strokeRect(x, y, width, height);
    const pad = 4;
    const tw = ctx.measureText(text).width + 2 * pad;
    const th = parseInt(ctx.font, 10) + 2 * pad;
    ctx.fillStyle = 'rgb(0 0 0 / 0.6)';
    ctx.fillRect(x, Math.max(0, y - th), tw, th);
    ctx.fillStyle = '#ffcc00';
    ctx.fillText(text, x + pad, Math.max(th, y) - pad);
  }
}
