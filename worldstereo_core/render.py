"""Point-cloud splatting renderer: the GGM condition (render, z-depth, hole mask).

What the release does (``src/pointcloud.py``, pytorch3d): every point is a flat disc of radius
``0.008`` in pytorch3d NDC units, drawn at its own camera z; a pixel is covered by the points
whose projected centre lies strictly within the radius of the pixel centre; the (up to) 20
nearest of them in z are alpha-composited front to back with ``alpha = 1 − d²/r²``
(``d`` = distance from the pixel centre), background black for pixels no point covers, and
the first frame of the render is replaced by the input image (mask 0).

pytorch3d measures NDC along the *shorter* image side (it spans [−1, 1]; the longer side
spans proportionally more), so the radius in pixels is ``radius · min(H, W) / 2`` in both
directions: 1.92 px at 480×832. Pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``,
as in :mod:`worldstereo_core.cameras`. Points with camera ``z ≤ near`` are never drawn.

Two rasterisers share that model:

``mode="exact"`` (reference) enumerates every (point, pixel) pair inside the disc, sorts each
pixel's points by z and composites the ``points_per_pixel`` nearest front to back, exactly as
the release. It needs memory for all pairs; use it for small renders and validation.

``mode="fast"`` (default) is two passes of dense tensor work and one scatter:

1. *Cell z-buffer.* All points of a chunk of frames are projected at once; each lands in the
   pixel cell that contains its projected centre (a grid padded by ``ceil(r)`` cells so points
   just outside the image still cover its border). ``scatter_reduce(amin)`` over int64 keys
   ``(float32 bits of z) << 32 | point index`` keeps the nearest point per cell (ties: lowest
   index, so the result is deterministic on every device).
2. *Stencil gather.* Each output pixel looks at the cells of its disc neighbourhood (the 21
   offsets of a 5×5 stencil that can reach it for r = 1.92 px) and tests the exact distance
   from its centre to each cell's winner: the nearest covering winner gives the depth.
3. *Soft compositing.* Winners covering the pixel whose z lies within ``depth_window``
   (relative) of the front surface are blended: total opacity ``1 − Π(1 − αₖ)`` — the same
   as front-to-back compositing of those points, which is order independent — times the
   α-weighted mean of their colours (see (c) below for hidden points).

How ``fast`` differs from the release: (a) only the nearest point of each cell can cover the
neighbouring pixels, so a point hidden behind another in its own cell is ignored — this only
changes results at depth discontinuities and silhouettes where the hidden point sticks out past
the winner's disc (for radii under √½ px, where a disc may miss its own cell's centre, only
points covering their cell's centre compete, so each pixel's own cell is still exact); (b) at most one candidate per stencil cell (≤ 21) and only those near the front surface
are blended, instead of the 20 nearest at any depth (``points_per_pixel`` only applies to
``exact``); (c) within the window, colours mix by α weight instead of by z order, and the opacity counts
each winner as many times as its cell holds points, ``1 − Π(1 − αₖ)^{nₖ}``, standing in for
the hidden points the release would also composite (exact when every cell holds ≤ 1 point). Coverage
(the hole mask) and the front depth are exact wherever (a) does not apply; the colour of a
surface seen alone is exact up to (c). The unit tests measure the agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cameras import ArrayLike, Cameras, as_tensor
from .errors import InvalidImageError, InvalidPointCloudError, RenderError
from .pointcloud import PointCloud

#: The release's splat radius (pytorch3d NDC units) and points per pixel.
RELEASE_RADIUS = 0.008
RELEASE_POINTS_PER_PIXEL = 20

_INT64_MAX = torch.iinfo(torch.int64).max
_FAR = 1.0e4  # sub-pixel offset given to empty cells: their distance test always fails


@dataclass(frozen=True)
class RenderResult:
    """Renders of a point cloud along a trajectory.

    Attributes:
        rgb: ``[F, H, W, 3]`` colours in [0, 1] (background where nothing was drawn).
        depth: ``[F, H, W]`` camera z of the nearest covering point, 0 in holes.
        mask: ``[F, H, W]`` float, 1 = hole (nothing drawn), 0 = covered — the released
            checkpoints' convention.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.rgb.shape[0]


