"""Data path of the browser scene inspector: a token registry and its routes.

A node that wants its result shown in the inspector calls :func:`publish` in ``execute``; it
encodes the cloud, trajectories, memory-bank views and retrieval links (:func:`encode_scene`),
keeps them in an in-memory registry under a random token, and returns the UI entry
(``{"worldstereo_inspector": [{"token": …}]}``) that the node merges into ``ui=``. The browser
(``web/js/inspector.js``) receives the token with the ``executed`` message and fetches
``GET /worldstereo/inspector/<token>?points=<budget>``: the user's point budget is applied on
the server, as a prefix of the stored points (kept in random order, so every prefix is a
uniform subsample).

Only scenes produced by this server's executions can be fetched: the token is the only thing
the routes take from the path, it is matched against a fixed pattern and looked up in a dict —
no part of the request ever reaches the file system. The registry is bounded (entries and
bytes; least recently used dropped first) and so is every scene (at most
:data:`HARD_MAX_POINTS` points, :data:`MAX_POSES` poses, :data:`MAX_THUMBNAILS` thumbnails).

Blob layout (little endian), version 1::

    b"WSI1" | uint32 header_bytes | header JSON (utf-8, space-padded to 4 bytes) | body

Body sections (offsets in the header are relative to the body start, 4-byte aligned):

* ``cameras``: float32 ``[P, 25]`` — each pose's w2c ``[4, 4]`` then K ``[3, 3]``, row-major;
  trajectories and memory views index into it (``first``, ``count``).
* ``memory.thumbnails``: one JPEG per memory-bank view (longer side 160 px), when the memory
  is a MemoryBank.
* ``points.positions``: uint16 ``[N, 3]``, quantised in the stored points' bounding box
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
import math
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import (InvalidCameraError, InvalidPointCloudError, InvalidTrajectoryError,
                                     WorldStereoError)
from worldstereo_core.pointcloud import PointCloud
from worldstereo_core.trajectory import keyframe_indices

log = logging.getLogger("worldstereo.inspector")

MAGIC = b"WSI1"
FORMAT_VERSION = 1
ROUTE = "/worldstereo/inspector"
UI_KEY = "worldstereo_inspector"

DEFAULT_MAX_POINTS = 200_000
HARD_MAX_POINTS = 2_000_000  # 18 MB per blob at most
MAX_POSES = 8192  # poses of all trajectories and memory views together
MAX_ENTRIES = 48
MAX_TOTAL_BYTES = 512 * 2**20
MAX_RENDER_PIXELS = 1024 * 1024
MAX_PRESET_FRAMES = 1024
MAX_REQUEST_BYTES = 16384
MAX_THUMBNAILS = 256  # memory views with a JPEG thumbnail (more: frustums only)
THUMBNAIL_SIDE = 160
BYTES_PER_POINT = 9

TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")


# ---------------------------------------------------------------------------------------------
# encoded scenes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PresetPlanner:
    """What the live preset preview needs from a TrajectoryBuilder run.

    Attributes:
        start: the start camera (one pose) the presets begin at.
        depth_median: median of the connected depth (None when no depth was connected); used
            when the request's ``median_depth`` is 0, as the node does.
    """

    start: Cameras
    depth_median: float | None = None


@dataclass(frozen=True, eq=False)
class EncodedScene:
    """A published scene: everything but the points already laid out as blob sections, and the
    points quantised in a random order, so that any prefix is a uniform subsample and the
    browser's point budget is a slice (no re-sampling per request).

    Attributes:
        header: blob header without ``points`` (cameras, trajectories, memory, retrieval, …).
        body: the non-point sections (cameras, memory thumbnails), 4-byte aligned.
        positions: uint16 ``[N, 3]`` quantised in the bbox, in random order.
        colors: uint8 ``[N, 3]``, same order.
        bbox_min, bbox_max: the quantisation box (of the stored points).
        total: points of the cloud before it was capped to :data:`HARD_MAX_POINTS`.
    """

    header: dict
    body: bytes
    positions: np.ndarray
    colors: np.ndarray
    bbox_min: tuple[float, float, float]
    bbox_max: tuple[float, float, float]
    total: int

    @property
    def stored_points(self) -> int:
        return int(len(self.positions))

    @property
    def nbytes(self) -> int:
        return len(self.body) + self.positions.nbytes + self.colors.nbytes + 1024

    def blob(self, max_points: int = DEFAULT_MAX_POINTS) -> bytes:
        """The wire format (module docstring) with the first ``max_points`` stored points."""
        n = min(_check_budget(max_points), self.stored_points)
        header = dict(self.header)
        sections = [self.body]
        offset = len(self.body)
        header["points"] = None
        if self.total > 0:
            q = self.positions[:n].tobytes()
            c = self.colors[:n].tobytes()
            qpad, cpad = (-len(q)) % 4, (-len(c)) % 4
            header["points"] = {
                "count": n, "total": self.total, "stored": self.stored_points,
                "bbox_min": list(self.bbox_min), "bbox_max": list(self.bbox_max),
                "positions": {"offset": offset, "bytes": len(q)},
                "colors": {"offset": offset + len(q) + qpad, "bytes": len(c)},
            }
            sections += [q, b"\0" * qpad, c, b"\0" * cpad]
        head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        head += b" " * ((-len(head)) % 4)
        return MAGIC + struct.pack("<I", len(head)) + head + b"".join(sections)

    def cloud(self) -> PointCloud | None:
        """The stored points, dequantised (float32), for server-side renders and planning."""
        if self.stored_points == 0:
            return None
        lo = torch.tensor(self.bbox_min, dtype=torch.float32)
        step = (torch.tensor(self.bbox_max, dtype=torch.float32) - lo) / 65535.0
        xyz = torch.from_numpy(self.positions.astype(np.float32)) * step + lo
        return PointCloud(xyz, torch.from_numpy(self.colors).float() / 255.0)


def subsample_order(n: int, max_points: int, seed: int = 0) -> torch.Tensor:
    """At most ``max_points`` indices of ``range(n)``, without replacement, in random order.

    Deterministic for a given seed (the same cloud gives the same preview); any prefix of the
    result is a uniform subsample, which keeps the cloud's density pattern at every budget.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_points]


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
    """The model's keyframes of a Trajectory or a Cameras batch (one definition for all)."""
    return [int(i) for i in keyframe_indices(len(getattr(t, "cameras", t)))]


