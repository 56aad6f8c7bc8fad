"""Point clouds: the 3D cache's raw material.

``PointCloud`` (points, colours, optional normals); depth → cloud at pixel centres
(:func:`unproject_depth`, :func:`unproject_depths`, the release's recipe
:func:`unproject_depth_release` = :func:`compress_far_depth` + :func:`depth_edge_mask`);
cleaning (:func:`voxel_downsample` with a point cap, :func:`remove_outliers`); PLY I/O
(:func:`load_ply`; the one PLY writer is :func:`worldstereo_core.export.save_pointcloud_ply`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cameras import ArrayLike, as_tensor, like_input, validate_K, validate_w2c
from .errors import InvalidCameraError, InvalidDepthError, InvalidImageError, InvalidPointCloudError


@dataclass(frozen=True)
class PointCloud:
    """A coloured point cloud in world coordinates.

    Attributes:
        points: ``[N, 3]`` float positions.
        colors: ``[N, 3]`` float RGB in [0, 1].
        normals: optional ``[N, 3]`` unit normals.
    """

    points: torch.Tensor
    colors: torch.Tensor
    normals: torch.Tensor | None = None

    def __post_init__(self) -> None:
        pts = as_tensor(self.points)
        if not pts.is_floating_point():
            pts = pts.float()
        col = as_tensor(self.colors).to(device=pts.device)
        if not col.is_floating_point():
            col = col.float() / 255.0
        if pts.ndim != 2 or pts.shape[-1] != 3:
            raise InvalidPointCloudError(f"points must have shape [N, 3], got {tuple(pts.shape)}")
        if col.shape != pts.shape:
            raise InvalidPointCloudError(
                f"colors must match points: got {tuple(col.shape)} colours for {pts.shape[0]} points"
            )
        if not torch.isfinite(pts).all():
            n = int((~torch.isfinite(pts).all(-1)).sum())
            raise InvalidPointCloudError(f"point cloud has {n} points with NaN/inf coordinates; drop them first")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "colors", col.to(pts.dtype))
        if self.normals is not None:
            nrm = as_tensor(self.normals).to(device=pts.device, dtype=pts.dtype)
            if nrm.shape != pts.shape:
                raise InvalidPointCloudError(f"normals must match points, got {tuple(nrm.shape)}")
            object.__setattr__(self, "normals", nrm)

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def device(self) -> torch.device:
        return self.points.device

    def to(self, device=None, dtype: torch.dtype | None = None) -> PointCloud:
        n = None if self.normals is None else self.normals.to(device=device, dtype=dtype)
        return PointCloud(self.points.to(device=device, dtype=dtype), self.colors.to(device=device, dtype=dtype), n)

    def select(self, index: torch.Tensor) -> PointCloud:
        """Subset by boolean mask or integer index."""
        n = None if self.normals is None else self.normals[index]
        return PointCloud(self.points[index], self.colors[index], n)

    def require_nonempty(self, what: str = "point cloud") -> PointCloud:
        if len(self) == 0:
            raise InvalidPointCloudError(f"{what} is empty (0 points); check the depth and masks that built it")
        return self

    @staticmethod
    def cat(items: list[PointCloud]) -> PointCloud:
        items = [c for c in items if len(c) > 0] or items[:1]
        if not items:
            raise InvalidPointCloudError("cannot concatenate an empty list of point clouds")
        normals = None
        if all(c.normals is not None for c in items):
            normals = torch.cat([c.normals for c in items])
        return PointCloud(torch.cat([c.points for c in items]), torch.cat([c.colors for c in items]), normals)


# --------------------------------------------------------------------------------------------
# Building clouds from depth
# --------------------------------------------------------------------------------------------

#: The release compresses depth beyond this multiple of the median depth (``contract=8.0``).
RELEASE_FAR_CONTRACT = 8.0
#: The release drops pixels whose edge score ``exp(-10·|∇disp|)`` is below this (0.35).
RELEASE_EDGE_THRESHOLD = 0.35
#: Sharpness of the release's edge score ``exp(-beta·|∇disp|)``.
RELEASE_EDGE_BETA = 10.0


#: Conventions of depth maps made by other tools (:func:`depth_from_map`).
DEPTH_MAP_CONVENTIONS = ("depth", "disparity")


def depth_from_map(values: torch.Tensor, convention: str, scale: float = 1.0) -> torch.Tensor:
    """z-depth ``[N, H, W]`` (0 = unknown) from a depth map another tool wrote as an image or mask.

    ``values [N, H, W]`` in that tool's units (an IMAGE's first channel or a MASK, usually 0..1):

    * ``"depth"``: larger = farther; ``z = scale · v`` (e.g. a metric or normalised depth image);
    * ``"disparity"``: larger = nearer (inverse depth, what Depth Anything / MiDaS-style relative
      models output); ``z = scale / v``.

    Pixels with ``v ≤ 0`` (or not finite) are unknown (0). Relative maps have no metric scale:
    ``scale`` sets it (the scene loop only needs a consistent one; its trajectories follow the
    median depth).
    """
    if convention not in DEPTH_MAP_CONVENTIONS:
        raise InvalidDepthError(f"depth-map convention {convention!r} is unknown; use one of {DEPTH_MAP_CONVENTIONS}")
    if not (scale > 0 and math.isfinite(scale)):
        raise InvalidDepthError(f"scale must be a positive finite number, got {scale}")
    v = torch.as_tensor(values).float()
    ok = torch.isfinite(v) & (v > 0)
    if not bool(ok.any()):
        raise InvalidDepthError("the depth map has no positive value; check that it is a depth or disparity image")
    safe = torch.where(ok, v, torch.ones_like(v))
    z = scale * safe if convention == "depth" else scale / safe
    return torch.where(ok, z, torch.zeros_like(z))


def validate_depth(depth: torch.Tensor, name: str = "depth") -> None:
    """Raise :class:`InvalidDepthError` for NaN, inf or negative depth values (0 = invalid is fine)."""
    nan = int(torch.isnan(depth).sum())
    inf = int(torch.isinf(depth).sum())
    if nan or inf:
        raise InvalidDepthError(
            f"{name} has {nan} NaN and {inf} inf pixels; replace them with 0 (= no depth) or mask them "
            "before building a point cloud"
        )
    neg = int((depth < 0).sum())
    if neg:
        raise InvalidDepthError(
            f"{name} has {neg} negative pixels (min {float(depth.min()):.4g}); depth must be z-depth ≥ 0 "
            "(0 = no depth). Is this a disparity or an inverted depth map?"
        )


def _depth_2d(depth: ArrayLike, name: str = "depth") -> torch.Tensor:
    d = as_tensor(depth)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise InvalidDepthError(f"{name} must have shape [H, W] (or [H, W, 1]), got {tuple(d.shape)}")
    if not d.is_floating_point():
        d = d.float()
    return d


def compress_far_depth(depth: ArrayLike, contract: float = RELEASE_FAR_CONTRACT) -> ArrayLike:
    """The release's far-depth compression of a depth map ``[..., H, W]``.

    With ``m = contract · median(depth > 0)`` (``torch.median``: the lower middle value), every
    depth ``d > m`` becomes ``2m − m²/d``; nearer depths are unchanged. The map is continuous
    and monotonic at ``m`` and bounds all depth below ``2m``, so sky and far background stay
    in front of a finite shell instead of exploding the cloud. (The release adds 1e-6 to ``d``
    in the denominator; the difference is below float32 resolution for real depths.)
    The median is taken over the whole map, also for batched input.
    """
    d = as_tensor(depth)
    if not d.is_floating_point():
        d = d.float()
    validate_depth(d)
    positive = d[d > 0]
    if positive.numel() == 0:
        raise InvalidDepthError("depth map has no positive pixel; cannot compute its median")
    m = torch.median(positive) * contract
    far = d > m
    out = torch.where(far, 2 * m - m * m / torch.where(far, d, torch.ones_like(d)), d)
    return like_input(out, depth)


def depth_edge_mask(
    depth: ArrayLike,
    threshold: float = RELEASE_EDGE_THRESHOLD,
    beta: float = RELEASE_EDGE_BETA,
) -> ArrayLike:
    """Pixels on depth discontinuities, the release's rule. ``[H, W]`` → bool ``[H, W]`` (True = edge).

    Disparity ``1/d`` is min–max normalised to [0, 1] over the valid (``d > 0``) pixels, its
    Sobel gradient (kornia ``spatial_gradient``, unnormalised 3×3 kernels, replicate padding)
    gives a magnitude ``g``, and a pixel is an edge where ``exp(−beta·g) < threshold`` (i.e.
    ``g > −ln(threshold)/beta`` ≈ 0.105 for the defaults). Invalid pixels (``d = 0``) get
    disparity 0 — as if infinitely far — so their borders count as edges. (The release
    normalises over all pixels with ``1/(d + 1e-7)``; the two agree when every pixel is valid.)
    """
    import kornia  # lazy: keeps `import worldstereo_core` light

    d = _depth_2d(depth)
    validate_depth(d)
    valid = d > 0
    disp = torch.where(valid, 1.0 / torch.where(valid, d, torch.ones_like(d)), torch.zeros_like(d))
    if valid.any():
        lo = disp[valid].min()
        hi = disp[valid].max()
        disp = torch.where(valid, (disp - lo) / (hi - lo + 1e-6), torch.zeros_like(disp))
    grad = kornia.filters.spatial_gradient(disp[None, None], mode="sobel", normalized=False)[0, 0]
    mag = torch.sqrt(grad[0] ** 2 + grad[1] ** 2)
    edges = torch.exp(-beta * mag) < threshold
    return like_input(edges, depth)


def depth_edges(depth: torch.Tensor, threshold: float | None = RELEASE_EDGE_THRESHOLD) -> torch.Tensor:
    """:func:`depth_edge_mask` of every map of ``depth [F, H, W]`` (or one ``[H, W]``), with the
    sharpness scaled to the resolution: bool, True = edge; all False when ``threshold`` is None.

    The release's β is tuned for 480-row images (:data:`RELEASE_EDGE_BETA`): gradients per pixel
    grow as the image shrinks, so β is multiplied by ``min(H, W) / 480`` to flag the same edges
    at any resolution (at 120 rows the unscaled test flags ~40 % of a smooth floor). Maps with
    no depth have no edges.
    """
    d = torch.as_tensor(depth)
    batched = d.ndim == 3
    d = d if batched else d[None]
    out = torch.zeros(d.shape, dtype=torch.bool, device=d.device)
    if threshold is not None:
        beta = RELEASE_EDGE_BETA * min(d.shape[-2:]) / 480.0
        for f in range(d.shape[0]):
            if bool((d[f] > 0).any()):
                out[f] = torch.as_tensor(depth_edge_mask(d[f], threshold, beta)).to(out.device).bool()
    return out if batched else out[0]


def pixel_centers(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``[H, W, 2]`` pixel-centre coordinates ``(u + 0.5, v + 0.5)`` (x first)."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Camera-frame rays ``[F, H, W, 3]`` through the pixel centres, scaled to z = 1.

    ``K`` is ``[F, 3, 3]`` (or ``[3, 3]``) in pixels of ``height × width``. With z = 1 a ray
    times a z-depth is the camera-frame point: ``y = (v + 0.5 − cy) / fy``,
    ``x = (u + 0.5 − cx − s·y) / fx`` (``s`` the skew, 0 for every camera here), which is
    ``K⁻¹ (u + 0.5, v + 0.5, 1)`` without forming the inverse.
    """
    Kt = K[None] if K.ndim == 2 else K
    uv = pixel_centers(height, width, dtype=Kt.dtype, device=Kt.device)  # [H, W, 2]
    fx, s, cx = (Kt[:, 0, j, None, None] for j in range(3))
    fy, cy = Kt[:, 1, 1, None, None], Kt[:, 1, 2, None, None]
    y = (uv[None, ..., 1] - cy) / fy
    x = (uv[None, ..., 0] - cx - s * y) / fx
    return torch.stack([x, y, torch.ones_like(x)], -1)


