// WebGL2 viewer of a decoded inspector scene: coloured points, camera frustums, memory views,
// retrieval links, plus an overlay (the trajectory editor's handles). Orbit / pan / zoom.
// World coordinates follow ARCHITECTURE §3 (OpenCV: y down), so "up" on screen is world −y.

import { apply4, invertRigid, lookAtW2C, mul, poseAxes, projectionFromK, transpose, vec } from "./math3d.js";

export const PALETTE = [
  [0.95, 0.33, 0.31], [0.30, 0.75, 0.40], [0.33, 0.55, 0.98], [0.98, 0.62, 0.20],
  [0.72, 0.42, 0.95], [0.25, 0.85, 0.90], [0.95, 0.40, 0.85], [0.80, 0.90, 0.30],
];
export const MEMORY_COLOR = [0.72, 0.72, 0.72];
export const LINK_COLOR = [1.0, 0.85, 0.2];
export const BACKGROUND = [0.105, 0.105, 0.12];
export const LAYERS = ["points", "trajectories", "keyframes", "memory", "retrieval"];

// Both programs pass a position, a point size and an RGBA colour through one camera matrix; they
// differ only in where those come from (quantised cloud buffers, or the VertexList's floats).
function vertexShader(declarations, position, size, colour) {
  return `#version 300 es
${declarations}
uniform mat4 u_mvp;
out vec4 v_col;
void main() {
  gl_Position = u_mvp * vec4(${position}, 1.0);
  gl_PointSize = ${size};
  v_col = ${colour};
}`;
}
const POINT_VS = vertexShader(
  `layout(location=0) in vec3 a_q;     // uint16 quantised position, normalised to [0, 1]
layout(location=1) in vec3 a_col;   // uint8 colour, normalised
uniform vec3 u_min;
uniform vec3 u_span;
uniform float u_size;`,
  "u_min + a_q * u_span",
  "u_size",
  "vec4(a_col, 1.0)",
);
const LINE_VS = vertexShader(
  `layout(location=0) in vec3 a_pos;
layout(location=1) in vec4 a_col;
layout(location=2) in float a_size;`,
  "a_pos",
  "a_size",
  "a_col",
);
const COLOUR_FS = `#version 300 es
precision mediump float;
in vec4 v_col;
out vec4 o;
void main() { o = v_col; }`;

function compile(gl, vs, fs) {
  const prog = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
    const sh = gl.createShader(type);
    gl.shaderSource(sh, src);
    gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh));
    gl.attachShader(prog, sh);
  }
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
  return prog;
}

/** Growable vertex list for lines and markers: xyz, rgba, size. */
export class VertexList {
  constructor() { this.data = []; }
  push(p, c, size = 1, alpha = 1) { this.data.push(p[0], p[1], p[2], c[0], c[1], c[2], c.length > 3 ? c[3] : alpha, size); }
  line(a, b, c, alpha = 1) { this.push(a, c, 1, alpha); this.push(b, c, 1, alpha); }
  get count() { return this.data.length / 8; }
}

/** World corners of a camera's image plane at depth d: [tl, tr, br, bl]. */
export function frustumCorners(w2c, K, width, height, d) {
  const c2w = invertRigid(w2c);
  const fx = K[0], fy = K[4], cx = K[2], cy = K[5];
  return [[0, 0], [width, 0], [width, height], [0, height]].map(([u, v]) => {
    const pc = [((u - cx) / fx) * d, ((v - cy) / fy) * d, d];
    const pw = apply4(c2w, pc);
    return [pw[0], pw[1], pw[2]];
  });
}

/** Lines of one frustum (apex, image rectangle, and a small "up" tick above the top edge). */
export function addFrustum(list, w2c, K, width, height, d, color, alpha = 1) {
  const { center } = poseAxes(w2c);
  const [tl, tr, br, bl] = frustumCorners(w2c, K, width, height, d);
  for (const c of [tl, tr, br, bl]) list.line(center, c, color, alpha);
  list.line(tl, tr, color, alpha); list.line(tr, br, color, alpha);
  list.line(br, bl, color, alpha); list.line(bl, tl, color, alpha);
  const mid = vec.lerp(tl, tr, 0.5), up = vec.sub(vec.lerp(tl, bl, -0.25), tl);
  list.line(vec.lerp(tl, tr, 0.35), vec.add(mid, up), color, alpha);
  list.line(vec.add(mid, up), vec.lerp(tl, tr, 0.65), color, alpha);
}

