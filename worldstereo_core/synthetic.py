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

from .cameras import ArrayLike, Cameras, as_tensor, invert_rigid, like_input, look_at_c2w
from .errors import InvalidDepthError, InvalidInputError, InvalidOptionError, ShapeMismatchError
from .pointcloud import PointCloud, pixel_rays

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
    """``[4, 4]`` float64 OpenCV w2c of a camera at ``eye`` looking at ``target`` — the inverse of
    :func:`cameras.look_at_c2w` (``up``: the world's up, ``-y`` in this module's y-down world)."""
    return invert_rigid(look_at_c2w(eye, target, up))


# ---------------------------------------------------------------------------------------------
# Ray casting against each primitive kind. Rays: origins [R, 3], directions [R, 3] (float64).
# Each ``_hit_*`` returns the ray parameter of the first hit beyond _EPS_T (inf for a miss);
# each ``_normal_*`` the unit normal at given surface points (orientation arbitrary; shading
# uses |n · l|). Normals are computed once, for the winning primitive only.
# ---------------------------------------------------------------------------------------------


def _first_positive(t_near: torch.Tensor, t_far: torch.Tensor) -> torch.Tensor:
    """Nearest root in front of the eye for a two-sided closed surface (inf if none)."""
    t = torch.where(t_near > _EPS_T, t_near, t_far)
    return t.masked_fill_(~(t > _EPS_T), _INF)


def _yaw_matrix(yaw_deg: float, dtype, device) -> torch.Tensor:
    """Rotation about +y by ``yaw_deg`` (local → world)."""
    a = math.radians(yaw_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=dtype, device=device)


def _plane_normal(p: Plane, dtype, device) -> tuple[torch.Tensor, float]:
    n = torch.tensor(p.normal, dtype=dtype, device=device)
    scale = float(n.norm())
    return n / scale, p.offset / scale