def ndc_radius_to_pixels(radius: float, height: int, width: int) -> float:
    """Splat radius in pixels of a pytorch3d NDC radius (NDC spans the shorter side as [−1, 1])."""
    return float(radius) * min(int(height), int(width)) / 2.0


def stencil_offsets(radius_px: float) -> list[tuple[int, int]]:
    """``(dy, dx)`` cell offsets whose cell can hold a point within ``radius_px`` of a pixel centre.

    A point in the cell at offset ``d`` from a pixel lies at ``d + f`` from its centre with
    ``f ∈ [−0.5, 0.5)²``, so the offset can matter iff ``Σ max(|d| − 0.5, 0)² < r²``.
    """
    p = math.ceil(radius_px)
    out = []
    for dy in range(-p, p + 1):
        for dx in range(-p, p + 1):
            if max(abs(dy) - 0.5, 0.0) ** 2 + max(abs(dx) - 0.5, 0.0) ** 2 < radius_px**2:
                out.append((dy, dx))
    return out


def _background(background, dtype, device) -> torch.Tensor:
    bg = torch.as_tensor(background, dtype=dtype, device=device).flatten()
    if bg.numel() == 1:
        bg = bg.expand(3)
    if bg.numel() != 3:
        raise RenderError(f"background must be one value or an RGB triple, got {bg.numel()} values")
    return bg


