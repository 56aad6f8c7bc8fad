"""Equirectangular panoramas: perspective views, the release's 27-view bank, panorama clouds.

Convention (MoGe's panorama convention, which the release's ``pano_bank/cameras.json`` uses):
the panorama's world frame is **z up**; the panorama centre column looks along **−x**, and
moving right in the image turns right, towards **+y**. For a ``H × W`` panorama (``W = 2H``),
pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)`` and

    longitude  λ = 2π · ((u + 0.5) / W − 0.5)      ∈ (−π, π), 0 at the centre, + to the right
    latitude   φ = π · (0.5 − (v + 0.5) / H)       ∈ (−π/2, π/2), + up (row 0 is the zenith side)
    direction  d = (−cos φ · cos λ,  cos φ · sin λ,  sin φ)

(MoGe writes it as θ = (1 − u/W)·2π, polar angle v/H·π, d = (sin·cos θ, sin·sin θ, cos), the
same map.) Perspective cameras use the usual OpenCV w2c / K, so a bank view's w2c rotates
world directions into its camera frame; translations are ignored when sampling a panorama
(it is a view from its centre). Panorama depth from MoGe is the **distance along the ray**
(not z-depth), which :func:`panorama_point_cloud` expects.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as Fnn

from .cameras import ArrayLike, Cameras, as_tensor, like_input, validate_K, validate_w2c
from .errors import InvalidDepthError, InvalidImageError
from .pointcloud import PointCloud, compress_far_depth, depth_edge_mask, validate_depth

#: The release's panorama bank: 27 views of 832×480, 120° × 90° field of view.
BANK_WIDTH = 832
BANK_HEIGHT = 480
BANK_FOV_X_DEG = 120.0
BANK_FOV_Y_DEG = 90.0
#: Azimuths (degrees, about world +z, 180° = −x = panorama centre) and elevations of the bank.
BANK_AZIMUTHS_DEG = (180.0, 140.0, 100.0, 60.0, 20.0, -20.0, -60.0, -100.0, -140.0)
BANK_ELEVATION_RAD = math.atan2(1.0, 2.0)  # sin = 0.4472…, as in the release's cameras.json


def _check_pano(pano: torch.Tensor, name: str = "panorama") -> torch.Tensor:
    if pano.ndim == 2:
        pano = pano[..., None]
    if pano.ndim != 3:
        raise InvalidImageError(f"{name} must have shape [H, W, C], got {tuple(pano.shape)}")
    H, W = pano.shape[:2]
    if W != 2 * H:
        raise InvalidImageError(
            f"{name} is {W}×{H} (W×H) but an equirectangular panorama must be exactly 2:1; "
            f"resize it to {2 * H}×{H} or crop it"
        )
    return pano


def equirect_directions(height: int, width: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """``[H, W, 3]`` unit world directions of the equirectangular pixel centres (module convention)."""
    lon = ((torch.arange(width, dtype=dtype, device=device) + 0.5) / width - 0.5) * (2 * math.pi)
    lat = (0.5 - (torch.arange(height, dtype=dtype, device=device) + 0.5) / height) * math.pi
    lat, lon = torch.meshgrid(lat, lon, indexing="ij")
    return torch.stack([-torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], -1)


def directions_to_equirect(directions: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous equirectangular pixel coordinates ``(x, y)`` of world directions ``[..., 3]``
    (pixel centres at ``i + 0.5``; ``x`` in [0, W), ``y`` in [0, H])."""
    d = Fnn.normalize(directions, dim=-1)
    lon = torch.atan2(d[..., 1], -d[..., 0])
    lat = torch.asin(d[..., 2].clamp(-1.0, 1.0))
    x = (lon / (2 * math.pi) + 0.5) * width
    y = (0.5 - lat / math.pi) * height
    return torch.remainder(x, width), y


