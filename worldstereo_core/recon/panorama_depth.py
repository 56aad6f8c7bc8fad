"""Panorama depth: MoGe's panorama method (split → per-view depth → gradient-domain merge).

A monocular model sees perspective images, so the equirectangular panorama is split into 12
perspective views looking at the vertices of an icosahedron (90° × 90° field of view, 512²
pixels, as MoGe's ``infer_panorama``), each view is predicted with its FoV known, and the
per-view distance maps are merged into one equirectangular distance map.

Per-view predictions disagree by a scale (and have small errors), so the merge works on
**log-distance gradients**: each view is warped into the panorama, its horizontal and
vertical log-distance differences and 5-point Laplacian are averaged over the views that
see both pixels, and the log-distance map is the least-squares solution of those
constraints (sparse LU of the normal equations up to 512×1024, beyond that
``scipy.sparse.linalg.lsmr`` warm-started from a half-resolution solve, as upstream). Scale
offsets between views cancel in the differences. The constant left free by the gradients is
fixed so that the result matches the views' mean log distance (median over the panorama);
this keeps the metric scale of MoGe-2's predictions (upstream leaves it arbitrary).

Panorama frame (the release's and MoGe's): equirect pixel ``(u, v)`` centre has
``θ = (1 − (u+0.5)/W)·2π``, ``φ = (v+0.5)/H·π`` and direction
``(sin φ cos θ, sin φ sin θ, cos φ)`` — z up, the image centre looks along −x. The release's
``pano_bank/cameras.json`` lives in this frame (its first view's ``w2c`` rotation is
``[[0,1,0],[0,0,−1],[−1,0,0]]``, the camera at the panorama centre). The equirect geometry
(directions, pixel mapping, wrapped bilinear sampling, level camera rotations) is
:mod:`worldstereo_core.panorama`'s, which documents the same frame.

The per-view predictor is a callable, so tests use an oracle and users may plug other
monocular models: ``predictor(images [V, h, w, 3], cameras) -> (depth [V, h, w], mask [V, h, w])``
with z-depth in each view's camera and ``mask`` True where valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import ArrayLike, Cameras, as_tensor, like_input
from ..errors import InvalidDepthError, InvalidImageError
from ..panorama import directions_to_equirect, equirect_directions, level_look_rotation, sample_equirect
from ..pointcloud import pixel_rays

__all__ = [
    "ViewPredictor",
    "PanoramaDepth",
    "equirect_directions",
    "icosahedron_directions",
    "panorama_split_cameras",
    "split_panorama",
    "moge_view_predictor",
    "merge_panorama_distance",
    "predict_panorama_depth",
]

ViewPredictor = Callable[[torch.Tensor, Cameras], tuple[torch.Tensor, torch.Tensor]]


# =============================================================================================
# geometry of the split


def directions_to_equirect_pixels(dirs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Continuous equirect pixel coordinates ``[..., 2]`` (x, y; pixel centres at +0.5)."""
    return torch.stack(directions_to_equirect(dirs, height, width), dim=-1)


