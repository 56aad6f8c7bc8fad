"""Camera batches and the conventions every module keeps.

Conventions (DESIGN §3): OpenCV camera frame (x right, y down, z forward); extrinsics are
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


def validate_w2c(w2c: torch.Tensor, name: str = "w2c", atol: float = 1e-3) -> None:
    """Raise :class:`InvalidCameraError` unless ``w2c [F, 4, 4]`` are finite rigid transforms."""
    if w2c.ndim != 3 or w2c.shape[-2:] != (4, 4):
        raise InvalidCameraError(f"{name} must have shape [F, 4, 4], got {tuple(w2c.shape)}")
    if w2c.shape[0] == 0:
        raise InvalidCameraError(f"{name} holds 0 cameras; give at least one pose")
    if not torch.isfinite(w2c).all():
        raise InvalidCameraError(f"{name} contains NaN or inf values")
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
        if K.ndim == 2:
            K = K.expand(w2c.shape[0], 3, 3).clone()
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

    def __getitem__(self, index) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.w2c[index], self.K[index], self.height, self.width)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Cameras":
        return Cameras(
            self.w2c.to(device=device, dtype=dtype or self.w2c.dtype),
            self.K.to(device=device, dtype=dtype or self.K.dtype),
            self.height,
            self.width,
        )

    def resized(self, height: int, width: int) -> "Cameras":
        """Cameras for the same views at another image size (K rescaled with the image)."""
        return Cameras(self.w2c, resize_K(self.K, (self.height, self.width), (height, width)), height, width)

    @staticmethod
    def cat(items: "list[Cameras]") -> "Cameras":
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