/** Scene extent (points' box and camera centres): {center, diag}. */
/**
 * Framing bounds of a scene: the 2nd–98th percentile box of the points (so a few stray points,
 * e.g. depth-edge streaks, do not shrink everything else to a corner) and every camera centre.
 */
export function sceneBounds(scene) {
  let lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  const grow = (p) => { for (let i = 0; i < 3; i++) { lo[i] = Math.min(lo[i], p[i]); hi[i] = Math.max(hi[i], p[i]); } };
  const pts = scene?.points;
  if (pts && pts.count > 0) {
    const step = Math.max(1, Math.floor(pts.count / 20000)), n = Math.ceil(pts.count / step);
    for (let axis = 0; axis < 3; axis++) {
      const q = new Uint16Array(n);
      for (let i = 0, j = 0; j < n; i += step, j++) q[j] = pts.positions[3 * i + axis];
      q.sort();
      const a = pts.bboxMin[axis], span = pts.bboxMax[axis] - a;
      const qlo = a + (q[Math.floor(0.02 * (n - 1))] / 65535) * span, qhi = a + (q[Math.ceil(0.98 * (n - 1))] / 65535) * span;
      const pad = 0.05 * (qhi - qlo);
      lo[axis] = qlo - pad; hi[axis] = qhi + pad;
    }
  }
  for (const cam of scene?.cameras || []) grow(poseAxes(cam.w2c).center);
  if (!isFinite(lo[0])) { lo = [-1, -1, -1]; hi = [1, 1, 1]; }
  const diag = Math.max(vec.norm(vec.sub(hi, lo)), 1e-3);
  // the whole box (outliers included) only sets the far clipping plane
  const full = pts && pts.count > 0 ? vec.norm(vec.sub(pts.bboxMax, pts.bboxMin)) : 0;
  return { center: vec.lerp(lo, hi, 0.5), diag, lo, hi, fullDiag: Math.max(diag, full) };
}

export class Viewer {
  /**
   * @param {HTMLElement} container element the canvas goes into (sized by its parent)
   */
  constructor(container) {
    this.container = container;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "ws-inspector-canvas";
    this.canvas.style.cssText = "width:100%;height:100%;display:block;touch-action:none;outline:none;";
    this.canvas.tabIndex = 0;
    container.appendChild(this.canvas);
    this.gl = this.canvas.getContext("webgl2", { antialias: true, preserveDrawingBuffer: true, alpha: false });
    this.ok = !!this.gl;
    this.scene = null;
    this.layers = Object.fromEntries(LAYERS.map((l) => [l, true]));
    this.pointSize = 2;
    this.orbit = { target: [0, 0, 2], dist: 4, yaw: 0, pitch: 0.15 };
    this.fovY = 50;
    this.overlay = new VertexList();
    this.overlayMarkers = new VertexList();
    this.bounds = sceneBounds(null);
    this.handlers = null; // {down(x, y, ev) -> bool, move(x, y, ev), up(ev)} of the editor
    this.onHover = null;
    this.lastFrameMs = 0;
    this._pending = false;
    if (!this.ok) return;
    const gl = this.gl;
    this.pointProg = compile(gl, POINT_VS, COLOUR_FS);
    this.lineProg = compile(gl, LINE_VS, COLOUR_FS);
    this.pointVao = gl.createVertexArray();
    this.posBuf = gl.createBuffer();
    this.colBuf = gl.createBuffer();
    this.lineVao = gl.createVertexArray();
    this.lineBuf = gl.createBuffer();
    this.overlayVao = gl.createVertexArray();
    this.overlayBuf = gl.createBuffer();
    for (const [vao, buf] of [[this.lineVao, this.lineBuf], [this.overlayVao, this.overlayBuf]]) {
      gl.bindVertexArray(vao);
      gl.bindBuffer(gl.ARRAY_BUFFER, buf);
      gl.enableVertexAttribArray(0); gl.vertexAttribPointer(0, 3, gl.FLOAT, false, 32, 0);
      gl.enableVertexAttribArray(1); gl.vertexAttribPointer(1, 4, gl.FLOAT, false, 32, 12);
      gl.enableVertexAttribArray(2); gl.vertexAttribPointer(2, 1, gl.FLOAT, false, 32, 28);
    }
    gl.bindVertexArray(null);
    this.lineRanges = {};
    this.pointCount = 0;
    this._bindInput();
    this._resizeObserver = new ResizeObserver(() => this.requestRender());
    this._resizeObserver.observe(this.canvas);
  }

