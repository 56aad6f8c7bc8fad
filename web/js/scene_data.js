// Reader of the inspector blob written by worldstereo_core/scene_codec.py (format "WSI1"; the
// Python `decode` there is the reference, and tests/unit/test_scene_codec.py runs this reader
// under node on bytes written by Python). Everything stays in typed arrays viewing one buffer.

export const UI_KEY = "worldstereo_inspector";
export const ROUTE = "/worldstereo/inspector/";

/**
 * Decode a blob into {header, cameras: [{w2c, K}], points: {count, positions: Uint16Array,
 * colors: Uint8Array, bboxMin, bboxMax} | null, trajectories, memory, retrieval, bytes}.
 */
export function decodeScene(buffer) {
  const u8 = new Uint8Array(buffer);
  const magic = String.fromCharCode(u8[0], u8[1], u8[2], u8[3]);
  if (magic !== "WSI1") throw new Error("not an inspector blob (bad magic)");
  const headLen = new DataView(buffer).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(u8.subarray(8, 8 + headLen)));
  const body = 8 + headLen;
  const cam = header.cameras;
  const camF = new Float32Array(buffer, body + cam.offset, cam.count * 25);
  const cameras = [];
  for (let i = 0; i < cam.count; i++) {
    const w2c = new Float64Array(16), K = new Float64Array(9);
    for (let j = 0; j < 16; j++) w2c[j] = camF[i * 25 + j];
    for (let j = 0; j < 9; j++) K[j] = camF[i * 25 + 16 + j];
    cameras.push({ w2c, K });
  }
  let points = null;
  const p = header.points;
  if (p && p.count > 0) {
    points = {
      count: p.count,
      total: p.total,
      stored: p.stored ?? p.total, // points the server holds (what the largest budget can show)
      bboxMin: p.bbox_min,
      bboxMax: p.bbox_max,
      positions: new Uint16Array(buffer, body + p.positions.offset, p.count * 3),
      colors: new Uint8Array(buffer, body + p.colors.offset, p.count * 3),
    };
  }
  const trajectories = header.trajectories.map((t) => ({
    ...t,
    poses: cameras.slice(t.first, t.first + t.count),
  }));
  let memory = null;
  if (header.memory) {
    const m = header.memory;
    // JPEG thumbnails of the memory views (MemoryBank outputs), as Blobs for <img> object URLs
    const thumbnails = (m.thumbnails || []).map((t) => new Blob([new Uint8Array(buffer, body + t.offset, t.bytes)], { type: "image/jpeg" }));
    memory = { ...m, thumbnails, poses: cameras.slice(m.first, m.first + m.count) };
  }
  return { header, cameras, points, trajectories, memory, retrieval: header.retrieval || [], bytes: buffer.byteLength };
}

/**
 * Fetch and decode a token's blob through ComfyUI's api (adds /api and auth headers).
 * `points`: the point budget (the server sends a uniform subsample of that size); omitted, the
 * node's default.
 */
export async function fetchScene(api, token, points = null) {
  if (!/^[0-9a-f]{32}$/.test(token)) throw new Error("bad inspector token");
  const query = Number.isInteger(points) && points > 0 ? `?points=${points}` : "";
  const resp = await api.fetchApi(ROUTE + token + query, { cache: "no-store" });
  if (resp.status === 404) {
    const err = new Error("This preview has expired on the server (it keeps the most recent ones). Run the workflow again.");
    err.expired = true;
    throw err;
  }
  if (!resp.ok) throw new Error(`inspector data request failed: HTTP ${resp.status}`);
  return decodeScene(await resp.arrayBuffer());
}

/** PNG (as an object URL) of the server's GGM render of the token's cloud from one camera. */
export async function fetchRender(api, token, w2c, K, width, height, radius = 0.008) {
  const resp = await api.fetchApi(ROUTE + token + "/render", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ w2c: Array.from(w2c), K: Array.from(K), width, height, radius }),
  });
  if (!resp.ok) throw new Error(`render failed: HTTP ${resp.status} ${await resp.text()}`);
  return URL.createObjectURL(await resp.blob());
}

/**
 * The path a TrajectoryBuilder would build with these preset controls ({preset, median_depth,
 * angle, extent, num_frames}), planned on the server from the run's start camera and cache.
 * Returns a trajectory like decodeScene's: {name, poses: [{w2c, K}], keyframes, width, height, halvings}.
 */
export async function fetchPresetPlan(api, token, controls, signal) {
  const resp = await api.fetchApi(ROUTE + token + "/preset", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(controls),
    signal,
  });
  if (!resp.ok) throw new Error(resp.status === 404 ? "run the workflow once to preview presets live" : await resp.text());
  const plan = await resp.json();
  const poses = plan.w2c.map((w2c, i) => ({ w2c: Float64Array.from(w2c), K: Float64Array.from(plan.K[i]) }));
  return { name: `${plan.name} (preview)`, poses, keyframes: plan.keyframes, width: plan.width, height: plan.height,
           halvings: plan.halvings, medianDepth: plan.median_depth, count: poses.length, first: 0 };
}

/** A synthetic scene of n random coloured points in a unit box (frame-time benchmark, tests). */
export function syntheticScene(n, seed = 1) {
  let s = seed >>> 0;
  const rnd = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296);
  const positions = new Uint16Array(n * 3), colors = new Uint8Array(n * 3);
  for (let i = 0; i < n * 3; i++) {
    positions[i] = (rnd() * 65535) | 0;
    colors[i] = (rnd() * 255) | 0;
  }
  return {
    header: { title: "synthetic" },
    cameras: [],
    points: { count: n, total: n, bboxMin: [-1, -1, 2], bboxMax: [1, 1, 4], positions, colors },
    trajectories: [],
    memory: null,
    retrieval: [],
    bytes: n * 9,
  };
}
