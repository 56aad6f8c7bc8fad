// Keyframes of the TrajectoryBuilder's `keyframes` widget: parsing, serialising, and the same
// interpolation the server applies (worldstereo_core.trajectory.from_keyframes: piecewise slerp
// of rotations, natural cubic spline of centres with >= 3 keyframes, else linear; uniform times).

import { invertRigid, lookAtW2C, matFromQuat, naturalSpline, poseAxes, quatFromMat, slerp, vec } from "./math3d.js";

const round = (x) => Math.round(x * 1e6) / 1e6;

/**
 * Parse the widget text into editable keyframes: [{position, look_at, up?} | {w2c: Float64Array}].
 * Returns {keyframes, error}; an empty or blank text is an empty list.
 */
export function parseKeyframes(text) {
  if (!text || !String(text).trim()) return { keyframes: [], error: null };
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    return { keyframes: [], error: `keyframes is not valid JSON: ${e.message}` };
  }
  if (!Array.isArray(data)) return { keyframes: [], error: "keyframes must be a JSON list" };
  const out = [];
  for (const [i, kf] of data.entries()) {
    if (kf && Array.isArray(kf.position) && Array.isArray(kf.look_at)) {
      const k = { position: kf.position.map(Number), look_at: kf.look_at.map(Number) };
      if (Array.isArray(kf.up)) k.up = kf.up.map(Number);
      out.push(k);
    } else if (kf && Array.isArray(kf.w2c) && kf.w2c.flat().length === 16) {
      out.push({ w2c: Float64Array.from(kf.w2c.flat().map(Number)) });
    } else {
      return { keyframes: out, error: `keyframe ${i}: needs "position" and "look_at", or "w2c" (4x4)` };
    }
  }
  return { keyframes: out, error: null };
}

/** Widget text for keyframes: one keyframe per line, numbers rounded to 1e-6. */
export function serializeKeyframes(keyframes) {
  const rows = keyframes.map((k) => {
    if (k.w2c) {
      const m = Array.from(k.w2c).map(round);
      return JSON.stringify({ w2c: [m.slice(0, 4), m.slice(4, 8), m.slice(8, 12), m.slice(12, 16)] });
    }
    const o = { position: k.position.map(round), look_at: k.look_at.map(round) };
    if (k.up) o.up = k.up.map(round);
    return JSON.stringify(o);
  });
  return rows.length ? "[\n  " + rows.join(",\n  ") + "\n]" : "";
}

/** w2c of a keyframe (look-at keyframes built like the server's look_at_c2w). */
export function keyframeW2C(k) {
  return k.w2c ? k.w2c : lookAtW2C(k.position, k.look_at, k.up || [0, -1, 0]);
}

/** Camera centre of a keyframe. */
export function keyframePosition(k) {
  return k.w2c ? poseAxes(k.w2c).center : k.position;
}

/** Look-at point of a keyframe (w2c keyframes: `dist` along the optical axis). */
export function keyframeTarget(k, dist = 1) {
  if (!k.w2c) return k.look_at;
  const { center, forward } = poseAxes(k.w2c);
  return vec.add(center, vec.scale(forward, dist));
}

/** Move a keyframe's camera centre, keeping its orientation (look-at keyframes move the eye only). */
export function withPosition(k, p) {
  if (!k.w2c) return { ...k, position: p.slice() };
  const c2w = invertRigid(k.w2c);
  c2w[3] = p[0]; c2w[7] = p[1]; c2w[11] = p[2];
  return { w2c: invertRigid(c2w) };
}

/** Aim a keyframe at a new target (w2c keyframes become look-at keyframes). */
export function withTarget(k, t) {
  return { position: keyframePosition(k).slice(), look_at: t.slice(), ...(k.up ? { up: k.up } : {}) };
}

/** `numFrames` w2c poses through the keyframes, as the server interpolates them. */
export function interpolate(keyframes, numFrames) {
  const n = keyframes.length;
  if (n === 0) return [];
  const w2cs = keyframes.map(keyframeW2C);
  if (n === 1) return Array.from({ length: numFrames }, () => w2cs[0]);
  const c2ws = w2cs.map(invertRigid);
  const quats = c2ws.map(quatFromMat);
  const centers = c2ws.map((m) => [m[3], m[7], m[11]]);
  const ts = keyframes.map((_, i) => i / (n - 1));
  const spline = naturalSpline(ts, centers);
  const out = [];
  for (let f = 0; f < numFrames; f++) {
    const t = numFrames === 1 ? 0 : f / (numFrames - 1);
    let i = Math.min(n - 2, Math.floor(t * (n - 1)));
    const u = (t - ts[i]) / (ts[i + 1] - ts[i]);
    const q = slerp(quats[i], quats[i + 1], Math.max(0, Math.min(1, u)));
    out.push(invertRigid(matFromQuat(q, spline(t))));
  }
  return out;
}

/** Keyframe indices the model uses: linspace(0, F - 1, 21) truncated (the release's rule). */
export function modelKeyframeIndices(F, n = 21) {
  if (F <= n) return Array.from({ length: F }, (_, i) => i);
  return Array.from({ length: n }, (_, i) => Math.floor((i * (F - 1)) / (n - 1)));
}

/** camera.json (upstream format) text for poses sharing one K. */
export function cameraJson(w2cs, Ks) {
  const mat = (m, r, c) => Array.from({ length: r }, (_, i) => Array.from(m).slice(i * c, i * c + c));
  return JSON.stringify({ extrinsic: w2cs.map((m) => mat(m, 4, 4)), intrinsic: Ks.map((k) => mat(k, 3, 3)) }, null, 1);
}

/** Poses of a camera.json text (validated): {w2cs, Ks}. */
export function parseCameraJson(text) {
  const data = JSON.parse(text);
  const ex = data.extrinsic ?? data.extrinsics;
  if (!Array.isArray(ex) || ex.length === 0) throw new Error('camera.json needs a non-empty "extrinsic" list of 4x4 w2c matrices');
  const w2cs = ex.map((m, i) => {
    const flat = m.flat().map(Number);
    if (flat.length !== 16 || flat.some((v) => !isFinite(v))) throw new Error(`extrinsic ${i} is not a finite 4x4 matrix`);
    return Float64Array.from(flat);
  });
  const inn = data.intrinsic ?? data.intrinsics;
  const Ks = Array.isArray(inn) ? inn.map((m) => Float64Array.from(m.flat().map(Number))) : null;
  return { w2cs, Ks };
}

/**
 * Roll a keyframe so that the image's up direction points towards `p` (projected on the image
 * plane). Look-at keyframes keep their target and get an `up`; w2c keyframes become look-at
 * keyframes aimed `dist` along their optical axis. Null when `p` is on the optical axis.
 */
export function withUp(k, p, dist = 1) {
  const w2c = keyframeW2C(k);
  const { center, forward } = poseAxes(w2c);
  const v = vec.sub(p, center);
  const up = vec.sub(v, vec.scale(forward, vec.dot(v, forward)));
  if (vec.norm(up) < 1e-9) return null;
  const look_at = k.w2c ? vec.add(center, vec.scale(forward, dist)) : k.look_at.slice();
  return { position: center.slice(), look_at, up: vec.normalize(up) };
}