def _memory_views(memory: Any) -> tuple[np.ndarray, np.ndarray, list[list[int]], list[str], Sequence[Any]]:
    """``(w2c [M,4,4], K [M,3,3], sizes [[h, w]]·M, labels, frames)`` of a MemoryBank or Cameras
    (a Cameras batch has no frames)."""
    if isinstance(memory, Cameras):
        n = len(memory)
        return (memory.w2c.detach().cpu().double().numpy(), memory.K.detach().cpu().double().numpy(),
                [[memory.height, memory.width]] * n, [f"view {i}" for i in range(n)], ())
    if all(hasattr(memory, k) for k in ("w2c", "K", "sizes")):
        sizes = [[int(h), int(w)] for h, w in memory.sizes.tolist()]
        labels = [str(s) for s in getattr(memory, "sources", [f"view {i}" for i in range(len(sizes))])]
        return (torch.as_tensor(memory.w2c).detach().cpu().double().numpy(),
                torch.as_tensor(memory.K).detach().cpu().double().numpy(), sizes, labels,
                tuple(getattr(memory, "frames", ())))
    raise InvalidCameraError(f"inspector memory must be a MemoryBank or a Cameras batch, got {type(memory).__name__}")


def thumbnail_jpeg(frame: torch.Tensor, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """JPEG of an ``[H, W, 3]`` float image in [0, 1], its longer side at most ``max_side``."""
    from PIL import Image

    rgb = (frame.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    img = Image.fromarray(rgb[..., :3])
    img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = _io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _retrieval_links(retrieval: Any, trajs: list[Any], n_memory: int) -> list[dict]:
    """Links target keyframe pose → memory view, one list per (trajectory, References) pair."""
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
        if not (hasattr(r, "bank_indices") and hasattr(r, "ref_index")):
            raise InvalidTrajectoryError(f"inspector retrieval must be References (a retrieval result), got {type(r).__name__}")
        # slots count the trajectory's keyframes (the one definition the model and the
        # retrieval use); a retrieval result also carries each row's pose
        kf = [int(i) for i in keyframe_indices(len(getattr(trajs[ti], "cameras", trajs[ti])))]
        refs = [int(i) for i in torch.as_tensor(r.bank_indices).tolist()]
        if getattr(r, "assignment", None) is not None:  # every keyframe's choice
            assign = [int(a) for a in torch.as_tensor(r.assignment).tolist()]
            slots = [int(s) for s in torch.as_tensor(r.slots).tolist()]
            ref_score = {(i, int(s) + 1): float(sc) for i, s, sc in zip(
                refs, torch.as_tensor(r.ref_index).tolist(), torch.as_tensor(r.scores).tolist())}
        else:  # references made by hand: first choices only, no score
            slots = [int(i) + 1 for i in torch.as_tensor(r.ref_index).tolist()]
            assign, ref_score = refs, {}
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


def encode_scene(
    cloud: PointCloud | None = None,
    trajectories: Any = (),
    memory: Any = None,
    retrieval: Any = None,
    title: str = "",
) -> EncodedScene:
    """Encode a scene for the inspector (see :class:`EncodedScene` and the module docstring).

    Args:
        cloud: point cloud (``points [N, 3]``, ``colors [N, 3]`` in [0, 1]); at most
            :data:`HARD_MAX_POINTS` of its points are kept, in random order.
        trajectories: a Trajectory / Cameras, or a sequence of them; each is drawn as frustums
            in its own colour, its 21 keyframes marked.
        memory: a MemoryBank (views with JPEG thumbnails) or Cameras: the memory-bank views.
        retrieval: References (a retrieval result), or one per trajectory (None to skip): links
            from each target keyframe to the memory view it retrieved. References made by hand
            (no ``assignment``) give only each reference's first keyframe, and no score.
    """
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
    frames: Sequence[Any] = ()
    if memory is not None:
        w2c, K, sizes, labels, frames = _memory_views(memory)
        n_memory = len(w2c)
        first = add_cameras(w2c, K)
        header["memory"] = {"first": first, "count": n_memory, "sizes": sizes, "labels": [s[:80] for s in labels],
                            "thumbnails": None}
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
    if len(frames) and n_memory <= MAX_THUMBNAILS:
        header["memory"]["thumbnails"] = [add_section(thumbnail_jpeg(f)) for f in frames]

    q = np.zeros((0, 3), "<u2")
    rgb = np.zeros((0, 3), np.uint8)
    lo = hi = np.zeros(3)
    total = 0
    if cloud is not None:
        if not isinstance(cloud, PointCloud):
            raise InvalidPointCloudError(f"inspector cloud must be a PointCloud, got {type(cloud).__name__}")
        total = len(cloud)
        order = subsample_order(total, HARD_MAX_POINTS)
        # float32 is exact enough for 16-bit quantisation, and keeps publishing a 2 M-point
        # cloud cheap next to the node's own work
        p = cloud.points.detach().cpu()[order].float()
        c = cloud.colors.detach().cpu()[order].float()
        if len(p):
            lo, hi = p.amin(0).double().numpy(), p.amax(0).double().numpy()
        span = np.where(hi > lo, hi - lo, 1.0)
        lo_t, span_t = torch.from_numpy(lo).float(), torch.from_numpy(span).float()
        q = ((p - lo_t) / span_t * 65535.0).round_().clamp_(0, 65535).to(torch.int32).numpy().astype("<u2")
        rgb = (c.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8).numpy()
    return EncodedScene(header, b"".join(sections), q, rgb, tuple(float(x) for x in lo),
                        tuple(float(x) for x in hi), total)


def encode(cloud: PointCloud | None = None, trajectories: Any = (), memory: Any = None, retrieval: Any = None,
           max_points: int = DEFAULT_MAX_POINTS, title: str = "") -> bytes:
    """The inspector blob of a scene with at most ``max_points`` points (see :func:`encode_scene`)."""
    max_points = _check_budget(max_points)
    return encode_scene(cloud, trajectories, memory, retrieval, title).blob(max_points)


def decode(data: bytes) -> dict:
    """Python reader of the blob (the reference for ``web/js/scene_data.js``; used by tests).

    Returns the header with numpy arrays added: ``cameras_w2c [P, 4, 4]``, ``cameras_K
    [P, 3, 3]``, when there are points ``points_xyz [N, 3]`` (dequantised) and ``points_rgb
    [N, 3]`` uint8, and when the memory has thumbnails ``thumbnails`` (JPEG bytes per view).
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
    mem = header.get("memory")
    if mem and mem.get("thumbnails"):
        header["thumbnails"] = [bytes(body[t["offset"]:t["offset"] + t["bytes"]]) for t in mem["thumbnails"]]
    return header


def decode_header(data: bytes) -> dict:
    (n,) = struct.unpack("<I", data[4:8])
    return json.loads(data[8:8 + n])


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Entry:
    """One published result: its encoded scene, the budget the node asked for, and (from a
    TrajectoryBuilder) what the live preset preview needs."""

    token: str
    scene: EncodedScene
    default_points: int
    planner: PresetPlanner | None
    created: float

    @property
    def data(self) -> bytes:
        """The blob at the default budget."""
        return self.scene.blob(self.default_points)


class Registry:
    """Thread-safe LRU map token → :class:`Entry`, bounded in entries and bytes.

    Nodes publish from ComfyUI's worker thread while the routes read on the event loop, hence
    the lock. The newest entry is always kept, even if alone it exceeds ``max_bytes``.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_TOTAL_BYTES):
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, scene: EncodedScene, default_points: int = DEFAULT_MAX_POINTS,
            planner: PresetPlanner | None = None) -> str:
        token = secrets.token_hex(16)
        entry = Entry(token, scene, _check_budget(default_points), planner, time.time())
        with self._lock:
            self._items[token] = entry
            self._bytes += scene.nbytes
            while len(self._items) > 1 and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= old.scene.nbytes
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