def render_point_cloud(
    cloud: PointCloud,
    cameras: Cameras,
    radius: float = RELEASE_RADIUS,
    points_per_pixel: int = RELEASE_POINTS_PER_PIXEL,
    first_frame: ArrayLike | None = None,
    background: float | tuple[float, float, float] = 0.0,
    *,
    mode: str = "fast",
    depth_window: float = 0.03,
    near: float = 1e-6,
    frames_per_chunk: int | None = None,
) -> RenderResult:
    """Render ``cloud`` from every camera of ``cameras`` (batched over frames).

    Args:
        cloud: world points ``[N, 3]`` with colours in [0, 1].
        cameras: ``F`` cameras (w2c, K) of one ``height × width``.
        radius: splat radius in pytorch3d NDC units (release: 0.008 → 1.92 px at 480×832).
        points_per_pixel: points blended per pixel by ``mode="exact"`` (release: 20).
        first_frame: optional ``[H, W, 3]`` image in [0, 1] (or uint8) that replaces the
            first render, whose mask then becomes 0 (the release does this; depth is kept).
        background: colour of holes (release: black).
        mode: ``"fast"`` (default) or ``"exact"``; see the module docstring.
        depth_window: ``fast`` blends covering points with ``z ≤ z_front · (1 + depth_window)``.
        near: points with camera z ≤ near are not drawn.
        frames_per_chunk: frames rasterised together (default: 1 on CPU, where one frame's
            buffers stay in cache, and as many as fit ~2²⁵ point-frames on GPU).

    Returns:
        :class:`RenderResult` on the cloud's device, in the cloud's float dtype.
    """
    if not isinstance(cloud, PointCloud):
        raise InvalidPointCloudError(f"expected a PointCloud, got {type(cloud).__name__}")
    cloud.require_nonempty("point cloud to render")
    if not isinstance(cameras, Cameras):
        raise RenderError(f"expected a Cameras batch, got {type(cameras).__name__}")
    if not (radius > 0) or not math.isfinite(radius):
        raise RenderError(f"radius must be a positive NDC length (release: 0.008), got {radius}")
    if int(points_per_pixel) < 1:
        raise RenderError(f"points_per_pixel must be ≥ 1, got {points_per_pixel}")
    if mode not in ("fast", "exact"):
        raise RenderError(f"mode must be 'fast' or 'exact', got {mode!r}")
    if not (depth_window >= 0):
        raise RenderError(f"depth_window must be ≥ 0, got {depth_window}")

    dtype = cloud.points.dtype
    device = cloud.device
    H, W = cameras.height, cameras.width
    F = len(cameras)
    w2c = cameras.w2c.to(device=device, dtype=dtype)
    K = cameras.K.to(device=device, dtype=dtype)
    r_px = ndc_radius_to_pixels(radius, H, W)
    bg = _background(background, dtype, device)

    if frames_per_chunk is None:
        frames_per_chunk = 1 if device.type == "cpu" else max(1, min(F, 2**25 // max(len(cloud), 1)))
    chunk = max(1, int(frames_per_chunk))

    rgbs, depths, masks = [], [], []
    pts_t = cloud.points.t().contiguous()  # [3, N]
    cols_t = cloud.colors.t().contiguous()  # [3, N]
    for s in range(0, F, chunk):
        if mode == "fast":
            rgb, depth, mask = _render_fast(pts_t, cols_t, w2c[s : s + chunk], K[s : s + chunk], H, W, r_px, depth_window, near, bg)
        else:
            rgb, depth, mask = _render_exact(pts_t, cols_t, w2c[s : s + chunk], K[s : s + chunk], H, W, r_px, int(points_per_pixel), near, bg)
        rgbs.append(rgb)
        depths.append(depth)
        masks.append(mask)
    rgb = torch.cat(rgbs)
    depth = torch.cat(depths)
    mask = torch.cat(masks)

    if first_frame is not None:
        img = as_tensor(first_frame).to(device)
        if img.ndim == 4 and img.shape[0] == 1:
            img = img[0]
        if tuple(img.shape) != (H, W, 3):
            raise InvalidImageError(
                f"first_frame must be an [H, W, 3] image of the render size {H}×{W}, got {tuple(img.shape)}; "
                "resize it (and K) to the render resolution"
            )
        img = img.to(dtype) / 255.0 if not img.is_floating_point() else img.to(dtype)
        rgb = torch.cat([img[None], rgb[1:]])
        mask = torch.cat([torch.zeros_like(mask[:1]), mask[1:]])
    return RenderResult(rgb=rgb, depth=depth, mask=mask)


def _project(pts_t: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor):
    """Pixel coordinates ``u, v`` and camera z ``[Fc, N]`` of all points in all chunk frames."""
    P = K @ w2c[:, :3, :]  # [Fc, 3, 4]
    hom = torch.baddbmm(P[:, :, 3:], P[:, :, :3], pts_t.expand(P.shape[0], 3, pts_t.shape[1]))
    z = hom[:, 2]
    inv = 1.0 / z
    return hom[:, 0] * inv, hom[:, 1] * inv, z


def _render_fast(pts_t, cols_t, w2c, K, H, W, r_px, depth_window, near, bg):
    # Written with out= / in-place ops on a few reused buffers: on CPU, allocating fresh
    # megabyte tensors (page faults) costs more than the arithmetic itself.
    Fc, N = w2c.shape[0], pts_t.shape[1]
    device, dtype = pts_t.device, pts_t.dtype
    pad = math.ceil(r_px)
    Hp, Wp = H + 2 * pad, W + 2 * pad
    r2 = r_px * r_px
    u, v, z = _project(pts_t, w2c, K)

    # 1. nearest point per (padded) pixel cell.
    f1 = torch.empty_like(u)
    cx = torch.empty(u.shape, dtype=torch.int64, device=device)
    cy = torch.empty_like(cx)
    cx.copy_(torch.floor(torch.clamp(u, -pad - 1.0, W + pad, out=f1), out=f1)).add_(pad)
    cy.copy_(torch.floor(torch.clamp(v, -pad - 1.0, H + pad, out=f1), out=f1)).add_(pad)
    valid = torch.gt(z, near)
    b1 = torch.empty_like(valid)
    valid &= torch.ge(cx, 0, out=b1)
    valid &= torch.lt(cx, Wp, out=b1)
    valid &= torch.ge(cy, 0, out=b1)
    valid &= torch.lt(cy, Hp, out=b1)
    if r2 < 0.5:
        # Small discs do not always cover their own cell's centre: only points that do compete
        # for the cell, so the cell's own pixel gets the exact nearest covering point.
        f2 = torch.empty_like(u)
        torch.sub(u, cx.to(dtype), out=f1).add_(pad - 0.5)
        torch.sub(v, cy.to(dtype), out=f2).add_(pad - 0.5)
        f1.mul_(f1).addcmul_(f2, f2)
        valid &= torch.lt(f1, r2, out=b1)
    cell = cy.mul_(Wp).add_(cx)  # reuse cy's storage
    if Fc > 1:
        cell += torch.arange(Fc, device=device)[:, None] * (Hp * Wp)
    cell.masked_fill_(torch.logical_not(valid, out=b1), Fc * Hp * Wp)  # invalid → dump slot
    key = cx  # reuse cx's storage: (float32 bits of z) << 32 | point index
    key.copy_((z if z.dtype == torch.float32 else z.to(torch.float32)).view(torch.int32))
    key.bitwise_left_shift_(32).bitwise_or_(torch.arange(N, device=device))
    buf = torch.full((Fc * Hp * Wp + 1,), _INT64_MAX, dtype=torch.int64, device=device)
    buf.scatter_reduce_(0, cell.view(-1), key.view(-1), reduce="amin", include_self=True)
    # Points per cell: a winner stands in for the points hidden behind it in its cell when
    # the opacity is composited (see step 3).
    count = torch.bincount(cell.view(-1), minlength=Fc * Hp * Wp + 1)[:-1].to(dtype).view(Fc, Hp, Wp)
    del cell, key, cx, cy, f1, b1, valid
    buf = buf[:-1].view(Fc, Hp * Wp)
    empty = buf == _INT64_MAX
    idx = buf.bitwise_and_(0xFFFFFFFF).masked_fill_(empty, 0)

    # Winner attributes on the padded grid; sub-pixel offsets from the cell centre.
    empty3 = empty.view(Fc, Hp, Wp)
    zc = z.gather(1, idx).view(Fc, Hp, Wp).masked_fill_(empty3, math.inf)
    col_grid = torch.arange(Wp, device=device, dtype=dtype) - pad + 0.5
    row_grid = torch.arange(Hp, device=device, dtype=dtype)[:, None] - pad + 0.5
    fu = u.gather(1, idx).view(Fc, Hp, Wp).sub_(col_grid).masked_fill_(empty3, _FAR)
    fv = v.gather(1, idx).view(Fc, Hp, Wp).sub_(row_grid).masked_fill_(empty3, _FAR)
    colors = cols_t.index_select(1, idx.view(-1)).view(3, Fc, Hp, Wp)
    del u, v, z, idx, empty

    offsets = stencil_offsets(r_px)

    def window(grid: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        return grid[..., pad + dy : pad + dy + H, pad + dx : pad + dx + W]

    shape = (Fc, H, W)
    ex = torch.empty(shape, dtype=dtype, device=device)
    ey = torch.empty_like(ex)
    tmp = torch.empty_like(ex)
    mb = torch.empty(shape, dtype=torch.bool, device=device)

    def dist2(dy: int, dx: int) -> torch.Tensor:  # into ex
        torch.add(window(fu, dy, dx), dx, out=ex)
        torch.add(window(fv, dy, dx), dy, out=ey)
        return ex.mul_(ex).addcmul_(ey, ey)

    # 2. front surface: nearest winner whose disc covers the pixel centre.
    front = torch.full(shape, math.inf, dtype=dtype, device=device)
    for dy, dx in offsets:
        d2 = dist2(dy, dx)
        tmp.copy_(window(zc, dy, dx)).masked_fill_(torch.ge(d2, r2, out=mb), math.inf)
        torch.minimum(front, tmp, out=front)
    covered = torch.isfinite(front)

    # 3. soft compositing of the covering winners near the front surface.
    limit = front * (1.0 + depth_window)
    acc_w = torch.zeros(shape, dtype=dtype, device=device)
    acc_c = torch.zeros((3,) + shape, dtype=dtype, device=device)
    log_transmit = torch.zeros(shape, dtype=dtype, device=device)
    for dy, dx in offsets:
        alpha = dist2(dy, dx).mul_(-1.0 / r2).add_(1.0).clamp_(min=0.0)
        alpha.masked_fill_(torch.gt(window(zc, dy, dx), limit, out=mb), 0.0)
        acc_w += alpha
        for c in range(3):
            acc_c[c].addcmul_(window(colors[c], dy, dx), alpha)
        # (1 − α)^n: the n points of the cell are assumed to sit where its winner does.
        log_transmit.addcmul_(torch.log1p(torch.neg(alpha, out=tmp), out=tmp), window(count, dy, dx))
    # colour = (1 − Π(1 − α)) · Σ α c / Σ α ; holes get the background.
    scale = torch.exp(log_transmit, out=log_transmit).neg_().add_(1.0).div_(acc_w.clamp_(min=torch.finfo(dtype).tiny))
    acc_c.mul_(scale)
    rgb = torch.where(covered, acc_c, bg[:, None, None, None])
    depth = front.masked_fill_(~covered, 0.0)
    return rgb.permute(1, 2, 3, 0), depth, (~covered).to(dtype)


def _render_exact(pts_t, cols_t, w2c, K, H, W, r_px, k_max, near, bg):
    """Reference rasteriser with the release's semantics (all pairs, K nearest, alpha over)."""
    Fc, N = w2c.shape[0], pts_t.shape[1]
    device, dtype = pts_t.device, pts_t.dtype
    u, v, z = _project(pts_t, w2c, K)
    pad = math.ceil(r_px)
    r2 = r_px * r_px
    rgbs, depths, masks = [], [], []
    for f in range(Fc):
        ok = z[f] > near
        pid = torch.nonzero(ok).flatten()
        uf, vf, zf = u[f, pid], v[f, pid], z[f, pid]
        bx = torch.floor(uf.clamp(-pad - 2.0, W + pad + 1.0)).to(torch.int64)
        by = torch.floor(vf.clamp(-pad - 2.0, H + pad + 1.0)).to(torch.int64)
        pix, zs, al, src = [], [], [], []
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                px, py = bx + dx, by + dy
                d2 = (px.to(dtype) + 0.5 - uf) ** 2 + (py.to(dtype) + 0.5 - vf) ** 2
                hit = (d2 < r2) & (px >= 0) & (px < W) & (py >= 0) & (py < H)
                pix.append((py * W + px)[hit])
                zs.append(zf[hit])
                al.append(1.0 - d2[hit] / r2)
                src.append(pid[hit])
        pix, zs, al, src = torch.cat(pix), torch.cat(zs), torch.cat(al), torch.cat(src)
        # Sort by (pixel, z, point index): the release keeps the K nearest in z per pixel.
        order = torch.argsort(src, stable=True)
        order = order[torch.argsort(zs[order], stable=True)]
        order = order[torch.argsort(pix[order], stable=True)]
        pix, zs, al, src = pix[order], zs[order], al[order], src[order]
        pos = torch.arange(pix.numel(), device=device)
        start = torch.ones_like(pix, dtype=torch.bool)
        start[1:] = pix[1:] != pix[:-1]
        rank = pos - torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
        keep = rank < k_max
        pix, zs, al, src, rank = pix[keep], zs[keep], al[keep], src[keep], rank[keep]
        alpha = torch.zeros(k_max, H * W, dtype=dtype, device=device)
        colour = torch.zeros(k_max, 3, H * W, dtype=dtype, device=device)
        alpha[rank, pix] = al
        colour[rank, :, pix] = cols_t[:, src].t()
        out = torch.zeros(3, H * W, dtype=dtype, device=device)
        transmit = torch.ones(H * W, dtype=dtype, device=device)
        for k in range(k_max):
            out += colour[k] * (alpha[k] * transmit)
            transmit = transmit * (1.0 - alpha[k])
        front = torch.zeros(H * W, dtype=dtype, device=device)
        front[pix[rank == 0]] = zs[rank == 0]
        covered = torch.zeros(H * W, dtype=torch.bool, device=device)
        covered[pix] = True
        out = torch.where(covered, out, bg[:, None])
        rgbs.append(out.view(3, H, W).permute(1, 2, 0))
        depths.append(front.view(H, W))
        masks.append((~covered).to(dtype).view(H, W))
    return torch.stack(rgbs), torch.stack(depths), torch.stack(masks)
