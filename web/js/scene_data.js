// Reader of the inspector blob written by nodes/inspector.py (format "WSI1"; the Python
// `decode` there is the reference). Everything stays in typed arrays viewing one buffer.

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
  const memory = header.memory
    ? { ...header.memory, poses: cameras.slice(header.memory.first, header.memory.first + header.memory.count) }
    : null;
  return { header, cameras, points, trajectories, memory, retrieval: header.retrieval || [], bytes: buffer.byteLength };
}

/** Fetch and decode a token's blob through ComfyUI's api (adds /api and auth headers). */
export async function fetchScene(api, token) {
  if (!/^[0-9a-f]{32}$/.test(token)) throw new Error("bad inspector token");
  const resp = await api.fetchApi(ROUTE + token, { cache: "no-store" });
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