def unproject_depth_map(depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor | None = None) -> torch.Tensor:
    """Points ``[F, H, W, 3]`` of z-depth maps ``[F, H, W]`` lifted through the pixel centres.

    The one unprojection of the package (every point cloud, point map and Gaussian centre is
    made here). ``K [F, 3, 3]`` in pixels of the depth map; with ``c2w [F, 4, 4]`` the points are
    in the world, else in each camera's frame. No validation: callers check their inputs (see
    :func:`unproject_depths` for the checked, masked version that returns a cloud).
    """
    cam = pixel_rays(K.to(depth.dtype), depth.shape[-2], depth.shape[-1]) * depth[..., None]
    if c2w is None:
        return cam
    T = c2w.to(depth.dtype)
    return torch.einsum("fij,fhwj->fhwi", T[:, :3, :3], cam) + T[:, None, None, :3, 3]


def _check_image(image: torch.Tensor, hw: tuple[int, int], what: str) -> torch.Tensor:
    if image.ndim != len(hw) + 1 or image.shape[-1] != 3:
        want = "[H, W, 3]" if len(hw) == 2 else "[F, H, W, 3]"
        raise InvalidImageError(f"{what} must have shape {want} (RGB, channels last), got {tuple(image.shape)}")
    if tuple(image.shape[:-1]) != tuple(hw):
        raise InvalidDepthError(
            f"{what} is {tuple(image.shape[:-1])} but depth is {tuple(hw)}; resize the depth to the image "
            "(or the image to the depth) and rescale K with it"
        )
    if not image.is_floating_point():
        image = image.float() / 255.0
    return image