def icosahedron_directions() -> torch.Tensor:
    """The 12 unit vertices ``[12, 3]`` of a regular icosahedron, (0, ±1, ±φ) and cyclic."""
    p = (1 + math.sqrt(5)) / 2
    verts = []
    for a, b in ((1, p), (-1, p), (1, -p), (-1, -p)):
        verts += [(0, a, b), (a, b, 0), (b, 0, a)]
    v = torch.tensor(verts, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def panorama_split_cameras(resolution: int = 512, fov_deg: float = 90.0) -> Cameras:
    """MoGe's panorama split: 12 square views at the icosahedron vertices, up = +z."""
    if resolution < 2:
        raise InvalidImageError(f"split resolution must be at least 2 pixels, got {resolution}")
    if not 0 < fov_deg < 180:
        raise InvalidImageError(f"split field of view must be in (0, 180) degrees, got {fov_deg}")
    w2c = torch.eye(4, dtype=torch.float64).repeat(12, 1, 1)
    w2c[:, :3, :3] = level_look_rotation(icosahedron_directions())  # up = +z
    f = resolution / (2 * math.tan(math.radians(fov_deg) / 2))
    K = torch.tensor([[f, 0, resolution / 2], [0, f, resolution / 2], [0, 0, 1]], dtype=torch.float64)
    return Cameras(w2c=w2c, K=K.expand(12, 3, 3).clone(), height=resolution, width=resolution)


def _view_rays(cameras: Cameras) -> torch.Tensor:
    """Camera-frame rays ``[V, h, w, 3]`` through pixel centres, z = 1."""
    return pixel_rays(cameras.K.double(), cameras.height, cameras.width)


def split_panorama(pano: ArrayLike, cameras: Cameras | None = None) -> ArrayLike:
    """Perspective views ``[V, h, w, 3]`` of an equirect image ``[H, W, 3]`` (bilinear)."""
    img = as_tensor(pano)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise InvalidImageError(f"panorama must be [H, W, 3], got {tuple(img.shape)}")
    cameras = cameras or panorama_split_cameras()
    rays = _view_rays(cameras)
    world = torch.einsum("vij,vhwj->vhwi", cameras.w2c[:, :3, :3].double().transpose(1, 2), rays)
    x, y = directions_to_equirect(world, img.shape[0], img.shape[1])
    src = img.float() if img.dtype == torch.uint8 else img
    out = sample_equirect(src, x, y).to(img.dtype if img.is_floating_point() else torch.float32)
    return like_input(out, pano)


# =============================================================================================
# merge


def _grad_rows(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (p, q) of the x (wrapped) and y differences ``x[p] − x[q]``, row-major."""
    idx = np.arange(H * W).reshape(H, W)
    px, qx = idx, np.roll(idx, -1, axis=1)
    py, qy = idx[:-1], idx[1:]
    return np.concatenate([px.ravel(), py.ravel()]), np.concatenate([qx.ravel(), qy.ravel()])


def _laplacian_neighbours(H: int, W: int) -> np.ndarray:
    """``[H·W, 4]`` up/down/left/right neighbours: y clamped at the poles, x wrapped."""
    idx = np.arange(H * W).reshape(H, W)
    up = idx[np.clip(np.arange(H) - 1, 0, H - 1)]
    down = idx[np.clip(np.arange(H) + 1, 0, H - 1)]
    left, right = np.roll(idx, 1, axis=1), np.roll(idx, -1, axis=1)
    return np.stack([up.ravel(), down.ravel(), left.ravel(), right.ravel()], axis=1)


def _shift(a: torch.Tensor, neighbours: str) -> torch.Tensor:
    """``a [V, H, W]`` read at the up/down/left/right neighbour (pole clamp, longitude wrap)."""
    if neighbours == "up":
        return torch.cat([a[:, :1], a[:, :-1]], dim=1)
    if neighbours == "down":
        return torch.cat([a[:, 1:], a[:, -1:]], dim=1)
    if neighbours == "left":
        return torch.roll(a, 1, dims=2)
    return torch.roll(a, -1, dims=2)


def _warp_views(
    distances: torch.Tensor, masks: torch.Tensor, cameras: Cameras, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-distance ``[V, H, W]`` of each view on the equirect grid and where it is valid."""
    dirs = equirect_directions(height, width)
    cam = torch.einsum("vij,hwj->vhwi", cameras.w2c[:, :3, :3].double(), dirs)
    z = cam[..., 2]
    K = cameras.K.double()
    with torch.no_grad():
        zs = z.clamp_min(1e-9)
        px = K[:, 0, 0, None, None] * cam[..., 0] / zs + K[:, 0, 2, None, None]
        py = K[:, 1, 1, None, None] * cam[..., 1] / zs + K[:, 1, 2, None, None]
    h, w = cameras.height, cameras.width
    inside = (z > 0) & (px > 0) & (px < w) & (py > 0) & (py < h)
    grid = torch.stack([px / w * 2 - 1, py / h * 2 - 1], dim=-1).clamp(-1, 1).float()
    log_d = distances.float().clamp_min(1e-12).log()[:, None]
    warped = F.grid_sample(log_d, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    m = F.grid_sample(masks.float()[:, None], grid, mode="nearest", padding_mode="border", align_corners=False)[:, 0]
    valid = inside & (m > 0.5)
    return torch.where(valid, warped.double(), torch.zeros_like(z)), valid


def _solve(
    height: int, width: int, log_maps: torch.Tensor, valid: torch.Tensor, x0: np.ndarray | None, direct: bool
) -> np.ndarray:
    """Least-squares log-distance from averaged view gradients and Laplacians."""
    from scipy.sparse import coo_matrix, vstack
    from scipy.sparse.linalg import lsmr

    H, W = height, width
    vf = valid.double()
    # gradients x[i,j] − x[i,j+1] (wrapped) and x[i,j] − x[i+1,j], averaged over the views seeing both ends
    gx = log_maps - torch.roll(log_maps, -1, dims=2)
    mx = vf * torch.roll(vf, -1, dims=2)
    gy = log_maps[:, :-1] - log_maps[:, 1:]
    my = vf[:, :-1] * vf[:, 1:]
    gx_mean = (gx * mx).sum(0) / mx.sum(0).clamp_min(1e-3)
    gy_mean = (gy * my).sum(0) / my.sum(0).clamp_min(1e-3)
    grad_b = torch.cat([gx_mean.reshape(-1), gy_mean.reshape(-1)]).numpy()
    grad_keep = torch.cat([(mx.sum(0) > 0).reshape(-1), (my.sum(0) > 0).reshape(-1)]).numpy()
    # 5-point Laplacian where the whole stencil is seen by a view
    sides = ("up", "down", "left", "right")
    lap = sum(_shift(log_maps, s) for s in sides) - 4 * log_maps
    ml = vf * math.prod(_shift(vf, s) for s in sides)
    lap_mean = ((lap * ml).sum(0) / ml.sum(0).clamp_min(1e-3)).reshape(-1).numpy()
    lap_keep = (ml.sum(0) > 0).reshape(-1).numpy()

    p, q = _grad_rows(H, W)
    p, q = p[grad_keep], q[grad_keep]
    n_g = len(p)
    rows = np.repeat(np.arange(n_g), 2)
    cols = np.stack([p, q], axis=1).ravel()
    vals = np.tile([1.0, -1.0], n_g)
    A_grad = coo_matrix((vals, (rows, cols)), shape=(n_g, H * W))
    centre = np.nonzero(lap_keep)[0]
    nb = _laplacian_neighbours(H, W)[centre]
    n_l = len(centre)
    rows = np.repeat(np.arange(n_l), 5)
    cols = np.concatenate([centre[:, None], nb], axis=1).ravel()
    vals = np.tile([-4.0, 1.0, 1.0, 1.0, 1.0], n_l)  # duplicates at the poles sum, as the stencil clamps
    A_lap = coo_matrix((vals, (rows, cols)), shape=(n_l, H * W))
    A = vstack([A_grad, A_lap]).tocsr()
    b = np.concatenate([grad_b[grad_keep], lap_mean[lap_keep]])
    if direct:
        # normal equations with a tiny Tikhonov pull to x0 (removes the free constant): a sparse
        # LU solve is several times faster than lsmr's iterations on grids of this size
        from scipy.sparse import identity
        from scipy.sparse.linalg import spsolve

        eps = 1e-8
        rhs = A.T @ b + (eps * x0 if x0 is not None else 0.0)
        return spsolve((A.T @ A + eps * identity(H * W)).tocsc(), rhs)
    return lsmr(A, b, atol=1e-6, btol=1e-6, maxiter=max(2000, 4 * (H + W)), x0=x0)[0]


def merge_panorama_distance(
    distances: ArrayLike,
    masks: ArrayLike,
    cameras: Cameras,
    height: int,
    width: int,
    coarse_limit: int = 256,
    direct_limit: int = 512 * 1024,
) -> tuple[ArrayLike, ArrayLike]:
    """Merge per-view distance maps into an equirect distance map (gradient-domain, log space).

    Args:
        distances: ``[V, h, w]`` ray lengths (not z-depth) per view, positive where valid.
        masks: ``[V, h, w]`` True where a view's prediction is valid.
        cameras: the views (rotation-only ``w2c`` in the panorama frame, ``K``, ``h × w``).
        height, width: equirect size of the result.
        coarse_limit: above this size (longest side) a half-resolution solve warm-starts lsmr.
        direct_limit: up to this many pixels the least squares is solved directly (sparse LU
            of the normal equations); larger maps use ``lsmr`` warm-started from the coarse
            level, as upstream.

    Returns:
        ``(distance [H, W], mask [H, W])``; the mask is True where any view saw valid geometry.
        Same kind (tensor/array) as ``distances``.
    """
    d = as_tensor(distances).double()
    m = as_tensor(masks).bool()
    if d.ndim != 3 or d.shape != m.shape or d.shape[0] != cameras.w2c.shape[0]:
        raise InvalidDepthError(
            f"distances {tuple(d.shape)} and masks {tuple(m.shape)} must both be [V, h, w] with V = {cameras.w2c.shape[0]} views"
        )
    if d.shape[1:] != (cameras.height, cameras.width):
        raise InvalidDepthError(f"view maps are {tuple(d.shape[1:])}, cameras are {cameras.height}×{cameras.width}")
    if height < 4 or width < 4:
        raise InvalidImageError(f"equirect size must be at least 4×4, got {height}×{width}")
    usable = m & torch.isfinite(d) & (d > 0)
    if not usable.any():
        raise InvalidDepthError("no view has a valid positive distance; nothing to merge (all masks empty?)")
    log_maps, valid = _warp_views(torch.where(usable, d, torch.ones_like(d)), usable, cameras, height, width)
    x0 = None
    direct = height * width <= direct_limit
    if max(height, width) > coarse_limit and not direct:
        coarse, _ = merge_panorama_distance(d, usable, cameras, height // 2, width // 2, coarse_limit, direct_limit)
        x0 = F.interpolate(coarse.log()[None, None], (height, width), mode="bilinear", align_corners=False)[0, 0]
        x0 = x0.reshape(-1).numpy()
    x = torch.from_numpy(_solve(height, width, log_maps, valid, x0, direct)).reshape(height, width)
    # fix the constant the gradients leave free: match the views' mean log distance
    mean_log = (log_maps * valid).sum(0) / valid.sum(0).clamp_min(1)
    seen = valid.any(0)
    x = x + (mean_log[seen] - x[seen]).median()
    out = x.exp().to(as_tensor(distances).dtype if as_tensor(distances).is_floating_point() else torch.float32)
    return like_input(out, distances), like_input(seen, distances)


# =============================================================================================
# end to end


@dataclass(frozen=True)
class PanoramaDepth:
    """Equirect geometry of a panorama.

    Attributes:
        distance: ``[H, W]`` distance from the panorama centre along each pixel's ray
            (ray length, not z-depth; multiply by :func:`equirect_directions` for points).
        mask: ``[H, W]`` True where some view predicted valid geometry.
        view_images: ``[V, h, w, 3]`` the perspective views the predictor saw.
        view_cameras: their cameras (panorama frame).
        view_depths: ``[V, h, w]`` the per-view z-depth predictions.
        view_masks: ``[V, h, w]`` their validity masks.
    """

    distance: ArrayLike
    mask: ArrayLike
    view_images: ArrayLike
    view_cameras: Cameras
    view_depths: ArrayLike
    view_masks: ArrayLike

    def points(self) -> ArrayLike:
        """``[H, W, 3]`` points in the panorama frame (distance × pixel-centre direction)."""
        dist = as_tensor(self.distance)
        dirs = equirect_directions(dist.shape[0], dist.shape[1]).to(dist.dtype)
        return like_input(dist[..., None] * dirs, self.distance)


def moge_view_predictor(model, resolution_level: int = 9, use_fp16: bool = True, batch_size: int = 4) -> ViewPredictor:
    """A :data:`ViewPredictor` running MoGe-2 with each view's known horizontal FoV."""
    from .moge import predict_depth

    def predict(images: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
        fx = cameras.K[:, 0, 0].double()
        fov = torch.rad2deg(2 * torch.atan(cameras.width / (2 * fx))).float()
        depths, masks = [], []
        for s in range(0, images.shape[0], batch_size):
            pred = predict_depth(
                model,
                images[s : s + batch_size],
                fov_x=fov[s : s + batch_size],
                resolution_level=resolution_level,
                apply_mask=False,
                use_fp16=use_fp16,
            )
            depths.append(pred.depth)
            masks.append(pred.mask)
        return torch.cat(depths), torch.cat(masks)

    return predict


def predict_panorama_depth(
    pano: ArrayLike,
    predictor: ViewPredictor,
    merge_size: tuple[int, int] | None = None,
    split_resolution: int = 512,
) -> PanoramaDepth:
    """Equirect distance of a panorama by MoGe's split–predict–merge method.

    Args:
        pano: ``[H, W, 3]`` equirect RGB in [0, 1] (2:1).
        predictor: per-view depth (see :data:`ViewPredictor`), e.g. :func:`moge_view_predictor`.
        merge_size: ``(H, W)`` of the merge; default ``(min(960, H), min(1920, W))`` as upstream.
            The result is resized to the panorama's size.
        split_resolution: side of the square perspective views (512 upstream).
    """
    img = as_tensor(pano)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise InvalidImageError(f"panorama must be [H, W, 3] RGB, got {tuple(img.shape)}")
    H, W = img.shape[:2]
    if abs(W - 2 * H) > 1:
        raise InvalidImageError(f"an equirectangular panorama is 2:1 (width = 2 × height), got {W}×{H}")
    imgf = img.float() / 255 if img.dtype == torch.uint8 else img.float()
    if not torch.isfinite(imgf).all() or imgf.min() < -1e-3 or imgf.max() > 1 + 1e-3:
        raise InvalidImageError("panorama values must be finite and in [0, 1]; divide 8-bit images by 255")
    cameras = panorama_split_cameras(split_resolution)
    views = split_panorama(imgf.cpu(), cameras).clamp(0, 1)
    depth, mask = predictor(views, cameras)
    depth, mask = as_tensor(depth).double().cpu(), as_tensor(mask).bool().cpu()
    if depth.shape != (12, split_resolution, split_resolution) or mask.shape != depth.shape:
        raise InvalidDepthError(
            f"the view predictor must return depth and mask [12, {split_resolution}, {split_resolution}], "
            f"got {tuple(depth.shape)} and {tuple(mask.shape)}"
        )
    distance = depth * _view_rays(cameras).norm(dim=-1)  # z-depth → ray length
    mh, mw = merge_size or (min(960, H), min(1920, W))
    dist, seen = merge_panorama_distance(distance, mask, cameras, mh, mw)
    if (mh, mw) != (H, W):
        dist = F.interpolate(dist[None, None], (H, W), mode="bilinear", align_corners=False)[0, 0]
        seen = F.interpolate(seen.float()[None, None], (H, W), mode="nearest")[0, 0] > 0.5
    return PanoramaDepth(
        distance=like_input(dist.float(), pano),
        mask=like_input(seen, pano),
        view_images=like_input(views, pano),
        view_cameras=cameras,
        view_depths=like_input(depth.float(), pano),
        view_masks=like_input(mask, pano),
    )
