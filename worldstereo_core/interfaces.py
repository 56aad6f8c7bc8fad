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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .cameras import Cameras
from .errors import InvalidTrajectoryError
from .pointcloud import RELEASE_EDGE_THRESHOLD
from .render import RELEASE_RADIUS
from .retrieval import References  # the one retrieval result; named here for the generator interface
from .trajectory import DEFAULT_NUM_FRAMES, DEFAULT_NUM_KEYFRAMES

__all__ = [
    "References",
    "FrameGenerator",
    "DepthEstimator",
    "LoopConfig",
    "ProgressFn",
    "default_config",
    "START_INPUT",
    "START_CONTINUE",
    "TrajectorySpec",
    "trajectory_specs",
    "parse_start",
]

#: ``progress(step, total)``, called after each stage; it may raise to interrupt.
ProgressFn = Callable[[int, int], None]


@runtime_checkable
class FrameGenerator(Protocol):
    """Makes the keyframes of one trajectory (the video model's place in the loop).

    Args:
        image: ``[1, H, W, 3]`` the clip's start image, its first frame (the input image, or the
            previous clip's last frame or a bank view: :class:`TrajectorySpec`).
        cameras: the ``F`` keyframe cameras (``H × W``), keyframe 0 = the start camera.
        render: ``[F, H, W, 3]`` the cache rendered at them (GGM condition, frame 0 = the start image).
        mask: ``[F, H, W]`` hole mask, 1 = hole.
        references: retrieved memory views (SSM condition).
        prompt: this clip's own text (a :class:`TrajectorySpec` prompt); the loop passes it
            only when the trajectory has one, so generators without the keyword keep working
            for loops without per-trajectory prompts.
    Returns:
        ``[F, H, W, 3]`` frames in [0, 1] at the given cameras.

    A generator whose attribute ``uses_cache`` is True (the paper-SSM model, whose pointmaps come from
    the 3D cache) is also called with ``cache=`` the current cache's :class:`PointCloud`.
    """

    def __call__(
        self,
        image: torch.Tensor,
        cameras: Cameras,
        render: torch.Tensor,
        mask: torch.Tensor,
        references: References,
        prompt: str | None = None,
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
        reference_cut: how more than ``max_references`` candidate views are cut
            (:func:`~worldstereo_core.retrieval.select_references`): ``"spread"`` (default: needs
            no model), ``"coverage"``, ``"fps"``, or the release's ``"dinov2_fps"`` (needs the
            ``image_features`` argument of :func:`~worldstereo_core.pipeline.run_scene_loop`,
            e.g. :func:`~worldstereo_core.models.dinov2.load_dinov2`).
        retrieval_shortcuts: the release's retrieval shortcuts, as ``((trajectory, kind,
            source_trajectory), …)``: the clip of ``trajectory`` is pushed towards the views the
            earlier clip of ``source_trajectory`` added to the bank
            (:class:`~worldstereo_core.retrieval.RetrievalShortcut`; ``kind`` ``"aerial"``,
            ``"view_first"`` or ``"view_second"``). E.g. ``(("left", "view_first", "up"),)``.
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
        ggm: the paper's Global-Geometric Memory on (default). Off (its ablation): the generator
            gets an empty render, every pixel a hole except the first frame (the start image),
            so the ControlNet still sees the cameras (Plücker rays) but no geometry.
        ssm: the paper's Spatial-Stereo Memory on (default). Off (its ablation): no retrieved
            references reach the generator (the memory models then use the start image as
            their single reference, as for a first clip); the retrieval is still recorded.
    """

    num_frames: int = DEFAULT_NUM_FRAMES
    num_keyframes: int = DEFAULT_NUM_KEYFRAMES
    preset_params: tuple[tuple[str, dict], ...] = ()
    radius: float = RELEASE_RADIUS
    retrieval_mode: str = "aabb"
    max_references: int = 8
    reference_cut: str = "spread"
    retrieval_shortcuts: tuple[tuple[str, str, str], ...] = ()
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
    ggm: bool = True
    ssm: bool = True

    def params_for(self, name: str) -> dict:
        for n, p in self.preset_params:
            if n == name:
                return dict(p)
        return {}


def default_config(height: int, width: int, **changes) -> LoopConfig:
    """Release settings, with the splat radius scaled so the release's 1.92 px at 480 rows
    holds at a smaller ``height × width`` (else small test renders are mostly holes)."""
    return LoopConfig(radius=RELEASE_RADIUS * max(1.0, 480.0 / min(height, width)), **changes)


START_INPUT = "input"
"""A clip opens on the loop's input view and camera (the release's default for every trajectory)."""

START_CONTINUE = "continue"
"""A clip opens on the previous clip's last generated frame, at its camera: the release's
iterative trajectories (``reconstruct_*/traj1`` start from ``traj0``'s last result frame,
``src/data_utils.py``); the render's first frame is that frame and its hole mask is empty."""