def publish(
    cloud: PointCloud | None = None,
    trajectories: Any = (),
    memory: Any = None,
    retrieval: Any = None,
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "",
    planner: PresetPlanner | None = None,
    registry: Registry | None = None,
) -> dict:
    """Encode a scene for the inspector, register it, and return the node's UI entry.

    Merge the result into the node's ``ui=``: ``io.NodeOutput(..., ui=publish(cloud=c))``
    (or ``{**other_ui, **publish(...)}``). The entry is ``{"worldstereo_inspector": [{"token",
    "points", "stored_points", "total_points", "trajectories", "memory", "planner", "bytes"}]}``;
    the browser fetches the token with its own point budget (``?points=``, up to
    ``stored_points``); ``max_points`` is the default budget.
    """
    reg = REGISTRY if registry is None else registry
    max_points = _check_budget(max_points)
    scene = encode_scene(cloud, trajectories, memory, retrieval, title)
    token = reg.put(scene, max_points, planner)
    return {UI_KEY: [{
        "token": token,
        "points": min(max_points, scene.stored_points),
        "stored_points": scene.stored_points,
        "total_points": scene.total,
        "trajectories": len(scene.header["trajectories"]),
        "memory": (scene.header["memory"] or {}).get("count", 0),
        "planner": planner is not None,
        "bytes": len(scene.blob(max_points)),
    }]}


