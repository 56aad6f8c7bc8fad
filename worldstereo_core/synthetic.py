"""Procedural scenes with exact geometry: the oracle generator of the scene loop.

A :class:`SyntheticScene` is a handful of analytic primitives (planes, spheres, boxes that may
turn about the vertical axis) with procedural, view-independent textures. It ray-casts any
batch of :class:`~worldstereo_core.cameras.Cameras` exactly, in torch, batched over pixels:

* ``scene.render(cameras)`` gives RGB, exact z-depth and a validity mask — the *oracle
  generator* that stands in for the video model in tests and the demo workflow;
* ``scene.default_view(height, width)`` gives the input image, its camera and its depth;
* ``scene.surface_points(cameras)`` gives the ground-truth cloud of surface points seen by at
  least one of the cameras;
* ``scene.distance_to_surface(points)`` measures how far points lie from the true surfaces.

World frame: the default input camera sits at the origin looking along +z with OpenCV axes,
so the world is "y down" (the ground is at positive y, the sky at negative y). Ray directions
are built as ``Rᵀ K⁻¹ [u + 0.5, v + 0.5, 1]`` whose camera-frame z component is exactly 1, so
the ray parameter of a hit *is* its z-depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from .cameras import ArrayLike, Cameras, as_tensor, invert_rigid, like_input
from .errors import InvalidDepthError, SyntheticSceneError
from .pointcloud import PointCloud

SCENE_NAMES = ("room", "outdoor")

_EPS_T = 1e-6  # hits closer than this along the ray are ignored (no self-hits at the eye)
_INF = float("inf")


# ---------------------------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """Procedural texture: a two-colour 3D checker modulated by smooth value noise.

    Attributes:
        color: RGB in [0, 1] of the even checker cells.
        color2: RGB of the odd cells (equal to ``color`` for a plain surface).
        checker: checker cell size in world units (0 disables the checker).
        noise: amplitude of the smooth multiplicative noise (0 disables it).
    """

    color: tuple[float, float, float]
    color2: tuple[float, float, float] | None = None
    checker: float = 0.0
    noise: float = 0.15


@dataclass(frozen=True)
class Plane:
    """Infinite two-sided plane ``n · p = offset`` (``normal`` need not be unit)."""

    normal: tuple[float, float, float]
    offset: float
    material: Material


@dataclass(frozen=True)
class Sphere:
    """Sphere; rays from inside hit its far wall (a dome), rays from outside its near side."""

    center: tuple[float, float, float]
    radius: float
    material: Material


@dataclass(frozen=True)
class Box:
    """Box turned by ``yaw_deg`` about the world y axis; thin-walled, so a camera inside sees
    its inner faces (a room) and a camera outside its outer faces (an object)."""

    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    material: Material
    yaw_deg: float = 0.0


Primitive = Plane | Sphere | Box


class SceneRender(NamedTuple):
    """What the oracle sees at a batch of cameras.

    Attributes:
        rgb: ``[F, H, W, 3]`` float32 colours in [0, 1] (black where nothing was hit).
        depth: ``[F, H, W]`` float32 exact z-depth (0 where nothing was hit).
        valid: ``[F, H, W]`` bool, True where a surface was hit.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class SyntheticView:
    """The scene's default input view.

    Attributes:
        image: ``[1, H, W, 3]`` float32 in [0, 1] (a ComfyUI IMAGE).
        cameras: one camera of ``H × W``.
        depth: ``[1, H, W]`` float32 exact z-depth.
        valid: ``[1, H, W]`` bool.
    """

    image: torch.Tensor
    cameras: Cameras
    depth: torch.Tensor
    valid: torch.Tensor

    @property
    def median_depth(self) -> float:
        """Median z-depth over the valid pixels (what trajectory presets scale with)."""
        return float(self.depth[self.valid].double().median())