def parse_start(value: str | int) -> str | int:
    """``"input"``, ``"continue"``, or a memory-bank view index (``3``, ``"3"`` or ``"view:3"``)."""
    if isinstance(value, bool):
        raise InvalidTrajectoryError(
            f"a trajectory start must be 'input', 'continue' or a bank view number, got {value!r}"
        )
    if isinstance(value, int):
        if value < 0:
            raise InvalidTrajectoryError(f"bank view numbers start at 0, got {value}")
        return value
    text = str(value).strip().lower()
    if text in ("", START_INPUT):
        return START_INPUT
    if text == START_CONTINUE:
        return START_CONTINUE
    number = text[len("view:") :] if text.startswith("view:") else text
    if number.isdigit():
        return int(number)
    raise InvalidTrajectoryError(
        f"unknown trajectory start {value!r}; use 'input' (the input view), 'continue' (the previous clip's last "
        "frame) or a memory-bank view number such as 'view:5' (e.g. one of the panorama's 27 views)"
    )


@dataclass(frozen=True)
class TrajectorySpec:
    """One trajectory of the scene loop: its preset, the view it starts from and its prompt.

    Attributes:
        preset: a :data:`worldstereo_core.trajectory.PRESETS` name, planned from the start camera.
        start: :data:`START_INPUT`, :data:`START_CONTINUE`, or the index of a view of the memory
            bank the loop starts with (e.g. panorama bank view 12: its image opens the clip and
            its camera starts the preset; the release starts panorama trajectories from views
            other than the first, ``view*/``, ``wonder_*/``).
        prompt: the text for this clip (the release reads one caption per trajectory,
            ``traj_caption.json``); None = the generator's own scene prompt.
    """

    preset: str
    start: str | int = START_INPUT
    prompt: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", parse_start(self.start))
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidTrajectoryError(f"a trajectory prompt must be text, got {type(self.prompt).__name__}")


def trajectory_specs(
    presets: Sequence[str | TrajectorySpec],
    starts: Sequence[str | int] | None = None,
    prompts: Sequence[str | None] | None = None,
) -> tuple[TrajectorySpec, ...]:
    """One :class:`TrajectorySpec` per preset, checked before any clip runs.

    ``starts`` / ``prompts`` give one entry per trajectory in order (None or empty: all start from
    the input view / use the scene prompt; an empty prompt string also means the scene prompt).
    Their counts must match the presets'; the first trajectory cannot ``continue``.
    """
    n = len(presets)
    for what, values in (("starts", starts), ("prompts", prompts)):
        if values is not None and len(values) not in (0, n):
            raise InvalidTrajectoryError(
                f"{len(values)} {what} for {n} trajectories; give one per trajectory, in order (or none)"
            )
    specs = []
    for i, p in enumerate(presets):
        spec = p if isinstance(p, TrajectorySpec) else TrajectorySpec(str(p))
        if starts:
            spec = TrajectorySpec(spec.preset, starts[i], spec.prompt)
        if prompts:
            text = prompts[i]
            spec = TrajectorySpec(spec.preset, spec.start, text if text else None)
        specs.append(spec)
    if specs and specs[0].start == START_CONTINUE:
        raise InvalidTrajectoryError("the first trajectory cannot 'continue': there is no previous clip yet")
    return tuple(specs)
