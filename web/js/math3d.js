// Small 3D math for the inspector. Matrices are Float64Array(16) in ROW-major order, the way
// the server writes w2c and K (ARCHITECTURE §3: OpenCV camera x right, y down, z forward).
// Only the GL upload transposes (WebGL wants column-major).

export const vec = {
  add: (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]],
  sub: (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]],
  scale: (a, s) => [a[0] * s, a[1] * s, a[2] * s],
  dot: (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2],
  cross: (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]],
  norm: (a) => Math.hypot(a[0], a[1], a[2]),
  normalize: (a) => {
    const n = Math.hypot(a[0], a[1], a[2]) || 1;
    return [a[0] / n, a[1] / n, a[2] / n];
  },
  lerp: (a, b, t) => [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t],
};

export function identity() {
  const m = new Float64Array(16);
  m[0] = m[5] = m[10] = m[15] = 1;
  return m;
}

export function mul(a, b) {
  const out = new Float64Array(16);
  for (let i = 0; i < 4; i++)
    for (let j = 0; j < 4; j++) {
      let s = 0;
      for (let k = 0; k < 4; k++) s += a[i * 4 + k] * b[k * 4 + j];
      out[i * 4 + j] = s;
    }
  return out;
}

/** Apply a row-major 4x4 to a point; returns [x, y, z, w]. */
export function apply4(m, p) {
  const [x, y, z] = p;
  return [
    m[0] * x + m[1] * y + m[2] * z + m[3],
    m[4] * x + m[5] * y + m[6] * z + m[7],
    m[8] * x + m[9] * y + m[10] * z + m[11],
    m[12] * x + m[13] * y + m[14] * z + m[15],
  ];
}

/** Inverse of a rigid transform [R t; 0 1] (w2c <-> c2w). */
export function invertRigid(m) {
  const out = new Float64Array(16);
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) out[i * 4 + j] = m[j * 4 + i];
  for (let i = 0; i < 3; i++) out[i * 4 + 3] = -(out[i * 4] * m[3] + out[i * 4 + 1] * m[7] + out[i * 4 + 2] * m[11]);
  out[15] = 1;
  return out;
}

export function transpose(m) {
  const out = new Float32Array(16);
  for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) out[j * 4 + i] = m[i * 4 + j];
  return out;
}

/** Camera centre, forward (+z), right (+x) and down (+y) axes of a w2c, in world coordinates. */
export function poseAxes(w2c) {
  const c2w = invertRigid(w2c);
  return {
    center: [c2w[3], c2w[7], c2w[11]],
    right: [c2w[0], c2w[4], c2w[8]],
    down: [c2w[1], c2w[5], c2w[9]],
    forward: [c2w[2], c2w[6], c2w[10]],
  };
}

/**
 * OpenCV look-at: a w2c whose +z points from `eye` to `target`, with `up` (world, default
 * OpenCV world up (0, -1, 0)) mapped as close as possible to the camera's -y.
 * Mirrors worldstereo_core.trajectory.look_at_c2w so the editor draws what the server builds.
 */
export function lookAtW2C(eye, target, up = [0, -1, 0]) {
  const z = vec.normalize(vec.sub(target, eye));
  // right-handed OpenCV frame: x = z × up, y = z × x (the image's up is −y)
  let x = vec.cross(z, up);
  if (vec.norm(x) < 1e-9) x = vec.cross(z, [0, 0, 1]); // looking straight along up
  x = vec.normalize(x);
  const y = vec.cross(z, x);
  const c2w = identity();
  for (let i = 0; i < 3; i++) {
    c2w[i * 4 + 0] = x[i];
    c2w[i * 4 + 1] = y[i];
    c2w[i * 4 + 2] = z[i];
    c2w[i * 4 + 3] = eye[i];
  }
  return invertRigid(c2w);
}

/** GL clip transform for an OpenCV camera with intrinsics K (row-major 3x3) of a w x h image. */
export function projectionFromK(K, w, h, near, far) {
  const fx = K[0], fy = K[4], cx = K[2], cy = K[5];
  // OpenCV camera coords (z forward, y down) straight to clip space; pixel centre convention
  // does not matter at display precision.
  const P = new Float64Array(16);
  P[0] = (2 * fx) / w;
  P[2] = (2 * cx) / w - 1;
  P[5] = (-2 * fy) / h;
  P[6] = 1 - (2 * cy) / h;
  P[10] = (far + near) / (far - near);
  P[11] = (-2 * far * near) / (far - near);
  P[14] = 1;
  return P;
}

/** Symmetric intrinsics for a vertical field of view. */
export function kFromFovY(fovYDeg, w, h) {
  const f = h / 2 / Math.tan((fovYDeg * Math.PI) / 360);
  return [f, 0, w / 2, 0, f, h / 2, 0, 0, 1];
}

