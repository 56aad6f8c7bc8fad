"""Inputs of the paper's SSM (see :mod:`.transformer_worldstereo_paper`): pairs, pointmaps, their latents.

One owner for what training and inference both build:

* :func:`assign_pairs` — each target keyframe's reference: the best-scoring memory view under the
  retrieval score (:func:`worldstereo_core.retrieval.score_bank`, per-keyframe argmax — the same rule
  the release uses to pick references, applied to every keyframe);
* :func:`pointmap_images` — colourised pointmaps: the 3D cache's point positions seen from a view,
  in world coordinates, normalised by :class:`PointmapFrame` and mapped to RGB;
* :func:`encode_pair_inputs` — ``pair_latent`` and ``pointmap_latent`` through the Wan VAE in keyframe mode.

Choices where the paper is silent (arXiv 2603.02049 §3.3 gives only "world coordinates, normalised,
colourised as RGB, VAE-encoded"):

* normalisation: ``(X − c₀) / (POINTMAP_SCALE · m)`` with ``c₀`` the first keyframe's camera centre
  and ``m`` the median depth of the input view — the quantity every trajectory preset already scales
  with — clamped to [−1, 1], then ``rgb = (x + 1) / 2``. World axes are kept (not camera axes), so
  target and reference pointmaps of a pair agree where they see the same point;
* holes (no cache point) are black (rgb 0), the colour nothing else maps to only at the clamp corner;
* the two pointmaps of a pair are VAE-encoded separately and their latents stitched along the width
  (so the VAE's receptive field never crosses the seam, as the latents of the frames do not);
* a dropped reference (training's reference dropout) is an all-zero latent — the mean latent after
  Wan's normalisation — for both its frame and its pointmap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cameras import Cameras
from ..errors import InvalidInputError, MissingInputError, ShapeMismatchError
from ..merge import point_map
from ..retrieval import score_bank

POINTMAP_SCALE = 2.0
"""Pointmap coordinates are divided by ``POINTMAP_SCALE ×`` the input view's median depth (our choice)."""


@dataclass(frozen=True)
class PointmapFrame:
    """The normalisation of one scene's pointmaps: ``x = (X − origin) / scale``."""

    origin: torch.Tensor  # [3]
    scale: float

    @staticmethod
    def from_depth(first: Cameras, depth: torch.Tensor) -> PointmapFrame:
        """``origin`` = centre of the first keyframe camera, ``scale`` = ``POINTMAP_SCALE ×`` the median of
        its z-depth ``[H, W]`` (0 = hole) — the input view's depth in training and in the scene loop alike."""
        d = torch.as_tensor(depth).float()
        valid = d[d > 0]
        if valid.numel() == 0:
            raise InvalidInputError(
                "the first keyframe sees no point of the 3D cache; its pointmap cannot be normalised"
            )
        return PointmapFrame(first.centers[0].detach().float().cpu(), POINTMAP_SCALE * float(valid.double().median()))


def pointmap_images(depth: torch.Tensor, cameras: Cameras, frame: PointmapFrame) -> torch.Tensor:
    """Colourised pointmaps ``[F, H, W, 3]`` in [0, 1] from z-depth ``[F, H, W]`` (0 = hole) at ``cameras``.

    Pixel centres are unprojected (``X = c2w · d · K⁻¹ (u + 0.5, v + 0.5, 1)``), normalised by ``frame``,
    clamped to [−1, 1] and mapped to ``(x + 1) / 2``; holes are 0.
    """
    d = torch.as_tensor(depth).float()
    if d.ndim != 3 or len(cameras) != d.shape[0] or (cameras.height, cameras.width) != tuple(d.shape[1:]):
        raise ShapeMismatchError(
            f"depth {tuple(d.shape)} must be [F, H, W] with one camera of that size per frame "
            f"({len(cameras)} cameras of {cameras.height}×{cameras.width})"
        )
    dev = d.device
    world = point_map(d.cpu(), cameras.to("cpu")).to(device=dev, dtype=torch.float32)  # [F, H, W, 3]
    x = ((world - frame.origin.to(dev)) / frame.scale).clamp(-1.0, 1.0)
    rgb = (x + 1.0) * 0.5
    return rgb * (d > 0)[..., None].float()


def assign_pairs(targets: Cameras, bank_w2c: torch.Tensor, bank_K: torch.Tensor, bank_sizes=None) -> torch.Tensor:
    """``[F]`` long: for every target keyframe the index of its best memory view (retrieval score argmax)."""
    if bank_w2c.shape[0] == 0:
        raise MissingInputError("the memory has no views to pair the keyframes with")
    scores = score_bank(targets.w2c, targets.K, bank_w2c, bank_K, targets.width, targets.height, bank_sizes=bank_sizes)
    return torch.as_tensor(scores).argmax(dim=1).long().cpu()


def _video(images: torch.Tensor) -> torch.Tensor:
    """``[F, H, W, 3]`` in [0, 1] → ``[1, 3, F, H, W]`` in [−1, 1]."""
    return images.permute(3, 0, 1, 2)[None].float() * 2.0 - 1.0


def encode_pair_inputs(
    vae,
    reference_images: torch.Tensor,
    target_pointmaps: torch.Tensor,
    reference_pointmaps: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pair_latent [1, 36, F, h, w], pointmap_latent [1, 16, F, h, 2w])`` for the paper's memory branch.

    Args:
        vae: a :class:`~.vae.WanKeyframeVAE` (each image encoded alone).
        reference_images: ``[F, H, W, 3]`` in [0, 1], the reference paired with each keyframe.
        target_pointmaps / reference_pointmaps: ``[F, H, W, 3]`` from :func:`pointmap_images`.
        keep: ``[F]`` bool, False = reference dropped (its latents are zero); default all kept.
    """
    n = reference_images.shape[0]
    if target_pointmaps.shape != reference_images.shape or reference_pointmaps.shape != reference_images.shape:
        raise ShapeMismatchError(
            f"reference images {tuple(reference_images.shape)}, target pointmaps {tuple(target_pointmaps.shape)} and "
            f"reference pointmaps {tuple(reference_pointmaps.shape)} must all be [F, H, W, 3]"
        )
    z_ref = vae.encode_keyframes(_video(reference_images))
    z_pm = vae.encode_keyframes(_video(torch.cat([target_pointmaps, reference_pointmaps])))
    return stitch_pair_latents(z_ref, z_pm[:, :, :n], z_pm[:, :, n:], keep)


def stitch_pair_latents(
    z_ref: torch.Tensor, z_target_pointmap: torch.Tensor, z_ref_pointmap: torch.Tensor, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """From latents ``[1, 16, F, h, w]`` of the paired references and of both pointmaps: ``pair_latent``
    ``concat[z_ref, ones(4), z_ref]`` and ``pointmap_latent`` (target | reference along the width).

    ``keep`` ``[F]`` bool: a dropped reference's frame and pointmap latents (and mask channels) are zero.
    """
    pair_latent = torch.cat([z_ref, torch.ones_like(z_ref[:, :4]), z_ref], dim=1)
    if keep is not None:
        k = torch.as_tensor(keep, dtype=torch.bool).reshape(1, 1, -1, 1, 1).to(z_ref.device)
        pair_latent = pair_latent * k
        z_ref_pointmap = z_ref_pointmap * k
    return pair_latent, torch.cat([z_target_pointmap, z_ref_pointmap], dim=-1)


__all__ = [
    "POINTMAP_SCALE",
    "PointmapFrame",
    "assign_pairs",
    "encode_pair_inputs",
    "pointmap_images",
    "stitch_pair_latents",
]
