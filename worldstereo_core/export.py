"""Exports that other tools read: PLY, GLB with camera frustums, COLMAP text, nerfstudio, MP4.

Every writer is atomic: it writes a temporary file beside the target and renames it over the
target with :func:`os.replace`, so a crash never leaves a half-written file under the final
name. Parent folders are created when missing.

Conventions at the edges (ARCHITECTURE §3 inside, each format's own convention outside):

* **PLY**: world coordinates unchanged (x, y, z float32; red, green, blue uchar; optional
  nx, ny, nz float32), binary little-endian.
* **Gaussian-splat PLY** (the INRIA 3DGS layout read by its viewers, SuperSplat, gsplat,
  nerfstudio): world coordinates unchanged; quaternions ``rot_0..3`` = (w, x, y, z); scales
  stored as natural logs, opacity as a logit, colour as real SH coefficients (``f_dc`` =
  band 0, ``f_rest`` channel-major), all float32, binary little-endian.
* **GLB** (glTF 2.0 is +Y up, cameras look down −Z): a world point ``p`` (OpenCV world,
  y down, z forward) is stored as ``S p`` with ``S = diag(1, −1, −1)``, a 180° rotation about
  x. A scene whose first camera is the identity therefore opens upright, seen from the front,
  in three.js (ComfyUI's Preview3D) and Blender. Undo with ``p = S p_glb``.
* **COLMAP** text model: COLMAP's ``images.txt`` pose *is* an OpenCV world-to-camera transform
  (quaternion ``qw qx qy qz`` and ``t``), and its pixel centres are at ``u + 0.5`` as ours, so
  nothing is converted.
* **nerfstudio** ``transforms.json``: ``transform_matrix`` is a camera-to-world matrix in the
  OpenGL camera convention (x right, y up, z back): ``c2w_gl = c2w @ diag(1, −1, −1, 1)``. The
  world frame is unchanged (``applied_transform`` is not written), intrinsics are in pixels
  with centres at ``u + 0.5`` as ours.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import atomic
from .cameras import ArrayLike, Cameras, as_tensor, matrix_to_quaternion
from .errors import (
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    MissingInputError,
    OutputPathError,
    ShapeMismatchError,
)
from .pointcloud import PointCloud

__all__ = [
    "GLB_FROM_OPENCV",
    "OPENGL_FROM_OPENCV",
    "save_pointcloud_ply",
    "save_cameras_glb",
    "save_colmap_text",
    "save_transforms_json",
    "save_video_mp4",
    "save_images_png",
    "write_text_atomic",
    "frustum_lines",
    "save_gaussian_ply",
    "gaussians_from_worldmirror",
    "SH_C0",
]

PathLike = str | os.PathLike

#: Real spherical-harmonics band-0 constant: colour = 0.5 + SH_C0 · f_dc (3DGS convention).
SH_C0 = 0.28209479177387814

#: World-axis change applied to every position written into a GLB (OpenCV world → glTF).
GLB_FROM_OPENCV = np.diag([1.0, -1.0, -1.0])
#: Camera-axis change from OpenCV to OpenGL cameras (right-multiplied onto a c2w).
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

# Distinct, saturated colours for trajectories (RGB in [0, 1]); cycled when there are more.
_TRAJECTORY_COLORS = (
    (0.90, 0.10, 0.10),
    (0.10, 0.45, 0.95),
    (0.10, 0.75, 0.20),
    (0.95, 0.60, 0.05),
    (0.65, 0.20, 0.85),
    (0.05, 0.75, 0.80),
    (0.85, 0.20, 0.55),
    (0.50, 0.50, 0.50),
)


# --------------------------------------------------------------------------------------------
# helpers


def _atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """:func:`worldstereo_core.atomic.write_file`, with a folder at ``path`` reported as an :class:`OutputPathError`."""
    try:
        return atomic.write_file(path, write)
    except IsADirectoryError as e:
        raise OutputPathError(str(e)) from None


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write a UTF-8 text file (a JSON report, say) atomically; returns the path."""
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _np64(x: ArrayLike) -> np.ndarray:
    return as_tensor(x).detach().to("cpu", torch.float64).numpy()


