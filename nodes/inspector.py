"""Data path of the browser scene inspector: a token registry and a binary route.

A node that wants its result shown in the inspector calls :func:`publish` in ``execute``; it
encodes the cloud, trajectories, memory-bank cameras and retrieval links into one compact
binary blob, keeps it in an in-memory registry under a random token, and returns the UI entry
(``{"worldstereo_inspector": [{"token": …}]}``) that the node merges into ``ui=``. The browser
(``web/js/inspector.js``) receives the token with the ``executed`` message and fetches
``GET /worldstereo/inspector/<token>``.

Only blobs produced by this server's executions can be fetched: the token is the only thing
the route takes, it is matched against a fixed pattern and looked up in a dict — no part of the
request ever reaches the file system. The registry is bounded (entries and bytes; least
recently used dropped first) and so is every blob (points are subsampled to a budget).

Blob layout (little endian), version 1::

    b"WSI1" | uint32 header_bytes | header JSON (utf-8, space-padded to 4 bytes) | body

Body sections (offsets in the header are relative to the body start, 4-byte aligned):

* ``cameras``: float32 ``[P, 25]`` — each pose's w2c ``[4, 4]`` then K ``[3, 3]``, row-major;
  trajectories and memory views index into it (``first``, ``count``).
* ``points.positions``: uint16 ``[N, 3]``, quantised in the cloud's bounding box
  (``p = bbox_min + q / 65535 · (bbox_max − bbox_min)``), so 6 bytes per point.
* ``points.colors``: uint8 ``[N, 3]`` (sRGB as stored in the cloud).

Nine bytes per point in all; 500 k points are 4.5 MB.

This module imports no ComfyUI code at import time (only :func:`register_routes` touches
``server.PromptServer``), so it can be loaded by path in tests.
"""

from __future__ import annotations

import io as _io
import json
import logging
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import InvalidCameraError, InvalidPointCloudError, InvalidTrajectoryError
from worldstereo_core.pointcloud import PointCloud

log = logging.getLogger("worldstereo.inspector")

MAGIC = b"WSI1"
FORMAT_VERSION = 1
ROUTE = "/worldstereo/inspector"
UI_KEY = "worldstereo_inspector"

DEFAULT_MAX_POINTS = 200_000
HARD_MAX_POINTS = 2_000_000  # 18 MB per blob at most
MAX_POSES = 8192  # poses of all trajectories and memory views together
MAX_ENTRIES = 48
MAX_TOTAL_BYTES = 384 * 2**20
MAX_RENDER_PIXELS = 1024 * 1024
BYTES_PER_POINT = 9

TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One published result: its blob and the (subsampled) cloud, for server-side renders."""

    token: str
    data: bytes
    cloud: PointCloud | None
    created: float


class Registry:
    """Thread-safe LRU map token → :class:`Entry`, bounded in entries and bytes.

    Nodes publish from ComfyUI's worker thread while the route reads on the event loop, hence
    the lock. The newest entry is always kept, even if alone it exceeds ``max_bytes``.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_TOTAL_BYTES):
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes, cloud: PointCloud | None = None) -> str:
        token = secrets.token_hex(16)
        entry = Entry(token, bytes(data), cloud, time.time())
        with self._lock:
            self._items[token] = entry
            self._bytes += len(entry.data)
            while len(self._items) > 1 and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.data)
        return token

    def get(self, token: str) -> Entry | None:
        if not isinstance(token, str) or not TOKEN_RE.match(token):
            return None
        with self._lock:
            entry = self._items.get(token)
            if entry is not None:
                self._items.move_to_end(token)
            return entry

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


REGISTRY = Registry()


# ---------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------


def subsample(cloud: PointCloud, max_points: int, seed: int = 0) -> PointCloud:
    """At most ``max_points`` points of ``cloud``, drawn uniformly without replacement.

    Deterministic for a given seed (the same cloud gives the same preview). Uniform sampling
    keeps the density pattern of the cloud, which is what the user wants to inspect.
    """
    n = len(cloud)
    if n <= max_points:
        return cloud
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:max_points].sort().values
    return cloud.select(idx.to(cloud.device))


