"""The scene inspector's wire format: a scene (cloud, trajectories, memory bank, retrieval links)
encoded as one binary blob, the contract with the browser's reader (``web/js/scene_data.js``).

:func:`encode_scene` lays out everything but the points once and keeps the points quantised in
a random order (:class:`EncodedScene`), so that any point budget is a prefix — a uniform
subsample — and :meth:`EncodedScene.blob` writes the bytes for a budget without re-sampling.
:func:`decode` is the Python reader, tested against the JavaScript one. The node layer
(``nodes/inspector.py``) keeps encoded scenes in a registry and serves them; nothing here
touches ComfyUI, the network or the file system.

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

Nine bytes per point in all; 500 k points are 4.5 MB. Every scene is bounded: at most
:data:`HARD_MAX_POINTS` points, :data:`MAX_POSES` poses, :data:`MAX_THUMBNAILS` thumbnails.

The header: ``version``, ``title``, ``trajectories`` (``name``, ``first``, ``count``,
``height``, ``width``, ``keyframes`` — the model's keyframe poses), ``memory`` (``first``,
``count``, ``sizes``, ``labels``, ``thumbnails``), ``retrieval`` (per trajectory: ``references``
and ``links`` ``{slot, pose, ref, score}``), ``cameras`` and ``points`` (``count``, ``total``,
``stored``, ``bbox_min``, ``bbox_max``, ``positions``, ``colors``).
"""

from __future__ import annotations

import io as _io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .cameras import Cameras
from .errors import InvalidCameraError, InvalidPointCloudError, InvalidTrajectoryError
from .pointcloud import PointCloud
from .retrieval import References
from .trajectory import keyframe_indices

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "DEFAULT_MAX_POINTS",
    "HARD_MAX_POINTS",
    "MAX_POSES",
    "MAX_THUMBNAILS",
    "THUMBNAIL_SIDE",
    "BYTES_PER_POINT",
    "EncodedScene",
    "check_budget",
    "subsample_order",
    "thumbnail_jpeg",
    "encode_scene",
    "encode",
    "decode",
]

MAGIC = b"WSI1"
FORMAT_VERSION = 1