def _colors_u8(colors: np.ndarray) -> np.ndarray:
    """``[N, 3]`` colours in [0, 1] → uint8; values outside [0, 1] are an error, not clamped away."""
    if colors.size and (colors.min() < -1e-3 or colors.max() > 1 + 1e-3):
        raise InvalidInputError(
            f"point colours must lie in [0, 1], got range [{colors.min():.3g}, {colors.max():.3g}]; "
            "divide 0–255 colours by 255"
        )
    return np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_cloud(cloud: PointCloud, what: str = "point cloud") -> None:
    if not isinstance(cloud, PointCloud):
        raise InvalidInputError(f"{what} must be a worldstereo_core.pointcloud.PointCloud, got {type(cloud).__name__}")
    if len(cloud) == 0:
        raise InvalidInputError(f"{what} is empty (0 points); nothing to export")


def _check_cameras(cameras: Cameras, what: str = "cameras") -> None:
    if not isinstance(cameras, Cameras):
        raise InvalidInputError(f"{what} must be a worldstereo_core.cameras.Cameras, got {type(cameras).__name__}")


def _check_names(names: Sequence[str], count: int, what: str) -> list[str]:
    names = [str(n) for n in names]
    if len(names) != count:
        raise ShapeMismatchError(f"got {len(names)} {what} for {count} cameras; give exactly one per camera")
    bad = [n for n in names if not n or any(ch.isspace() for ch in n)]
    if bad:
        raise InvalidInputError(f"{what} must be non-empty and contain no spaces or line breaks, got {bad[0]!r}")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"{what} must be unique; rename the duplicate frames")
    return names


