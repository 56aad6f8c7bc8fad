"""What plugs into the scene loop, and the settings shared by the loop and the clip merge.

The loop (:mod:`worldstereo_core.pipeline`) calls two models it does not know:

* a :class:`FrameGenerator` makes a trajectory's keyframes from the GGM condition (cache
  render + hole mask) and the SSM condition (:class:`References` retrieved from the memory
  bank) — the video model (:class:`~worldstereo_core.models.generate.WorldStereoFrameGenerator`)
  or, on a synthetic scene, :class:`~worldstereo_core.oracle.OracleGenerator`;
* a :class:`DepthEstimator` gives the depth of those frames at their known cameras
  (WorldMirror / MoGe in :mod:`worldstereo_core.recon.estimators`, or
  :class:`~worldstereo_core.oracle.OracleDepth`).

:class:`LoopConfig` holds the loop's settings; :mod:`worldstereo_core.merge` reads its
alignment fields. This module sits below the loop, the merge, the oracle and the models, so
each of them can name these types without importing the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch

from .cameras import Cameras
from .pointcloud import RELEASE_EDGE_THRESHOLD
from .render import RELEASE_RADIUS
from .retrieval import References  # the one retrieval result; named here for the generator interface
from .trajectory import DEFAULT_NUM_FRAMES, DEFAULT_NUM_KEYFRAMES

__all__ = ["References", "FrameGenerator", "DepthEstimator", "LoopConfig", "ProgressFn", "default_config"]

#: ``progress(step, total)``, called after each stage; it may raise to interrupt.
ProgressFn = Callable[[int, int], None]


@runtime_checkable
class FrameGenerator(Protocol):
    """Makes the keyframes of one trajectory (the video model's place in the loop).

    Args:
        image: ``[1, H, W, 3]`` the input image (first frame of every clip).
        cameras: the ``F`` keyframe cameras (``H × W``), keyframe 0 = the input camera.
        render: ``[F, H, W, 3]`` the cache rendered at them (GGM condition, frame 0 = input).
        mask: ``[F, H, W]`` hole mask, 1 = hole.
        references: retrieved memory views (SSM condition).
    Returns:
        ``[F, H, W, 3]`` frames in [0, 1] at the given cameras.
    """

    def __call__(
        self, image: torch.Tensor, cameras: Cameras, render: torch.Tensor, mask: torch.Tensor, references: References
    ) -> torch.Tensor: ...


@runtime_checkable
class DepthEstimator(Protocol):
    """Depth of generated frames at known cameras (reconstruction's place in the loop).

    Returns ``(depth [F, H, W], valid [F, H, W] bool)``; depth may be off by a per-frame
    scale and shift — the loop aligns it to the cache.
    """

    def __call__(self, frames: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class LoopConfig:
    """Settings of the scene loop (release values where the release has one).

    Attributes:
        num_frames: poses per trajectory (release: 81).
        num_keyframes: frames generated per trajectory (release: 21).
        preset_params: per-trajectory overrides for :func:`trajectory.make_preset`, as
            ``((name, {param: value}), …)``.
        radius: splat radius of the cache renders, pytorch3d NDC units (release: 0.008, made
            for 480×832; raise it for small test resolutions so the render is not all holes).
        retrieval_mode: ``"aabb"`` (release) or ``"volume"`` (paper).
        max_references: at most this many references per trajectory (release: 8).
        bank_update: keyframes of each clip added to the memory bank (release: 8).
        voxel_fraction: cache voxel size as a fraction of the input median depth.
        max_points: cap on the cache size (None: no cap).
        edge_threshold: the release's depth-edge removal when lifting depth (None: off);
            its sharpness is scaled with the resolution (see :func:`worldstereo_core.merge.lift_depth`).
        far_contract: the release's far-depth compression of the *input* depth (None: off;
            the release uses 8.0 — it moves far geometry, so exact-geometry runs keep it off).
        min_covered_fraction: a frame whose covered pixels (cache surface ∩ valid depth) are
            fewer than this fraction of the image is skipped (not merged).
        outlier_removal: statistical outlier removal of incoming points on merge. Off by
            default: on a perspective cloud the far surfaces are sparser, so a global
            mean + 2σ neighbour-distance test deletes correct far points (room scene: recall
            0.91 with it, 1.00 without); flying pixels are already dropped by the edge test.
        align_depth_window: frames are aligned to :func:`~worldstereo_core.render.cache_surface_depth` of the cache,
            which averages the points within this relative depth of each pixel's nearest.
        align_context_frames: how many of the clip's latest aligned frames join the cache in
            the alignment target of the next frame.
        max_fit_pixels: pixels (a seeded random subset of the covered ones) per depth fit.
        clip_alignment: how each clip is aligned to the cache (:func:`~worldstereo_core.merge.merge_clip`): ``"depth"``
            (per-frame scale/shift) or ``"umeyama"`` (one similarity per clip).
    """

    num_frames: int = DEFAULT_NUM_FRAMES
    num_keyframes: int = DEFAULT_NUM_KEYFRAMES
    preset_params: tuple[tuple[str, dict], ...] = ()
    radius: float = RELEASE_RADIUS
    retrieval_mode: str = "aabb"
    max_references: int = 8
    bank_update: int = 8
    voxel_fraction: float = 0.01
    max_points: int | None = 2_000_000
    edge_threshold: float | None = RELEASE_EDGE_THRESHOLD
    far_contract: float | None = None
    min_covered_fraction: float = 0.02
    outlier_removal: bool = False
    align_depth_window: float = 0.05
    align_context_frames: int = 4
    max_fit_pixels: int = 4096
    clip_alignment: str = "depth"

    def params_for(self, name: str) -> dict:
        for n, p in self.preset_params:
            if n == name:
                return dict(p)
        return {}


def default_config(height: int, width: int, **changes) -> LoopConfig:
    """Release settings, with the splat radius scaled so the release's 1.92 px at 480 rows
    holds at a smaller ``height × width`` (else small test renders are mostly holes)."""
    return LoopConfig(radius=RELEASE_RADIUS * max(1.0, 480.0 / min(height, width)), **changes)