DEFAULT_MAX_POINTS = 200_000
HARD_MAX_POINTS = 2_000_000  # 18 MB per blob at most
MAX_POSES = 8192  # poses of all trajectories and memory views together
MAX_THUMBNAILS = 256  # memory views with a JPEG thumbnail (more: frustums only)
THUMBNAIL_SIDE = 160
BYTES_PER_POINT = 9


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
        n = min(check_budget(max_points), self.stored_points)
        header = dict(self.header)
        sections = [self.body]
        offset = len(self.body)
        header["points"] = None
        if self.total > 0:
            q = self.positions[:n].tobytes()
            c = self.colors[:n].tobytes()
            qpad, cpad = (-len(q)) % 4, (-len(c)) % 4
            header["points"] = {
                "count": n,
                "total": self.total,
                "stored": self.stored_points,
                "bbox_min": list(self.bbox_min),
                "bbox_max": list(self.bbox_max),
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


def check_budget(max_points: int) -> int:
    """``max_points`` as an int, or :class:`InvalidPointCloudError` unless 1 ≤ it ≤ :data:`HARD_MAX_POINTS`."""
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
        return (
            memory.w2c.detach().cpu().double().numpy(),
            memory.K.detach().cpu().double().numpy(),
            [[memory.height, memory.width]] * n,
            [f"view {i}" for i in range(n)],
            (),
        )
    if all(hasattr(memory, k) for k in ("w2c", "K", "sizes")):
        sizes = [[int(h), int(w)] for h, w in memory.sizes.tolist()]
        labels = [str(s) for s in getattr(memory, "sources", [f"view {i}" for i in range(len(sizes))])]
        return (
            torch.as_tensor(memory.w2c).detach().cpu().double().numpy(),
            torch.as_tensor(memory.K).detach().cpu().double().numpy(),
            sizes,
            labels,
            tuple(getattr(memory, "frames", ())),
        )
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
        if not isinstance(r, References):
            raise InvalidTrajectoryError(
                f"inspector retrieval must be References (a retrieval result), got {type(r).__name__}"
            )
        # slots count the trajectory's keyframes (the one definition the model and the
        # retrieval use); a retrieval result also carries each row's pose
        kf = [int(i) for i in keyframe_indices(len(getattr(trajs[ti], "cameras", trajs[ti])))]
        refs = [int(i) for i in torch.as_tensor(r.bank_indices).tolist()]
        if getattr(r, "assignment", None) is not None:  # every keyframe's choice
            assign = [int(a) for a in torch.as_tensor(r.assignment).tolist()]
            slots = [int(s) for s in torch.as_tensor(r.slots).tolist()]
            ref_score = {
                (i, int(s) + 1): float(sc)
                for i, s, sc in zip(refs, torch.as_tensor(r.ref_index).tolist(), torch.as_tensor(r.scores).tolist())
            }
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
        tr_meta.append(
            {
                "name": str(getattr(t, "name", "") or f"trajectory {i}")[:120],
                "first": first,
                "count": len(cams),
                "height": cams.height,
                "width": cams.width,
                "keyframes": _keyframe_indices(t),
            }
        )
    header["trajectories"] = tr_meta

    header["memory"] = None
    n_memory = 0
    frames: Sequence[Any] = ()
    if memory is not None:
        w2c, K, sizes, labels, frames = _memory_views(memory)
        n_memory = len(w2c)
        first = add_cameras(w2c, K)
        header["memory"] = {
            "first": first,
            "count": n_memory,
            "sizes": sizes,
            "labels": [s[:80] for s in labels],
            "thumbnails": None,
        }
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
    return EncodedScene(
        header, b"".join(sections), q, rgb, tuple(float(x) for x in lo), tuple(float(x) for x in hi), total
    )


def encode(
    cloud: PointCloud | None = None,
    trajectories: Any = (),
    memory: Any = None,
    retrieval: Any = None,
    max_points: int = DEFAULT_MAX_POINTS,
    title: str = "",
) -> bytes:
    """The inspector blob of a scene with at most ``max_points`` points (see :func:`encode_scene`)."""
    max_points = check_budget(max_points)
    return encode_scene(cloud, trajectories, memory, retrieval, title).blob(max_points)


def decode(data: bytes) -> dict:
    """Python reader of the blob — the tested counterpart of ``web/js/scene_data.js``'s ``decodeScene``.

    Returns the header with numpy arrays added: ``cameras_w2c [P, 4, 4]``, ``cameras_K
    [P, 3, 3]``, when there are points ``points_xyz [N, 3]`` (dequantised) and ``points_rgb
    [N, 3]`` uint8, and when the memory has thumbnails ``thumbnails`` (JPEG bytes per view).
    """
    if len(data) < 8 or data[:4] != MAGIC:
        raise InvalidPointCloudError("not an inspector blob (bad magic); give bytes made by encode / EncodedScene.blob")
    (n,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    cam = header["cameras"]
    arr = np.frombuffer(body[cam["offset"] : cam["offset"] + cam["bytes"]], "<f4").reshape(-1, 25)
    header["cameras_w2c"] = arr[:, :16].reshape(-1, 4, 4).astype(np.float64)
    header["cameras_K"] = arr[:, 16:].reshape(-1, 3, 3).astype(np.float64)
    pts = header.get("points")
    if pts:
        q = np.frombuffer(body[pts["positions"]["offset"] :][: pts["positions"]["bytes"]], "<u2").reshape(-1, 3)
        lo, hi = np.array(pts["bbox_min"]), np.array(pts["bbox_max"])
        header["points_xyz"] = lo + q.astype(np.float64) / 65535.0 * (hi - lo)
        header["points_rgb"] = np.frombuffer(
            body[pts["colors"]["offset"] :][: pts["colors"]["bytes"]], np.uint8
        ).reshape(-1, 3)
    mem = header.get("memory")
    if mem and mem.get("thumbnails"):
        header["thumbnails"] = [bytes(body[t["offset"] : t["offset"] + t["bytes"]]) for t in mem["thumbnails"]]
    return header