def unproject_depths(
    depth: ArrayLike,
    K: ArrayLike,
    c2w: ArrayLike,
    images: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    far_contract: float | None = None,
    edge_threshold: float | None = None,
) -> PointCloud:
    """Lift depth maps of ``F`` frames into one world point cloud.

    Args:
        depth: ``[F, H, W]`` z-depth; 0 marks pixels without depth (dropped).
        K: ``[F, 3, 3]`` or ``[3, 3]`` intrinsics in pixels of the depth map.
        c2w: ``[F, 4, 4]`` or ``[4, 4]`` camera-to-world (OpenCV) transforms.
        images: optional ``[F, H, W, 3]`` colours (float in [0, 1] or uint8); grey 0.5 if absent.
        mask: optional ``[F, H, W]`` bool, True = keep (e.g. not sky, valid prediction).
        far_contract: if set, apply :func:`compress_far_depth` per frame with this factor
            (release: 8.0) before unprojecting and before the edge test.
        edge_threshold: if set, drop :func:`depth_edge_mask` pixels per frame (release: 0.35).

    Pixel (u, v) is lifted through its centre ``(u + 0.5, v + 0.5)``:
    ``X = c2w · [d · K⁻¹ (u + 0.5, v + 0.5, 1), 1]``. Points come out frame by frame in
    row-major pixel order. Raises :class:`InvalidDepthError` for bad depth values or sizes and
    :class:`InvalidPointCloudError` when nothing survives the masks.
    """
    d = as_tensor(depth)
    if d.ndim == 4 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 3:
        raise InvalidDepthError(f"depth must have shape [F, H, W], got {tuple(d.shape)}")
    if not d.is_floating_point():
        d = d.float()
    validate_depth(d)
    F, H, W = d.shape
    dtype, device = d.dtype, d.device
    Kt = as_tensor(K).to(device=device, dtype=dtype)
    T = as_tensor(c2w).to(device=device, dtype=dtype)
    Kt = Kt.expand(F, 3, 3) if Kt.ndim == 2 else Kt
    T = T.expand(F, 4, 4) if T.ndim == 2 else T
    validate_K(Kt)
    validate_w2c(T, name="c2w")  # rigidity is the same test for either direction
    if Kt.shape[0] != F or T.shape[0] != F:
        raise InvalidCameraError(f"got {F} depth maps but {Kt.shape[0]} K and {T.shape[0]} c2w; give one per frame")

    if far_contract is not None:
        d = torch.stack([as_tensor(compress_far_depth(x, far_contract)) for x in d])
    keep = d > 0
    if mask is not None:
        m = as_tensor(mask).to(device)
        if m.ndim == 4 and m.shape[-1] == 1:
            m = m[..., 0]
        if tuple(m.shape) != (F, H, W):
            raise InvalidDepthError(
                f"mask is {tuple(m.shape)} but depth is {(F, H, W)}; give one [H, W] mask per frame"
            )
        keep = keep & (m > 0.5 if m.is_floating_point() else m.bool())
    if edge_threshold is not None:
        keep = keep & ~torch.stack([as_tensor(depth_edge_mask(x, edge_threshold)) for x in d])

    if images is None:
        colors = torch.full((F, H, W, 3), 0.5, dtype=dtype, device=device)
    else:
        colors = _check_image(as_tensor(images).to(device), (F, H, W), "images").to(dtype)

    world = unproject_depth_map(d, Kt, T)
    if not bool(keep.any()):
        raise InvalidPointCloudError(
            "no pixel survived (all depth 0 or masked out); check the depth map, the mask polarity "
            "(True = keep) and the edge threshold"
        )
    return PointCloud(world[keep], colors[keep])