def _hit_plane(p: Plane, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    n, off = _plane_normal(p, o.dtype, o.device)
    nd = d @ n
    parallel = nd.abs() < 1e-12
    t = (off - o @ n) / nd.masked_fill(parallel, 1.0)
    return t.masked_fill_(parallel | ~(t > _EPS_T), _INF)


def _hit_sphere(s: Sphere, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    # Stable form (Ray Tracing Gems, ch. 7): measure the miss distance from the closest
    # approach instead of b² − 4ac, which cancels badly in float32 near silhouettes.
    oc = o - torch.tensor(s.center, dtype=o.dtype, device=o.device)
    a = (d * d).sum(-1)
    t_c = -(d * oc).sum(-1) / a
    perp = oc + t_c[:, None] * d
    h2 = (s.radius**2 - (perp * perp).sum(-1)) / a
    root = h2.clamp_min(0).sqrt()
    t = _first_positive(t_c - root, t_c + root)
    return t.masked_fill_(h2 < 0, _INF)


def _hit_box(b: Box, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    R = _yaw_matrix(b.yaw_deg, o.dtype, o.device)
    ol = (o - torch.tensor(b.center, dtype=o.dtype, device=o.device)) @ R  # world → local: Rᵀ x
    dl = d @ R
    inv = 1.0 / torch.where(dl.abs() < 1e-12, torch.full_like(dl, 1e-12), dl)
    h = torch.tensor(b.half_size, dtype=o.dtype, device=o.device)
    t1 = (-h - ol) * inv
    t2 = (h - ol) * inv
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    return _first_positive(t_near, t_far).masked_fill_(t_near > t_far, _INF)


def _normal_plane(p: Plane, x: torch.Tensor) -> torch.Tensor:
    return _plane_normal(p, x.dtype, x.device)[0].expand_as(x)


def _normal_sphere(s: Sphere, x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(s.center, dtype=x.dtype, device=x.device)) / s.radius


def _normal_box(b: Box, x: torch.Tensor) -> torch.Tensor:
    # The local axis along which the point touches the box surface.
    R = _yaw_matrix(b.yaw_deg, x.dtype, x.device)
    h = torch.tensor(b.half_size, dtype=x.dtype, device=x.device)
    xl = (x - torch.tensor(b.center, dtype=x.dtype, device=x.device)) @ R
    axis = (xl.abs() - h).abs().argmin(-1)
    return torch.nn.functional.one_hot(axis, 3).to(x.dtype) @ R.T


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
_NORMAL = {Plane: _normal_plane, Sphere: _normal_sphere, Box: _normal_box}
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
            raise InvalidInputError("a synthetic scene needs at least one primitive")
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

    def cast_rays(
        self, origins: torch.Tensor, directions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First hit of each ray.

        Args:
            origins, directions: ``[R, 3]`` (directions need not be unit); computed in the
                directions' float dtype (float32 or float64).
        Returns:
            ``t [R]`` ray parameter of the hit (inf for a miss), ``prim [R]`` long primitive id
            (-1 for a miss), ``normal [R, 3]`` unit normal at the hit.
        """
        dt = directions.dtype if directions.dtype in (torch.float32, torch.float64) else torch.float64
        o = origins.to(dt)
        d = directions.to(dt)
        best_t = torch.full(o.shape[:1], _INF, dtype=dt, device=o.device)
        best_id = torch.full(o.shape[:1], -1, dtype=torch.long, device=o.device)
        for i, prim in enumerate(self.primitives):
            t = _HIT[type(prim)](prim, o, d)
            closer = t < best_t
            best_t = torch.where(closer, t, best_t)
            best_id = best_id.masked_fill_(closer, i)
        hit = torch.isfinite(best_t)
        pts = o + best_t.masked_fill(~hit, 0.0)[:, None] * d
        normal = torch.zeros_like(o)
        for i, prim in enumerate(self.primitives):
            sel = best_id == i
            if bool(sel.any()):
                normal[sel] = _NORMAL[type(prim)](prim, pts[sel])
        return best_t, best_id, normal

    def distance_to_surface(self, points: ArrayLike) -> ArrayLike:
        """``[N]`` unsigned distance from ``points [N, 3]`` to the nearest primitive surface."""
        x = as_tensor(points).to(torch.float64)
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ShapeMismatchError(f"points must have shape [N, 3], got {tuple(x.shape)}")
        dist = torch.full(x.shape[:1], _INF, dtype=torch.float64, device=x.device)
        for prim in self.primitives:
            dist = torch.minimum(dist, _DIST[type(prim)](prim, x))
        src = as_tensor(points)
        return like_input(dist.to(src.dtype) if src.is_floating_point() else dist, points)

    # -- appearance -----------------------------------------------------------------------

    def _shade(self, points: torch.Tensor, prim: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """``[R, 3]`` colours of hit points (``prim >= 0``): checker × noise × Lambert-like shading."""
        dt, dev = points.dtype, points.device
        mats = [p.material for p in self.primitives]
        c1 = torch.tensor([m.color for m in mats], dtype=dt, device=dev)[prim]
        c2 = torch.tensor([m.color if m.color2 is None else m.color2 for m in mats], dtype=dt, device=dev)[prim]
        cell = torch.tensor([m.checker if m.checker > 0 else 1.0 for m in mats], dtype=dt, device=dev)[prim]
        use_checker = torch.tensor([m.checker > 0 for m in mats], device=dev)[prim]
        amp = torch.tensor([m.noise for m in mats], dtype=dt, device=dev)[prim]
        # A quarter-cell offset keeps axis-aligned surfaces off the cell boundaries.
        parity = torch.floor(points / cell[:, None] + 0.25).sum(-1).remainder(2) > 0.5
        c = torch.where((parity & use_checker)[:, None], c2, c1)
        w = self._noise.to(device=dev, dtype=dt)
        wave = torch.sin(points @ w[:, :3].T + w[:, 3]).mean(-1)  # smooth noise in [-1, 1]
        light = torch.tensor(self.light, dtype=dt, device=dev)
        shade = 0.55 + 0.45 * (normals @ (light / light.norm())).abs()
        return (c * ((1 + amp * wave) * shade)[:, None]).clamp(0, 1)

    # -- rendering ------------------------------------------------------------------------

    def _rays(self, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        """Origins and directions ``[F, H·W, 3]`` (float64) of all cameras; z_cam(d) = 1."""
        H, W = cameras.height, cameras.width
        K = cameras.K.to(torch.float64)
        w2c = cameras.w2c.to(torch.float64)
        # exactly 1 along the optical axis: the ray parameter t is z-depth
        d_cam = pixel_rays(K, H, W).reshape(K.shape[0], H * W, 3)
        R, t = w2c[:, :3, :3], w2c[:, :3, 3]
        d_world = d_cam @ R  # Rᵀ d for row vectors
        origin = -(R.transpose(-1, -2) @ t[..., None])[..., 0]  # [F, 3]
        return origin[:, None, :].expand_as(d_world), d_world

    def _bounding_spheres(self) -> list[tuple[tuple[float, float, float], float] | None]:
        out: list[tuple[tuple[float, float, float], float] | None] = []
        for p in self.primitives:
            if isinstance(p, Sphere):
                out.append((p.center, p.radius))
            elif isinstance(p, Box):
                out.append((p.center, float(np.linalg.norm(p.half_size))))
            else:
                out.append(None)
        return out

    def _cast_frames(self, cameras: Cameras, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Ray-cast all pixels of all cameras: ``t, prim [F, H, W]``, ``normal, points [F, H, W, 3]``.

        Each bounded primitive is only tested on the pixel rectangle its bounding sphere can
        project to (a conservative bound), which makes small objects nearly free.
        """
        F, H, W = len(cameras), cameras.height, cameras.width
        o, d = self._rays(cameras)
        origin = o[:, 0]  # [F, 3] float64
        d = d.reshape(F, H, W, 3).to(dtype)
        og = origin.to(dtype)
        best_t = torch.full((F, H, W), _INF, dtype=dtype, device=d.device)
        best_id = torch.full((F, H, W), -1, dtype=torch.long, device=d.device)
        w2c = cameras.w2c.double().cpu().numpy()
        K = cameras.K.double().cpu().numpy()

        def update(i: int, prim: Primitive, frames: slice | torch.Tensor, rows: slice, cols: slice) -> None:
            dd = d[frames, rows, cols]  # [n, h, w, 3]
            oo = og[frames][:, None, None, :].expand_as(dd)
            t = _HIT[type(prim)](prim, oo.reshape(-1, 3), dd.reshape(-1, 3)).reshape(dd.shape[:-1])
            cur = best_t[frames, rows, cols]
            closer = t < cur
            best_t[frames, rows, cols] = torch.where(closer, t, cur)
            best_id[frames, rows, cols] = best_id[frames, rows, cols].masked_fill(closer, i)

        for i, (prim, bs) in enumerate(zip(self.primitives, self._bounding_spheres())):
            if bs is None:
                update(i, prim, slice(None), slice(None), slice(None))
                continue
            c, r = np.asarray(bs[0], float), bs[1]
            pc = np.einsum("fij,j->fi", w2c[:, :3, :3], c) + w2c[:, :3, 3]  # centre in camera frames
            full = []
            for f in range(F):
                x, y, z = pc[f]
                if z - r <= 1e-6:  # the sphere reaches behind the eye: no finite bound
                    full.append(f)
                    continue
                lo_z, hi_z = z - r, z + r
                # x'/z' is monotone in x' and z' for z' > 0: extremes at box corners.
                ux = [(x - r) / lo_z, (x - r) / hi_z, (x + r) / lo_z, (x + r) / hi_z]
                vy = [(y - r) / lo_z, (y - r) / hi_z, (y + r) / lo_z, (y + r) / hi_z]
                u0 = K[f, 0, 0] * min(ux) + K[f, 0, 2]
                u1 = K[f, 0, 0] * max(ux) + K[f, 0, 2]
                v0 = K[f, 1, 1] * min(vy) + K[f, 1, 2]
                v1 = K[f, 1, 1] * max(vy) + K[f, 1, 2]
                # pixel i is tested iff its centre i + 0.5 lies in [u0, u1] (one pixel of slack)
                c0, c1 = max(int(math.floor(u0 - 0.5)) - 1, 0), min(int(math.ceil(u1 - 0.5)) + 2, W)
                r0, r1 = max(int(math.floor(v0 - 0.5)) - 1, 0), min(int(math.ceil(v1 - 0.5)) + 2, H)
                if c0 < c1 and r0 < r1:
                    update(i, prim, slice(f, f + 1), slice(r0, r1), slice(c0, c1))
            if full:
                update(i, prim, torch.tensor(full, device=d.device), slice(None), slice(None))

        hit = torch.isfinite(best_t)
        pts = og[:, None, None, :] + best_t.masked_fill(~hit, 0.0)[..., None] * d
        normal = torch.zeros_like(pts)
        for i, prim in enumerate(self.primitives):
            sel = best_id == i
            if bool(sel.any()):
                normal[sel] = _NORMAL[type(prim)](prim, pts[sel])
        return best_t, best_id, normal, pts

    def render(self, cameras: Cameras, chunk_frames: int = 16, dtype: torch.dtype = torch.float32) -> SceneRender:
        """Ray-cast every pixel centre of every camera (the oracle generator).

        Args:
            cameras: ``F`` cameras of ``H × W``.
            chunk_frames: frames cast together (bounds memory; results do not depend on it).
            dtype: precision of the per-ray arithmetic (float32: depth exact to ~1e-6
                relative; float64 for analytic checks).
        Returns:
            :class:`SceneRender` with ``rgb [F, H, W, 3]``, ``depth [F, H, W]`` (exact
            z-depth), ``valid [F, H, W]`` — float32 / bool on the cameras' device.
        """
        if not isinstance(cameras, Cameras):
            raise InvalidInputError(f"render expects a Cameras batch, got {type(cameras).__name__}")
        rgbs, depths, valids = [], [], []
        for f0 in range(0, len(cameras), max(1, int(chunk_frames))):
            t, prim, n, pts = self._cast_frames(cameras[f0 : f0 + max(1, int(chunk_frames))], dtype)
            hit = torch.isfinite(t)
            col = self._shade(pts.reshape(-1, 3), prim.reshape(-1), n.reshape(-1, 3)).reshape(pts.shape)
            rgbs.append(col.masked_fill(~hit[..., None], 0.0).float())
            depths.append(t.masked_fill(~hit, 0.0).float())
            valids.append(hit)
        return SceneRender(torch.cat(rgbs), torch.cat(depths), torch.cat(valids))

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
        self,
        cameras: Cameras,
        voxel_size: float | None = None,
        chunk_frames: int = 16,
        dtype: torch.dtype = torch.float32,
    ) -> PointCloud:
        """Ground-truth cloud: surface points seen by at least one of ``cameras``.

        Every valid pixel is unprojected at its exact depth (so each point lies on a surface)
        and the union is thinned to one actual point per voxel of ``voxel_size`` (default
        ``extent / 400``, a quarter of the usual 1 % threshold). Colours are the scene's,
        normals the true surface normals.
        """
        vs = float(voxel_size) if voxel_size is not None else self.extent / 400.0
        if not vs > 0:
            raise InvalidOptionError(f"voxel_size must be positive, got {voxel_size}")
        pts, cols, nrms = [], [], []
        for s in range(0, len(cameras), chunk_frames):
            t, prim, n, p = self._cast_frames(cameras[s : s + chunk_frames], dtype)
            hit = torch.isfinite(t)
            pts.append(p[hit].double())
            nrms.append(n[hit])
            cols.append(self._shade(p[hit], prim[hit], n[hit]))
        P, C, N = torch.cat(pts), torch.cat(cols), torch.cat(nrms)
        if P.shape[0] == 0:
            return PointCloud(P.float(), C.float(), N.float())
        keep = _first_per_voxel(P, vs)
        return PointCloud(P[keep].float(), C[keep].float(), N[keep].float())


def _first_per_voxel(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Indices ``[M]`` (sorted) of the first point falling in each occupied voxel."""
    cell = torch.floor(points / voxel_size).long()
    cell = cell - cell.amin(0)
    dims = cell.amax(0) + 1
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]  # one int64 per voxel
    _, inverse = torch.unique(key, return_inverse=True)
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
        Box(
            _jitter(rng, (-0.9, floor_y - 0.4, 3.6), 0.15),
            (0.45, 0.4, 0.45),
            M((0.8, 0.25, 0.2), (0.95, 0.6, 0.3), checker=0.2),
            yaw_deg=25 + rng.uniform(-10, 10),
        ),
        Box(
            _jitter(rng, (1.3, floor_y - 0.9, 4.6), 0.15),
            (0.35, 0.9, 0.35),
            M((0.2, 0.35, 0.8), (0.5, 0.7, 0.95), checker=0.25),
            yaw_deg=-20 + rng.uniform(-10, 10),
        ),
        Sphere(_jitter(rng, (0.3, floor_y - 0.55, 3.2), 0.1), 0.55, M((0.2, 0.7, 0.3), (0.8, 0.9, 0.3), checker=0.15)),
        Box(
            _jitter(rng, (0.2, floor_y - 0.25, 5.7), 0.2),
            (0.9, 0.25, 0.5),
            M((0.6, 0.4, 0.7), (0.3, 0.2, 0.4), checker=0.3),
            yaw_deg=rng.uniform(-15, 15),
        ),
        Sphere(_jitter(rng, (-2.6, floor_y - 0.7, 6.4), 0.2), 0.7, M((0.9, 0.85, 0.2), (0.9, 0.5, 0.1), checker=0.3)),
        Box(
            _jitter(rng, (3.4, floor_y - 1.0, 7.2), 0.2),
            (0.6, 1.0, 0.6),
            M((0.3, 0.6, 0.6), (0.1, 0.3, 0.35), checker=0.35),
            yaw_deg=rng.uniform(0, 45),
        ),
        Sphere((-2.8, -1.2, 1.5), 0.45, M((0.9, 0.5, 0.6), (0.6, 0.2, 0.3), checker=0.2)),
    ]
    room = prims[0]
    lo = tuple(c - h for c, h in zip(room.center, room.half_size))
    hi = tuple(c + h for c, h in zip(room.center, room.half_size))
    return SyntheticScene("room", tuple(prims), (lo, hi), (0.0, 0.0, 0.0), (0.0, 0.45, 4.0), fov_x_deg=70.0, seed=seed)


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
        Box(
            _jitter(rng, (-1.6, ground_y - 1.1, 5.5), 0.2),
            (1.1, 1.1, 0.9),
            M((0.85, 0.75, 0.6), (0.7, 0.55, 0.45), checker=0.3),
            yaw_deg=20 + rng.uniform(-8, 8),
        ),
        Box(
            _jitter(rng, (1.7, ground_y - 0.5, 4.2), 0.2),
            (0.5, 0.5, 0.5),
            M((0.7, 0.3, 0.25), (0.4, 0.15, 0.1), checker=0.25),
            yaw_deg=rng.uniform(-30, 30),
        ),
        # A tree: trunk and crown.
        Box(
            _jitter(rng, (0.6, ground_y - 0.9, 7.0), 0.1),
            (0.15, 0.9, 0.15),
            M((0.45, 0.3, 0.15), (0.35, 0.2, 0.1), checker=0.2),
        ),
        Sphere((0.0, 0.0, 0.0), 0.9, M((0.15, 0.5, 0.15), (0.3, 0.65, 0.2), checker=0.25)),
        # Rocks: spheres sunk into the ground.
        Sphere(
            _jitter(rng, (0.2, ground_y - 0.2, 3.0), 0.15), 0.5, M((0.55, 0.55, 0.55), (0.4, 0.4, 0.45), checker=0.15)
        ),
        Sphere(_jitter(rng, (-3.2, ground_y - 0.3, 3.4), 0.2), 0.7, M((0.6, 0.55, 0.5), (0.45, 0.4, 0.4), checker=0.2)),
        Box(
            _jitter(rng, (3.6, ground_y - 1.5, 7.5), 0.3),
            (0.4, 1.5, 0.4),
            M((0.8, 0.8, 0.85), (0.5, 0.5, 0.6), checker=0.3),
        ),
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
        raise InvalidOptionError(f"unknown synthetic scene {name!r}; choose one of {', '.join(SCENE_NAMES)}")
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
            raise InvalidOptionError(f"{nm} must be in [0, 1), got {val}")
    r_s = scale_range if shift_range is None else shift_range
    if not 0 <= r_s < 1:
        raise InvalidOptionError(f"shift_range must be in [0, 1), got {shift_range}")
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
