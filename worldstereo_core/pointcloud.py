"""Point clouds: the 3D cache's raw material."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cameras import as_tensor
from .errors import InvalidPointCloudError


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

    def to(self, device=None, dtype: torch.dtype | None = None) -> "PointCloud":
        n = None if self.normals is None else self.normals.to(device=device, dtype=dtype)
        return PointCloud(self.points.to(device=device, dtype=dtype), self.colors.to(device=device, dtype=dtype), n)

    def select(self, index: torch.Tensor) -> "PointCloud":
        """Subset by boolean mask or integer index."""
        n = None if self.normals is None else self.normals[index]
        return PointCloud(self.points[index], self.colors[index], n)

    def require_nonempty(self, what: str = "point cloud") -> "PointCloud":
        if len(self) == 0:
            raise InvalidPointCloudError(f"{what} is empty (0 points); check the depth and masks that built it")
        return self

    @staticmethod
    def cat(items: "list[PointCloud]") -> "PointCloud":
        items = [c for c in items if len(c) > 0] or items[:1]
        if not items:
            raise InvalidPointCloudError("cannot concatenate an empty list of point clouds")
        normals = None
        if all(c.normals is not None for c in items):
            normals = torch.cat([c.normals for c in items])
        return PointCloud(torch.cat([c.points for c in items]), torch.cat([c.colors for c in items]), normals)
