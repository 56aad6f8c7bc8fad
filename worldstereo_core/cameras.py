"""Camera batches and the conventions every module keeps.

Conventions (ARCHITECTURE §3): OpenCV camera frame (x right, y down, z forward); extrinsics are
``w2c`` 4×4 world-to-camera matrices unless a name says ``c2w``; intrinsics ``K`` are 3×3 in
pixels of the image they belong to, with pixel (u, v) covering [u, u+1) × [v, v+1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidCameraError

ArrayLike = torch.Tensor | np.ndarray


def as_tensor(x: ArrayLike, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """Tensor view of ``x`` (numpy arrays are converted, tensors kept where possible)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if dtype is not None or device is not None:
        x = x.to(dtype=dtype or x.dtype, device=device or x.device)
    return x


def like_input(result: torch.Tensor, reference: ArrayLike) -> ArrayLike:
    """Return ``result`` as the same kind (numpy or torch) as ``reference``."""
    if isinstance(reference, np.ndarray):
        return result.detach().cpu().numpy()
    return result


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4×4 transforms ``[..., 4, 4]`` (R^T, -R^T t), exact for rigid poses."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1
    return out


def validate_pose_stack(poses: torch.Tensor, name: str) -> None:
    """Raise :class:`InvalidCameraError` unless ``poses`` is a non-empty, finite ``[F, 4, 4]`` stack
    (w2c or c2w; rigidity is :func:`validate_w2c`'s further check)."""
    if poses.ndim != 3 or poses.shape[-2:] != (4, 4):
        raise InvalidCameraError(f"{name} must have shape [F, 4, 4], got {tuple(poses.shape)}")
    if poses.shape[0] == 0:
        raise InvalidCameraError(f"{name} holds 0 cameras; give at least one pose")
    if not torch.isfinite(poses).all():
        raise InvalidCameraError(f"{name} contains NaN or inf values")


def validate_w2c(w2c: torch.Tensor, name: str = "w2c", atol: float = 1e-3) -> None:
    """Raise :class:`InvalidCameraError` unless ``w2c [F, 4, 4]`` are finite rigid transforms."""
    validate_pose_stack(w2c, name)
    w = w2c.double()
    bottom = torch.tensor([0, 0, 0, 1], dtype=w.dtype, device=w.device)
    bad_bottom = ((w[:, 3] - bottom).abs() > atol).any(-1)
    R = w[:, :3, :3]
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    orth_err = (R @ R.transpose(-1, -2) - eye).abs().amax((-1, -2))
    det = torch.linalg.det(R)
    bad = bad_bottom | (orth_err > atol) | ((det - 1).abs() > atol)
    if bad.any():
        idx = torch.nonzero(bad).flatten().tolist()
        raise InvalidCameraError(
            f"{name}: {len(idx)} pose(s) are not rigid world-to-camera transforms (first: index "
            f"{idx[0]}, max |R Rᵀ − I| = {orth_err[idx[0]]:.3g}, det R = {det[idx[0]]:.3g}); "
            "each must be [[R, t], [0, 0, 0, 1]] with R a rotation (orthonormal, det +1)"
        )


def validate_K(K: torch.Tensor, name: str = "K") -> None:
    """Raise :class:`InvalidCameraError` unless ``K [F, 3, 3]`` are finite pinhole intrinsics."""
    if K.ndim != 3 or K.shape[-2:] != (3, 3):
        raise InvalidCameraError(f"{name} must have shape [F, 3, 3], got {tuple(K.shape)}")
    if not torch.isfinite(K).all():
        raise InvalidCameraError(f"{name} contains NaN or inf values")
    fx, fy = K[:, 0, 0], K[:, 1, 1]
    if (fx.abs() < 1e-8).any() or (fy.abs() < 1e-8).any():
        raise InvalidCameraError(
            f"{name} has a zero focal length (fx or fy = 0); focal lengths are in pixels, "
            "e.g. fx = fy = width / (2·tan(fov_x / 2))"
        )
    if (fx < 0).any() or (fy < 0).any():
        raise InvalidCameraError(f"{name} has a negative focal length; use positive fx, fy")


@dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras for images of one size.

    Attributes:
        w2c: ``[F, 4, 4]`` world-to-camera transforms (OpenCV frame).
        K: ``[F, 3, 3]`` intrinsics in pixels of a ``height × width`` image.
        height, width: image size the intrinsics belong to.
    """

    w2c: torch.Tensor
    K: torch.Tensor
    height: int
    width: int

    def __post_init__(self) -> None:
        w2c = as_tensor(self.w2c)
        K = as_tensor(self.K)
        if not w2c.is_floating_point():
            w2c = w2c.float()
        if not K.is_floating_point():
            K = K.to(w2c.dtype)
        shared = K.ndim == 2 or (K.ndim == 3 and K.shape[0] == 1 and w2c.ndim == 3 and w2c.shape[0] > 1)
        if shared and tuple(K.shape[-2:]) == (3, 3) and w2c.ndim == 3:
            # one shared K, given as [3, 3] or as a batch of one [1, 3, 3] (camera.json's shared intrinsic)
            K = K.reshape(-1, 3, 3).expand(w2c.shape[0], 3, 3).clone()
        object.__setattr__(self, "w2c", w2c)
        object.__setattr__(self, "K", K.to(w2c.dtype))
        validate_w2c(w2c)
        validate_K(self.K)
        if self.K.shape[0] != w2c.shape[0]:
            raise InvalidCameraError(
                f"got {w2c.shape[0]} extrinsics but {self.K.shape[0]} intrinsics; give one K per "
                "pose or a single shared K"
            )
        if int(self.height) <= 0 or int(self.width) <= 0:
            raise InvalidCameraError(f"image size must be positive, got {self.height}×{self.width}")
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))

    def __len__(self) -> int:
        return self.w2c.shape[0]

    @property
    def c2w(self) -> torch.Tensor:
        """``[F, 4, 4]`` camera-to-world transforms."""
        return invert_rigid(self.w2c)

    @property
    def centers(self) -> torch.Tensor:
        """``[F, 3]`` camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    @property
    def device(self) -> torch.device:
        return self.w2c.device

    def __getitem__(self, index) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.w2c[index], self.K[index], self.height, self.width)

    def to(self, device=None, dtype: torch.dtype | None = None) -> Cameras:
        return Cameras(
            self.w2c.to(device=device, dtype=dtype or self.w2c.dtype),
            self.K.to(device=device, dtype=dtype or self.K.dtype),
            self.height,
            self.width,
        )

    def resized(self, height: int, width: int) -> Cameras:
        """Cameras for the same views at another image size (K rescaled with the image)."""
        return Cameras(self.w2c, resize_K(self.K, (self.height, self.width), (height, width)), height, width)

    @staticmethod
    def cat(items: list[Cameras]) -> Cameras:
        """Concatenate batches of cameras of one image size."""
        if not items:
            raise InvalidCameraError("cannot concatenate an empty list of camera batches")
        sizes = {(c.height, c.width) for c in items}
        if len(sizes) != 1:
            raise InvalidCameraError(f"camera batches have different image sizes {sorted(sizes)}; resize first")
        return Cameras(
            torch.cat([c.w2c for c in items]), torch.cat([c.K for c in items]), items[0].height, items[0].width
        )


