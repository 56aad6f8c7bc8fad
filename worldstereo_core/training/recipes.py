"""The paper's training recipes (arXiv 2603.02049 §3.2–3.4 and appendix), one function per rule.

* **GGM (camera control)** — the ControlNet branch learns from the 3D cache rendered along the
  target trajectory. The cache is the first frame's points plus *extra views* of the clip whose depth
  is corrupted by point-cloud masking: a random 30–70 % of the pixels and one rectangle covering
  20–70 % of the image are dropped (:func:`mask_extra_view_depth`), so the branch learns to fill holes
  and not to trust the cache blindly. Loss: flow matching (:func:`flow_matching_loss`).
* **SSM (memory)** — target–reference pairs from temporally misaligned clips (30–90 % overlap,
  :mod:`.data`); every reference is dropped with p = 0.3 and all of them with p = 0.1
  (:func:`reference_keep`). Same flow-matching loss.
* **DMD** — :mod:`.dmd`.

Choices where the paper is silent, recorded here and in the README:

* extra views: ``EXTRA_VIEWS`` = 2 keyframes drawn at random from keyframes 1…F−1 of the target clip;
* rectangle aspect ratio: log-uniform in [1/2, 2] (then clipped to the image);
* timestep sampling: σ uniform in (0, 1), then Wan's shift ``s·σ / (1 + (s − 1)·σ)`` with the
  sampler's flow shift 3.0 (so training sees the noise levels sampling visits);
* text dropout p = 0.1 (the empty prompt's embedding), so CFG has an unconditional model to use.
"""

from __future__ import annotations

import math

import torch

from ..cameras import Cameras
from ..merge import point_map
from ..pointcloud import PointCloud
from ..render import RenderResult, render_point_cloud
from .data import TrainingSample

GGM_PIXEL_DROP = (0.3, 0.7)
"""Fraction of the extra views' pixels dropped from the cache (paper appendix)."""
GGM_RECT_AREA = (0.2, 0.7)
"""Area fraction of the one rectangle dropped from each extra view (paper appendix)."""
EXTRA_VIEWS = 2
"""Extra views whose masked depth joins the first frame's in the training cache (our choice)."""
REF_DROP_ALL = 0.1
"""Probability that all references of a sample are dropped (paper appendix)."""
REF_DROP_EACH = 0.3
"""Probability that each reference is dropped (paper appendix)."""
TEXT_DROP = 0.1
"""Probability that the prompt is replaced by the empty prompt (our choice; enables CFG)."""
TRAIN_FLOW_SHIFT = 3.0
"""Timestep shift of training (= the UniPC sampler's flow shift, models/sampling.py)."""


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def mask_extra_view_depth(depth: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-cloud masking of one extra view's z-depth ``[H, W]``: returns ``(masked depth, dropped [H, W] bool)``.

    Drops a random ``U(0.3, 0.7)`` fraction of the pixels and one axis-aligned rectangle of ``U(0.2, 0.7)``
    of the image area (centre uniform, clipped to the image); dropped pixels get depth 0 (no point).
    """
    H, W = depth.shape
    drop = torch.rand((H, W), generator=generator) < _uniform(*GGM_PIXEL_DROP, generator)
    area = _uniform(*GGM_RECT_AREA, generator) * H * W
    aspect = math.exp(_uniform(math.log(0.5), math.log(2.0), generator))  # width / height
    rh = max(1, min(H, int(round(math.sqrt(area / aspect)))))
    rw = max(1, min(W, int(round(area / rh))))
    top = int(torch.randint(0, H - rh + 1, (), generator=generator))
    left = int(torch.randint(0, W - rw + 1, (), generator=generator))
    drop[top : top + rh, left : left + rw] = True
    return depth.masked_fill(drop.to(depth.device), 0.0), drop


def training_cache(sample: TrainingSample, generator: torch.Generator | None, masking: bool = True) -> PointCloud:
    """The 3D cache of one GGM training step: keyframe 0 (exact) + ``EXTRA_VIEWS`` extra keyframes.

    With ``masking`` (training) each extra view's depth goes through :func:`mask_extra_view_depth`;
    without it the same views are lifted whole (what the masking is compared against in tests).
    """
    n = len(sample.cameras)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    k = min(EXTRA_VIEWS, n - 1)
    extra = (torch.randperm(n - 1, generator=generator)[:k] + 1).tolist() if k > 0 else []
    views = [0, *sorted(extra)]
    depths = []
    for v in views:
        d = sample.depth[v]
        if v != 0 and masking:
            d, _ = mask_extra_view_depth(d, generator)
        depths.append(d)
    colours = torch.stack([sample.image if v == 0 else sample.frames[v] for v in views])
    return _lift(torch.stack(depths), sample.cameras[torch.as_tensor(views)], colours)


def memory_cache(sample: TrainingSample) -> PointCloud:
    """The 3D cache of one SSM training step: the input view plus the reference clip's keyframes.

    This is what the scene loop holds when it generates a clip: the input view and what earlier clips
    (here the temporally misaligned reference clip) added; the target clip's own frames are not in it,
    so the parts of the targets the cache misses must come from the paired references. (Our choice:
    the paper does not say which cache its SSM stage renders.)
    """
    depth = torch.cat([sample.depth[:1], sample.reference_depth])
    cams = Cameras.cat([sample.cameras[:1], sample.reference_cameras])
    return _lift(depth, cams, torch.cat([sample.image[None], sample.references]))


def _lift(depth: torch.Tensor, cameras: Cameras, colours: torch.Tensor) -> PointCloud:
    pts = point_map(depth, cameras).float()  # [V, H, W, 3]
    keep = depth > 0
    return PointCloud(pts[keep], colours[keep].float())


def render_cache(cache: PointCloud, sample: TrainingSample) -> RenderResult:
    """The GGM condition: the cache rendered at the target keyframes (frame 0 = the input image, as the release)."""
    return render_point_cloud(cache, sample.cameras, first_frame=sample.image)


def reference_keep(num: int, generator: torch.Generator) -> torch.Tensor:
    """``[num]`` bool, False = reference dropped: all with p = 0.1, else each independently with p = 0.3."""
    if float(torch.rand((), generator=generator)) < REF_DROP_ALL:
        return torch.zeros(num, dtype=torch.bool)
    return torch.rand(num, generator=generator) >= REF_DROP_EACH


def sample_sigmas(batch: int, generator: torch.Generator, shift: float = TRAIN_FLOW_SHIFT) -> torch.Tensor:
    """``[batch]`` noise levels σ in (0, 1): uniform, then shifted (see module doc)."""
    u = torch.rand(batch, generator=generator).clamp(1e-3, 1 - 1e-3)
    return shift * u / (1 + (shift - 1) * u)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Flow matching (Wan): ``x_σ = (1 − σ)·x₀ + σ·noise``; ``sigma`` ``[B]``."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def flow_matching_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted velocity against ``noise − x₀`` (the paper's loss, Wan's target)."""
    return (prediction.float() - (noise - x0).float()).square().mean()


__all__ = [
    "EXTRA_VIEWS",
    "GGM_PIXEL_DROP",
    "GGM_RECT_AREA",
    "REF_DROP_ALL",
    "REF_DROP_EACH",
    "TEXT_DROP",
    "TRAIN_FLOW_SHIFT",
    "flow_matching_loss",
    "mask_extra_view_depth",
    "memory_cache",
    "noisy_latents",
    "reference_keep",
    "render_cache",
    "sample_sigmas",
    "training_cache",
]
