"""Reconstructing generated frames with WorldMirror, in *our* world frame.

This is how WorldStereo calls WorldMirror on the keyframes of a generated clip (the release
runs HY-World-2.0's ``worldrecon`` pipeline with ``--target_size 832``, prior cameras,
``--apply_confidence_mask --confidence_percentile 15`` and ``--apply_edge_mask``, and builds
the cloud from predicted depth + predicted cameras since the points head is disabled):

1. **Resize** (:func:`worldmirror_input_size`, :func:`resize_frames`): the long side becomes
   ``min(long side, target_size)`` rounded *down* to a multiple of 14 (so 832 → 826; upstream
   never upsamples), the short side keeps the aspect and is rounded to the *nearest* multiple
   of 14 (480×832 → 476×826). Upstream's centre crop never triggers for these sizes (the
   short side cannot round above the long one), so there is none. ``K`` is rescaled with the
   image (:func:`~worldstereo_core.cameras.resize_K`: ``fx, cx`` by ``w'/W``, ``fy, cy`` by
   ``h'/H``), exactly upstream's ``scale_x`` / ``scale_y``.
2. **Priors** (``use_priors``): the known ``c2w`` (OpenCV) and the resized ``K``; the model
   makes the poses relative to the first view itself. An optional depth prior (our units).
3. **Run** the model once over all frames (global attention sees every frame; the dense heads
   run ``chunk_size`` frames at a time, which bounds memory without changing the result).
4. **Back to the frames' size**: depth and confidence are resized bilinearly to ``H × W``,
   predicted ``K`` rescaled back.
5. **Masks** per frame: confidence ≥ its ``conf_quantile`` quantile (upstream: per-frame
   percentile of the depth confidence, ≥ threshold kept), not a depth edge
   (:func:`~worldstereo_core.pointcloud.depth_edge_mask`, the WorldStereo release's rule),
   positive finite depth.
6. **Into our frame** (:func:`align_prediction`). The network's frame is its own (first camera
   ≈ identity, arbitrary scale). A :class:`~worldstereo_core.align.Similarity` ``S`` maps it onto
   ours:

   * ``"umeyama"`` — when there are ≥ 3 cameras whose known centres span a plane (second
     singular value of the centred centres > ``1e-3 ×`` the first): Umeyama fit of predicted
     camera centres → known centres (:func:`~worldstereo_core.align.robust_umeyama` with ≥ 6
     cameras, else plain :func:`~worldstereo_core.align.umeyama`);
   * ``"poses"`` — otherwise (one or two cameras, or a straight path): rotation = the chordal
     mean of ``R_known,i · R_pred,iᵀ`` (c2w rotations; for one camera this is exactly the
     first-camera-relative alignment), scale = RMS spread of the known centres / RMS spread of
     the predicted ones when both move (> 1e-9 of the scene), else the median ratio
     ``depth_prior / predicted depth`` over pixels where both are positive, else 1 (the
     network's scale is kept — and said so in ``Reconstruction.alignment``); translation
     puts the mean predicted centre on the mean known centre.

   The cloud is ``S(unproject(depth_net, c2w_net, K_net))``; ``Reconstruction.depth`` is
   ``S.s · depth_net`` (z-depth in our units) and ``Reconstruction.cameras`` the predicted
   cameras moved by ``S`` (``cameras="predicted"``, upstream's choice) or the known ones
   (``cameras="known"``: the frames' poses are known exactly in WorldStereo, only the depth is
   taken from the network). Either way ``unproject(depth, cameras)`` gives the cloud.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..align import Similarity, robust_umeyama, umeyama
from ..cameras import ArrayLike, Cameras, as_tensor, invert_rigid, resize_K
from ..errors import (
    AlignmentFailedError,
    CheckpointMismatchError,
    InvalidCameraError,
    InvalidDepthError,
    InvalidImageError,
    InvalidOptionError,
    InvalidPointCloudError,
    ShapeMismatchError,
)
from ..pointcloud import RELEASE_EDGE_THRESHOLD, PointCloud, depth_edge_mask, unproject_depths
from .worldmirror import WorldMirrorOutput, WorldMirrorPriors

log = logging.getLogger(__name__)

__all__ = [
    "RELEASE_TARGET_SIZE",
    "RELEASE_CONF_QUANTILE",
    "WorldMirrorPrediction",
    "Reconstruction",
    "worldmirror_input_size",
    "resize_frames",
    "predict_worldmirror",
    "align_prediction",
    "reconstruction_masks",
    "reconstruct_with_worldmirror",
    "clip_cameras",
    "reconstruct_clips",
]

#: WorldStereo's README runs WorldMirror with ``--target_size 832``.
RELEASE_TARGET_SIZE = 832
#: …and ``--apply_confidence_mask --confidence_percentile 15.0``.
RELEASE_CONF_QUANTILE = 0.15
_PATCH = 14
# Centres whose 2nd singular value is below this fraction of the 1st count as a line.
_PLANAR_RTOL = 1e-3

ProgressFn = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldMirrorPrediction:
    """What the network saw and said, in *its* frame and at the frames' resolution.

    Attributes:
        depth: ``[F, H, W]`` z-depth (network units).
        conf: ``[F, H, W]`` depth confidence (≥ 1, higher = surer).
        c2w: ``[F, 4, 4]`` predicted camera-to-world (OpenCV, network frame).
        K: ``[F, 3, 3]`` predicted intrinsics in pixels of ``H × W``.
        model_size: ``(h, w)`` the size the network ran at.
        used_priors: whether camera priors were given to the network.
    """

    depth: torch.Tensor
    conf: torch.Tensor
    c2w: torch.Tensor
    K: torch.Tensor
    model_size: tuple[int, int]
    used_priors: bool


@dataclass(frozen=True)
class Reconstruction:
    """Generated frames reconstructed into our world frame.

    Attributes:
        cloud: coloured points (the frames' colours) of the kept pixels, in our world frame.
        depth: ``[F, H, W]`` z-depth in our units at the frames' resolution (all pixels).
        conf: ``[F, H, W]`` the network's depth confidence.
        mask: ``[F, H, W]`` bool, the pixels that made the cloud (True = kept).
        cameras: the cameras the cloud is expressed with (``unproject(depth, cameras)[mask]``
            is the cloud), ``H × W``.
        sim: the similarity mapping the network's frame onto ours.
        alignment: ``"umeyama"``, ``"poses"``, ``"poses (depth scale)"`` or
            ``"poses (network scale)"`` — how ``sim`` was found (see the module doc).
        prediction: the raw network prediction (network frame).
    """

    cloud: PointCloud
    depth: torch.Tensor
    conf: torch.Tensor
    mask: torch.Tensor
    cameras: Cameras
    sim: Similarity
    alignment: str
    prediction: WorldMirrorPrediction


# ---------------------------------------------------------------------------------------------
# Input preparation
# ---------------------------------------------------------------------------------------------


def worldmirror_input_size(
    height: int, width: int, target_size: int = RELEASE_TARGET_SIZE, patch: int = _PATCH
) -> tuple[int, int]:
    """``(h, w)`` WorldMirror runs a ``height × width`` frame at (upstream's loader rule).

    Long side ``= max(2·patch, min(long, target_size) // patch · patch)``; short side
    ``= round(short · long' / long / patch) · patch``. E.g. 480×832 at 832 → 476×826.
    """
    height, width, target_size = int(height), int(width), int(target_size)
    if height <= 0 or width <= 0:
        raise InvalidImageError(f"frame size must be positive, got {height}×{width}")
    if target_size < 2 * patch:
        raise InvalidOptionError(f"target_size must be at least {2 * patch} (two patches), got {target_size}")
    long_side, short_side = max(height, width), min(height, width)
    new_long = max((min(long_side, target_size) // patch) * patch, 2 * patch)
    new_short = int(round(short_side * new_long / long_side / patch)) * patch
    if new_short < patch:
        raise InvalidImageError(
            f"frames of {height}×{width} are too elongated for WorldMirror at target_size {target_size}: "
            f"the short side would shrink below one {patch}-pixel patch; crop them closer to 16:9"
        )
    return (new_long, new_short) if height >= width else (new_short, new_long)


def _frames(frames: ArrayLike) -> torch.Tensor:
    x = as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise InvalidImageError(f"frames must be an IMAGE batch [F, H, W, 3] with F ≥ 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float() / 255.0
    if not torch.isfinite(x).all():
        raise InvalidImageError("frames contain NaN or inf values")
    return x


def resize_frames(frames: ArrayLike, size: tuple[int, int]) -> torch.Tensor:
    """IMAGE ``[F, H, W, 3]`` → ``[F, 3, h, w]`` float in [0, 1] for the network.

    Bicubic with antialiasing (close to upstream's PIL bicubic), clamped to [0, 1]; no resize
    when the size already matches.
    """
    x = _frames(frames).float().permute(0, 3, 1, 2)
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x.contiguous()
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)


def _resize_maps(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[F, h, w]`` → ``[F, H, W]`` bilinear (identity when the size matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].to(x.dtype)


def _check_cameras(cameras: Cameras | None, n: int, hw: tuple[int, int]) -> None:
    if cameras is None:
        return
    if not isinstance(cameras, Cameras):
        raise InvalidCameraError(f"cameras must be a Cameras batch, got {type(cameras).__name__}")
    if len(cameras) != n:
        raise InvalidCameraError(
            f"got {n} frames but {len(cameras)} cameras; give exactly one camera per frame "
            "(the trajectory's keyframe cameras)"
        )
    if (cameras.height, cameras.width) != tuple(hw):
        raise InvalidCameraError(
            f"cameras are for {cameras.height}×{cameras.width} images but the frames are {hw[0]}×{hw[1]}; "
            "use cameras.resized(H, W) so K is in pixels of the frames"
        )


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


# ---------------------------------------------------------------------------------------------
# Running the network
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_worldmirror(
    model: Callable[..., WorldMirrorOutput],
    frames: ArrayLike,
    cameras: Cameras | None = None,
    *,
    target_size: int = RELEASE_TARGET_SIZE,
    use_priors: bool = True,
    depth_prior: ArrayLike | None = None,
    chunk_size: int = 8,
) -> WorldMirrorPrediction:
    """Run WorldMirror on ``frames [F, H, W, 3]`` (steps 1–4 of the module doc).

    Args:
        model: a :class:`~worldstereo_core.recon.worldmirror.WorldMirror` (or any callable with
            its signature ``model(images [1, F, 3, h, w], priors, frames_chunk_size=…)``).
        cameras: the frames' known cameras (``H × W``); required when ``use_priors``.
        depth_prior: optional ``[F, H, W]`` z-depth (0 = unknown) given to the network.
        chunk_size: frames per dense-head pass (memory only).
    """
    x = _frames(frames)
    n, H, W = x.shape[:3]
    if use_priors and cameras is None:
        raise InvalidCameraError("use_priors=True needs the frames' cameras; pass cameras or set use_priors=False")
    _check_cameras(cameras, n, (H, W))
    if not int(chunk_size) >= 1:
        raise InvalidOptionError(f"chunk_size must be ≥ 1, got {chunk_size}")
    h, w = worldmirror_input_size(H, W, target_size)
    device, dtype = _model_device_dtype(model)
    images = resize_frames(x, (h, w)).to(device=device, dtype=dtype)[None]

    priors = None
    if use_priors or depth_prior is not None:
        c2w = K = dp = None
        if use_priors:
            c2w = cameras.c2w.to(device=device, dtype=torch.float32)[None]
            K = as_tensor(resize_K(cameras.K, (H, W), (h, w))).to(device=device, dtype=torch.float32)[None]
        if depth_prior is not None:
            dp = as_tensor(depth_prior).to(device=device, dtype=torch.float32)
            if tuple(dp.shape) != (n, H, W):
                raise InvalidDepthError(
                    f"depth_prior must be [F, H, W] = {(n, H, W)} like the frames, got {tuple(dp.shape)}"
                )
            if not torch.isfinite(dp).all() or (dp < 0).any():
                raise InvalidDepthError("depth_prior must be finite and ≥ 0 (0 = unknown)")
            dp = dp[None]
        priors = WorldMirrorPriors(c2w=c2w, K=K, depth=dp)

    out = model(images, priors, frames_chunk_size=int(chunk_size))
    if out.depth is None or out.c2w is None or out.K is None:
        raise CheckpointMismatchError(
            "this WorldMirror ran without its depth or camera head (enable_depth / enable_cam off in its config); "
            "reconstruction needs both"
        )
    depth = out.depth[0].float()
    conf = out.depth_conf[0].float() if out.depth_conf is not None else torch.ones_like(depth)
    if tuple(depth.shape) != (n, h, w):
        raise ShapeMismatchError(f"the model returned depth {tuple(depth.shape)}; expected {(n, h, w)}")
    c2w_net = out.c2w[0].double()
    K_net = as_tensor(resize_K(out.K[0].double(), (h, w), (H, W)))
    return WorldMirrorPrediction(
        depth=_resize_maps(depth, (H, W)).cpu(),
        conf=_resize_maps(conf, (H, W)).cpu(),
        c2w=c2w_net.cpu(),
        K=K_net.cpu(),
        model_size=(h, w),
        used_priors=bool(use_priors),
    )


# ---------------------------------------------------------------------------------------------
# Masks and alignment
# ---------------------------------------------------------------------------------------------


def reconstruction_masks(
    depth: ArrayLike,
    conf: ArrayLike,
    conf_quantile: float | None = RELEASE_CONF_QUANTILE,
    edge_threshold: float | None = RELEASE_EDGE_THRESHOLD,
) -> torch.Tensor:
    """``[F, H, W]`` bool keep-mask: positive finite depth, per-frame ``conf ≥ quantile(conf,
    conf_quantile)`` (None or 0 disables), not a depth edge (None disables)."""
    d = as_tensor(depth).float()
    c = as_tensor(conf).float().to(d.device)
    if d.ndim != 3 or c.shape != d.shape:
        raise InvalidDepthError(f"depth and conf must both be [F, H, W], got {tuple(d.shape)} and {tuple(c.shape)}")
    if conf_quantile is not None and not (0.0 <= float(conf_quantile) < 1.0):
        raise InvalidOptionError(
            f"conf_quantile must be in [0, 1) (0.15 drops the 15 % least confident pixels), got {conf_quantile}"
        )
    keep = torch.isfinite(d) & (d > 0)
    d = torch.where(keep, d, torch.zeros_like(d))
    if conf_quantile:
        flat = c.reshape(c.shape[0], -1)
        thr = torch.quantile(flat, float(conf_quantile), dim=1)
        keep = keep & (c >= thr[:, None, None])
    if edge_threshold is not None:
        edges = torch.stack(
            [
                as_tensor(depth_edge_mask(f, edge_threshold))
                if bool((f > 0).any())
                else torch.zeros_like(f, dtype=torch.bool)
                for f in d
            ]
        )
        keep = keep & ~edges.to(keep.device)
    return keep


def _spans_plane(centres: torch.Tensor) -> bool:
    if centres.shape[0] < 3:
        return False
    sv = torch.linalg.svdvals(centres - centres.mean(0))
    return bool(sv[0] > 0) and bool(sv[1] > _PLANAR_RTOL * sv[0])


def _project_so3(M: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(U @ Vh))
    D = torch.diag(torch.tensor([1.0, 1.0, float(d) if d != 0 else 1.0], dtype=M.dtype))
    return U @ D @ Vh


def align_prediction(
    pred_c2w: ArrayLike,
    known_c2w: ArrayLike,
    pred_depth: ArrayLike | None = None,
    depth_prior: ArrayLike | None = None,
    method: str = "auto",
) -> tuple[Similarity, str]:
    """Similarity from the network's frame onto ours (step 6 of the module doc).

    Args:
        pred_c2w, known_c2w: ``[F, 4, 4]`` predicted / known camera-to-world.
        pred_depth, depth_prior: ``[F, H, W]``, used for the scale only when the cameras do not
            move (``"poses"`` fallback).
        method: ``"auto"`` (Umeyama when the known centres span a plane, else poses),
            ``"umeyama"`` or ``"poses"``.
    Returns:
        ``(sim, how)`` with ``how`` one of ``"umeyama"``, ``"poses"``, ``"poses (depth scale)"``,
        ``"poses (network scale)"``.
    """
    P = as_tensor(pred_c2w).detach().double().cpu()
    Q = as_tensor(known_c2w).detach().double().cpu()
    if P.ndim != 3 or P.shape[-2:] != (4, 4) or P.shape != Q.shape or P.shape[0] == 0:
        raise InvalidCameraError(
            f"pred_c2w and known_c2w must both be [F, 4, 4], got {tuple(P.shape)} and {tuple(Q.shape)}"
        )
    if method not in ("auto", "umeyama", "poses"):
        raise InvalidOptionError(f"unknown alignment method {method!r}; use 'auto', 'umeyama' or 'poses'")
    cp, ck = P[:, :3, 3], Q[:, :3, 3]
    if method == "umeyama" or (method == "auto" and _spans_plane(ck) and _spans_plane(cp)):
        try:
            if cp.shape[0] >= 6:
                s, R, t, _ = robust_umeyama(cp, ck)
            else:
                s, R, t = umeyama(cp, ck)
            return Similarity(s, R, t), "umeyama"
        except AlignmentFailedError as exc:
            if method == "umeyama":
                raise
            log.info("camera centres give no Umeyama fit (%s); aligning by the poses instead", exc)
    # Rotation: chordal mean of the per-camera rotations taking predicted onto known axes.
    R = _project_so3((Q[:, :3, :3] @ P[:, :3, :3].transpose(-1, -2)).sum(0))
    spread_p = float((cp - cp.mean(0)).norm(dim=-1).pow(2).mean().sqrt())
    spread_k = float((ck - ck.mean(0)).norm(dim=-1).pow(2).mean().sqrt())
    scale_ref = max(float(ck.norm(dim=-1).max()), float(cp.norm(dim=-1).max()), 1.0)
    how = "poses"
    if spread_p > 1e-9 * scale_ref and spread_k > 1e-9 * scale_ref:
        s = spread_k / spread_p
    elif pred_depth is not None and depth_prior is not None:
        dp, dn = as_tensor(depth_prior).double().cpu(), as_tensor(pred_depth).double().cpu()
        if dp.shape != dn.shape:
            raise InvalidDepthError(
                f"depth_prior {tuple(dp.shape)} and predicted depth {tuple(dn.shape)} differ in shape"
            )
        ok = torch.isfinite(dp) & torch.isfinite(dn) & (dp > 0) & (dn > 0)
        if not bool(ok.any()):
            raise AlignmentFailedError(
                "no pixel has both a positive depth prior and a positive predicted depth; cannot fix the scale"
            )
        s = float((dp[ok] / dn[ok]).median())
        how = "poses (depth scale)"
    else:
        s = 1.0
        how = "poses (network scale)"
    t = ck.mean(0) - s * (R @ cp.mean(0))
    return Similarity(s, R, t), how


def _apply_sim_c2w(sim: Similarity, c2w: torch.Tensor) -> torch.Tensor:
    """Poses ``[F, 4, 4]`` moved by a similarity: rotation ``R·R_i``, centre ``S(C_i)``."""
    out = c2w.clone().double()
    R = sim.R.to(out)
    out[:, :3, :3] = R @ out[:, :3, :3]
    out[:, :3, 3] = sim.s * out[:, :3, 3] @ R.T + sim.t.to(out)
    return out


# ---------------------------------------------------------------------------------------------
# The whole call
# ---------------------------------------------------------------------------------------------


def reconstruct_with_worldmirror(
    model: Callable[..., WorldMirrorOutput],
    frames: ArrayLike,
    cameras: Cameras,
    *,
    target_size: int = RELEASE_TARGET_SIZE,
    use_priors: bool = True,
    use_depth_prior: ArrayLike | None = None,
    conf_quantile: float | None = RELEASE_CONF_QUANTILE,
    edge_threshold: float | None = RELEASE_EDGE_THRESHOLD,
    alignment: str = "auto",
    camera_source: str = "predicted",
    chunk_size: int = 8,
    progress: ProgressFn | None = None,
) -> Reconstruction:
    """Reconstruct generated ``frames [F, H, W, 3]`` taken at known ``cameras`` (see the module doc).

    Args:
        model: a WorldMirror (:func:`~worldstereo_core.recon.worldmirror.load_worldmirror`).
        frames: IMAGE batch in [0, 1].
        cameras: the frames' cameras (the trajectory's keyframes), ``H × W``; they define our
            world frame and, with ``use_priors``, condition the network.
        target_size: the network's long side before rounding down to a multiple of 14.
        use_priors: give the known cameras (c2w + K) to the network.
        use_depth_prior: optional ``[F, H, W]`` z-depth in our units (0 = unknown), given to the
            network and used for the scale when the cameras do not move.
        conf_quantile: per-frame confidence quantile below which pixels are dropped (release
            0.15; None/0 keeps all).
        edge_threshold: :func:`~worldstereo_core.pointcloud.depth_edge_mask` threshold (None
            keeps edges).
        alignment: ``"auto"``, ``"umeyama"`` or ``"poses"`` (:func:`align_prediction`).
        camera_source: ``"predicted"`` (upstream: the network's cameras moved into our frame)
            or ``"known"`` (the given cameras; only the depth comes from the network).
        chunk_size: frames per dense-head pass (memory only).
        progress: ``progress(step, total)`` after each of the 4 stages; may raise to interrupt.
    """
    if camera_source not in ("predicted", "known"):
        raise InvalidOptionError(f"camera_source must be 'predicted' or 'known', got {camera_source!r}")
    x = _frames(frames)
    n, H, W = x.shape[:3]
    if cameras is None:
        raise InvalidCameraError("reconstruct_with_worldmirror needs the frames' cameras (they define the world frame)")
    _check_cameras(cameras, n, (H, W))
    total = 4

    def tick(step: int) -> None:
        if progress is not None:
            progress(step, total)

    tick(1)
    pred = predict_worldmirror(
        model,
        x,
        cameras,
        target_size=target_size,
        use_priors=use_priors,
        depth_prior=use_depth_prior,
        chunk_size=chunk_size,
    )
    tick(2)
    mask = reconstruction_masks(pred.depth, pred.conf, conf_quantile, edge_threshold)
    tick(3)
    known_c2w = cameras.c2w.detach().double().cpu()
    sim, how = align_prediction(pred.c2w, known_c2w, pred.depth, use_depth_prior, alignment)
    depth = torch.nan_to_num(pred.depth.double() * sim.s, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    if camera_source == "predicted":
        c2w = _apply_sim_c2w(sim, pred.c2w)
        K = pred.K.double()
        fx, fy = K[:, 0, 0], K[:, 1, 1]
        if not (torch.isfinite(K).all() and bool((fx > 0).all()) and bool((fy > 0).all())):
            raise InvalidCameraError(
                "the network predicted unusable intrinsics (zero field of view or non-finite focal length); "
                "check the weights, or use camera_source='known' to lift the depth with the known cameras"
            )
    else:
        c2w = known_c2w
        K = cameras.K.detach().double().cpu()
    if not bool(mask.any()):
        raise InvalidPointCloudError(
            "every pixel was masked out (confidence quantile, depth edges or non-positive depth); "
            "lower conf_quantile or pass edge_threshold=None"
        )
    cloud = unproject_depths(depth, K, c2w, x.cpu().double(), mask)
    dtype = cameras.w2c.dtype
    out_cams = Cameras(invert_rigid(c2w).to(dtype), K.to(dtype), H, W)
    tick(4)
    return Reconstruction(
        cloud=cloud.to(dtype=torch.float32),
        depth=depth.float(),
        conf=pred.conf.float(),
        mask=mask,
        cameras=out_cams,
        sim=sim,
        alignment=how,
        prediction=pred,
    )


# ---------------------------------------------------------------------------------------------
# Several clips
# ---------------------------------------------------------------------------------------------


def clip_cameras(
    trajectories: Sequence,
    num_frames: int,
    height: int,
    width: int,
    num_keyframes: int = 21,
) -> list[Cameras]:
    """The cameras of each clip of a frame batch generated along ``trajectories``, in order.

    ``trajectories`` are :class:`~worldstereo_core.trajectory.Trajectory` objects (or bare
    :class:`Cameras`, used as they are); the frames are their clips concatenated. When
    ``num_frames`` equals the total number of poses, every pose is a frame; else, when it
    equals ``len(trajectories) × num_keyframes``, each trajectory contributes its keyframes
    (what the model generates). The cameras are rescaled to ``height × width`` (K with the
    image) when the frames are another size — the aspect ratio must match within 2 %.
    """
    from ..trajectory import Trajectory

    trajs = list(trajectories)
    if not trajs:
        raise InvalidCameraError("no trajectory given; connect the trajectory the frames were generated along")
    poses, kfs = [], []
    for t in trajs:
        if isinstance(t, Trajectory):
            poses.append(t.cameras)
            kfs.append(t.keyframes(num_keyframes) if len(t.cameras) >= num_keyframes else None)
        elif isinstance(t, Cameras):
            poses.append(t)
            kfs.append(None)
        else:
            raise InvalidCameraError(f"expected Trajectory or Cameras, got {type(t).__name__}")
    n_poses = sum(len(c) for c in poses)
    if num_frames == n_poses:
        clips = poses
    elif all(k is not None for k in kfs) and num_frames == len(trajs) * num_keyframes:
        clips = kfs
    else:
        raise InvalidCameraError(
            f"got {num_frames} frames but the {len(trajs)} trajectory(ies) have {n_poses} poses"
            + (f" ({len(trajs) * num_keyframes} keyframes)" if all(k is not None for k in kfs) else "")
            + "; give the frames generated along exactly these trajectories, in order"
        )
    out = []
    for c in clips:
        if (c.height, c.width) != (height, width):
            if abs(c.width / c.height - width / height) > 0.02 * (width / height):
                raise InvalidCameraError(
                    f"the frames are {height}×{width} but the trajectory is for {c.height}×{c.width} images "
                    "(another aspect ratio); generate or crop the frames at the trajectory's aspect"
                )
            c = c.resized(height, width)
        out.append(c)
    return out


def reconstruct_clips(
    model: Callable[..., WorldMirrorOutput],
    frames: ArrayLike,
    clips: Sequence[Cameras],
    *,
    progress: ProgressFn | None = None,
    **kwargs,
) -> list[Reconstruction]:
    """:func:`reconstruct_with_worldmirror` on each clip of ``frames`` (one network call per
    clip, as WorldStereo reconstructs each generated video); ``clips`` from :func:`clip_cameras`.
    ``progress(done, total)`` counts 4 stages per clip. Other keyword arguments go to
    :func:`reconstruct_with_worldmirror`."""
    x = _frames(frames)
    sizes = [len(c) for c in clips]
    if sum(sizes) != x.shape[0]:
        raise InvalidCameraError(f"got {x.shape[0]} frames but the clips hold {sum(sizes)} cameras")
    out: list[Reconstruction] = []
    start, total = 0, 4 * len(clips)
    for i, cams in enumerate(clips):

        def sub(step: int, _t: int, base: int = 4 * i) -> None:
            if progress is not None:
                progress(base + step, total)

        out.append(reconstruct_with_worldmirror(model, x[start : start + len(cams)], cams, progress=sub, **kwargs))
        start += len(cams)
    return out