def look_at(eye: ArrayLike, target: ArrayLike, up: ArrayLike = (0.0, -1.0, 0.0)) -> torch.Tensor:
    """``[4, 4]`` float64 OpenCV w2c of a camera at ``eye`` looking at ``target``.

    ``up`` is the world's up direction (``-y`` in this module's y-down world); the camera's
    y axis points away from it (image rows grow downwards).
    """
    eye_t = as_tensor(eye, dtype=torch.float64)
    fwd = as_tensor(target, dtype=torch.float64) - eye_t
    fwd = fwd / fwd.norm()
    up_t = as_tensor(up, dtype=torch.float64)
    right = torch.linalg.cross(fwd, up_t)
    if right.norm() < 1e-9:
        raise SyntheticSceneError("look_at: view direction is parallel to the up vector; pick another target")
    right = right / right.norm()
    # OpenCV: x right, y down, z forward; x × y = z with y = z × x.
    down = torch.linalg.cross(fwd, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, eye_t
    return invert_rigid(c2w)


# ---------------------------------------------------------------------------------------------
# Ray casting against each primitive kind. Rays: origins [R, 3], directions [R, 3] (float64).
# Each returns the ray parameter of the first hit beyond _EPS_T (inf for a miss) and a unit
# normal [R, 3] at that hit (orientation arbitrary; shading uses |n · l|).
# ---------------------------------------------------------------------------------------------


def _first_positive(t_near: torch.Tensor, t_far: torch.Tensor) -> torch.Tensor:
    """Nearest root in front of the eye for a two-sided closed surface (inf if none)."""
    t = torch.where(t_near > _EPS_T, t_near, t_far)
    return torch.where(t > _EPS_T, t, torch.full_like(t, _INF))


def _yaw_matrix(yaw_deg: float, dtype, device) -> torch.Tensor:
    """Rotation about +y by ``yaw_deg`` (local → world)."""
    a = math.radians(yaw_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=dtype, device=device)


def _hit_plane(p: Plane, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.tensor(p.normal, dtype=o.dtype, device=o.device)
    scale = n.norm()
    n, off = n / scale, p.offset / float(scale)
    nd = d @ n
    no = o @ n
    safe = torch.where(nd.abs() < 1e-12, torch.full_like(nd, 1e-12), nd)
    t = (off - no) / safe
    t = torch.where((nd.abs() >= 1e-12) & (t > _EPS_T), t, torch.full_like(t, _INF))
    return t, n.expand_as(o)


def _hit_sphere(s: Sphere, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.tensor(s.center, dtype=o.dtype, device=o.device)
    oc = o - c
    a = (d * d).sum(-1)
    half_b = (d * oc).sum(-1)
    cc = (oc * oc).sum(-1) - s.radius**2
    disc = half_b * half_b - a * cc
    root = disc.clamp_min(0).sqrt()
    t = _first_positive((-half_b - root) / a, (-half_b + root) / a)
    t = torch.where(disc >= 0, t, torch.full_like(t, _INF))
    hit = o + torch.nan_to_num(t, posinf=0.0)[:, None] * d
    return t, (hit - c) / s.radius


def _hit_box(b: Box, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    R = _yaw_matrix(b.yaw_deg, o.dtype, o.device)
    c = torch.tensor(b.center, dtype=o.dtype, device=o.device)
    h = torch.tensor(b.half_size, dtype=o.dtype, device=o.device)
    ol = (o - c) @ R  # world → local is Rᵀ, i.e. row-vector @ R
    dl = d @ R
    dl = torch.where(dl.abs() < 1e-12, torch.full_like(dl, 1e-12), dl)
    t1 = (-h - ol) / dl
    t2 = (h - ol) / dl
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    t = _first_positive(t_near, t_far)
    t = torch.where(t_near <= t_far, t, torch.full_like(t, _INF))
    # Normal: the local axis along which the hit point touches the box surface.
    hit_l = ol + torch.nan_to_num(t, posinf=0.0)[:, None] * dl
    axis = ((hit_l.abs() - h).abs()).argmin(-1)
    n_l = torch.nn.functional.one_hot(axis, 3).to(o.dtype)
    return t, n_l @ R.T


def _dist_plane(p: Plane, x: torch.Tensor) -> torch.Tensor:
    n = torch.tensor(p.normal, dtype=x.dtype, device=x.device)
    return ((x @ n) - p.offset).abs() / n.norm()


def _dist_sphere(s: Sphere, x: torch.Tensor) -> torch.Tensor:
    c = torch.tensor(s.center, dtype=x.dtype, device=x.device)
    return ((x - c).norm(dim=-1) - s.radius).abs()


def _dist_box(b: Box, x: torch.Tensor) -> torch.Tensor:
    R = _yaw_matrix(b.yaw_deg, x.dtype, x.device)
    c = torch.tensor(b.center, dtype=x.dtype, device=x.device)
    h = torch.tensor(b.half_size, dtype=x.dtype, device=x.device)
    q = ((x - c) @ R).abs() - h
    outside = q.clamp_min(0).norm(dim=-1)
    inside = q.amax(-1).clamp_max(0)
    return (outside + inside).abs()


_HIT = {Plane: _hit_plane, Sphere: _hit_sphere, Box: _hit_box}
_DIST = {Plane: _dist_plane, Sphere: _dist_sphere, Box: _dist_box}


# ---------------------------------------------------------------------------------------------
# Scene
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticScene:
    """A procedural scene that can be rendered exactly from any camera.

    Attributes:
        name: scene name (``"room"`` or ``"outdoor"`` for the built-in ones).
        primitives: the surfaces, in order (their index is the primitive id).
        bounds: ``([3], [3])`` lower / upper corner of the axis-aligned box holding all the
            geometry a camera inside the scene can see.
        default_eye, default_target: the default input camera's position and look-at point.
        fov_x_deg: horizontal field of view of the default camera.
        seed: seed of the procedural textures (and of the object jitter in :func:`make_scene`).
        light: direction of the directional light used for shading (world frame).
    """

    name: str
    primitives: tuple[Primitive, ...]
    bounds: tuple[tuple[float, float, float], tuple[float, float, float]]
    default_eye: tuple[float, float, float] = (0.0, 0.0, 0.0)
    default_target: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_x_deg: float = 70.0
    seed: int = 0
    light: tuple[float, float, float] = (0.4, -0.8, -0.45)
    _noise: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.primitives:
            raise SyntheticSceneError("a synthetic scene needs at least one primitive")
        # Smooth noise = mean of a few random plane waves; frequencies ~ 1/(0.3 … 2) m.
        g = torch.Generator().manual_seed(int(self.seed) * 7919 + 17)
        dirs = torch.randn(6, 3, generator=g, dtype=torch.float64)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        freq = 2 * math.pi / (0.3 + 1.7 * torch.rand(6, 1, generator=g, dtype=torch.float64))
        phase = 2 * math.pi * torch.rand(6, 1, generator=g, dtype=torch.float64)
        object.__setattr__(self, "_noise", torch.cat([dirs * freq, phase], dim=-1))  # [6, 4]

    # -- geometry -------------------------------------------------------------------------

    @property
    def extent(self) -> float:
        """Diagonal of the bounding box of the scene's visible geometry (world units)."""
        lo, hi = np.asarray(self.bounds[0], float), np.asarray(self.bounds[1], float)
        return float(np.linalg.norm(hi - lo))

    def cast_rays(self, origins: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First hit of each ray.

        Args:
            origins, directions: ``[R, 3]`` (directions need not be unit).
        Returns:
            ``t [R]`` ray parameter of the hit (inf for a miss), ``prim [R]`` long primitive id
            (-1 for a miss), ``normal [R, 3]`` unit normal at the hit.
        """
        o = origins.to(torch.float64)
        d = directions.to(torch.float64)
        best_t = torch.full(o.shape[:1], _INF, dtype=torch.float64, device=o.device)
        best_id = torch.full(o.shape[:1], -1, dtype=torch.long, device=o.device)
        best_n = torch.zeros_like(o)
        for i, prim in enumerate(self.primitives):
            t, n = _HIT[type(prim)](prim, o, d)
            closer = t < best_t
            best_t = torch.where(closer, t, best_t)
            best_id = torch.where(closer, torch.full_like(best_id, i), best_id)
            best_n = torch.where(closer[:, None], n, best_n)
        return best_t, best_id, best_n

    def distance_to_surface(self, points: ArrayLike) -> ArrayLike:
        """``[N]`` unsigned distance from ``points [N, 3]`` to the nearest primitive surface."""
        x = as_tensor(points).to(torch.float64)
        if x.ndim != 2 or x.shape[-1] != 3:
            raise SyntheticSceneError(f"points must have shape [N, 3], got {tuple(x.shape)}")
        dist = torch.full(x.shape[:1], _INF, dtype=torch.float64, device=x.device)
        for prim in self.primitives:
            dist = torch.minimum(dist, _DIST[type(prim)](prim, x))
        src = as_tensor(points)
        return like_input(dist.to(src.dtype) if src.is_floating_point() else dist, points)

    # -- appearance -----------------------------------------------------------------------

    def _shade(self, points: torch.Tensor, prim: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """``[R, 3]`` colours of hit points: checker × noise × Lambert-like shading."""
        rgb = torch.zeros_like(points)
        noise_w = self._noise.to(points.device)
        wave = torch.sin(points @ noise_w[:, :3].T + noise_w[:, 3]).mean(-1)  # [R] in [-1, 1]
        light = torch.tensor(self.light, dtype=points.dtype, device=points.device)
        light = light / light.norm()
        shade = 0.55 + 0.45 * (normals @ light).abs()
        for i, p in enumerate(self.primitives):
            sel = prim == i
            if not bool(sel.any()):
                continue
            m = p.material
            c1 = torch.tensor(m.color, dtype=points.dtype, device=points.device)
            c = c1.expand(int(sel.sum()), 3)
            if m.checker > 0 and m.color2 is not None:
                # A quarter-cell offset keeps axis-aligned surfaces off the cell boundaries.
                cells = torch.floor(points[sel] / m.checker + 0.25).sum(-1)
                odd = (cells.remainder(2) > 0.5)[:, None]
                c2 = torch.tensor(m.color2, dtype=points.dtype, device=points.device)
                c = torch.where(odd, c2, c1)
            rgb[sel] = c * (1 + m.noise * wave[sel, None]) * shade[sel, None]
        return rgb.clamp(0, 1)

    # -- rendering ------------------------------------------------------------------------

    def _rays(self, cameras: Cameras, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and directions ``[H·W, 3]`` (float64) of camera ``index``; z_cam(d) = 1."""
        H, W = cameras.height, cameras.width
        K = cameras.K[index].to(torch.float64)
        w2c = cameras.w2c[index].to(torch.float64)
        dev = w2c.device
        v, u = torch.meshgrid(
            torch.arange(H, dtype=torch.float64, device=dev) + 0.5,
            torch.arange(W, dtype=torch.float64, device=dev) + 0.5,
            indexing="ij",
        )
        pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
        d_cam = pix @ torch.linalg.inv(K).T  # third component exactly 1 for a pinhole K
        d_cam = d_cam / d_cam[:, 2:3]
        R, t = w2c[:3, :3], w2c[:3, 3]
        d_world = d_cam @ R  # Rᵀ d for row vectors
        origin = -(R.T @ t)
        return origin.expand_as(d_world), d_world

    def render(self, cameras: Cameras, chunk: int = 1 << 18) -> SceneRender:
        """Ray-cast every pixel centre of every camera (the oracle generator).

        Args:
            cameras: ``F`` cameras of ``H × W``.
            chunk: rays per batch (bounds memory; results do not depend on it).
        Returns:
            :class:`SceneRender` with ``rgb [F, H, W, 3]``, ``depth [F, H, W]`` (exact
            z-depth), ``valid [F, H, W]`` — float32 / bool on the cameras' device.
        """
        if not isinstance(cameras, Cameras):
            raise SyntheticSceneError(f"render expects a Cameras batch, got {type(cameras).__name__}")
        F, H, W = len(cameras), cameras.height, cameras.width
        rgb = torch.zeros(F, H * W, 3, dtype=torch.float32, device=cameras.device)
        depth = torch.zeros(F, H * W, dtype=torch.float32, device=cameras.device)
        valid = torch.zeros(F, H * W, dtype=torch.bool, device=cameras.device)
        for f in range(F):
            o, d = self._rays(cameras, f)
            for s in range(0, H * W, chunk):
                oo, dd = o[s : s + chunk], d[s : s + chunk]
                t, prim, n = self.cast_rays(oo, dd)
                hit = torch.isfinite(t)
                pts = oo + torch.where(hit, t, torch.zeros_like(t))[:, None] * dd
                col = self._shade(pts, prim, n)
                rgb[f, s : s + chunk] = torch.where(hit[:, None], col, torch.zeros_like(col)).float()
                depth[f, s : s + chunk] = torch.where(hit, t, torch.zeros_like(t)).float()
                valid[f, s : s + chunk] = hit
        return SceneRender(rgb.reshape(F, H, W, 3), depth.reshape(F, H, W), valid.reshape(F, H, W))

    def default_cameras(self, height: int, width: int) -> Cameras:
        """The default input camera at ``height × width`` (centred pinhole, ``fov_x_deg``)."""
        from .cameras import intrinsics_from_fov

        w2c = look_at(self.default_eye, self.default_target)
        K = intrinsics_from_fov(self.fov_x_deg, height, width)
        return Cameras(w2c[None].float(), K[None].float(), height, width)

    def default_view(self, height: int, width: int) -> SyntheticView:
        """Input image, its camera and exact depth at ``height × width``."""
        cams = self.default_cameras(height, width)
        out = self.render(cams)
        return SyntheticView(out.rgb, cams, out.depth, out.valid)

    def surface_points(
        self, cameras: Cameras, voxel_size: float | None = None, chunk_frames: int = 8
    ) -> PointCloud:
        """Ground-truth cloud: surface points seen by at least one of ``cameras``.

        Every valid pixel is unprojected at its exact depth (so each point lies on a surface)
        and the union is thinned to one actual point per voxel of ``voxel_size`` (default
        ``extent / 400``, a quarter of the usual 1 % threshold). Colours are the scene's,
        normals the true surface normals.
        """
        vs = float(voxel_size) if voxel_size is not None else self.extent / 400.0
        if not vs > 0:
            raise SyntheticSceneError(f"voxel_size must be positive, got {voxel_size}")
        pts, cols, nrms = [], [], []
        for s in range(0, len(cameras), chunk_frames):
            cams = cameras[s : s + chunk_frames]
            for f in range(len(cams)):
                o, d = self._rays(cams, f)
                t, prim, n = self.cast_rays(o, d)
                hit = torch.isfinite(t)
                p = o[hit] + t[hit, None] * d[hit]
                pts.append(p)
                nrms.append(n[hit])
                cols.append(self._shade(p, prim[hit], n[hit]))
        P, C, N = torch.cat(pts), torch.cat(cols), torch.cat(nrms)
        if P.shape[0] == 0:
            return PointCloud(P.float(), C.float(), N.float())
        keep = _first_per_voxel(P, vs)
        return PointCloud(P[keep].float(), C[keep].float(), N[keep].float())


def _first_per_voxel(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Indices ``[M]`` (sorted) of the first point falling in each occupied voxel."""
    keys = torch.floor(points / voxel_size).long()
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    idx = torch.arange(points.shape[0], device=points.device)
    first = torch.full((int(inverse.max()) + 1,), points.shape[0], dtype=torch.long, device=points.device)
    first = first.scatter_reduce(0, inverse, idx, reduce="amin")
    return first.sort().values


# ---------------------------------------------------------------------------------------------
# Built-in scenes
# ---------------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, xyz: tuple[float, float, float], amount: float, keep_y: bool = True):
    j = rng.uniform(-amount, amount, 3)
    if keep_y:
        j[1] = 0.0  # objects stay on the ground
    return tuple(float(a + b) for a, b in zip(xyz, j))


def _room(seed: int) -> SyntheticScene:
    rng = np.random.default_rng(seed)
    floor_y = 1.0  # camera 1 m above the floor
    M = Material
    prims: list[Primitive] = [
        # The room: walls, floor and ceiling in one thin-walled box around every camera path.
        Box((0.0, -1.75, 3.5), (6.0, 2.75, 6.5), M((0.85, 0.8, 0.7), (0.55, 0.5, 0.45), checker=0.75, noise=0.2)),
        Box(_jitter(rng, (-0.9, floor_y - 0.4, 3.6), 0.15), (0.45, 0.4, 0.45),
            M((0.8, 0.25, 0.2), (0.95, 0.6, 0.3), checker=0.2), yaw_deg=25 + rng.uniform(-10, 10)),
        Box(_jitter(rng, (1.3, floor_y - 0.9, 4.6), 0.15), (0.35, 0.9, 0.35),
            M((0.2, 0.35, 0.8), (0.5, 0.7, 0.95), checker=0.25), yaw_deg=-20 + rng.uniform(-10, 10)),
        Sphere(_jitter(rng, (0.3, floor_y - 0.55, 3.2), 0.1), 0.55, M((0.2, 0.7, 0.3), (0.8, 0.9, 0.3), checker=0.15)),
        Box(_jitter(rng, (0.2, floor_y - 0.25, 5.7), 0.2), (0.9, 0.25, 0.5),
            M((0.6, 0.4, 0.7), (0.3, 0.2, 0.4), checker=0.3), yaw_deg=rng.uniform(-15, 15)),
        Sphere(_jitter(rng, (-2.6, floor_y - 0.7, 6.4), 0.2), 0.7, M((0.9, 0.85, 0.2), (0.9, 0.5, 0.1), checker=0.3)),
        Box(_jitter(rng, (3.4, floor_y - 1.0, 7.2), 0.2), (0.6, 1.0, 0.6),
            M((0.3, 0.6, 0.6), (0.1, 0.3, 0.35), checker=0.35), yaw_deg=rng.uniform(0, 45)),
        Sphere((-2.8, -1.2, 1.5), 0.45, M((0.9, 0.5, 0.6), (0.6, 0.2, 0.3), checker=0.2)),
    ]
    room = prims[0]
    lo = tuple(c - h for c, h in zip(room.center, room.half_size))
    hi = tuple(c + h for c, h in zip(room.center, room.half_size))
    return SyntheticScene(
        "room", tuple(prims), (lo, hi), (0.0, 0.0, 0.0), (0.0, 0.45, 4.0), fov_x_deg=70.0, seed=seed
    )


def _outdoor(seed: int) -> SyntheticScene:
    rng = np.random.default_rng(seed + 1)
    ground_y = 1.6
    dome_c, dome_r = (0.0, ground_y, 4.0), 12.0
    M = Material
    prims: list[Primitive] = [
        Plane((0.0, 1.0, 0.0), ground_y, M((0.35, 0.55, 0.25), (0.45, 0.4, 0.25), checker=0.6, noise=0.25)),
        # Distant background: a hemispherical dome (sky and far hills by its texture).
        Sphere(dome_c, dome_r, M((0.55, 0.7, 0.95), (0.7, 0.8, 1.0), checker=2.5, noise=0.3)),
        # A house: body and a flat roof slab.
        Box(_jitter(rng, (-1.6, ground_y - 1.1, 5.5), 0.2), (1.1, 1.1, 0.9),
            M((0.85, 0.75, 0.6), (0.7, 0.55, 0.45), checker=0.3), yaw_deg=20 + rng.uniform(-8, 8)),
        Box(_jitter(rng, (1.7, ground_y - 0.5, 4.2), 0.2), (0.5, 0.5, 0.5),
            M((0.7, 0.3, 0.25), (0.4, 0.15, 0.1), checker=0.25), yaw_deg=rng.uniform(-30, 30)),
        # A tree: trunk and crown.
        Box(_jitter(rng, (0.6, ground_y - 0.9, 7.0), 0.1), (0.15, 0.9, 0.15), M((0.45, 0.3, 0.15), (0.35, 0.2, 0.1), checker=0.2)),
        Sphere((0.0, 0.0, 0.0), 0.9, M((0.15, 0.5, 0.15), (0.3, 0.65, 0.2), checker=0.25)),
        # Rocks: spheres sunk into the ground.
        Sphere(_jitter(rng, (0.2, ground_y - 0.2, 3.0), 0.15), 0.5, M((0.55, 0.55, 0.55), (0.4, 0.4, 0.45), checker=0.15)),
        Sphere(_jitter(rng, (-3.2, ground_y - 0.3, 3.4), 0.2), 0.7, M((0.6, 0.55, 0.5), (0.45, 0.4, 0.4), checker=0.2)),
        Box(_jitter(rng, (3.6, ground_y - 1.5, 7.5), 0.3), (0.4, 1.5, 0.4), M((0.8, 0.8, 0.85), (0.5, 0.5, 0.6), checker=0.3)),
    ]
    trunk = prims[4]
    prims[5] = Sphere((trunk.center[0], trunk.center[1] - 0.9 - 0.6, trunk.center[2]), 0.9, prims[5].material)
    lo = (dome_c[0] - dome_r, dome_c[1] - dome_r, dome_c[2] - dome_r)
    hi = (dome_c[0] + dome_r, ground_y, dome_c[2] + dome_r)
    return SyntheticScene(
        "outdoor", tuple(prims), (lo, hi), (0.0, 0.0, 0.0), (0.0, 0.6, 4.0), fov_x_deg=70.0, seed=seed
    )


def make_scene(name: str = "room", seed: int = 0) -> SyntheticScene:
    """A built-in scene: ``"room"`` (a textured room with boxes and spheres) or ``"outdoor"``
    (ground, house, tree, rocks under a distant dome). ``seed`` jitters the objects a little
    and changes the texture noise; the same seed always gives the same scene."""
    builders = {"room": _room, "outdoor": _outdoor}
    if name not in builders:
        raise SyntheticSceneError(f"unknown synthetic scene {name!r}; choose one of {', '.join(SCENE_NAMES)}")
    return builders[name](int(seed))


# ---------------------------------------------------------------------------------------------
# Depth corruption
# ---------------------------------------------------------------------------------------------


class CorruptedDepth(NamedTuple):
    """Output of :func:`corrupt_depth`.

    Attributes:
        depth: ``[F, H, W]`` corrupted depth (0 at holes).
        valid: ``[F, H, W]`` bool, False at holes and where the input was invalid.
        scale, shift: ``[F]`` the applied affine map, ``depth ≈ scale · true + shift``.
    """

    depth: ArrayLike
    valid: ArrayLike
    scale: ArrayLike
    shift: ArrayLike


def corrupt_depth(
    depth: ArrayLike,
    scale_range: float = 0.2,
    noise: float = 0.01,
    hole_fraction: float = 0.0,
    generator: torch.Generator | None = None,
    valid: ArrayLike | None = None,
    shift_range: float | None = None,
    hole_block: int = 8,
) -> CorruptedDepth:
    """Degrade exact depth the way a monocular / feed-forward predictor would.

    Per frame: ``d' = a · d · (1 + noise · n) + b · median(d)`` with ``a ~ U[1 − r, 1 + r]``,
    ``b ~ U[−r_s, r_s]`` (``r = scale_range``, ``r_s = shift_range``, default ``r``) and
    ``n ~ N(0, 1)`` per pixel; then blocks of ``hole_block²`` pixels are dropped with
    probability ``hole_fraction``. Pixels whose corrupted depth would not be positive also
    become holes (rare: only very near pixels under a large negative shift).

    Args:
        depth: ``[F, H, W]`` or ``[H, W]`` positive depth (0 allowed where ``valid`` is False).
        generator: torch generator for reproducibility (a fixed seed 0 when None).
        valid: optional mask of usable input pixels (default: ``depth > 0``).
    Returns:
        :class:`CorruptedDepth` — same kind (numpy / torch) and rank as ``depth``.
    """
    d = as_tensor(depth)
    single = d.ndim == 2
    if single:
        d = d[None]
    if d.ndim != 3:
        raise InvalidDepthError(f"depth must have shape [F, H, W] or [H, W], got {tuple(as_tensor(depth).shape)}")
    if not d.is_floating_point():
        d = d.float()
    if not torch.isfinite(d).all():
        raise InvalidDepthError("depth contains NaN or inf values; replace them (and mark them invalid) first")
    if (d < 0).any():
        raise InvalidDepthError("depth contains negative values; z-depth must be >= 0 (0 = no data)")
    for nm, val in (("scale_range", scale_range), ("noise", noise), ("hole_fraction", hole_fraction)):
        if not (0 <= val < 1) and not (nm == "hole_fraction" and val == 1):
            raise SyntheticSceneError(f"{nm} must be in [0, 1), got {val}")
    r_s = scale_range if shift_range is None else shift_range
    if not 0 <= r_s < 1:
        raise SyntheticSceneError(f"shift_range must be in [0, 1), got {shift_range}")
    v = (d > 0) if valid is None else as_tensor(valid).to(torch.bool).reshape(d.shape)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    F, H, W = d.shape
    a = 1 + scale_range * (2 * torch.rand(F, generator=g, dtype=torch.float64) - 1)
    b = r_s * (2 * torch.rand(F, generator=g, dtype=torch.float64) - 1)
    n = torch.randn(F, H, W, generator=g, dtype=torch.float64)
    dd = d.cpu().double()
    vv = v.cpu()
    med = torch.stack([dd[i][vv[i]].median() if vv[i].any() else dd.new_tensor(0.0) for i in range(F)])
    shift = b * med
    out = a[:, None, None] * dd * (1 + noise * n) + shift[:, None, None]
    keep = vv & (out > 0)
    if hole_fraction > 0:
        hb, wb = -(-H // hole_block), -(-W // hole_block)
        blocks = torch.rand(F, hb, wb, generator=g, dtype=torch.float64) < hole_fraction
        holes = blocks.repeat_interleave(hole_block, 1).repeat_interleave(hole_block, 2)[:, :H, :W]
        keep = keep & ~holes
    out = torch.where(keep, out, torch.zeros_like(out)).to(device=d.device, dtype=d.dtype)
    keep = keep.to(d.device)
    scale_t, shift_t = a.to(d.dtype), shift.to(d.dtype)
    if single:
        out, keep = out[0], keep[0]
    return CorruptedDepth(
        like_input(out, depth), like_input(keep, depth), like_input(scale_t, depth), like_input(shift_t, depth)
    )