def sample_equirect(pano: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear samples ``[..., C]`` of ``pano [H, W, C]`` (float tensor, any size) at continuous
    pixel coordinates ``x, y [...]`` (centres at ``i + 0.5``, as :func:`directions_to_equirect`
    gives), wrapping longitude (one column of the opposite side padded on each edge) and
    clamping latitude."""
    H, W, C = pano.shape
    img = pano.permute(2, 0, 1)[None]  # [1, C, H, W]
    img = torch.cat([img[..., -1:], img, img[..., :1]], dim=-1)  # wrap columns
    gx = (x + 1.0) / (W + 2) * 2 - 1  # align_corners=False: pixel i's centre is at i + 0.5
    gy = y / H * 2 - 1
    grid = torch.stack([gx, gy], -1).reshape(1, -1, 1, 2).to(img.dtype)
    out = Fnn.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].t().reshape(*x.shape, C)


def equirect_to_perspective(pano: ArrayLike, w2c: ArrayLike, K: ArrayLike, height: int, width: int) -> ArrayLike:
    """Perspective view ``[height, width, C]`` of an equirectangular ``pano [H, W, C]`` (bilinear,
    longitude wraps) seen by a camera ``w2c [4, 4]`` (rotation used), ``K [3, 3]`` in pixels of
    the output. Raises :class:`InvalidImageError` unless the panorama is 2:1."""
    p = _check_pano(as_tensor(pano))
    squeeze = as_tensor(pano).ndim == 2
    if not p.is_floating_point():
        p = p.float() / 255.0
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    T = as_tensor(w2c).to(device=p.device, dtype=torch.float64)
    Kt = as_tensor(K).to(device=p.device, dtype=torch.float64)
    validate_w2c(T[None])
    validate_K(Kt[None])
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=p.device) + 0.5,
        torch.arange(width, dtype=torch.float64, device=p.device) + 0.5,
        indexing="ij",
    )
    rays = torch.stack([u, v, torch.ones_like(u)], -1) @ torch.linalg.inv(Kt).T
    world = rays @ T[:3, :3]  # Rᵀ · ray, row-vector form
    x, y = directions_to_equirect(world, p.shape[0], p.shape[1])
    out = sample_equirect(p.to(dtype), x.to(dtype), y.to(dtype))
    if squeeze:
        out = out[..., 0]
    return like_input(out, pano)


def perspective_to_equirect(
    images: ArrayLike, w2c: ArrayLike, K: ArrayLike, pano_height: int, pano_width: int
) -> tuple[ArrayLike, ArrayLike]:
    """Blend perspective views back into an equirectangular panorama.

    Args:
        images: ``[F, h, w, C]`` views; ``w2c [F, 4, 4]`` (rotations used), ``K [F, 3, 3]``
            (or one shared ``[3, 3]``) in pixels of the views.
        pano_height, pano_width: output size (2:1).

    Returns:
        ``(pano [H, W, C], weight [H, W])``: each panorama pixel is the weighted mean of the
        views that see it, weights feathered to 0 at each view's border (the product of the
        normalised distances to the nearest vertical and horizontal edges) so seams blend;
        ``weight`` is their sum, 0 where no view sees the direction (``pano`` is 0 there).
    """
    imgs = as_tensor(images)
    if imgs.ndim != 4:
        raise InvalidImageError(f"images must have shape [F, h, w, C], got {tuple(imgs.shape)}")
    if not imgs.is_floating_point():
        imgs = imgs.float() / 255.0
    if pano_width != 2 * pano_height:
        raise InvalidImageError(f"panorama size must be 2:1, got {pano_width}×{pano_height} (W×H)")
    Fv, h, w, C = imgs.shape
    dev = imgs.device
    T = as_tensor(w2c).to(device=dev, dtype=torch.float64)
    Kt = as_tensor(K).to(device=dev, dtype=torch.float64)
    Kt = Kt.expand(Fv, 3, 3) if Kt.ndim == 2 else Kt
    validate_w2c(T)
    validate_K(Kt)
    d = equirect_directions(pano_height, pano_width, device=dev)  # [H, W, 3]
    acc = torch.zeros(pano_height, pano_width, C, dtype=torch.float64, device=dev)
    wsum = torch.zeros(pano_height, pano_width, dtype=torch.float64, device=dev)
    for i in range(Fv):
        cam = d @ T[i, :3, :3].T
        pix = cam @ Kt[i].T
        z = cam[..., 2]
        safe = torch.where(z > 1e-9, z, torch.ones_like(z))
        x, y = pix[..., 0] / safe, pix[..., 1] / safe
        wx = torch.minimum(x, w - x) / (w / 2)
        wy = torch.minimum(y, h - y) / (h / 2)
        weight = (wx.clamp(min=0) * wy.clamp(min=0)) * (z > 1e-9)
        grid = torch.stack([x / w * 2 - 1, y / h * 2 - 1], -1)[None].to(imgs.dtype)
        sample = Fnn.grid_sample(
            imgs[i].permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        acc += sample[0].permute(1, 2, 0).double() * weight[..., None]
        wsum += weight
    pano = torch.where(wsum[..., None] > 0, acc / wsum.clamp(min=1e-12)[..., None], torch.zeros_like(acc))
    return like_input(pano.to(imgs.dtype), images), like_input(wsum.to(imgs.dtype), images)


def level_look_rotation(forward: torch.Tensor) -> torch.Tensor:
    """w2c rotations ``[..., 3, 3]`` (rows: right, down, forward) of level OpenCV cameras looking
    along ``forward [..., 3]`` (any length; world z up, no roll: the camera x axis stays
    horizontal). Undefined for a forward along ±z."""
    f = Fnn.normalize(forward, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=f.dtype, device=f.device).expand_as(f)
    right = Fnn.normalize(torch.linalg.cross(f, up, dim=-1), dim=-1)
    down = torch.linalg.cross(f, right, dim=-1)
    return torch.stack([right, down, f], dim=-2)


def panorama_bank_cameras(
    dtype: torch.dtype = torch.float64, height: int = BANK_HEIGHT, width: int = BANK_WIDTH
) -> Cameras:
    """The release's 27 panorama-bank cameras (832×480, fx = 416/tan 60°, fy = 240/tan 45°).

    ``height × width`` (multiples of 16) gives the same 27 views at another size with the same
    120° × 90° field of view (K for that size): the paper runs panoramas at 576p, the release at
    480 × 832. The default is the release's.

    Three elevations (0, +atan ½ ≈ 26.57°, −26.57°) × nine azimuths 40° apart, starting at
    the panorama centre (azimuth 180° = −x) and turning right. Order, as in the release's
    ``pano_bank/cameras.json``: the three views at the centre azimuth (level, up, down), then the
    eight other level views, then the eight upward, then the eight downward views.
    """
    el = BANK_ELEVATION_RAD
    ce, se = math.cos(el), math.sin(el)

    def fwd(az_deg: float, s: int) -> torch.Tensor:
        a = math.radians(az_deg)
        c = ce if s else 1.0
        return torch.tensor([c * math.cos(a), c * math.sin(a), s * se], dtype=torch.float64)

    order = [(BANK_AZIMUTHS_DEG[0], s) for s in (0, 1, -1)]
    for s in (0, 1, -1):
        order += [(a, s) for a in BANK_AZIMUTHS_DEG[1:]]
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(order), 1, 1)
    for i, (a, s) in enumerate(order):
        w2c[i, :3, :3] = level_look_rotation(fwd(a, s))
    H, W = int(height), int(width)
    if H <= 0 or W <= 0 or H % 16 or W % 16:
        raise InvalidImageError(
            f"panorama view size {W}×{H} (W×H) must be positive multiples of 16 (the video model's); the release "
            f"uses {BANK_WIDTH}×{BANK_HEIGHT}"
        )
    fx = W / 2 / math.tan(math.radians(BANK_FOV_X_DEG / 2))
    fy = H / 2 / math.tan(math.radians(BANK_FOV_Y_DEG / 2))
    K = torch.tensor([[fx, 0, W / 2], [0, fy, H / 2], [0, 0, 1]], dtype=torch.float64)
    return Cameras(w2c.to(dtype), K.expand(len(order), 3, 3).to(dtype), H, W)


def panorama_bank_views(pano: ArrayLike, cameras: Cameras | None = None) -> ArrayLike:
    """``[27, H, W, C]`` perspective views of ``pano`` at the bank cameras (default: the release's, 480 × 832)."""
    cams = cameras if cameras is not None else panorama_bank_cameras()
    views = [
        as_tensor(equirect_to_perspective(as_tensor(pano), cams.w2c[i], cams.K[i], cams.height, cams.width))
        for i in range(len(cams))
    ]
    return like_input(torch.stack(views), pano)


def panorama_point_cloud(
    pano: ArrayLike,
    distance: ArrayLike,
    mask: ArrayLike | None = None,
    c2w: ArrayLike | None = None,
    *,
    far_contract: float | None = None,
    edge_threshold: float | None = None,
) -> PointCloud:
    """Point cloud of an equirectangular panorama from its per-pixel **ray distance** ``[H, W]``.

    Point of pixel (u, v) = ``c2w · (distance · d(u, v))`` with ``d`` the module's unit
    directions (``c2w`` defaults to identity: the panorama's own frame, as the bank cameras).
    ``mask [H, W]`` True = keep; distance 0 = no depth (dropped). ``far_contract`` and
    ``edge_threshold`` apply the release's far compression and depth-edge removal to the
    distance map as they do for perspective depth (the edge test does not wrap at the seam).
    """
    p = _check_pano(as_tensor(pano))
    if not p.is_floating_point():
        p = p.float() / 255.0
    dist = as_tensor(distance)
    if dist.ndim == 3 and dist.shape[-1] == 1:
        dist = dist[..., 0]
    if not dist.is_floating_point():
        dist = dist.float()
    if tuple(dist.shape) != tuple(p.shape[:2]):
        raise InvalidDepthError(
            f"panorama distance map is {tuple(dist.shape)} but the panorama is {tuple(p.shape[:2])}; resize one to the other"
        )
    validate_depth(dist, "panorama distance")
    if far_contract is not None:
        dist = as_tensor(compress_far_depth(dist, far_contract))
    keep = dist > 0
    if mask is not None:
        m = as_tensor(mask).to(dist.device)
        if tuple(m.shape) != tuple(dist.shape):
            raise InvalidDepthError(f"mask is {tuple(m.shape)} but the panorama is {tuple(dist.shape)}")
        keep = keep & (m > 0.5 if m.is_floating_point() else m.bool())
    if edge_threshold is not None:
        keep = keep & ~as_tensor(depth_edge_mask(dist, edge_threshold))
    dtype = dist.dtype
    d = equirect_directions(p.shape[0], p.shape[1], dtype=torch.float64, device=dist.device)
    pts = (d * dist.double()[..., None])[keep]
    if c2w is not None:
        T = as_tensor(c2w).to(device=dist.device, dtype=torch.float64)
        validate_w2c(T[None], name="c2w")
        pts = pts @ T[:3, :3].T + T[:3, 3]
    cols = p[..., :3][keep]
    return PointCloud(pts.to(dtype), cols.to(dtype)).require_nonempty("panorama point cloud")