def _subsampled_points(cloud: PointCloud, max_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``cloud``'s points ``[M, 3]`` (float64) and uint8 colours ``[M, 3]``, at most ``max_points``
    of them: a deterministic subset (fixed seed, original order kept), or all."""
    pts = _np64(cloud.points)
    rgb = _colors_u8(_np64(cloud.colors))
    n = len(pts)
    if max_points is None or n <= max_points:
        return pts, rgb
    if max_points < 1:
        raise InvalidOptionError(f"max_points must be at least 1, got {max_points}")
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(n, size=max_points, replace=False))
    return pts[keep], rgb[keep]


# --------------------------------------------------------------------------------------------
# PLY


def _write_binary_ply(
    path: PathLike, comment: str, count: int, properties: Sequence[tuple[str, str]], payload: bytes
) -> Path:
    """Write one ``vertex`` element as binary little-endian PLY, atomically; returns the path.

    ``properties``: ``(name, PLY type)`` in row order (``float``, ``uchar``); ``payload``: the
    ``count`` packed rows. The one PLY header writer, for point clouds and Gaussian splats.
    """
    header = ["ply", "format binary_little_endian 1.0", f"comment {comment}", f"element vertex {count}"]
    header += [f"property {ply_type} {name}" for name, ply_type in properties]
    header.append("end_header")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            f.write(payload)

    return _atomic_write(path, write)


def save_pointcloud_ply(path: PathLike, cloud: PointCloud, *, write_normals: bool = True) -> Path:
    """Write ``cloud`` as a binary little-endian PLY (x y z float32, red green blue uchar,
    and nx ny nz float32 when the cloud has normals and ``write_normals``).

    Returns the written path. Readable by open3d, plyfile, MeshLab, CloudCompare, Blender.
    """
    _check_cloud(cloud)
    pts = _np64(cloud.points).astype(np.float32)
    rgb = _colors_u8(_np64(cloud.colors))
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    has_normals = write_normals and cloud.normals is not None
    if has_normals:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    data = np.empty(len(pts), dtype=fields)
    data["x"], data["y"], data["z"] = pts.T
    if has_normals:
        nrm = _np64(cloud.normals).astype(np.float32)
        data["nx"], data["ny"], data["nz"] = nrm.T
    data["red"], data["green"], data["blue"] = rgb.T
    type_names = {"<f4": "float", "u1": "uchar"}
    properties = [(name, type_names[t]) for name, t in fields]
    return _write_binary_ply(path, "written by WorldStereo for ComfyUI", len(pts), properties, data.tobytes())


# --------------------------------------------------------------------------------------------
# Gaussian splats


def _np32_checked(x: ArrayLike, name: str, shape_tail: tuple[int, ...], n: int | None) -> np.ndarray:
    a = _np64(x)
    if a.ndim != 1 + len(shape_tail) or tuple(a.shape[1:]) != shape_tail or (n is not None and a.shape[0] != n):
        want = "[" + ", ".join(["N" if n is None else str(n), *map(str, shape_tail)]) + "]"
        raise ShapeMismatchError(f"Gaussian {name} must have shape {want}, got {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise InvalidInputError(f"Gaussian {name} contain NaN or inf values")
    return a


def save_gaussian_ply(
    path: PathLike,
    means: ArrayLike,
    quats: ArrayLike,
    scales: ArrayLike,
    opacities: ArrayLike,
    *,
    sh: ArrayLike | None = None,
    colors: ArrayLike | None = None,
    log_scales: bool = False,
    opacity_logits: bool = False,
) -> Path:
    """Write Gaussians as a 3D Gaussian Splatting PLY (INRIA layout; SuperSplat, gsplat read it).

    Args:
        path: target ``.ply`` file (written atomically).
        means: ``[N, 3]`` centres, world coordinates (written unchanged).
        quats: ``[N, 4]`` rotations as (w, x, y, z), scalar first — gsplat's and 3DGS's order
            (WorldMirror's splats use it). Normalised before writing; a zero quaternion is an error.
        scales: ``[N, 3]`` per-axis standard deviations, linear (> 0) by default, or natural
            logs when ``log_scales`` (then written unchanged).
        opacities: ``[N]`` opacities in [0, 1] by default (written as ``logit``, clipped to
            [1e-6, 1 − 1e-6] so that 0 and 1 stay finite), or logits when ``opacity_logits``.
        sh: ``[N, K, 3]`` real SH coefficients, ``K = (degree + 1)²`` ∈ {1, 4, 9, 16}, band 0
            first (the 3DGS convention ``rgb = 0.5 + SH_C0 · sh[:, 0]``). Give ``sh`` or
            ``colors``, not both.
        colors: ``[N, 3]`` RGB in [0, 1], written as degree-0 SH ``f_dc = (rgb − 0.5) / SH_C0``.

    Properties, in order: ``x y z nx ny nz`` (normals 0, as 3DGS writes them), ``f_dc_0..2``,
    ``f_rest_0..3(K−1)−1`` with ``f_rest[c·(K−1) + j] = sh[:, 1 + j, c]`` (channel-major),
    ``opacity``, ``scale_0..2``, ``rot_0..3``; all float32. Returns the written path.
    """
    m = _np64(means)
    if m.ndim != 2 or m.shape[1] != 3:
        raise ShapeMismatchError(f"Gaussian means must have shape [N, 3], got {tuple(m.shape)}")
    n = m.shape[0]
    if n == 0:
        raise InvalidInputError("no Gaussians to export (N = 0)")
    m = _np32_checked(m, "means", (3,), n)
    q = _np32_checked(quats, "quats", (4,), n)
    s = _np32_checked(scales, "scales", (3,), n)
    o = _np32_checked(opacities, "opacities", (), n)
    if (sh is None) == (colors is None):
        raise InvalidInputError("give exactly one of sh [N, K, 3] (SH coefficients) or colors [N, 3] (RGB in [0, 1])")

    qn = np.linalg.norm(q, axis=1, keepdims=True)
    if (qn < 1e-12).any():
        raise InvalidInputError(
            "Gaussian quats contain a zero quaternion; every rotation needs a non-zero (w, x, y, z)"
        )
    q = q / qn
    if not log_scales:
        if (s <= 0).any():
            raise InvalidInputError(
                f"linear Gaussian scales must be > 0, got min {s.min():.3g}; pass log_scales=True if they are logs"
            )
        s = np.log(s)
    if not opacity_logits:
        if o.min() < 0 or o.max() > 1:
            raise InvalidInputError(
                f"opacities must lie in [0, 1], got range [{o.min():.3g}, {o.max():.3g}]; "
                "pass opacity_logits=True if they are logits"
            )
        oc = np.clip(o, 1e-6, 1 - 1e-6)
        o = np.log(oc) - np.log1p(-oc)
    if colors is not None:
        c = _np32_checked(colors, "colors", (3,), n)
        if c.min() < -1e-3 or c.max() > 1 + 1e-3:
            raise InvalidInputError(
                f"Gaussian colours must lie in [0, 1], got range [{c.min():.3g}, {c.max():.3g}]; divide 0–255 colours by 255"
            )
        coeffs = ((c - 0.5) / SH_C0)[:, None, :]  # [N, 1, 3]
    else:
        coeffs = _np64(sh)
        if coeffs.ndim != 3 or coeffs.shape[0] != n or coeffs.shape[2] != 3 or coeffs.shape[1] not in (1, 4, 9, 16):
            raise ShapeMismatchError(
                f"Gaussian sh must have shape [N={n}, K, 3] with K = (degree + 1)² in (1, 4, 9, 16), got {tuple(coeffs.shape)}"
            )
        if not np.isfinite(coeffs).all():
            raise InvalidInputError("Gaussian sh contain NaN or inf values")
    k_rest = coeffs.shape[1] - 1
    # 3DGS stores features_rest transposed to [N, 3, K−1] before flattening: channel-major.
    rest = coeffs[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * k_rest)

    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * k_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    cols = np.concatenate([m, np.zeros((n, 3)), coeffs[:, 0, :], rest, o[:, None], s, q], axis=1)
    data = np.ascontiguousarray(cols.astype("<f4"))
    properties = [(name, "float") for name in names]
    return _write_binary_ply(
        path, "3D Gaussian splats written by WorldStereo for ComfyUI", n, properties, data.tobytes()
    )


def gaussians_from_worldmirror(output, mask: ArrayLike | None = None) -> dict[str, torch.Tensor]:
    """Flatten WorldMirror's per-pixel Gaussians into ``save_gaussian_ply``'s arguments.

    Args:
        output: a :class:`worldstereo_core.recon.worldmirror.WorldMirrorOutput` whose
            ``splats`` are present (the GS head ran) and hold ``means`` (the camera head ran).
            Its conventions: quats (w, x, y, z) unit, scales linear, opacities in [0, 1],
            ``sh [B, S, H, W, K, 3]`` with the image colour folded into band 0.
        mask: optional ``[B, S, H, W]`` (or ``[S, H, W]`` when B = 1) bool, True = keep that
            pixel's Gaussian (e.g. confident, not sky).

    Returns:
        ``{"means" [N, 3], "quats" [N, 4], "scales" [N, 3], "opacities" [N], "sh" [N, K, 3]}``
        float32 CPU tensors, N = number of kept pixels over all batches and views, in
        (b, s, y, x) order. Use as ``save_gaussian_ply(path, **gaussians)``.
    """
    splats = getattr(output, "splats", None)
    if not isinstance(splats, dict):
        raise MissingInputError(
            "this WorldMirror output has no Gaussian splats; build the model with enable_gs=True "
            "(the released checkpoint has the GS head)"
        )
    if "means" not in splats:
        raise MissingInputError(
            "WorldMirror splats have no means: the camera head must run (enable_cam=True) to place them"
        )
    lead = tuple(splats["means"].shape[:4])  # B, S, H, W
    keep = None
    if mask is not None:
        keep = as_tensor(mask).detach().to("cpu")
        if keep.dtype != torch.bool:
            keep = keep != 0
        if keep.ndim == 3 and lead[0] == 1:
            keep = keep[None]
        if tuple(keep.shape) != lead:
            raise ShapeMismatchError(
                f"mask must have shape [B, S, H, W] = {lead} (or [S, H, W] when B = 1), got {tuple(as_tensor(mask).shape)}"
            )
        keep = keep.reshape(-1)
    out = {}
    for key, tail in (("means", (3,)), ("quats", (4,)), ("scales", (3,)), ("opacities", ()), ("sh", None)):
        t = splats[key].detach().to("cpu", torch.float32)
        t = t.reshape(-1, *(tail if tail is not None else t.shape[4:]))
        out[key] = t[keep] if keep is not None else t.clone()
    return out


# --------------------------------------------------------------------------------------------
# GLB


def frustum_lines(cameras: Cameras, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Wireframe frustums of ``cameras`` in world coordinates (OpenCV world, not converted).

    Each camera gives 6 vertices — apex (its centre), the four image corners (top-left,
    top-right, bottom-right, bottom-left) unprojected to z-depth ``depth``, and the tip of a
    small "up" triangle above the top edge — and 10 segments: 4 apex→corner, 4 image edges,
    2 for the up marker.

    Returns:
        vertices ``[6·F, 3]`` float64 and segments ``[10·F, 2]`` int32 (vertex indices).
    """
    _check_cameras(cameras)
    if not (depth > 0 and np.isfinite(depth)):
        raise InvalidOptionError(f"frustum depth must be a positive finite number, got {depth}")
    H, W = cameras.height, cameras.width
    K = _np64(cameras.K)
    c2w = _np64(cameras.c2w)
    # Pixel-corner coordinates (pixel (u, v) covers [u, u+1)), plus the up-marker tip.
    uv = np.array([[0, 0], [W, 0], [W, H], [0, H], [W / 2, -0.15 * H]], dtype=np.float64)
    uv1 = np.concatenate([uv, np.ones((5, 1))], axis=1)  # [5, 3]
    rays = np.einsum("fij,pj->fpi", np.linalg.inv(K), uv1)  # [F, 5, 3], z = 1
    cam_pts = rays / rays[..., 2:3] * depth
    world = np.einsum("fij,fpj->fpi", c2w[:, :3, :3], cam_pts) + c2w[:, None, :3, 3]
    verts = np.concatenate([c2w[:, None, :3, 3], world], axis=1)  # [F, 6, 3]
    seg = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1], [1, 5], [5, 2]])
    offsets = 6 * np.arange(len(cameras))[:, None, None]
    return verts.reshape(-1, 3), (seg[None] + offsets).reshape(-1, 2).astype(np.int32)


