"""Data path of the browser scene inspector: a token registry and its routes.

A node that wants its result shown in the inspector calls :func:`publish` in ``execute``; it
encodes the cloud, trajectories, memory-bank views and retrieval links with the core's wire
format (:mod:`worldstereo_core.scene_codec`), keeps them in an in-memory registry under a
random token, and returns the UI entry (``{"worldstereo_inspector": [{"token": …}]}``) that the
node merges into ``ui=``. The browser (``web/js/inspector.js``) receives the token with the
``executed`` message and fetches ``GET /worldstereo/inspector/<token>?points=<budget>``: the
user's point budget is applied on the server, as a prefix of the stored points (kept in random
order, so every prefix is a uniform subsample).

Only scenes produced by this server's executions can be fetched: the token is the only thing
the routes take from the path, it is matched against a fixed pattern and looked up in a dict —
no part of the request ever reaches the file system. The registry is bounded (entries and
bytes; least recently used dropped first) and so is every scene (see the codec).

This module imports no ComfyUI code at import time (only :func:`register_routes` touches
``server.PromptServer``), so it can be loaded by path in tests.
"""

from __future__ import annotations

import io as _io
import logging
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from worldstereo_core import safe_json
from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import InvalidCameraError, InvalidTrajectoryError, MalformedJsonError, WorldStereoError
from worldstereo_core.pointcloud import PointCloud
from worldstereo_core.scene_codec import DEFAULT_MAX_POINTS, HARD_MAX_POINTS, EncodedScene, check_budget, encode_scene

log = logging.getLogger("worldstereo.inspector")

ROUTE = "/worldstereo/inspector"
UI_KEY = "worldstereo_inspector"

MAX_ENTRIES = 48
MAX_TOTAL_BYTES = 512 * 2**20
MAX_RENDER_PIXELS = 1024 * 1024
MAX_PRESET_FRAMES = 1024
MAX_REQUEST_BYTES = 16384
MAX_REQUEST_DEPTH = 4  # render/preset bodies nest 3 levels at most (a 4×4 w2c as nested lists)

TOKEN_RE = re.compile(r"^[0-9a-f]{32}$")


# ---------------------------------------------------------------------------------------------
# registry
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

    def put(
        self, scene: EncodedScene, default_points: int = DEFAULT_MAX_POINTS, planner: PresetPlanner | None = None
    ) -> str:
        token = secrets.token_hex(16)
        entry = Entry(token, scene, check_budget(default_points), planner, time.time())
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
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    planner: PresetPlanner | None = None,
    registry: Registry | None = None,
    **scene: Any,
) -> dict:
    """Encode a scene for the inspector, register it, and return the node's UI entry.

    ``scene``: what :func:`~worldstereo_core.scene_codec.encode_scene` draws (``cloud``,
    ``trajectories``, ``memory``, ``retrieval``, ``title``), by keyword.

    Merge the result into the node's ``ui=``: ``io.NodeOutput(..., ui=publish(cloud=c))``
    (or ``{**other_ui, **publish(...)}``). The entry is ``{"worldstereo_inspector": [{"token",
    "points", "stored_points", "total_points", "trajectories", "memory", "planner", "bytes"}]}``;
    the browser fetches the token with its own point budget (``?points=``, up to
    ``stored_points``); ``max_points`` is the default budget.
    """
    reg = REGISTRY if registry is None else registry
    max_points = check_budget(max_points)
    encoded = encode_scene(**scene)
    token = reg.put(encoded, max_points, planner)
    return {
        UI_KEY: [
            {
                "token": token,
                "points": min(max_points, encoded.stored_points),
                "stored_points": encoded.stored_points,
                "total_points": encoded.total,
                "trajectories": len(encoded.header["trajectories"]),
                "memory": (encoded.header["memory"] or {}).get("count", 0),
                "planner": planner is not None,
                "bytes": len(encoded.blob(max_points)),
            }
        ]
    }


# ---------------------------------------------------------------------------------------------
# server-side work on a published scene: the timeline's GGM render, the live preset preview
# ---------------------------------------------------------------------------------------------


def parse_points(raw: str) -> int:
    """The ``?points=`` query value: ASCII digits only (``str.isdigit`` also takes "²" and other
    Unicode digits that ``int`` refuses), at most 7 of them, from 1 to :data:`HARD_MAX_POINTS`."""
    from aiohttp import web

    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7 and 1 <= int(raw) <= HARD_MAX_POINTS):
        raise web.HTTPBadRequest(text=f"points must be an integer from 1 to {HARD_MAX_POINTS}")
    return int(raw)


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
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as e:
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
    except (TypeError, ValueError, OverflowError) as e:
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
    traj, halvings = preset_from_controls(
        request.preset,
        planner.start,
        m,
        angle=request.angle,
        extent=request.extent,
        num_frames=request.num_frames,
        cache_points=_TREES.get(entry),
    )
    cams = traj.cameras
    return {
        "name": traj.name,
        "height": cams.height,
        "width": cams.width,
        "halvings": int(halvings),
        "median_depth": float(m),
        "keyframes": [int(i) for i in traj.keyframe_indices()],
        "w2c": cams.w2c.detach().cpu().double().reshape(-1, 16).tolist(),
        "K": cams.K.detach().cpu().double().reshape(-1, 9).tolist(),
    }


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
        # bounded size, nesting and numbers: every malformed body is a 4xx with a message
        if request.content_length is None or request.content_length > MAX_REQUEST_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST_BYTES, actual_size=request.content_length or 0)
        raw = await request.read()
        if len(raw) > MAX_REQUEST_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST_BYTES, actual_size=len(raw))
        try:
            return safe_json.loads(raw, max_depth=MAX_REQUEST_DEPTH, what="the request body")
        except MalformedJsonError as e:
            raise web.HTTPBadRequest(text=str(e)) from None

    async def get_blob(request):
        entry = lookup(request)
        budget = entry.default_points
        if "points" in request.query:
            budget = parse_points(request.query["points"])
        data = entry.scene.blob(budget)
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    async def post_render(request):
        entry = lookup(request)
        if entry.scene.stored_points == 0:
            raise web.HTTPNotFound(text="this inspector output has no point cloud to render")
        try:
            camera, radius = parse_render_request(await json_body(request))
        except WorldStereoError as e:
            raise web.HTTPBadRequest(text=str(e)) from None

        def work() -> bytes:
            return render_png(entry.scene.cloud(), camera, radius)

        try:
            png = await asyncio.get_running_loop().run_in_executor(None, work)
        except WorldStereoError as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})

    async def post_preset(request):
        entry = lookup(request)
        if entry.planner is None:
            raise web.HTTPNotFound(text="only a Trajectory Builder's output can preview presets; run it once")
        try:
            req = parse_preset_request(await json_body(request))
        except WorldStereoError as e:
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
