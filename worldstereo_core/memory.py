"""The scene's memories: the memory bank of views (SSM) and the global 3D cache (GGM).

Both are immutable values: ``update``/``merge`` return new objects (unchanged tensors are
shared, never modified), which is what ComfyUI's output caching needs.

Both save to a folder atomically with :func:`worldstereo_core.atomic.write_folder`: everything
is written into a hidden temporary folder next to the target, flushed to disk, then renamed
into place (an existing bank is first renamed away, then deleted). A crash mid-save leaves
either the old folder or the new one — never a half-written one; if it strikes between the
two renames the old version survives as ``.<name>.old-<id>`` beside the target (``load`` says
so). The temporary folder of a killed save is removed by the next save or load. A damaged
file (truncated safetensors, a manifest that does not add up) gives a :class:`~worldstereo_core.errors.CorruptFileError`
naming the folder and the file. Tensors go to safetensors files, the rest to
``manifest.json`` with a format name and version.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import atomic, safe_json
from .cameras import ArrayLike, Cameras, as_tensor, validate_K, validate_w2c
from .errors import (
    CorruptFileError,
    InvalidCameraError,
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    MalformedJsonError,
    MissingFileError,
    OutputPathError,
    ShapeMismatchError,
    WorldStereoError,
)
from .pointcloud import PointCloud, voxel_downsample
from .pointcloud import remove_outliers as _remove_outliers

__all__ = ["MemoryBank", "Cache3D", "keyframe_update_indices"]

BANK_FORMAT = "worldstereo-memory-bank"
CACHE_FORMAT = "worldstereo-cache3d"
FORMAT_VERSION = 1


def keyframe_update_indices(num_frames: int, num: int = 8) -> list[int]:
    """Frames of a generated clip that join the memory bank (the release's rule).

    ``num`` of the frames ``1 … F−1`` (the first frame, the input view, is skipped), always
    ending at the last frame; the ``F − 1 − num`` spare frames are spread as evenly as
    possible over the start offset and the gaps, larger gaps first. For 21 keyframes and 8:
    ``[3, 6, 9, 12, 14, 16, 18, 20]``; for 81 frames: ``[10, 20, …, 80]``.
    """
    if num < 1 or num > num_frames - 1:
        raise InvalidOptionError(
            f"cannot pick {num} frames from a clip of {num_frames} (the first frame is skipped, so at most "
            f"{max(num_frames - 1, 0)}); lower num or pass a longer clip"
        )
    spare = num_frames - 1 - num
    base, extra = divmod(spare, num)
    steps = [base + 2 if i < extra else base + 1 for i in range(num)]  # step = 1 + allotted spare
    out, cur = [], 0
    for s in steps:
        cur += s
        out.append(cur)
    return out


# --------------------------------------------------------------------------------------------
# Atomic folder writes (worldstereo_core.atomic owns them)
# --------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict | None:
    try:
        man = safe_json.loads((path / "manifest.json").read_bytes(), what="manifest.json")
    except (OSError, MalformedJsonError):
        return None
    return man if isinstance(man, dict) else None


def _atomic_write_dir(target: str | os.PathLike, fmt: str, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` and move the result to ``target`` atomically (see module doc);
    an existing ``target`` is replaced only if it is empty or a saved ``fmt``."""
    target = Path(target)

    def may_replace(existing: Path) -> bool:
        man = _read_manifest(existing)
        return not any(existing.iterdir()) or (man is not None and man.get("format") == fmt)

    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{target} exists and is a file; choose a folder path for the {fmt}")
    try:
        return atomic.write_folder(target, write, may_replace)
    except FileExistsError:
        raise OutputPathError(
            f"refusing to replace {target}: it is not an empty folder or a saved {fmt}; choose another path"
        ) from None


def _open_manifest(path: str | os.PathLike, fmt: str) -> tuple[Path, dict]:
    path = Path(path)
    atomic.remove_stale_temporaries(path)  # what a killed save left behind
    if not path.is_dir():
        olds = atomic.previous_versions(path)
        hint = (
            f"; an interrupted save left the previous version at {olds[-1]} — rename it to {path.name}" if olds else ""
        )
        raise MissingFileError(f"no saved {fmt} at {path}{hint}")
    man = _read_manifest(path)
    if man is None:
        raise CorruptFileError(
            f"{fmt} at {path}: manifest.json is missing or not a JSON object; the folder is not a saved {fmt} "
            "or it is damaged — re-save it"
        )
    if man.get("format") != fmt:
        raise CorruptFileError(f"{path} holds {man.get('format')!r}, not a {fmt}")
    if man.get("version") != FORMAT_VERSION:
        raise CorruptFileError(
            f"{path} was saved with {fmt} format version {man.get('version')!r}; this build reads version "
            f"{FORMAT_VERSION} — update worldstereo or re-create the {fmt}"
        )
    return path, man


def _manifest_int(man: dict, key: str, path: Path, fmt: str) -> int:
    v = man.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise CorruptFileError(
            f"{fmt} at {path}: manifest.json's {key!r} is {v!r}, not a count; the file is damaged — re-save the {fmt}"
        )
    return v


def _load_tensors(path: Path, name: str, fmt: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    f = path / name
    if not f.is_file():
        raise CorruptFileError(f"{fmt} at {path} is missing {name}; the folder is incomplete — re-save it")
    try:
        return load_file(str(f))
    except Exception as e:
        raise CorruptFileError(
            f"{fmt} at {path}: {name} is damaged or truncated ({type(e).__name__}: {e}); re-save the {fmt} "
            "from the workflow that made it"
        ) from None


def _save_tensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(file))


def _save_folder(
    target: str | os.PathLike, fmt: str, files: Mapping[str, Mapping[str, torch.Tensor]], fields: Mapping[str, Any]
) -> Path:
    """Save a ``fmt`` folder atomically: one safetensors file per ``files`` entry (file name →
    tensors) and the ``manifest.json`` that :func:`_open_manifest` reads back (format, version,
    ``fields``, the file names); returns the folder."""

    def write(tmp: Path) -> None:
        for name, tensors in files.items():
            _save_tensors(dict(tensors), tmp / name)
        manifest = {"format": fmt, "version": FORMAT_VERSION, **fields, "files": list(files)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))

    return _atomic_write_dir(target, fmt, write)