/** Quaternion (w, x, y, z) of a row-major 3x3 rotation (upper-left of a 4x4). */
export function quatFromMat(m) {
  const r = (i, j) => m[i * 4 + j];
  const tr = r(0, 0) + r(1, 1) + r(2, 2);
  let w, x, y, z;
  if (tr > 0) {
    const s = Math.sqrt(tr + 1) * 2;
    w = s / 4; x = (r(2, 1) - r(1, 2)) / s; y = (r(0, 2) - r(2, 0)) / s; z = (r(1, 0) - r(0, 1)) / s;
  } else if (r(0, 0) > r(1, 1) && r(0, 0) > r(2, 2)) {
    const s = Math.sqrt(1 + r(0, 0) - r(1, 1) - r(2, 2)) * 2;
    w = (r(2, 1) - r(1, 2)) / s; x = s / 4; y = (r(0, 1) + r(1, 0)) / s; z = (r(0, 2) + r(2, 0)) / s;
  } else if (r(1, 1) > r(2, 2)) {
    const s = Math.sqrt(1 + r(1, 1) - r(0, 0) - r(2, 2)) * 2;
    w = (r(0, 2) - r(2, 0)) / s; x = (r(0, 1) + r(1, 0)) / s; y = s / 4; z = (r(1, 2) + r(2, 1)) / s;
  } else {
    const s = Math.sqrt(1 + r(2, 2) - r(0, 0) - r(1, 1)) * 2;
    w = (r(1, 0) - r(0, 1)) / s; x = (r(0, 2) + r(2, 0)) / s; y = (r(1, 2) + r(2, 1)) / s; z = s / 4;
  }
  return [w, x, y, z];
}

export function matFromQuat(q, t = [0, 0, 0]) {
  const [w, x, y, z] = q;
  const m = identity();
  m[0] = 1 - 2 * (y * y + z * z); m[1] = 2 * (x * y - w * z); m[2] = 2 * (x * z + w * y);
  m[4] = 2 * (x * y + w * z); m[5] = 1 - 2 * (x * x + z * z); m[6] = 2 * (y * z - w * x);
  m[8] = 2 * (x * z - w * y); m[9] = 2 * (y * z + w * x); m[10] = 1 - 2 * (x * x + y * y);
  m[3] = t[0]; m[7] = t[1]; m[11] = t[2];
  return m;
}

export function slerp(a, b, t) {
  let d = a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
  if (d < 0) { b = b.map((v) => -v); d = -d; }
  if (d > 0.9995) {
    const r = a.map((v, i) => v + (b[i] - v) * t);
    const n = Math.hypot(...r);
    return r.map((v) => v / n);
  }
  const th = Math.acos(d), s = Math.sin(th);
  const wa = Math.sin((1 - t) * th) / s, wb = Math.sin(t * th) / s;
  return a.map((v, i) => wa * v + wb * b[i]);
}

/**
 * Natural cubic spline through points ys[i] (arrays of 3) at increasing times ts; returns a
 * function t -> point. Same interpolant as scipy's CubicSpline(bc_type="natural"), which the
 * server uses for keyframe centres, so the editor's preview path is the server's path.
 */
export function naturalSpline(ts, ys) {
  const n = ts.length;
  if (n < 3) {
    return (t) => {
      if (n === 1) return ys[0].slice();
      const u = (t - ts[0]) / (ts[1] - ts[0]);
      return vec.lerp(ys[0], ys[1], u);
    };
  }
  const dim = ys[0].length;
  const h = [];
  for (let i = 0; i < n - 1; i++) h.push(ts[i + 1] - ts[i]);
  const M = []; // second derivatives per dimension
  for (let d = 0; d < dim; d++) {
    // tridiagonal system for interior second derivatives (M0 = Mn-1 = 0)
    const a = new Float64Array(n), b = new Float64Array(n), c = new Float64Array(n), r = new Float64Array(n);
    b[0] = b[n - 1] = 1;
    for (let i = 1; i < n - 1; i++) {
      a[i] = h[i - 1];
      b[i] = 2 * (h[i - 1] + h[i]);
      c[i] = h[i];
      r[i] = 6 * ((ys[i + 1][d] - ys[i][d]) / h[i] - (ys[i][d] - ys[i - 1][d]) / h[i - 1]);
    }
    for (let i = 1; i < n; i++) {
      const m = a[i] / b[i - 1];
      b[i] -= m * c[i - 1];
      r[i] -= m * r[i - 1];
    }
    const x = new Float64Array(n);
    x[n - 1] = r[n - 1] / b[n - 1];
    for (let i = n - 2; i >= 0; i--) x[i] = (r[i] - c[i] * x[i + 1]) / b[i];
    M.push(x);
  }
  return (t) => {
    let i = 0;
    while (i < n - 2 && t > ts[i + 1]) i++;
    const u = t - ts[i], hi = h[i], out = [];
    for (let d = 0; d < dim; d++) {
      const y0 = ys[i][d], y1 = ys[i + 1][d], m0 = M[d][i], m1 = M[d][i + 1];
      const bcoef = (y1 - y0) / hi - (hi * (2 * m0 + m1)) / 6;
      out.push(y0 + bcoef * u + (m0 / 2) * u * u + ((m1 - m0) / (6 * hi)) * u * u * u);
    }
    return out;
  };
}
