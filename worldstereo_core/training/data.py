"""Training data: clips with geometry, cut into target clips and temporally misaligned reference clips.

A :class:`Clip` is a video with its cameras and z-depth. Two sources:

* :class:`SyntheticClips` — our procedural scenes (:mod:`worldstereo_core.synthetic`) along the
  trajectory presets, rendered by the oracle: image, trajectory, frames and depth are exact, so the
  cache render + mask, the references and the pointmaps derived from them are exact too;
* :func:`load_clip_folder` / :class:`VideoFolderClips` — folders of videos with our ``camera.json``
  (``frames/`` images or ``video.mp4``, ``camera.json``, optional ``depth.safetensors`` and
  ``prompt.txt``).

:func:`make_sample` cuts one :class:`TrainingSample` from a clip as the paper trains SSM (§3.3,
appendix): a target clip starting at pose 0 (its first frame is the I2V image) and a reference clip
shifted in time so that the two overlap by 30–90 % of their poses; each target keyframe is paired
with the reference keyframe of best retrieval score (:func:`~worldstereo_core.models.paper_ssm.assign_pairs`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras
from ..errors import (
    CorruptFileError,
    InvalidDepthError,
    InvalidOptionError,
    MissingFileError,
    ShapeMismatchError,
)
from ..models.paper_ssm import assign_pairs
from ..trajectory import keyframe_indices, load_camera_json, make_preset

SSM_OVERLAP = (0.3, 0.9)
"""Temporal overlap of target and reference clips (paper appendix: 30–90 %)."""


@dataclass(frozen=True)
class Clip:
    """One video with geometry.

    Attributes:
        frames: ``[N, H, W, 3]`` float32 in [0, 1].
        depth: ``[N, H, W]`` z-depth, 0 where unknown.
        cameras: ``N`` cameras of ``H × W``.
        prompt: the caption.
        name: a label.
    """

    frames: torch.Tensor
    depth: torch.Tensor
    cameras: Cameras
    prompt: str
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.cameras)
        if self.frames.ndim != 4 or self.frames.shape[0] != n or self.depth.shape != self.frames.shape[:3]:
            raise ShapeMismatchError(
                f"clip {self.name!r}: frames {tuple(self.frames.shape)}, depth {tuple(self.depth.shape)} and "
                f"{n} cameras must agree ([N, H, W, 3], [N, H, W], N)"
            )
        if (self.cameras.height, self.cameras.width) != tuple(self.frames.shape[1:3]):
            raise ShapeMismatchError(
                f"clip {self.name!r}: cameras are {self.cameras.height}×{self.cameras.width}, frames {tuple(self.frames.shape[1:3])}"
            )


@dataclass(frozen=True)
class TrainingSample:
    """What one training step of any stage reads (shapes for ``F`` keyframes of ``H × W``).

    Attributes:
        image: ``[H, W, 3]`` the first frame (I2V condition, keyframe 0).
        cameras: the ``F`` target keyframe cameras.
        frames: ``[F, H, W, 3]`` target keyframes (what the model must generate).
        depth: ``[F, H, W]`` their z-depth (builds the 3D cache: frame 0 plus masked extra views).
        references: ``[F, H, W, 3]`` the reference paired with each target keyframe.
        reference_cameras: their ``F`` cameras; reference_depth ``[F, H, W]``.
        median_depth: median depth of the input view (pointmap and trajectory scale).
        overlap: temporal overlap of the target and reference clips (0.3–0.9).
        prompt: the caption.
    """

    image: torch.Tensor
    cameras: Cameras
    frames: torch.Tensor
    depth: torch.Tensor
    references: torch.Tensor
    reference_cameras: Cameras
    reference_depth: torch.Tensor
    median_depth: float
    overlap: float
    prompt: str


def make_sample(clip: Clip, num_keyframes: int, clip_poses: int, overlap: float) -> TrainingSample:
    """Cut a target clip (poses ``[0, L)``) and a reference clip (poses ``[o, o + L)``) from ``clip``.

    ``o = round((1 − overlap) · (L − 1))``, so the clips share ``overlap`` of their span; both are
    reduced to ``num_keyframes`` keyframes with the release's keyframe rule. Needs ``o + L ≤ N``.
    """
    n = len(clip.cameras)
    if not SSM_OVERLAP[0] - 1e-9 <= overlap <= SSM_OVERLAP[1] + 1e-9:
        raise InvalidOptionError(f"overlap must be in {SSM_OVERLAP} (the paper's range), got {overlap}")
    offset = int(round((1.0 - overlap) * (clip_poses - 1)))
    if offset + clip_poses > n:
        raise InvalidOptionError(
            f"clip {clip.name!r} has {n} poses; a target of {clip_poses} poses with a reference clip shifted by "
            f"{offset} needs {offset + clip_poses} — use longer clips or a shorter clip length"
        )
    kf = torch.as_tensor(keyframe_indices(clip_poses, num_keyframes))
    ref_kf = kf + offset
    cams, ref_cams = clip.cameras[kf], clip.cameras[ref_kf]
    pair = assign_pairs(cams, ref_cams.w2c, ref_cams.K)
    d0 = clip.depth[0]
    if not bool((d0 > 0).any()):
        raise InvalidDepthError(f"clip {clip.name!r}: the first frame has no depth; the 3D cache starts from it")
    return TrainingSample(
        image=clip.frames[0],
        cameras=cams,
        frames=clip.frames[kf],
        depth=clip.depth[kf],
        references=clip.frames[ref_kf][pair],
        reference_cameras=ref_cams[pair],
        reference_depth=clip.depth[ref_kf][pair],
        median_depth=float(d0[d0 > 0].double().median()),
        overlap=float(overlap),
        prompt=clip.prompt,
    )


# ----------------------------------------------------------------------------------- synthetic

SYNTHETIC_PROMPTS = {
    "room": "a bright indoor room with coloured walls, boxes and spheres, photorealistic",
    "outdoor": "an outdoor scene with a ground plane, rocks and trees under a clear sky",
}
"""Captions of the synthetic scenes (what a captioner would say; used as the training prompt)."""


class SyntheticClips:
    """Clips of the procedural scenes along trajectory presets, rendered exactly by the oracle.

    Clip ``i`` uses scene ``kinds[i % len(kinds)]`` with seed ``1000 · seed + i // len(kinds)`` and preset
    ``presets[i % len(presets)]``; its ``2 · clip_poses`` poses span the preset (so a reference clip
    with any overlap in 30–90 % fits).
    """

    def __init__(
        self,
        height: int,
        width: int,
        clip_poses: int,
        kinds: Sequence[str] = ("room", "outdoor"),
        presets: Sequence[str] = ("orbit", "left", "right", "up"),
        seed: int = 0,
    ) -> None:
        self.height, self.width, self.clip_poses = int(height), int(width), int(clip_poses)
        self.kinds, self.presets, self.seed = tuple(kinds), tuple(presets), int(seed)

    def clip(self, i: int) -> Clip:
        from ..synthetic import make_scene

        kind = self.kinds[i % len(self.kinds)]
        scene = make_scene(kind, self.seed * 1000 + i // len(self.kinds))
        view = scene.default_view(self.height, self.width)
        traj = make_preset(
            self.presets[i % len(self.presets)], view.cameras, view.median_depth, num_frames=2 * self.clip_poses
        )
        out = scene.render(traj.cameras)
        return Clip(out.rgb, out.depth, traj.cameras, SYNTHETIC_PROMPTS.get(kind, kind), f"{kind}-{i}")


# ------------------------------------------------------------------------------ video folders

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _read_frames(folder: Path) -> torch.Tensor:
    frames_dir = folder / "frames"
    if frames_dir.is_dir():
        from PIL import Image

        files = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise MissingFileError(f"{frames_dir} holds no images ({', '.join(_IMAGE_SUFFIXES)})")
        arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in files]
        if len({a.shape for a in arrays}) != 1:
            raise ShapeMismatchError(f"the images in {frames_dir} differ in size; resize them to one size")
        return torch.from_numpy(np.stack(arrays))
    video = folder / "video.mp4"
    if video.is_file():
        import imageio.v2 as imageio  # imageio-ffmpeg, as export.save_video_mp4 uses

        with imageio.get_reader(str(video)) as reader:
            arrays = [np.asarray(f, dtype=np.float32)[..., :3] / 255.0 for f in reader]
        return torch.from_numpy(np.stack(arrays))
    raise MissingFileError(f"{folder} has neither frames/ (images) nor video.mp4")


def load_clip_folder(folder: str | os.PathLike) -> Clip:
    """One clip folder: ``frames/*.png|jpg`` or ``video.mp4``, ``camera.json`` (one pose per frame),
    ``depth.safetensors`` (tensor ``depth`` ``[N, H, W]`` z-depth, 0 = unknown; required — the 3D cache
    and the pointmaps are built from it; estimate it with the *Depth Estimate* node or MoGe-2 first),
    and optionally ``prompt.txt``."""
    folder = Path(folder)
    frames = _read_frames(folder)
    n, h, w = frames.shape[:3]
    if not (folder / "camera.json").is_file():
        raise MissingFileError(f"{folder} has no camera.json (our / the release's camera format, one pose per frame)")
    traj = load_camera_json(folder / "camera.json", height=h, width=w)
    if len(traj) != n:
        raise ShapeMismatchError(f"{folder}: camera.json has {len(traj)} poses for {n} frames; give one pose per frame")
    depth_file = folder / "depth.safetensors"
    if not depth_file.is_file():
        raise MissingFileError(
            f"{folder} has no depth.safetensors: training needs z-depth per frame (tensor 'depth' [N, H, W]) — estimate "
            "it with MoGe-2 (Depth Estimate node) or a reconstruction, and save it there"
        )
    from safetensors.torch import load_file

    tensors = load_file(str(depth_file))
    if "depth" not in tensors:
        raise CorruptFileError(f"{depth_file} must hold a tensor named 'depth' [N, H, W]; it has {sorted(tensors)}")
    depth = tensors["depth"].float()
    if tuple(depth.shape) != (n, h, w) or not bool(torch.isfinite(depth).all()) or bool((depth < 0).any()):
        raise CorruptFileError(
            f"{depth_file}: depth must be finite, ≥ 0 and [N={n}, H={h}, W={w}], got {tuple(depth.shape)}"
        )
    prompt_file = folder / "prompt.txt"
    prompt = prompt_file.read_text(encoding="utf-8").strip() if prompt_file.is_file() else ""
    return Clip(frames, depth, traj.cameras.to(dtype=torch.float32), prompt, folder.name)


class VideoFolderClips:
    """Every sub-folder of ``root`` that holds a clip (see :func:`load_clip_folder`)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(f"dataset folder {self.root} does not exist")
        self.folders = sorted(p for p in self.root.iterdir() if p.is_dir() and (p / "camera.json").is_file())
        if not self.folders:
            raise MissingFileError(
                f"{self.root} has no clip folders (sub-folders with camera.json + frames/ or video.mp4)"
            )

    def __len__(self) -> int:
        return len(self.folders)

    def clip(self, i: int) -> Clip:
        return load_clip_folder(self.folders[i % len(self.folders)])


def build_samples(source, num_samples: int, num_keyframes: int, clip_poses: int, seed: int = 0) -> list[TrainingSample]:
    """``num_samples`` samples, clip ``i`` of ``source`` with an overlap drawn uniformly from 30–90 %."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(num_samples)):
        clip = source.clip(i)
        # the longest target that leaves room for the least overlap, capped at clip_poses
        poses = min(int(clip_poses), int(math.floor((len(clip.cameras) - 1) / (2.0 - SSM_OVERLAP[0]))) + 1)
        if poses < 2:
            raise InvalidOptionError(f"clip {clip.name!r} has {len(clip.cameras)} poses; need at least 3")
        out.append(make_sample(clip, num_keyframes, poses, float(rng.uniform(*SSM_OVERLAP))))
    return out


__all__ = [
    "SSM_OVERLAP",
    "SYNTHETIC_PROMPTS",
    "Clip",
    "SyntheticClips",
    "TrainingSample",
    "VideoFolderClips",
    "build_samples",
    "load_clip_folder",
    "make_sample",
]