class _GlbBuilder:
    """Minimal glTF 2.0 binary writer: one buffer, one scene, one node per mesh."""

    def __init__(self) -> None:
        self.bin = bytearray()
        self.gltf: dict = {
            "asset": {"version": "2.0", "generator": "WorldStereo for ComfyUI"},
            "scene": 0,
            "scenes": [{"nodes": []}],
            "nodes": [],
            "meshes": [],
            "materials": [],
            "accessors": [],
            "bufferViews": [],
            "buffers": [],
            "extensionsUsed": ["KHR_materials_unlit"],
        }

    def _view(self, data: np.ndarray) -> int:
        while len(self.bin) % 4:
            self.bin.append(0)
        offset = len(self.bin)
        self.bin.extend(data.tobytes())
        self.gltf["bufferViews"].append({"buffer": 0, "byteOffset": offset, "byteLength": data.nbytes})
        return len(self.gltf["bufferViews"]) - 1

    def accessor(self, data: np.ndarray, *, normalized: bool = False, minmax: bool = False) -> int:
        kinds = {1: "SCALAR", 3: "VEC3", 4: "VEC4"}
        ctype = {np.dtype(np.float32): 5126, np.dtype(np.uint8): 5121, np.dtype(np.uint32): 5125}[data.dtype]
        acc = {
            "bufferView": self._view(np.ascontiguousarray(data)),
            "componentType": ctype,
            "count": int(data.shape[0]),
            "type": kinds[1 if data.ndim == 1 else data.shape[1]],
        }
        if normalized:
            acc["normalized"] = True
        if minmax:  # glTF requires bounds on POSITION accessors
            acc["min"] = data.min(axis=0).astype(float).tolist()
            acc["max"] = data.max(axis=0).astype(float).tolist()
        self.gltf["accessors"].append(acc)
        return len(self.gltf["accessors"]) - 1

    def material(self, name: str, rgb: Sequence[float]) -> int:
        self.gltf["materials"].append(
            {
                "name": name,
                "pbrMetallicRoughness": {"baseColorFactor": [*map(float, rgb), 1.0], "metallicFactor": 0.0},
                "extensions": {"KHR_materials_unlit": {}},
            }
        )
        return len(self.gltf["materials"]) - 1

    def mesh(self, name: str, primitive: dict) -> None:
        self.gltf["meshes"].append({"name": name, "primitives": [primitive]})
        self.gltf["nodes"].append({"name": name, "mesh": len(self.gltf["meshes"]) - 1})
        self.gltf["scenes"][0]["nodes"].append(len(self.gltf["nodes"]) - 1)

    def tobytes(self) -> bytes:
        while len(self.bin) % 4:
            self.bin.append(0)
        self.gltf["buffers"] = [{"byteLength": len(self.bin)}]
        js = json.dumps(self.gltf, separators=(",", ":")).encode("utf-8")
        js += b" " * (-len(js) % 4)  # JSON chunk is padded with spaces
        total = 12 + 8 + len(js) + 8 + len(self.bin)
        return b"".join(
            [
                struct.pack("<4sII", b"glTF", 2, total),
                struct.pack("<I4s", len(js), b"JSON"),
                js,
                struct.pack("<I4s", len(self.bin), b"BIN\x00"),
                bytes(self.bin),
            ]
        )