def _check_budget(max_points: int) -> int:
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)):
        raise InvalidPointCloudError(f"preview max_points must be an integer, got {max_points!r}")
    if not 1 <= int(max_points) <= HARD_MAX_POINTS:
        raise InvalidPointCloudError(
            f"preview max_points must be between 1 and {HARD_MAX_POINTS}, got {max_points}; "
            "lower it (the browser draws every point it receives)"
        )
    return int(max_points)


def _as_trajectory_list(trajectories: Any) -> list[Any]:
    if trajectories is None:
        return []
    if not isinstance(trajectories, (list, tuple)):
        trajectories = [trajectories]
    out = []
    for i, t in enumerate(trajectories):
        cams = getattr(t, "cameras", t)
        if not isinstance(cams, Cameras):
            raise InvalidTrajectoryError(
                f"inspector trajectory {i} is a {type(t).__name__}; give a Trajectory or a Cameras batch"
            )
        out.append(t)
    return out


def _keyframe_indices(t: Any) -> list[int]:
    if hasattr(t, "keyframe_indices"):
        return [int(i) for i in t.keyframe_indices()]
    return list(range(len(t)))


def _memory_views(memory: Any) -> tuple[np.ndarray, np.ndarray, list[list[int]], list[str]]:
    """``(w2c [M,4,4], K [M,3,3], sizes [[h, w]]·M, labels)`` of a MemoryBank or Cameras."""
    if isinstance(memory, Cameras):
        n = len(memory)
        return (memory.w2c.detach().cpu().double().numpy(), memory.K.detach().cpu().double().numpy(),
                [[memory.height, memory.width]] * n, [f"view {i}" for i in range(n)])
    if all(hasattr(memory, k) for k in ("w2c", "K", "sizes")):
        sizes = [[int(h), int(w)] for h, w in memory.sizes.tolist()]
        labels = [str(s) for s in getattr(memory, "sources", [f"view {i}" for i in range(len(sizes))])]
        return (torch.as_tensor(memory.w2c).detach().cpu().double().numpy(),
                torch.as_tensor(memory.K).detach().cpu().double().numpy(), sizes, labels)
    raise InvalidCameraError(f"inspector memory must be a MemoryBank or a Cameras batch, got {type(memory).__name__}")


def _retrieval_links(retrieval: Any, trajs: list[Any], n_memory: int) -> list[dict]:
    """Links target keyframe pose → memory view, one list per (trajectory, Retrieval) pair."""
    if retrieval is None:
        return []
    items = retrieval if isinstance(retrieval, (list, tuple)) else [retrieval]
    out = []
    for ti, r in enumerate(items):
        if r is None:
            continue
        if ti >= len(trajs):
            raise InvalidTrajectoryError(
                f"{len(items)} retrieval results but {len(trajs)} trajectories; give one trajectory per retrieval"
            )
        # retrieval scores poses 0::4 of trajectories longer than 21 poses (the release's
        # keyframes of an 81-pose clip), else every pose; a slot counts those poses
        n_poses = len(getattr(trajs[ti], "cameras", trajs[ti]))
        kf = list(range(0, n_poses, 4)) if n_poses > 21 else list(range(n_poses))
        if hasattr(r, "assignment"):  # a Retrieval: every keyframe's choice
            assign = [int(a) for a in torch.as_tensor(r.assignment).tolist()]
            slots = [int(s) for s in torch.as_tensor(r.slots).tolist()]
            refs = [int(i) for i in torch.as_tensor(r.indices).tolist()]
            ref_score = {(int(i), int(s)): float(sc) for i, s, sc in zip(
                refs, torch.as_tensor(r.ref_slot).tolist(), torch.as_tensor(r.scores).tolist())}
        elif hasattr(r, "bank_indices") and hasattr(r, "ref_index"):  # the loop's References: first choices
            refs = [int(i) for i in torch.as_tensor(r.bank_indices).tolist()]
            slots = [int(i) + 1 for i in torch.as_tensor(r.ref_index).tolist()]
            assign, ref_score = refs, {}
        else:
            raise InvalidTrajectoryError(
                f"inspector retrieval must be a Retrieval or References, got {type(r).__name__}"
            )
        links = []
        for slot, ref in zip(slots, assign):
            if not 0 <= ref < n_memory:
                raise InvalidCameraError(
                    f"retrieval chose memory view {ref} but the memory has {n_memory} views; "
                    "connect the memory bank the retrieval was computed on"
                )
            pose = kf[slot] if 0 <= slot < len(kf) else None
            links.append({"slot": slot, "pose": pose, "ref": ref, "score": ref_score.get((ref, slot))})
        out.append({"trajectory": ti, "references": refs, "links": links})
    return out