# ---------------------------------------------------------------------------------------------
# server-side work on a published scene: the timeline's GGM render, the live preset preview
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


@dataclass(frozen=True)
class PresetRequest:
    """A validated live-preview request: the TrajectoryBuilder's preset controls."""

    preset: str
    median_depth: float
    angle: float
    extent: float
    num_frames: int


def parse_preset_request(body: Any) -> PresetRequest:
    """Validated :class:`PresetRequest` from ``{"preset", "median_depth"?, "angle"?, "extent"?,
    "num_frames"?}`` (the node's widget ranges); raises :class:`InvalidTrajectoryError`."""
    from worldstereo_core.trajectory import PRESETS

    if not isinstance(body, dict):
        raise InvalidTrajectoryError("preset request must be a JSON object with a preset name")
    name = body.get("preset")
    if not isinstance(name, str) or name not in PRESETS:
        raise InvalidTrajectoryError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    try:
        m, angle, extent = (float(body.get(k, 0.0)) for k in ("median_depth", "angle", "extent"))
        n = body.get("num_frames", 81)
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"num_frames must be an integer, got {n!r}")
    except (TypeError, ValueError) as e:
        raise InvalidTrajectoryError(f"bad preset request: {e}") from None
    for key, v, hi in (("median_depth", m, 1e6), ("angle", angle, 360.0), ("extent", extent, 100.0)):
        if not (math.isfinite(v) and 0.0 <= v <= hi):
            raise InvalidTrajectoryError(f"{key} must be between 0 and {hi:g}, got {v}")
    if not 2 <= n <= MAX_PRESET_FRAMES:
        raise InvalidTrajectoryError(f"num_frames must be between 2 and {MAX_PRESET_FRAMES}, got {n}")
    return PresetRequest(name, m, angle, extent, n)


class _TreeSlot:
    """The cKDTree of one entry's points: the one the user is editing presets on. Building it
    is most of a preview's cost (about a second for 2 M points), so it is kept between
    requests; one slot only, so previews never hold more than one tree in memory."""

    def __init__(self):
        self._lock = threading.Lock()
        self._token: str | None = None
        self._tree = None

    def get(self, entry: Entry):
        with self._lock:
            if self._token == entry.token:
                return self._tree
        from scipy.spatial import cKDTree

        cloud = entry.scene.cloud()
        tree = None if cloud is None else cKDTree(cloud.points.double().numpy())
        with self._lock:
            self._token, self._tree = entry.token, tree
        return tree