def _default_frustum_depth(cloud_pts: np.ndarray | None, centers: np.ndarray) -> float:
    """3 % of the scene's robust extent (cloud and camera centres), or 0.1 for a degenerate scene."""
    pts = centers if cloud_pts is None or len(cloud_pts) == 0 else np.concatenate([cloud_pts, centers])
    lo, hi = np.percentile(pts, [2, 98], axis=0)
    extent = float(np.linalg.norm(hi - lo))
    return 0.03 * extent if extent > 1e-9 else 0.1


def save_cameras_glb(
    path: PathLike,
    cloud: PointCloud | None,
    trajectories: Sequence[tuple[str, Cameras]] = (),
    *,
    max_points: int | None = 2_000_000,
    frustum_depth: float | None = None,
    colors: Sequence[Sequence[float]] | None = None,
) -> Path:
    """Write a GLB with the cloud as a point primitive and each camera as a frustum wireframe.

    Args:
        path: target ``.glb`` file.
        cloud: point cloud (vertex colours), or None for cameras only.
        trajectories: ``(name, Cameras)`` pairs; each becomes one mesh of ``LINES`` named
            ``name`` with its own unlit colour (``colors[i]`` or a built-in palette).
        max_points: keep at most this many points (deterministic random subset); None = all.
        frustum_depth: z-depth of the drawn image plane in world units; default 3 % of the
            scene's robust extent.

    Positions are converted to glTF axes with ``GLB_FROM_OPENCV`` (module docstring). Opens in
    ComfyUI's Preview3D (three.js GLTFLoader), Blender and trimesh.
    """
    trajectories = list(trajectories)
    if cloud is None and not trajectories:
        raise MissingInputError("nothing to export: give a point cloud, at least one trajectory, or both")
    if cloud is not None:
        _check_cloud(cloud)
    for i, item in enumerate(trajectories):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InvalidInputError(f"trajectories[{i}] must be a (name, Cameras) pair, got {type(item).__name__}")
        _check_cameras(item[1], f"trajectories[{i}] cameras")
    if colors is not None and len(colors) < len(trajectories):
        raise ShapeMismatchError(f"got {len(colors)} colours for {len(trajectories)} trajectories")

    S = GLB_FROM_OPENCV
    b = _GlbBuilder()
    cloud_pts = None
    if cloud is not None:
        cloud_pts, rgb = _subsampled_points(cloud, max_points)
        pos = (cloud_pts @ S.T).astype(np.float32)
        # RGBA uint8 keeps every vertex attribute 4-byte aligned, as glTF requires.
        rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
        mat = b.material("points", (1.0, 1.0, 1.0))
        b.mesh(
            "point_cloud",
            {
                "attributes": {"POSITION": b.accessor(pos, minmax=True), "COLOR_0": b.accessor(rgba, normalized=True)},
                "mode": 0,  # POINTS
                "material": mat,
            },
        )

    if trajectories:
        centers = np.concatenate([_np64(cams.centers) for _, cams in trajectories])
        depth = frustum_depth if frustum_depth is not None else _default_frustum_depth(cloud_pts, centers)
        for i, (name, cams) in enumerate(trajectories):
            verts, seg = frustum_lines(cams, depth)
            rgb = colors[i] if colors is not None else _TRAJECTORY_COLORS[i % len(_TRAJECTORY_COLORS)]
            mat = b.material(f"{name}_frustums", rgb)
            b.mesh(
                str(name),
                {
                    "attributes": {"POSITION": b.accessor((verts @ S.T).astype(np.float32), minmax=True)},
                    "indices": b.accessor(seg.reshape(-1).astype(np.uint32)),
                    "mode": 1,  # LINES
                    "material": mat,
                },
            )

    blob = b.tobytes()
    return _atomic_write(path, lambda tmp: tmp.write_bytes(blob))