def unproject_depth(
    depth: ArrayLike,
    K: ArrayLike,
    c2w: ArrayLike,
    image: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    far_contract: float | None = None,
    edge_threshold: float | None = None,
) -> PointCloud:
    """Lift one depth map ``[H, W]`` with ``K [3, 3]`` and ``c2w [4, 4]`` into a world point cloud.

    ``image [H, W, 3]`` gives colours, ``mask [H, W]`` (True = keep) drops pixels; see
    :func:`unproject_depths` for the options and errors. For the release's recipe pass
    ``far_contract=RELEASE_FAR_CONTRACT, edge_threshold=RELEASE_EDGE_THRESHOLD``
    (or call :func:`unproject_depth_release`).
    """
    d = _depth_2d(depth)
    img = None
    if image is not None:
        img = _check_image(as_tensor(image), tuple(d.shape), "image")[None]
    m = None if mask is None else as_tensor(mask)[None]
    if m is not None and m.ndim == 4 and m.shape[-1] == 1:
        m = m[..., 0]
    Kt = as_tensor(K)
    T = as_tensor(c2w)
    return unproject_depths(
        d[None],
        Kt if Kt.ndim == 3 else Kt[None],
        T if T.ndim == 3 else T[None],
        img,
        m,
        far_contract=far_contract,
        edge_threshold=edge_threshold,
    )