_TREES = _TreeSlot()


def plan_preset(entry: Entry, request: PresetRequest) -> dict:
    """The preset path the TrajectoryBuilder would build with these controls, as JSON
    (``w2c`` and ``K`` per pose, row-major; ``keyframes``; ``halvings`` of the shortening)."""
    from worldstereo_core.trajectory import preset_from_controls

    planner = entry.planner
    m = request.median_depth if request.median_depth > 0 else planner.depth_median
    if m is None:
        raise InvalidTrajectoryError("set median_depth or connect the depth of the start view, then run once")
    traj, halvings = preset_from_controls(request.preset, planner.start, m, angle=request.angle,
                                          extent=request.extent, num_frames=request.num_frames,
                                          cache_points=_TREES.get(entry))
    cams = traj.cameras
    return {"name": traj.name, "height": cams.height, "width": cams.width, "halvings": int(halvings),
            "median_depth": float(m), "keyframes": _keyframe_indices(traj),
            "w2c": cams.w2c.detach().cpu().double().reshape(-1, 16).tolist(),
            "K": cams.K.detach().cpu().double().reshape(-1, 9).tolist()}


# ---------------------------------------------------------------------------------------------
# aiohttp routes
# ---------------------------------------------------------------------------------------------


class Handlers(NamedTuple):
    get_blob: Any
    post_render: Any
    post_preset: Any


def make_handlers(registry: Registry | None = None) -> Handlers:
    """The aiohttp handlers bound to a registry (tests pass their own)."""
    import asyncio

    from aiohttp import web

    def reg() -> Registry:
        return REGISTRY if registry is None else registry

    def lookup(request) -> Entry:
        entry = reg().get(request.match_info.get("token", ""))
        if entry is None:
            # Same answer for malformed and unknown tokens: nothing to learn by probing.
            raise web.HTTPNotFound(text="unknown or expired inspector token; run the workflow again")
        return entry

    async def json_body(request) -> Any:
        if request.content_length is None or request.content_length > MAX_REQUEST_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST_BYTES, actual_size=request.content_length or 0)
        try:
            return await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the request body is not JSON") from None

    async def get_blob(request):
        entry = lookup(request)
        budget = entry.default_points
        if "points" in request.query:
            raw = request.query["points"]
            if not raw.isdigit() or not 1 <= int(raw) <= HARD_MAX_POINTS:
                raise web.HTTPBadRequest(text=f"points must be an integer from 1 to {HARD_MAX_POINTS}")
            budget = int(raw)
        data = entry.scene.blob(budget)
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    async def post_render(request):
        entry = lookup(request)
        if entry.scene.stored_points == 0:
            raise web.HTTPNotFound(text="this inspector output has no point cloud to render")
        try:
            camera, radius = parse_render_request(await json_body(request))
        except InvalidCameraError as e:
            raise web.HTTPBadRequest(text=str(e)) from None

        def work() -> bytes:
            return render_png(entry.scene.cloud(), camera, radius)

        png = await asyncio.get_running_loop().run_in_executor(None, work)
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})

    async def post_preset(request):
        entry = lookup(request)
        if entry.planner is None:
            raise web.HTTPNotFound(text="only a Trajectory Builder's output can preview presets; run it once")
        try:
            req = parse_preset_request(await json_body(request))
        except InvalidTrajectoryError as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        try:
            plan = await asyncio.get_running_loop().run_in_executor(None, plan_preset, entry, req)
        except WorldStereoError as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        return web.json_response(plan, headers={"Cache-Control": "no-store"})

    return Handlers(get_blob, post_render, post_preset)


_registered = False


def register_routes() -> None:
    """Add the inspector routes to ComfyUI's server (idempotent; call at pack import).

    ``GET  /worldstereo/inspector/{token}[?points=N]`` → the blob (application/octet-stream)
    ``POST /worldstereo/inspector/{token}/render``     → PNG of the cloud from a camera (JSON body)
    ``POST /worldstereo/inspector/{token}/preset``     → a preset path from a TrajectoryBuilder
    run's start camera (JSON body: the node's preset controls) — the editor's live preview

    ComfyUI also mounts them under ``/api``.
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
    h = make_handlers()
    instance.routes.get(ROUTE + "/{token}")(h.get_blob)
    instance.routes.post(ROUTE + "/{token}/render")(h.post_render)
    instance.routes.post(ROUTE + "/{token}/preset")(h.post_preset)
    _registered = True