def encode(
    cloud: PointCloud | None = None,
    trajectories: Any = (),
    memory: Any = None,
    retrieval: Any = None,
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "",
) -> tuple[bytes, PointCloud | None]:
    """The inspector blob for a scene, and the subsampled cloud it carries.

    Args:
        cloud: point cloud (``points [N, 3]``, ``colors [N, 3]`` in [0, 1]); subsampled to
            ``max_points``.
        trajectories: a Trajectory / Cameras, or a sequence of them; each is drawn as frustums
            in its own colour, its 21 keyframes marked.
        memory: a MemoryBank or Cameras: the memory-bank views, drawn in grey.
        retrieval: a Retrieval (or the scene loop's References), or one per trajectory (None to
            skip): links from each target keyframe to the memory view it retrieved. References
            carry only each reference's first keyframe, and no score.
    """
    max_points = _check_budget(max_points)
    trajs = _as_trajectory_list(trajectories)
    header: dict[str, Any] = {"version": FORMAT_VERSION, "title": str(title)[:200]}
    cam_rows: list[np.ndarray] = []

    def add_cameras(w2c: np.ndarray, K: np.ndarray) -> int:
        first = sum(len(r) for r in cam_rows)
        cam_rows.append(np.concatenate([w2c.reshape(-1, 16), K.reshape(-1, 9)], axis=1))
        return first

    tr_meta = []
    for i, t in enumerate(trajs):
        cams: Cameras = getattr(t, "cameras", t)
        first = add_cameras(cams.w2c.detach().cpu().double().numpy(), cams.K.detach().cpu().double().numpy())
        tr_meta.append({"name": str(getattr(t, "name", "") or f"trajectory {i}")[:120], "first": first,
                        "count": len(cams), "height": cams.height, "width": cams.width,
                        "keyframes": _keyframe_indices(t)})
    header["trajectories"] = tr_meta

    header["memory"] = None
    n_memory = 0
    if memory is not None:
        w2c, K, sizes, labels = _memory_views(memory)
        n_memory = len(w2c)
        first = add_cameras(w2c, K)
        header["memory"] = {"first": first, "count": n_memory, "sizes": sizes, "labels": [s[:80] for s in labels]}
    header["retrieval"] = _retrieval_links(retrieval, trajs, n_memory)

    n_poses = sum(len(r) for r in cam_rows)
    if n_poses > MAX_POSES:
        raise InvalidTrajectoryError(
            f"the inspector takes at most {MAX_POSES} poses in all, got {n_poses}; preview fewer trajectories"
        )
    cameras = np.concatenate(cam_rows).astype("<f4") if cam_rows else np.zeros((0, 25), "<f4")

    sections: list[bytes] = []
    offset = 0

    def add_section(buf: bytes) -> dict:
        nonlocal offset
        meta = {"offset": offset, "bytes": len(buf)}
        pad = (-len(buf)) % 4
        sections.append(buf + b"\0" * pad)
        offset += len(buf) + pad
        return meta

    header["cameras"] = {**add_section(cameras.tobytes()), "count": int(cameras.shape[0])}

    shown = None
    header["points"] = None
    if cloud is not None:
        if not isinstance(cloud, PointCloud):
            raise InvalidPointCloudError(f"inspector cloud must be a PointCloud, got {type(cloud).__name__}")
        shown = subsample(cloud, max_points)
        p = shown.points.detach().cpu().double().numpy()
        c = shown.colors.detach().cpu().double().numpy()
        lo = p.min(0) if len(p) else np.zeros(3)
        hi = p.max(0) if len(p) else np.zeros(3)
        span = np.where(hi > lo, hi - lo, 1.0)
        q = np.rint((p - lo) / span * 65535.0).clip(0, 65535).astype("<u2")
        rgb = np.rint(np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint8)
        header["points"] = {
            "count": int(len(p)), "total": int(len(cloud)),
            "bbox_min": lo.tolist(), "bbox_max": hi.tolist(),
            "positions": add_section(q.tobytes()), "colors": add_section(rgb.tobytes()),
        }

    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    head += b" " * ((-len(head)) % 4)
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(sections), shown