  dispose() {
    this._resizeObserver?.disconnect();
    const ext = this.gl?.getExtension("WEBGL_lose_context");
    ext?.loseContext();
  }

  // ---- scene ---------------------------------------------------------------------------------
  setScene(scene, { keepView = false } = {}) {
    this.scene = scene;
    this.bounds = sceneBounds(scene);
    if (!this.ok) return;
    const gl = this.gl;
    const pts = scene?.points;
    this.pointCount = pts ? pts.count : 0;
    if (pts) {
      gl.bindVertexArray(this.pointVao);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuf);
      gl.bufferData(gl.ARRAY_BUFFER, pts.positions, gl.STATIC_DRAW);
      gl.enableVertexAttribArray(0);
      gl.vertexAttribPointer(0, 3, gl.UNSIGNED_SHORT, true, 6, 0);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.colBuf);
      gl.bufferData(gl.ARRAY_BUFFER, pts.colors, gl.STATIC_DRAW);
      gl.enableVertexAttribArray(1);
      gl.vertexAttribPointer(1, 3, gl.UNSIGNED_BYTE, true, 3, 0);
      gl.bindVertexArray(null);
    }
    this._buildLines();
    if (!keepView) this.resetView();
    this.requestRender();
  }

  /** Swap the drawn trajectories (the editor's live preset preview) without re-uploading the points. */
  setTrajectories(trajectories) {
    this.scene = { ...(this.scene || { points: null, memory: null }), trajectories, retrieval: [] };
    if (!this.ok) return;
    this._buildLines();
    this.requestRender();
  }

  frustumDepth() { return 0.06 * this.bounds.diag; }

  trajectoryColor(i) { return PALETTE[i % PALETTE.length]; }

  _buildLines() {
    const s = this.scene, d = this.frustumDepth();
    const layers = { trajectories: new VertexList(), keyframes: new VertexList(), memory: new VertexList(), retrieval: new VertexList() };
    (s?.trajectories || []).forEach((t, ti) => {
      const col = t.color || this.trajectoryColor(ti); // the editor's preset preview brings its own
      const centers = t.poses.map((p) => poseAxes(p.w2c).center);
      for (let i = 0; i + 1 < centers.length; i++) layers.trajectories.line(centers[i], centers[i + 1], col);
      const kf = new Set(t.keyframes);
      t.poses.forEach((p, i) => {
        if (kf.has(i)) addFrustum(layers.keyframes, p.w2c, p.K, t.width, t.height, d, col);
        else if (t.poses.length <= 4) addFrustum(layers.trajectories, p.w2c, p.K, t.width, t.height, d, col, 0.5);
      });
    });
    if (s?.memory) {
      s.memory.poses.forEach((p, i) => {
        const [h, w] = s.memory.sizes[i];
        addFrustum(layers.memory, p.w2c, p.K, w, h, d * 0.8, MEMORY_COLOR, 0.8);
      });
    }
    this.links = [];
    for (const r of s?.retrieval || []) {
      const t = s.trajectories[r.trajectory];
      for (const l of r.links) {
        if (l.pose == null || !s.memory) continue;
        const a = poseAxes(t.poses[l.pose].w2c).center, b = poseAxes(s.memory.poses[l.ref].w2c).center;
        layers.retrieval.line(a, b, LINK_COLOR, l.score == null ? 0.35 : 0.9);
        this.links.push({ a, b, trajectory: r.trajectory, ...l, label: s.memory.labels?.[l.ref] });
      }
    }
    const all = [];
    let first = 0;
    for (const name of ["trajectories", "keyframes", "memory", "retrieval"]) {
      const list = layers[name];
      this.lineRanges[name] = [first, list.count];
      first += list.count;
      all.push(...list.data);
    }
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, this.lineBuf);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array(all), gl.STATIC_DRAW);
    // keyframe centres as dots (part of the keyframes layer)
    this.keyframeDots = new VertexList();
    (s?.trajectories || []).forEach((t, ti) => {
      for (const k of t.keyframes) if (t.poses[k]) this.keyframeDots.push(poseAxes(t.poses[k].w2c).center, (t.color || this.trajectoryColor(ti)), 5);
    });
  }

  /** Editor overlay: line list and marker list (VertexList each), drawn on top. */
  setOverlay(lines, markers) {
    this.overlay = lines || new VertexList();
    this.overlayMarkers = markers || new VertexList();
    this.requestRender();
  }

  setLayer(name, on) { this.layers[name] = on; this.requestRender(); }

  // ---- view ------------------------------------------------------------------------------------
  /** Back to the start view: behind the first trajectory's first camera, looking into the scene. */
  resetView() {
    const b = this.bounds;
    const first = this.scene?.trajectories?.[0]?.poses?.[0] || this.scene?.memory?.poses?.[0];
    if (first) {
      const { center, forward } = poseAxes(first.w2c);
      const depth = Math.max(vec.dot(vec.sub(b.center, center), forward), 0.05 * b.diag);
      this.orbit.target = vec.add(center, vec.scale(forward, depth));
      this.orbit.yaw = Math.atan2(forward[0], forward[2]);
      this.orbit.pitch = Math.asin(Math.max(-0.99, Math.min(0.99, forward[1])));
      this.orbit.dist = depth * 1.3;
    } else {
      this.orbit = { target: b.center.slice(), dist: b.diag * 1.2, yaw: 0, pitch: 0.15 };
    }
    this.poseView = null;
    this.requestRender();
  }

  /** Look through a given camera (w2c, K of a width x height image) until the user moves the view. */
  viewFromPose(w2c, K, width, height) {
    this.poseView = { w2c, K, width, height };
    this.requestRender();
  }

  eye() {
    const { target, dist, yaw, pitch } = this.orbit;
    const f = [Math.cos(pitch) * Math.sin(yaw), Math.sin(pitch), Math.cos(pitch) * Math.cos(yaw)];
    return vec.sub(target, vec.scale(f, dist));
  }

  viewW2C() {
    if (this.poseView) return this.poseView.w2c;
    return lookAtW2C(this.eye(), this.orbit.target, [0, -1, 0]);
  }

  size() {
    const dpr = window.devicePixelRatio || 1;
    return { w: Math.max(1, this.canvas.clientWidth), h: Math.max(1, this.canvas.clientHeight), dpr };
  }

  /** Row-major clip-from-world matrix for the current view. */
  viewProj() {
    const { w, h } = this.size();
    const near = Math.max(1e-4, this.bounds.diag * 1e-3);
    const far = Math.max(this.orbit.dist, 1) + this.bounds.fullDiag * 3 + this.bounds.diag * 3;
    let K;
    if (this.poseView) {
      // keep the pose's field of view, fit its aspect into the canvas
      const pv = this.poseView, s = Math.min(w / pv.width, h / pv.height);
      K = [pv.K[0] * s, 0, pv.K[2] * s + (w - pv.width * s) / 2, 0, pv.K[4] * s, pv.K[5] * s + (h - pv.height * s) / 2, 0, 0, 1];
    } else {
      const f = h / 2 / Math.tan((this.fovY * Math.PI) / 360);
      K = [f, 0, w / 2, 0, f, h / 2, 0, 0, 1];
    }
    return mul(projectionFromK(K, w, h, near, far), this.viewW2C());
  }

  /** CSS-pixel position (x right, y down) and view depth of a world point, or null behind. */
  worldToScreen(p, vp = this.viewProj()) {
    const { w, h } = this.size();
    const c = apply4(vp, p);
    if (c[3] <= 1e-9) return null;
    return [((c[0] / c[3] + 1) / 2) * w, ((1 - c[1] / c[3]) / 2) * h, c[3]];
  }

  /** World point under CSS pixel (x, y) at the same view depth as `ref` (a drag plane). */
  screenToWorld(x, y, ref) {
    const w2c = this.viewW2C();
    const pc = apply4(w2c, ref);
    const z = pc[2];
    const { w, h } = this.size();
    const f = h / 2 / Math.tan((this.fovY * Math.PI) / 360);
    let fx = f, fy = f, cx = w / 2, cy = h / 2;
    if (this.poseView) {
      const pv = this.poseView, s = Math.min(w / pv.width, h / pv.height);
      fx = pv.K[0] * s; fy = pv.K[4] * s; cx = pv.K[2] * s + (w - pv.width * s) / 2; cy = pv.K[5] * s + (h - pv.height * s) / 2;
    }
    const cam = [((x - cx) / fx) * z, ((y - cy) / fy) * z, z];
    const out = apply4(invertRigid(w2c), cam);
    return [out[0], out[1], out[2]];
  }

  // ---- drawing ---------------------------------------------------------------------------------
  requestRender() {
    if (this._pending || !this.ok) return;
    this._pending = true;
    requestAnimationFrame(() => { this._pending = false; this.render(); });
  }

  render() {
    if (!this.ok) return;
    const gl = this.gl;
    const { w, h, dpr } = this.size();
    const W = Math.round(w * dpr), H = Math.round(h * dpr);
    if (this.canvas.width !== W || this.canvas.height !== H) { this.canvas.width = W; this.canvas.height = H; }
    const t0 = performance.now();
    gl.viewport(0, 0, W, H);
    gl.clearColor(...BACKGROUND, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.enable(gl.DEPTH_TEST);
    const mvp = transpose(this.viewProj());
    if (this.layers.points && this.pointCount > 0) {
      const p = this.scene.points;
      gl.useProgram(this.pointProg);
      gl.uniformMatrix4fv(gl.getUniformLocation(this.pointProg, "u_mvp"), false, mvp);
      gl.uniform3fv(gl.getUniformLocation(this.pointProg, "u_min"), p.bboxMin);
      gl.uniform3fv(gl.getUniformLocation(this.pointProg, "u_span"), vec.sub(p.bboxMax, p.bboxMin));
      gl.uniform1f(gl.getUniformLocation(this.pointProg, "u_size"), this.pointSize * dpr);
      gl.bindVertexArray(this.pointVao);
      gl.drawArrays(gl.POINTS, 0, this.pointCount);
    }
    gl.useProgram(this.lineProg);
    gl.uniformMatrix4fv(gl.getUniformLocation(this.lineProg, "u_mvp"), false, mvp);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
    gl.bindVertexArray(this.lineVao);
    for (const [name, [first, count]] of Object.entries(this.lineRanges)) {
      if (count > 0 && this.layers[name]) gl.drawArrays(gl.LINES, first, count);
    }
    const drawList = (list, mode) => {
      if (!list || list.count === 0) return;
      gl.bindVertexArray(this.overlayVao);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.overlayBuf);
      gl.bufferData(gl.ARRAY_BUFFER, new Float32Array(list.data), gl.DYNAMIC_DRAW);
      gl.drawArrays(mode, 0, list.count);
    };
    if (this.layers.keyframes) drawList(this.keyframeDots, gl.POINTS);
    gl.disable(gl.DEPTH_TEST); // editor handles stay visible through the cloud
    drawList(this.overlay, gl.LINES);
    drawList(this.overlayMarkers, gl.POINTS);
    gl.disable(gl.BLEND);
    gl.bindVertexArray(null);
    this.lastFrameMs = performance.now() - t0;
  }

  /**
   * Mean ms per frame over `frames` frames, each waited for: reading one pixel back forces the
   * GPU (or SwiftShader) to finish the frame, which gl.finish alone does not guarantee in Chrome.
   */
  benchmark(frames = 10) {
    const px = new Uint8Array(4), gl = this.gl;
    this.render();
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
    const t0 = performance.now();
    for (let i = 0; i < frames; i++) {
      this.orbit.yaw += 0.01;
      this.render();
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
    }
    return (performance.now() - t0) / frames;
  }

  /** Number of drawn pixels that differ from the background (tests, benchmarks). */
  coveredPixels() {
    const gl = this.gl, W = this.canvas.width, H = this.canvas.height, px = new Uint8Array(W * H * 4);
    this.render();
    gl.readPixels(0, 0, W, H, gl.RGBA, gl.UNSIGNED_BYTE, px);
    const bg = BACKGROUND.map((c) => Math.round(c * 255));
    let n = 0;
    for (let i = 0; i < W * H; i++) {
      if (Math.abs(px[4 * i] - bg[0]) + Math.abs(px[4 * i + 1] - bg[1]) + Math.abs(px[4 * i + 2] - bg[2]) > 24) n++;
    }
    return n;
  }

  screenshotDataURL() {
    this.render();
    return this.canvas.toDataURL("image/png");
  }

  // ---- input -----------------------------------------------------------------------------------
  _local(ev) {
    const r = this.canvas.getBoundingClientRect();
    // canvas mode scales the widget with a CSS transform: map back to CSS pixels of the canvas
    return [((ev.clientX - r.left) * this.canvas.clientWidth) / (r.width || 1),
      ((ev.clientY - r.top) * this.canvas.clientHeight) / (r.height || 1)];
  }

  _bindInput() {
    const c = this.canvas;
    let drag = null;
    const stop = (ev) => { ev.stopPropagation(); };
    c.addEventListener("pointerdown", (ev) => {
      stop(ev);
      ev.preventDefault();
      c.focus({ preventScroll: true });
      const [x, y] = this._local(ev);
      if (ev.button === 0 && this.handlers?.down?.(x, y, ev)) {
        drag = { mode: "editor" };
      } else {
        const pan = ev.button === 1 || ev.button === 2 || ev.shiftKey;
        drag = { mode: pan ? "pan" : "orbit", x, y };
      }
      c.setPointerCapture?.(ev.pointerId);
    });
    c.addEventListener("pointermove", (ev) => {
      const [x, y] = this._local(ev);
      if (!drag) { this.onHover?.(x, y, ev); return; }
      stop(ev);
      if (drag.mode === "editor") { this.handlers?.move?.(x, y, ev); return; }
      const dx = x - drag.x, dy = y - drag.y;
      drag.x = x; drag.y = y;
      if (this.poseView) this._leavePoseView();
      if (drag.mode === "orbit") {
        this.orbit.yaw -= dx * 0.008;
        this.orbit.pitch = Math.max(-1.55, Math.min(1.55, this.orbit.pitch + dy * 0.008));
      } else {
        const { h } = this.size();
        const k = (2 * this.orbit.dist * Math.tan((this.fovY * Math.PI) / 360)) / h;
        const w2c = this.viewW2C();
        const right = [w2c[0], w2c[1], w2c[2]], down = [w2c[4], w2c[5], w2c[6]];
        this.orbit.target = vec.sub(this.orbit.target, vec.add(vec.scale(right, dx * k), vec.scale(down, dy * k)));
      }
      this.requestRender();
    });
    const end = (ev) => {
      if (!drag) return;
      stop(ev);
      if (drag.mode === "editor") this.handlers?.up?.(ev);
      drag = null;
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      ev.stopPropagation();
      if (this.poseView) this._leavePoseView();
      this.orbit.dist *= Math.exp(Math.max(-1, Math.min(1, ev.deltaY * 0.0015)));
      this.orbit.dist = Math.max(this.orbit.dist, this.bounds.diag * 1e-3);
      this.requestRender();
    }, { passive: false });
    c.addEventListener("contextmenu", (ev) => { ev.preventDefault(); ev.stopPropagation(); });
    c.addEventListener("dblclick", (ev) => { ev.stopPropagation(); this.resetView(); });
  }

  /** Turn the pose view into an equivalent orbit view so dragging continues smoothly. */
  _leavePoseView() {
    const { center, forward } = poseAxes(this.poseView.w2c);
    const d = Math.max(this.bounds.diag * 0.3, 1e-3);
    this.orbit.target = vec.add(center, vec.scale(forward, d));
    this.orbit.dist = d;
    this.orbit.yaw = Math.atan2(forward[0], forward[2]);
    this.orbit.pitch = Math.asin(Math.max(-0.99, Math.min(0.99, forward[1])));
    this.poseView = null;
    this.onLeavePoseView?.();
  }
}