# --------------------------------------------------------------------------------------------
# COLMAP


def save_colmap_text(
    folder: PathLike,
    cameras: Cameras,
    image_names: Sequence[str],
    cloud: PointCloud | None = None,
    *,
    max_points: int | None = None,
) -> Path:
    """Write a COLMAP text model (``cameras.txt``, ``images.txt``, ``points3D.txt``) into ``folder``.

    One ``PINHOLE`` camera per distinct intrinsics (fx fy cx cy), images numbered from 1 in
    the given order with their OpenCV w2c as ``qw qx qy qz tx ty tz``, no 2D observations.
    ``points3D.txt`` holds the cloud (colours 0–255, error 0, empty tracks), or is empty.
    Returns the folder.
    """
    _check_cameras(cameras)
    names = _check_names(image_names, len(cameras), "image_names")
    if cloud is not None:
        _check_cloud(cloud)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{folder} exists and is not a folder; COLMAP models are folders of three files")
    folder.mkdir(parents=True, exist_ok=True)

    K = _np64(cameras.K)
    w2c = _np64(cameras.w2c)
    params = np.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], 1)
    uniq, cam_of_image = np.unique(params, axis=0, return_inverse=True)
    cam_of_image = cam_of_image.reshape(-1)

    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(uniq)}",
    ]
    lines += [
        f"{i + 1} PINHOLE {cameras.width} {cameras.height} " + " ".join(f"{v:.17g}" for v in p)
        for i, p in enumerate(uniq)
    ]
    cameras_txt = "\n".join(lines) + "\n"

    quats = matrix_to_quaternion(w2c[:, :3, :3])  # (w, x, y, z), w ≥ 0, as COLMAP writes them
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(names)}, mean observations per image: 0",
    ]
    for i, name in enumerate(names):
        vals = " ".join(f"{v:.17g}" for v in (*quats[i], *w2c[i, :3, 3]))
        lines += [f"{i + 1} {vals} {cam_of_image[i] + 1} {name}", ""]
    images_txt = "\n".join(lines) + "\n"

    header = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
    ]
    body = ""
    n_pts = 0
    if cloud is not None:
        pts, rgb = _subsampled_points(cloud, max_points)
        n_pts = len(pts)
        ids = np.arange(1, n_pts + 1)
        # Formatting row by row is slow in Python; build the columns with numpy's char ops.
        cols = [ids.astype(str)] + [np.char.mod("%.9g", pts[:, k]) for k in range(3)]
        cols += [rgb[:, k].astype(str) for k in range(3)] + [np.full(n_pts, "0")]
        rows = cols[0]
        for c in cols[1:]:
            rows = np.char.add(np.char.add(rows, " "), c)
        body = "\n".join(rows.tolist()) + ("\n" if n_pts else "")
    header.append(f"# Number of points: {n_pts}, mean track length: 0")
    points_txt = "\n".join(header) + "\n" + body

    for fname, text in (("cameras.txt", cameras_txt), ("images.txt", images_txt), ("points3D.txt", points_txt)):
        _atomic_write(folder / fname, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    return folder


# --------------------------------------------------------------------------------------------
# nerfstudio


def save_transforms_json(
    path: PathLike,
    cameras: Cameras,
    image_paths: Sequence[str],
    *,
    ply_file_path: str | None = None,
) -> Path:
    """Write a nerfstudio ``transforms.json`` for ``cameras`` and their image files.

    ``transform_matrix`` = ``c2w @ diag(1, −1, −1, 1)`` (OpenGL camera axes, world unchanged).
    Intrinsics ``fl_x fl_y cx cy w h`` are written once at the top level when all frames share
    them, otherwise per frame. ``camera_model`` is ``OPENCV`` with zero distortion.
    ``image_paths`` are written as given (nerfstudio resolves them relative to the JSON file);
    ``ply_file_path`` optionally names an initial point cloud (used by splatfacto).
    """
    _check_cameras(cameras)
    paths = _check_names([str(p).replace(os.sep, "/") for p in image_paths], len(cameras), "image_paths")
    K = _np64(cameras.K)
    c2w_gl = _np64(cameras.c2w) @ OPENGL_FROM_OPENCV

    def intr(k: np.ndarray) -> dict:
        return {
            "fl_x": float(k[0, 0]),
            "fl_y": float(k[1, 1]),
            "cx": float(k[0, 2]),
            "cy": float(k[1, 2]),
            "w": cameras.width,
            "h": cameras.height,
        }

    shared = bool(np.all(K == K[:1]))
    doc: dict = {"camera_model": "OPENCV"}
    if shared:
        doc.update(intr(K[0]))
    doc.update({"k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    frames = []
    for i, p in enumerate(paths):
        fr: dict = {"file_path": p, "transform_matrix": c2w_gl[i].tolist()}
        if not shared:
            fr.update(intr(K[i]))
        frames.append(fr)
    doc["frames"] = frames
    if ply_file_path is not None:
        doc["ply_file_path"] = str(ply_file_path)
    text = json.dumps(doc, indent=2)
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# images


def save_images_png(folder: PathLike, frames: ArrayLike, prefix: str = "frame") -> list[str]:
    """Write ``frames [F, H, W, 3]`` in [0, 1] as 8-bit RGB PNGs ``<prefix>_00000.png``… into
    ``folder`` (atomically, one file at a time); returns the file names in order (the
    ``image_names`` / ``image_paths`` of the COLMAP and nerfstudio writers)."""
    from PIL import Image

    x = as_tensor(frames).detach()
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise InvalidImageError(
            f"frames must have shape [F, H, W, 3] (a ComfyUI IMAGE) with F ≥ 1, got {tuple(x.shape)}"
        )
    if not torch.isfinite(x).all():
        raise InvalidImageError("frames contain NaN or inf values")
    if not prefix or any(c in prefix for c in "/\\") or prefix.startswith("."):
        raise OutputPathError(f"prefix must be a plain file-name stem, got {prefix!r}")
    u8 = (x.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(u8):
        name = f"{prefix}_{i:05d}.png"
        _atomic_write(folder / name, lambda tmp, img=img: Image.fromarray(img, "RGB").save(tmp, format="PNG"))
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# video


def save_video_mp4(path: PathLike, frames: ArrayLike, fps: float = 16, *, quality: int = 8) -> Path:
    """Encode ``frames [F, H, W, 3]`` in [0, 1] (a ComfyUI IMAGE) as an H.264 MP4 (yuv420p).

    Odd heights or widths are padded by one replicated row/column, because yuv420p (the format
    browsers play) needs even sizes. ``quality`` is imageio-ffmpeg's 0–10 scale.
    """
    x = as_tensor(frames).detach()
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InvalidImageError(f"frames must have shape [F, H, W, 3] (a ComfyUI IMAGE), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise InvalidImageError(f"frames must hold at least one non-empty image, got shape {tuple(x.shape)}")
    if not (fps > 0 and np.isfinite(fps)):
        raise InvalidOptionError(f"fps must be a positive number, got {fps}")
    x = x.to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise InvalidImageError("frames contain NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InvalidImageError(
            f"frames must lie in [0, 1] like a ComfyUI IMAGE, got range [{lo:.3g}, {hi:.3g}]; map "
            "[-1, 1] model output with (x + 1) / 2, or divide 0–255 values by 255"
        )
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    pad_h, pad_w = u8.shape[1] % 2, u8.shape[2] % 2
    if pad_h or pad_w:
        u8 = np.pad(u8, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")

    def write(tmp: Path) -> None:
        import imageio.v2 as imageio  # optional dependency, imported only when writing video

        with imageio.get_writer(
            tmp,
            format="FFMPEG",
            mode="I",
            fps=float(fps),
            codec="libx264",
            quality=quality,
            pixelformat="yuv420p",
            macro_block_size=1,
        ) as w:
            for frame in u8:
                w.append_data(frame)

    return _atomic_write(path, write)