def decode(data: bytes) -> dict:
    """Python reader of the blob (the reference for ``web/js/scene_data.js``; used by tests).

    Returns the header with numpy arrays added: ``cameras_w2c [P, 4, 4]``, ``cameras_K
    [P, 3, 3]``, and when there are points ``points_xyz [N, 3]`` (dequantised) and
    ``points_rgb [N, 3]`` uint8.
    """
    if len(data) < 8 or data[:4] != MAGIC:
        raise ValueError("not an inspector blob (bad magic)")
    (n,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    cam = header["cameras"]
    arr = np.frombuffer(body[cam["offset"]:cam["offset"] + cam["bytes"]], "<f4").reshape(-1, 25)
    header["cameras_w2c"] = arr[:, :16].reshape(-1, 4, 4).astype(np.float64)
    header["cameras_K"] = arr[:, 16:].reshape(-1, 3, 3).astype(np.float64)
    pts = header.get("points")
    if pts:
        q = np.frombuffer(body[pts["positions"]["offset"]:][:pts["positions"]["bytes"]], "<u2").reshape(-1, 3)
        lo, hi = np.array(pts["bbox_min"]), np.array(pts["bbox_max"])
        header["points_xyz"] = lo + q.astype(np.float64) / 65535.0 * (hi - lo)
        header["points_rgb"] = np.frombuffer(body[pts["colors"]["offset"]:][:pts["colors"]["bytes"]], np.uint8).reshape(-1, 3)
    return header


def publish(
    cloud: PointCloud | None = None,
    trajectories: Any = (),
    memory: Any = None,
    retrieval: Any = None,
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "",
    registry: Registry | None = None,
) -> dict:
    """Encode a scene for the inspector, register it, and return the node's UI entry.

    Merge the result into the node's ``ui=``: ``io.NodeOutput(..., ui=publish(cloud=c))``
    (or ``{**other_ui, **publish(...)}``). The entry is ``{"worldstereo_inspector": [{"token",
    "points", "total_points", "trajectories", "bytes"}]}``; the browser fetches the token.
    """
    reg = REGISTRY if registry is None else registry
    data, shown = encode(cloud, trajectories, memory, retrieval, max_points, title)
    token = reg.put(data, shown)
    head = decode_header(data)
    pts = head.get("points") or {}
    return {UI_KEY: [{
        "token": token,
        "points": int(pts.get("count", 0)),
        "total_points": int(pts.get("total", 0)),
        "trajectories": len(head["trajectories"]),
        "bytes": len(data),
    }]}


def decode_header(data: bytes) -> dict:
    (n,) = struct.unpack("<I", data[4:8])
    return json.loads(data[8:8 + n])


# ---------------------------------------------------------------------------------------------
# server-side render of the stored cloud (the timeline's "view from this pose")
# ---------------------------------------------------------------------------------------------


def parse_render_request(body: Any) -> tuple[Cameras, float]:
    """Validated ``(camera, radius)`` from a render request ``{"w2c": 16, "K": 9, "height",
    "width", "radius"?}``; raises :class:`InvalidCameraError` for anything else."""
    if not isinstance(body, dict):
        raise InvalidCameraError("render request must be a JSON object with w2c, K, height, width")
    try:
        w2c = torch.tensor(body["w2c"], dtype=torch.float64).reshape(4, 4)
        K = torch.tensor(body["K"], dtype=torch.float64).reshape(3, 3)
        h, w = int(body["height"]), int(body["width"])
        radius = float(body.get("radius", 0.008))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise InvalidCameraError(f"render request needs w2c (16 numbers), K (9), height, width: {e}") from None
    if not (16 <= h and 16 <= w and h * w <= MAX_RENDER_PIXELS):
        raise InvalidCameraError(f"render size {h}×{w} out of range (16 px to {MAX_RENDER_PIXELS} pixels)")
    if not (0 < radius <= 0.1) or not torch.isfinite(w2c).all() or not torch.isfinite(K).all():
        raise InvalidCameraError("render request has a non-finite pose or a radius outside (0, 0.1]")
    return Cameras(w2c[None], K[None], h, w), radius


def render_png(cloud: PointCloud, camera: Cameras, radius: float) -> bytes:
    """PNG of the cloud seen from ``camera`` with the GGM splatting renderer."""
    from PIL import Image

    from worldstereo_core import render as render_lib

    out = render_lib.render_point_cloud(cloud.to(dtype=torch.float32), camera.to(dtype=torch.float32), radius=radius)
    rgb = (out.rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buf = _io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# aiohttp routes
# ---------------------------------------------------------------------------------------------


def make_handlers(registry: Registry | None = None):
    """``(get_blob, post_render)`` aiohttp handlers bound to a registry (tests pass their own)."""
    from aiohttp import web

    def reg() -> Registry:
        return REGISTRY if registry is None else registry

    def lookup(request) -> Entry:
        entry = reg().get(request.match_info.get("token", ""))
        if entry is None:
            # Same answer for malformed and unknown tokens: nothing to learn by probing.
            raise web.HTTPNotFound(text="unknown or expired inspector token; run the workflow again")
        return entry

    async def get_blob(request):
        entry = lookup(request)
        return web.Response(body=entry.data, content_type="application/octet-stream",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    async def post_render(request):
        import asyncio

        entry = lookup(request)
        if entry.cloud is None or len(entry.cloud) == 0:
            raise web.HTTPNotFound(text="this inspector output has no point cloud to render")
        if request.content_length is None or request.content_length > 16384:
            raise web.HTTPRequestEntityTooLarge(max_size=16384, actual_size=request.content_length or 0)
        try:
            camera, radius = parse_render_request(await request.json())
        except (ValueError, InvalidCameraError) as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        png = await asyncio.get_running_loop().run_in_executor(None, render_png, entry.cloud, camera, radius)
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})

    return get_blob, post_render


_registered = False


def register_routes() -> None:
    """Add the inspector routes to ComfyUI's server (idempotent; call at pack import).

    ``GET  /worldstereo/inspector/{token}``        → the blob (application/octet-stream)
    ``POST /worldstereo/inspector/{token}/render`` → PNG of the cloud from a camera (JSON body)

    ComfyUI also mounts both under ``/api``.
    """
    global _registered
    if _registered:
        return
    try:
        from server import PromptServer
    except ImportError:  # not inside ComfyUI
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return
    get_blob, post_render = make_handlers()
    instance.routes.get(ROUTE + "/{token}")(get_blob)
    instance.routes.post(ROUTE + "/{token}/render")(post_render)
    _registered = True