def resize_K(K: ArrayLike, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> ArrayLike:
    """Rescale intrinsics ``[..., 3, 3]`` from an ``old_hw`` image to a ``new_hw`` image.

    With pixel centres at ``u + 0.5`` the map from old to new pixel coordinates is a pure
    scale of the continuous image plane, so ``fx, cx`` scale by ``W'/W`` and ``fy, cy`` by
    ``H'/H``.
    """
    Kt = as_tensor(K).clone()
    sy = new_hw[0] / old_hw[0]
    sx = new_hw[1] / old_hw[1]
    Kt[..., 0, :] = Kt[..., 0, :] * sx
    Kt[..., 1, :] = Kt[..., 1, :] * sy
    return like_input(Kt, K)


def intrinsics_from_fov(fov_x_deg: float, height: int, width: int, fov_y_deg: float | None = None) -> torch.Tensor:
    """``[3, 3]`` intrinsics of a centred pinhole camera with the given horizontal FoV (degrees)."""
    if not (0 < fov_x_deg < 180):
        raise InvalidCameraError(f"horizontal field of view must be in (0, 180) degrees, got {fov_x_deg}")
    fx = width / (2 * np.tan(np.radians(fov_x_deg) / 2))
    fy = fx if fov_y_deg is None else height / (2 * np.tan(np.radians(fov_y_deg) / 2))
    return torch.tensor([[fx, 0, width / 2], [0, fy, height / 2], [0, 0, 1]], dtype=torch.float64)


def look_at_c2w(position: ArrayLike, target: ArrayLike, up: ArrayLike = (0.0, -1.0, 0.0)) -> torch.Tensor:
    """OpenCV camera-to-world poses ``[..., 4, 4]`` (float64) at ``position`` looking at ``target``.

    ``position``, ``target`` and ``up`` are ``[..., 3]`` (broadcast). ``up`` is the world
    direction that should appear *up* in the image (camera −y); the default ``(0, −1, 0)`` is up
    in an OpenCV-style world (y down), e.g. the first camera's frame. Axes: z = the unit
    direction to the target, x = z × up (normalised, image right), y = z × x (image down).
    """
    p = as_tensor(position, dtype=torch.float64)
    t = as_tensor(target, dtype=torch.float64).to(p.device)
    u = as_tensor(up, dtype=torch.float64).to(p.device)
    p, t, u = torch.broadcast_tensors(p, t, u)
    if p.shape[-1] != 3:
        raise InvalidCameraError(f"look-at position, target and up must be 3-vectors, got shape {tuple(p.shape)}")
    z = t - p
    zn = z.norm(dim=-1, keepdim=True)
    if bool((zn < 1e-12).any()):
        raise InvalidCameraError("look-at target coincides with the camera position; move one of them")
    z = z / zn
    x = torch.linalg.cross(z, u)
    xn = x.norm(dim=-1, keepdim=True)
    if bool((xn < 1e-9).any()):
        raise InvalidCameraError("the up vector is parallel to the viewing direction; choose another up")
    x = x / xn
    y = torch.linalg.cross(z, x)
    c2w = torch.zeros(*p.shape[:-1], 4, 4, dtype=torch.float64, device=p.device)
    c2w[..., :3, :3] = torch.stack([x, y, z], -1)
    c2w[..., :3, 3] = p
    c2w[..., 3, 3] = 1.0
    return c2w


# ---------------------------------------------------------------------------------------------
# Quaternions (real part first: w, x, y, z)
# ---------------------------------------------------------------------------------------------


def _standardize_quaternion(q: torch.Tensor) -> torch.Tensor:
    # q and -q are the same rotation; keep the one with w >= 0 as the release does.
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_quaternion(R: ArrayLike) -> ArrayLike:
    """Unit quaternions ``[..., 4]`` in **(w, x, y, z)** order (w ≥ 0) of rotations ``[..., 3, 3]``.

    Shepperd's method: of the four algebraically equal candidates, the one with the largest
    denominator is used, so the result is accurate for every rotation (also near 180°).
    """
    Rt = as_tensor(R)
    if Rt.shape[-2:] != (3, 3):
        raise InvalidCameraError(f"rotation matrices must have shape [..., 3, 3], got {tuple(Rt.shape)}")
    if not Rt.is_floating_point():
        Rt = Rt.double()
    m = Rt.reshape(*Rt.shape[:-2], 9).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    # |2·q_i| for i = w, x, y, z (clamped at 0 against rounding)
    four_sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    two_abs = torch.where(four_sq > 0, four_sq.clamp_min(0).sqrt(), torch.zeros_like(four_sq))
    diag = two_abs**2
    # Row i holds 4·q_i·q for the candidate built from component i; same arithmetic as the
    # release so camera_qt matches it bit for bit in float32.
    rows = torch.stack(
        [
            torch.stack([diag[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
            torch.stack([m21 - m12, diag[..., 1], m10 + m01, m02 + m20], -1),
            torch.stack([m02 - m20, m10 + m01, diag[..., 2], m12 + m21], -1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, diag[..., 3]], -1),
        ],
        -2,
    )
    # Denominators below 0.1 belong to candidates that are never picked; the floor avoids 0/0.
    cand = rows / (2.0 * two_abs[..., None].clamp_min(0.1))
    best = two_abs.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return like_input(_standardize_quaternion(q), R)


def quaternion_to_matrix(q: ArrayLike) -> ArrayLike:
    """Rotation matrices ``[..., 3, 3]`` of quaternions ``[..., 4]`` in **(w, x, y, z)** order.

    The quaternion is normalised first, so any non-zero 4-vector is accepted.
    """
    qt = as_tensor(q)
    if qt.shape[-1] != 4:
        raise InvalidCameraError(f"quaternions must have shape [..., 4] (w, x, y, z), got {tuple(qt.shape)}")
    if not qt.is_floating_point():
        qt = qt.double()
    norm = qt.norm(dim=-1, keepdim=True)
    if (norm < 1e-12).any() or not torch.isfinite(qt).all():
        raise InvalidCameraError("quaternions must be finite and non-zero")
    w, x, y, z = (qt / norm).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(*qt.shape[:-1], 3, 3)
    return like_input(R, q)


# ---------------------------------------------------------------------------------------------
# SEVA-style normalisation, Plücker rays and camera_qt (what the released weights were fed)
# ---------------------------------------------------------------------------------------------


def _checked_w2c(w2c: ArrayLike, name: str = "w2c") -> torch.Tensor:
    t = as_tensor(w2c)
    if not t.is_floating_point():
        t = t.float()
    validate_w2c(t, name)
    return t


def _center_and_scale(w2c: torch.Tensor, num_stats: int, camera_scale: float) -> torch.Tensor:
    """Centre ``w2c [N, 4, 4]`` on the robust mean of the first ``num_stats`` centres, then scale.

    The release's recipe (SEVA): distances of the camera centres to their (lower) median, keep
    those within 10× the 97 % quantile of these distances (capped at 1e6), subtract the mean of
    the kept centres, then scale all translations so camera 0 lies at ``camera_scale`` from the
    origin (or by ``camera_scale`` itself when camera 0 already sits at the origin).
    """
    c2w = torch.linalg.inv(w2c)
    centers = c2w[:num_stats, :3, 3]
    dist = torch.norm(centers - centers.median(0, keepdim=True).values, dim=-1)
    keep = dist <= torch.clamp(torch.quantile(dist, 0.97) * 10, max=1e6)
    c2w[:, :3, 3] -= centers[keep].mean(0, keepdim=True)
    w2c = torch.linalg.inv(c2w)
    norm0 = torch.norm(c2w[0, :3, 3])
    # Same test as the release: |c0| within 1e-5 of zero means "no scale information".
    scale = camera_scale if bool(norm0.abs() <= 1e-5) else camera_scale / norm0
    w2c[:, :3, 3] *= scale
    return w2c


NORMALIZATIONS = ("worldstereo", "uni3c")
"""How camera 0's frame is taken out before centring: ``worldstereo`` (``w2c_i · w2c_0⁻¹``, the
release's ``is_w2c=True``) or ``uni3c`` (``w2c_0⁻¹ · w2c_i``, the order Uni3C was trained with)."""


def normalize_cameras(w2c: ArrayLike, camera_scale: float = 2.0, convention: str = "worldstereo") -> ArrayLike:
    """SEVA-style normalisation of a camera sequence, as the released WorldStereo applies it.

    1. Re-express every pose in camera 0's frame: ``w2c_i ← w2c_i · w2c_0⁻¹`` (camera 0 becomes
       the identity; this is the release's ``is_w2c=True`` path, the one its data loaders use).
       ``convention="uni3c"`` multiplies on the other side, ``w2c_i ← w2c_0⁻¹ · w2c_i``: the
       release keeps that order under ``is_w2c=False`` "for consistency with the previous version",
       and Uni3C (ewrfcas/Uni3C ``src/camera.py``) only has that order — its ControlNet saw Plücker
       rays of cameras normalised this way. Both make camera 0 the identity.
    2. Centre: subtract the robust mean of the camera centres (see :func:`_center_and_scale`).
    3. Scale translations so camera 0 sits at distance ``camera_scale`` (2.0) from the origin.

    Args:
        w2c: ``[F, 4, 4]`` world-to-camera poses.
        convention: ``worldstereo`` or ``uni3c`` (see :data:`NORMALIZATIONS`).
    Returns:
        ``[F, 4, 4]`` normalised world-to-camera poses, same kind and dtype as the input. Camera 0
        has rotation I; its centre is at distance 2.0 unless it coincides with the robust mean.
    """
    if convention not in NORMALIZATIONS:
        raise InvalidCameraError(f"camera normalisation must be one of {NORMALIZATIONS}, got {convention!r}")
    t = _checked_w2c(w2c)
    inv0 = torch.linalg.inv(t[:1])
    t = t @ inv0 if convention == "worldstereo" else inv0 @ t
    return like_input(_center_and_scale(t, t.shape[0], camera_scale), w2c)


def plucker_embedding(
    w2c: ArrayLike, K: ArrayLike, height: int, width: int, normalize: bool = True, convention: str = "worldstereo"
) -> ArrayLike:
    """Plücker ray maps ``[F, 6, H, W]`` exactly as the released model was fed them.

    Channels are ``[d, o × d]`` (unit world direction first, then the moment), the order of the
    release (ComfyUI core / FunCamera use the opposite). With ``normalize`` the poses first go
    through :func:`normalize_cameras` (``convention``: ``worldstereo``, or ``uni3c`` for the Uni3C
    branch). The release samples pixel ``(i, j)`` (column, row) at image
    point ``x = i − 0.5, y = j + 0.5`` — not the pixel centre ``(i + 0.5, j + 0.5)`` of ARCHITECTURE §3;
    we reproduce that offset because it is what the weights saw.

    Args:
        w2c: ``[F, 4, 4]`` world-to-camera poses.
        K: ``[F, 3, 3]`` (or ``[3, 3]``) intrinsics in pixels of a ``height × width`` image.
    Returns:
        ``[F, 6, height, width]``, same kind as ``w2c``.
    """
    t = _checked_w2c(w2c)
    Kt = as_tensor(K).to(device=t.device, dtype=t.dtype)
    if Kt.ndim == 2:
        Kt = Kt.expand(t.shape[0], 3, 3)
    validate_K(Kt)
    if Kt.shape[0] != t.shape[0]:
        raise InvalidCameraError(f"got {t.shape[0]} poses but {Kt.shape[0]} intrinsics; give one K per pose")
    if int(height) <= 0 or int(width) <= 0:
        raise InvalidCameraError(f"image size must be positive, got {height}×{width}")
    if normalize:
        t = normalize_cameras(t, convention=convention)
    c2w = torch.linalg.inv(t)
    x = torch.arange(width, device=t.device, dtype=t.dtype) - 0.5
    y = torch.arange(height, device=t.device, dtype=t.dtype) + 0.5
    yy, xx = torch.meshgrid(y, x, indexing="ij")  # [H, W]
    pix = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(1, -1, 3)  # [1, HW, 3]
    dirs_cam = pix @ torch.linalg.inv(Kt).transpose(-1, -2)  # depth-1 points in camera frame
    d = torch.nn.functional.normalize(dirs_cam @ c2w[:, :3, :3].transpose(-1, -2), dim=-1)  # [F, HW, 3]
    o = c2w[:, None, :3, 3].expand_as(d)
    emb = torch.cat([d, torch.cross(o, d, dim=-1)], -1)  # [F, HW, 6]
    emb = emb.reshape(t.shape[0], height, width, 6).permute(0, 3, 1, 2).contiguous()
    return like_input(emb, w2c)


def normalize_cameras_joint(
    w2c: ArrayLike, w2c_ref: ArrayLike, camera_scale: float = 2.0
) -> tuple[ArrayLike, ArrayLike]:
    """The release's joint normalisation of target ``[F, 4, 4]`` and reference ``[R, 4, 4]`` poses.

    Both sets are re-expressed in the first *target* camera's frame; the centring offset and the
    scale come from the targets only and are applied to all, so references stay consistent.
    Returns ``(w2c_norm [F, 4, 4], w2c_ref_norm [R, 4, 4])``.
    """
    t = _checked_w2c(w2c)
    r = _checked_w2c(w2c_ref, "w2c_ref").to(device=t.device, dtype=t.dtype)
    both = torch.cat([t, r]) @ torch.linalg.inv(t[:1])
    both = _center_and_scale(both, t.shape[0], camera_scale)
    return like_input(both[: t.shape[0]], w2c), like_input(both[t.shape[0] :], w2c_ref)


def camera_qt(w2c: ArrayLike, w2c_ref: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """``(quaternion, translation)`` codes of target and reference cameras for the SSM branch.

    After :func:`normalize_cameras_joint`, each w2c becomes ``[w, x, y, z, tx, ty, tz]``: the
    quaternion (w ≥ 0) of its rotation and its translation column. For a single-view input the
    release uses the first target camera as the only reference (``w2c_ref = w2c[:1]``).

    Returns:
        ``([F, 7], [R, 7])``, same kind as the inputs.
    """
    tn, rn = normalize_cameras_joint(as_tensor(w2c), as_tensor(w2c_ref))
    qt = torch.cat([matrix_to_quaternion(tn[:, :3, :3]), tn[:, :3, 3]], -1)
    qr = torch.cat([matrix_to_quaternion(rn[:, :3, :3]), rn[:, :3, 3]], -1)
    return like_input(qt, w2c), like_input(qr, w2c_ref)