# --------------------------------------------------------------------------------------------
# Memory bank
# --------------------------------------------------------------------------------------------


def _frame(x: ArrayLike, what: str) -> torch.Tensor:
    f = as_tensor(x)
    if f.requires_grad:
        f = f.detach()
    if f.ndim == 4 and f.shape[0] == 1:
        f = f[0]
    if f.ndim != 3 or f.shape[-1] != 3:
        raise InvalidImageError(f"{what} must be an RGB image [H, W, 3], got shape {tuple(f.shape)}")
    if not f.is_floating_point():
        raise InvalidImageError(f"{what} must be float in [0, 1] (ComfyUI IMAGE), got {f.dtype}")
    if not torch.isfinite(f).all():
        raise InvalidImageError(f"{what} contains NaN or inf values")
    lo, hi = float(f.min()), float(f.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InvalidImageError(
            f"{what} has values in [{lo:.3g}, {hi:.3g}]; images must be in [0, 1] (divide 8-bit images by 255)"
        )
    return f


@dataclass(frozen=True)
class MemoryBank:
    """Views the SSM branch may retrieve: frames with their cameras.

    Attributes:
        frames: tuple of ``[H_i, W_i, 3]`` float images in [0, 1] (sizes may differ).
        w2c: ``[N, 4, 4]`` world-to-camera poses.
        K: ``[N, 3, 3]`` intrinsics, each in pixels of its own frame.
        sources: tuple of ``N`` labels, e.g. ``"input"``, ``"pano:03"``, ``"traj0:kf5"``.
    """

    frames: tuple[torch.Tensor, ...]
    w2c: torch.Tensor
    K: torch.Tensor
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        frames = tuple(_frame(f, f"frame {i}") for i, f in enumerate(self.frames))
        w2c = as_tensor(self.w2c).detach()
        K = as_tensor(self.K).detach()
        if not w2c.is_floating_point():
            w2c = w2c.float()
        K = K.to(dtype=w2c.dtype, device=w2c.device)
        sources = tuple(self.sources)
        n = len(frames)
        if n == 0:
            raise InvalidInputError("a memory bank needs at least one view (the input image or panorama views)")
        if w2c.ndim != 3 or K.ndim != 3 or w2c.shape[0] != n or K.shape[0] != n or len(sources) != n:
            raise ShapeMismatchError(
                f"memory bank counts disagree: {n} frames, w2c {tuple(w2c.shape)}, K {tuple(K.shape)}, "
                f"{len(sources)} source labels; give one pose, one K and one label per frame"
            )
        validate_w2c(w2c, "memory bank w2c")
        validate_K(K, "memory bank K")
        if not all(isinstance(s, str) for s in sources):
            raise InvalidInputError("memory bank source labels must be strings")
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "w2c", w2c)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "sources", sources)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def sizes(self) -> torch.Tensor:
        """``[N, 2]`` (height, width) of every frame — ``bank_sizes`` for retrieval."""
        return torch.tensor([[f.shape[0], f.shape[1]] for f in self.frames], dtype=torch.long)

    @staticmethod
    def from_image(
        image: ArrayLike, w2c: ArrayLike | None = None, K: ArrayLike | None = None, label: str = "input"
    ) -> MemoryBank:
        """A one-view bank: the input image (``[H, W, 3]`` or ``[1, H, W, 3]``), identity pose by default."""
        img = _frame(image, "input image")
        if K is None:
            raise InvalidCameraError("from_image needs the image's intrinsics K [3, 3] (in pixels of the image)")
        w = torch.eye(4, dtype=torch.float64) if w2c is None else as_tensor(w2c)
        w = w.reshape(1, 4, 4) if w.numel() == 16 else w
        k = as_tensor(K)
        k = k.reshape(1, 3, 3) if k.numel() == 9 else k
        return MemoryBank((img,), w, k.to(w.dtype), (label,))

    @staticmethod
    def from_views(
        images: ArrayLike | Sequence[ArrayLike], cameras: Cameras, labels: Sequence[str] | None = None
    ) -> MemoryBank:
        """A bank of views of one size: ``images [N, H, W, 3]`` at ``cameras`` (e.g. panorama views).

        Default labels are ``"view:00"``, ``"view:01"``, …
        """
        imgs = [images[i] for i in range(len(images))]
        for i, im in enumerate(imgs):
            if tuple(im.shape[:2]) != (cameras.height, cameras.width):
                raise ShapeMismatchError(
                    f"view {i} is {tuple(im.shape[:2])} but the cameras are for {cameras.height}×{cameras.width} "
                    "images; resize the images or the cameras (Cameras.resized)"
                )
        if len(imgs) != len(cameras):
            raise ShapeMismatchError(f"{len(imgs)} images for {len(cameras)} cameras; give one camera per view")
        labels = [f"view:{i:02d}" for i in range(len(imgs))] if labels is None else list(labels)
        return MemoryBank(tuple(as_tensor(im) for im in imgs), cameras.w2c, cameras.K, tuple(labels))

    def update(self, frames: ArrayLike, cameras: Cameras, label: str, num: int = 8) -> MemoryBank:
        """A NEW bank with ``num`` keyframes of a generated clip added (this one is unchanged).

        Args:
            frames: ``[F, H, W, 3]`` generated frames in [0, 1].
            cameras: the ``F`` cameras they were generated at (``H × W``).
            label: clip label; entries are named ``f"{label}:kf{i}"``.
            num: how many frames join (release: 8, chosen by :func:`keyframe_update_indices`).
        """
        fr = as_tensor(frames)
        if fr.ndim != 4 or fr.shape[-1] != 3:
            raise ShapeMismatchError(f"frames must be [F, H, W, 3], got shape {tuple(fr.shape)}")
        if fr.shape[0] != len(cameras):
            raise ShapeMismatchError(f"{fr.shape[0]} frames but {len(cameras)} cameras; give one camera per frame")
        if tuple(fr.shape[1:3]) != (cameras.height, cameras.width):
            raise ShapeMismatchError(
                f"frames are {tuple(fr.shape[1:3])} but cameras are for {cameras.height}×{cameras.width}; resize one of them"
            )
        idx = keyframe_update_indices(fr.shape[0], num)
        it = torch.tensor(idx, dtype=torch.long, device=cameras.w2c.device)
        new_w = cameras.w2c[it].to(dtype=self.w2c.dtype, device=self.w2c.device)
        new_k = cameras.K[it].to(dtype=self.K.dtype, device=self.K.device)
        return MemoryBank(
            self.frames + tuple(fr[i] for i in idx),
            torch.cat([self.w2c, new_w]),
            torch.cat([self.K, new_k]),
            self.sources + tuple(f"{label}:kf{i}" for i in idx),
        )

    def subset(self, indices: Sequence[int] | torch.Tensor) -> MemoryBank:
        """A bank of the chosen entries (e.g. the retrieved references), in the given order."""
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        if any(i < 0 or i >= len(self) for i in idx):
            raise InvalidInputError(f"indices {idx} out of range for a bank of {len(self)} views")
        it = torch.tensor(idx, dtype=torch.long, device=self.w2c.device)
        return MemoryBank(
            tuple(self.frames[i] for i in idx), self.w2c[it], self.K[it], tuple(self.sources[i] for i in idx)
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Save atomically to the folder ``path`` (see the module doc); returns it."""

        files = {
            "cameras.safetensors": {"w2c": self.w2c, "K": self.K},
            "frames.safetensors": {f"frame_{i:05d}": f for i, f in enumerate(self.frames)},
        }
        fields = {"count": len(self), "sources": list(self.sources), "sizes": [list(f.shape[:2]) for f in self.frames]}
        return _save_folder(path, BANK_FORMAT, files, fields)

    @staticmethod
    def load(path: str | os.PathLike) -> MemoryBank:
        """Load a bank saved by :meth:`save` (tensors on CPU)."""
        path, man = _open_manifest(path, BANK_FORMAT)
        n = _manifest_int(man, "count", path, BANK_FORMAT)
        cams = _load_tensors(path, "cameras.safetensors", BANK_FORMAT)
        frames = _load_tensors(path, "frames.safetensors", BANK_FORMAT)
        keys = [f"frame_{i:05d}" for i in range(n)]
        missing = [k for k in keys if k not in frames] + [k for k in ("w2c", "K") if k not in cams]
        sources = man.get("sources", [])
        if n < 1 or missing or not isinstance(sources, list):
            raise CorruptFileError(
                f"memory bank at {path} is inconsistent (manifest count {n}, missing {missing[:3]}); "
                "its files do not belong together — re-save it"
            )
        try:
            return MemoryBank(tuple(frames[k] for k in keys), cams["w2c"], cams["K"], tuple(str(s) for s in sources))
        except InvalidInputError as e:  # shapes, images or cameras that no bank can hold
            raise CorruptFileError(f"memory bank at {path} holds unusable data ({e}); re-save it") from None


# --------------------------------------------------------------------------------------------
# 3D cache
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cache3D:
    """The global point cloud of the scene, with its merge settings.

    Attributes:
        cloud: the points (world coordinates).
        voxel_size: default voxel side for :meth:`merge` (None: no voxel grid unless given).
        max_points: default point cap for :meth:`merge` (None: no cap).
    """

    cloud: PointCloud
    voxel_size: float | None = None
    max_points: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cloud, PointCloud):
            raise InvalidInputError(f"Cache3D.cloud must be a PointCloud, got {type(self.cloud).__name__}")
        if self.voxel_size is not None and not (self.voxel_size > 0 and math.isfinite(self.voxel_size)):
            raise InvalidOptionError(f"voxel_size must be a positive length or None, got {self.voxel_size}")
        if self.max_points is not None and int(self.max_points) < 1:
            raise InvalidOptionError(f"max_points must be ≥ 1 or None, got {self.max_points}")

    def __len__(self) -> int:
        return len(self.cloud)

    @staticmethod
    def empty(voxel_size: float | None = None, max_points: int | None = None) -> Cache3D:
        z = torch.zeros(0, 3)
        return Cache3D(PointCloud(z, z.clone()), voxel_size, max_points)

    def merge(
        self,
        cloud: PointCloud,
        voxel_size: float | None = None,
        max_points: int | None = None,
        remove_outliers: bool = True,
        nb_neighbors: int = 20,
        std_ratio: float = 2.0,
    ) -> Cache3D:
        """A NEW cache with ``cloud`` (already aligned to the cache's world) merged in.

        Statistical outlier removal runs on the incoming cloud only (the cache was cleaned
        when its points arrived; cleaning it again would erode it). Then the union is voxel
        downsampled (``voxel_size``, falling back to the cache's) and capped at
        ``max_points`` (falling back to the cache's); with a cap but no voxel size the voxel
        starts at 1e-4 of the bounding-box diagonal and grows until the cap holds.
        """
        if not isinstance(cloud, PointCloud):
            raise InvalidInputError(f"merge needs a PointCloud, got {type(cloud).__name__}")
        vs = self.voxel_size if voxel_size is None else voxel_size
        cap = self.max_points if max_points is None else max_points
        if vs is not None and not (vs > 0 and math.isfinite(vs)):
            raise InvalidOptionError(f"voxel_size must be a positive length, got {vs}")
        if cap is not None and int(cap) < 1:
            raise InvalidOptionError(f"max_points must be ≥ 1, got {cap}")
        incoming = cloud
        if remove_outliers and len(incoming) > 0:
            incoming = _remove_outliers(incoming, nb_neighbors, std_ratio)
        base = self.cloud.to(device=incoming.device, dtype=incoming.points.dtype)
        if (
            base.normals is None
            and incoming.normals is not None
            or base.normals is not None
            and incoming.normals is None
        ):
            base = PointCloud(base.points, base.colors)
            incoming = PointCloud(incoming.points, incoming.colors)
        merged = PointCloud.cat([base, incoming])
        if len(merged) > 0 and (vs is not None or (cap is not None and len(merged) > int(cap))):
            if vs is None:
                diag = float((merged.points.amax(0) - merged.points.amin(0)).norm())
                vs_eff = max(diag * 1e-4, 1e-12)
            else:
                vs_eff = float(vs)
            merged = voxel_downsample(merged, vs_eff, None if cap is None else int(cap))
        return Cache3D(
            merged,
            self.voxel_size if voxel_size is None else voxel_size,
            self.max_points if max_points is None else max_points,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Save atomically to the folder ``path`` (see the module doc); returns it."""

        t = {"points": self.cloud.points, "colors": self.cloud.colors}
        if self.cloud.normals is not None:
            t["normals"] = self.cloud.normals
        fields = {"num_points": len(self.cloud), "voxel_size": self.voxel_size, "max_points": self.max_points}
        return _save_folder(path, CACHE_FORMAT, {"cloud.safetensors": t}, fields)

    @staticmethod
    def load(path: str | os.PathLike) -> Cache3D:
        """Load a cache saved by :meth:`save` (tensors on CPU)."""
        path, man = _open_manifest(path, CACHE_FORMAT)
        n = _manifest_int(man, "num_points", path, CACHE_FORMAT)
        t = _load_tensors(path, "cloud.safetensors", CACHE_FORMAT)
        if "points" not in t or "colors" not in t or t["points"].shape[0] != n:
            raise CorruptFileError(f"3D cache at {path} is inconsistent with its manifest; re-save it")
        try:
            return Cache3D(
                PointCloud(t["points"], t["colors"], t.get("normals")), man.get("voxel_size"), man.get("max_points")
            )
        except WorldStereoError as e:
            raise CorruptFileError(f"3D cache at {path} holds unusable data ({e}); re-save it") from None