def unproject_depth_release(
    depth: ArrayLike, K: ArrayLike, c2w: ArrayLike, image: ArrayLike | None = None, mask: ArrayLike | None = None
) -> PointCloud:
    """The release's depth → cache recipe: far compression (8× median) and edge removal (0.35)."""
    return unproject_depth(
        depth, K, c2w, image, mask, far_contract=RELEASE_FAR_CONTRACT, edge_threshold=RELEASE_EDGE_THRESHOLD
    )


# --------------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------------


def voxel_downsample(cloud: PointCloud, voxel_size: float, max_points: int | None = None) -> PointCloud:
    """Average the points (colours, normals) falling in each cubic voxel of side ``voxel_size``.

    Voxels are the cells ``floor(p / voxel_size)`` of a grid anchored at the world origin, so
    merging clouds never shifts the grid. Pure torch (same device and dtype out); averaged
    normals are renormalised. Output is ordered by voxel key, hence deterministic.

    ``max_points`` caps the output: while there are too many voxels the voxel grows by
    ``sqrt(n / max_points)`` (surface-like clouds shrink with the square of the voxel), up to
    4 times; if still above the cap, evenly spaced voxels (``linspace`` over the sorted
    output) are kept, so the cap is always met exactly and deterministically.
    """
    cloud.require_nonempty("point cloud to downsample")
    if not (voxel_size > 0) or not math.isfinite(voxel_size):
        raise InvalidPointCloudError(f"voxel_size must be a positive length, got {voxel_size}")
    if max_points is not None and max_points < 1:
        raise InvalidPointCloudError(f"max_points must be ≥ 1 (or None for no cap), got {max_points}")
    size = float(voxel_size)
    out = _voxel_average(cloud, size)
    tries = 0
    while max_points is not None and len(out) > max_points and tries < 4:
        size *= max(math.sqrt(len(out) / max_points), 1.05)
        out = _voxel_average(cloud, size)
        tries += 1
    if max_points is not None and len(out) > max_points:
        idx = torch.linspace(0, len(out) - 1, max_points, device=out.device).round().long()
        out = out.select(idx)
    return out


def _voxel_average(cloud: PointCloud, voxel_size: float) -> PointCloud:
    pts = cloud.points
    cell = torch.floor(pts.double() / voxel_size).long()
    cell = cell - cell.min(0).values  # non-negative for packing
    dims = cell.max(0).values + 1
    if float(dims.double().prod()) < 2**62:
        key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        _, inverse = torch.unique(key, return_inverse=True)
    else:  # astronomically wide extent: fall back to row-unique
        _, inverse = torch.unique(cell, dim=0, return_inverse=True)
    n = int(inverse.max()) + 1
    count = torch.zeros(n, dtype=pts.dtype, device=pts.device).index_add_(0, inverse, torch.ones_like(pts[:, 0]))[
        :, None
    ]

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, 3, dtype=x.dtype, device=x.device).index_add_(0, inverse, x) / count

    normals = None
    if cloud.normals is not None:
        normals = torch.nn.functional.normalize(mean(cloud.normals), dim=-1)
    return PointCloud(mean(pts), mean(cloud.colors), normals)


def remove_outliers(cloud: PointCloud, nb_neighbors: int = 20, std_ratio: float = 2.0) -> PointCloud:
    """Statistical outlier removal (open3d): drop points whose mean distance to their
    ``nb_neighbors`` nearest neighbours exceeds the global mean by ``std_ratio`` standard
    deviations. Returns a new cloud on the input's device and dtype, order preserved."""
    import open3d as o3d  # lazy: heavy import

    cloud.require_nonempty("point cloud to clean")
    if nb_neighbors < 1 or not (std_ratio > 0):
        raise InvalidPointCloudError(f"nb_neighbors must be ≥ 1 and std_ratio > 0, got {nb_neighbors} and {std_ratio}")
    if len(cloud) <= nb_neighbors:
        return cloud  # too few points for meaningful statistics; nothing to remove
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.points.detach().double().cpu().numpy()))
    _, kept = pcd.remove_statistical_outlier(nb_neighbors=int(nb_neighbors), std_ratio=float(std_ratio))
    idx = torch.as_tensor(np.sort(np.asarray(kept, dtype=np.int64)), device=cloud.device)
    return cloud.select(idx)


# --------------------------------------------------------------------------------------------
# PLY files
# --------------------------------------------------------------------------------------------


def load_ply(path: str | os.PathLike) -> PointCloud:
    """Read a PLY point cloud (any of float/double coordinates, uint8 or float colours, optional
    normals; ascii or binary). Missing colours become grey 0.5. Returns float32 tensors."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise InvalidPointCloudError(f"PLY file not found: {path}")
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"].data
    except Exception as e:  # plyfile raises several types for corrupt files
        raise InvalidPointCloudError(
            f"cannot read {path} as a PLY point cloud ({e}); is it a PLY with a 'vertex' element?"
        ) from e
    names = v.dtype.names or ()
    if not all(k in names for k in ("x", "y", "z")):
        raise InvalidPointCloudError(f"{path} has no x/y/z vertex properties (found {names})")
    pts = np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float32)
    if all(k in names for k in ("red", "green", "blue")):
        rgb = np.stack([v["red"], v["green"], v["blue"]], -1)
        rgb = rgb.astype(np.float32) / 255.0 if rgb.dtype.kind in "ui" else rgb.astype(np.float32)
    else:
        rgb = np.full_like(pts, 0.5)
    normals = None
    if all(k in names for k in ("nx", "ny", "nz")):
        normals = torch.from_numpy(np.stack([v["nx"], v["ny"], v["nz"]], -1).astype(np.float32))
    return PointCloud(torch.from_numpy(pts), torch.from_numpy(rgb), normals)
