"""Alignment: similarity transforms between point sets, ICP refinement, depth scale/shift.

The loop reconstructs every generated clip in its own scale and frame; these functions bring it
onto the 3D cache: a Umeyama similarity on corresponding points (optionally robust to
outliers), an ICP refinement on the clouds themselves, and a per-frame scale/shift fit of a
predicted depth map to the depth rendered from the cache.

All fits run in float64 whatever the input dtype; results come back as the input's kind
(numpy in → numpy out, torch in → torch out, on the input's device). Scales are Python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .cameras import ArrayLike, as_tensor, like_input
from .errors import (
    AlignmentFailedError,
    InvalidDepthError,
    InvalidInputError,
    InvalidOptionError,
    InvalidPointCloudError,
    ShapeMismatchError,
)
from .pointcloud import PointCloud

__all__ = [
    "Similarity",
    "IcpResult",
    "umeyama",
    "robust_umeyama",
    "icp_refine",
    "fit_depth_scale_shift",
    "apply_depth_scale_shift",
]

# Relative size of the 2nd singular value of the cross-covariance below which the points are
# treated as collinear (rotation about the line is then undetermined).
_DEGENERATE_RTOL = 1e-9


@dataclass(frozen=True)
class Similarity:
    """A similarity transform ``x ↦ s·R·x + t``.

    Attributes:
        s: positive scale.
        R: ``[3, 3]`` rotation (float64 tensor).
        t: ``[3]`` translation (float64 tensor).
    """

    s: float
    R: torch.Tensor
    t: torch.Tensor

    def __post_init__(self) -> None:
        R = as_tensor(self.R).detach().to(torch.float64)
        t = as_tensor(self.t).detach().to(dtype=torch.float64, device=R.device).reshape(-1)
        if R.shape != (3, 3) or t.shape != (3,):
            raise ShapeMismatchError(f"Similarity needs R [3, 3] and t [3], got {tuple(R.shape)} and {tuple(t.shape)}")
        s = float(self.s)
        if not math.isfinite(s) or s <= 0:
            raise InvalidInputError(f"Similarity scale must be finite and positive, got {s}")
        object.__setattr__(self, "s", s)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    @staticmethod
    def identity() -> Similarity:
        return Similarity(1.0, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))

    @staticmethod
    def from_matrix(M: ArrayLike) -> Similarity:
        """From a ``[4, 4]`` matrix ``[[s·R, t], [0, 0, 0, 1]]`` (s from the cube root of det)."""
        M = as_tensor(M).detach().to(torch.float64)
        if M.shape != (4, 4):
            raise ShapeMismatchError(f"a similarity matrix must be [4, 4], got {tuple(M.shape)}")
        A = M[:3, :3]
        det = float(torch.linalg.det(A))
        if not det > 0:
            raise InvalidInputError(
                f"matrix is not a proper similarity (det of the 3×3 block = {det:.3g}, must be > 0)"
            )
        s = det ** (1.0 / 3.0)
        return Similarity(s, A / s, M[:3, 3])

    def matrix(self) -> torch.Tensor:
        """``[4, 4]`` float64 matrix ``[[s·R, t], [0, 0, 0, 1]]``."""
        M = torch.eye(4, dtype=torch.float64, device=self.R.device)
        M[:3, :3] = self.s * self.R
        M[:3, 3] = self.t
        return M

    def apply(self, points: ArrayLike) -> ArrayLike:
        """Transform points ``[..., 3]``; same kind, dtype and device out as in."""
        p = as_tensor(points)
        out = self.s * (p.to(torch.float64) @ self.R.to(p.device).T) + self.t.to(p.device)
        return like_input(out.to(p.dtype if p.is_floating_point() else torch.float64), points)

    def inverse(self) -> Similarity:
        """The transform mapping ``s·R·x + t`` back to ``x``."""
        Rt = self.R.T
        return Similarity(1.0 / self.s, Rt, -(Rt @ self.t) / self.s)

    def compose(self, other: Similarity) -> Similarity:
        """``self ∘ other``: apply ``other`` first, then ``self``."""
        o = other.R.to(self.R.device), other.t.to(self.R.device)
        return Similarity(self.s * other.s, self.R @ o[0], self.s * (self.R @ o[1]) + self.t)


def _points(x: ArrayLike, name: str) -> torch.Tensor:
    p = as_tensor(x)
    if p.ndim != 2 or p.shape[-1] != 3:
        raise ShapeMismatchError(f"{name} must have shape [N, 3], got {tuple(p.shape)}")
    p = p.detach().to(torch.float64)
    if not torch.isfinite(p).all():
        n = int((~torch.isfinite(p).all(-1)).sum())
        raise InvalidInputError(f"{name} has {n} points with NaN/inf coordinates; drop them before aligning")
    return p


def _out(x: torch.Tensor, ref: ArrayLike) -> ArrayLike:
    """``x`` in the kind of ``ref`` and in its float dtype (float64 kept for non-float input)."""
    r = as_tensor(ref)
    if r.is_floating_point() and x.is_floating_point():
        x = x.to(r.dtype)
    return like_input(x, ref)


def _umeyama_batched(
    src: torch.Tensor, dst: torch.Tensor, with_scale: bool, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form least-squares similarity for batches.

    Args:
        src, dst: ``[B, N, 3]`` float64 corresponding points.
        weights: optional ``[B, N]`` non-negative weights.

    Returns:
        s ``[B]``, R ``[B, 3, 3]``, t ``[B, 3]``, singular values ``[B, 3]`` of the
        cross-covariance and the source variance ``[B]`` (for degeneracy checks).
    """
    if weights is None:
        w = torch.full(src.shape[:2], 1.0 / src.shape[1], dtype=src.dtype, device=src.device)
    else:
        w = weights / weights.sum(-1, keepdim=True).clamp_min(1e-300)
    mu_s = (w[..., None] * src).sum(1)
    mu_d = (w[..., None] * dst).sum(1)
    xs = src - mu_s[:, None]
    xd = dst - mu_d[:, None]
    var_s = (w * (xs * xs).sum(-1)).sum(-1)
    cov = torch.einsum("bn,bni,bnj->bij", w, xd, xs)  # Σ_xy = E[(d - μd)(s - μs)ᵀ]
    U, S, Vh = torch.linalg.svd(cov)
    # Umeyama's sign fix: flip the weakest axis when U·Vᵀ would be a reflection.
    d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.ones_like(S)
    D[:, 2] = d
    R = U @ torch.diag_embed(D) @ Vh
    if with_scale:
        s = (S * D).sum(-1) / var_s.clamp_min(1e-300)
    else:
        s = torch.ones_like(var_s)
    t = mu_d - s[:, None] * torch.einsum("bij,bj->bi", R, mu_s)
    return s, R, t, S, var_s


def _check_pair(src: torch.Tensor, dst: torch.Tensor, min_points: int = 3) -> None:
    if src.shape != dst.shape:
        raise ShapeMismatchError(
            f"src and dst must be corresponding points of the same shape, got {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    if src.shape[0] < min_points:
        raise AlignmentFailedError(
            f"need at least {min_points} corresponding points to fit a similarity, got {src.shape[0]}"
        )


def umeyama(src: ArrayLike, dst: ArrayLike, with_scale: bool = True, weights: ArrayLike | None = None):
    """Least-squares similarity with ``dst ≈ s·R·src + t`` (Umeyama 1991).

    Args:
        src, dst: ``[N, 3]`` corresponding points, ``N ≥ 3``.
        with_scale: fit the scale; otherwise ``s = 1`` (rigid fit).
        weights: optional ``[N]`` non-negative weights.

    Returns:
        ``(s, R [3, 3], t [3])``: s a float, R and t the same kind as ``src`` (float64).
        R is always a proper rotation (det +1), even when the best orthogonal map would be a
        reflection (mirrored input): Umeyama's sign correction then gives the best rotation.

    Raises:
        ShapeMismatchError: shapes differ; InvalidInputError: non-finite values;
        AlignmentFailedError: fewer than 3 points, or the source
        points are (nearly) collinear / coincident so the rotation is not determined.
    """
    s_pts, d_pts = _points(src, "src"), _points(dst, "dst").to(as_tensor(src).device)
    _check_pair(s_pts, d_pts)
    w = None
    if weights is not None:
        w = as_tensor(weights).detach().to(dtype=torch.float64, device=s_pts.device).reshape(-1)
        if w.shape[0] != s_pts.shape[0] or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise InvalidInputError(f"weights must be {s_pts.shape[0]} finite non-negative values with a positive sum")
        w = w[None]
    s, R, t, S, var_s = _umeyama_batched(s_pts[None], d_pts[None], with_scale, w)
    ext = float((s_pts - s_pts.mean(0)).abs().max())
    if float(var_s[0]) <= (1e-12 * max(ext, 1e-300)) ** 2 or ext == 0:
        raise AlignmentFailedError("src points all coincide; a similarity cannot be fitted (spread them out)")
    if float(S[0, 1]) <= _DEGENERATE_RTOL * float(S[0, 0]):
        raise AlignmentFailedError(
            "src/dst points are collinear (or dst collapses to a line/point); the rotation about "
            "that line is undetermined — give points that span a plane or a volume"
        )
    return float(s[0]), _out(R[0], src), _out(t[0], src)


def robust_umeyama(
    src: ArrayLike,
    dst: ArrayLike,
    with_scale: bool = True,
    threshold: float | None = None,
    iterations: int = 256,
    seed: int = 0,
    refine_steps: int = 5,
):
    """Outlier-robust :func:`umeyama`.

    Hypotheses come from random minimal samples (3 point pairs), evaluated all at once:
    with ``threshold`` given, the hypothesis with the most residuals ``‖s·R·src + t − dst‖ <
    threshold`` wins (RANSAC); without it, the one with the least median residual wins (LMedS,
    tolerates up to 50 % outliers) and the threshold becomes ``2.5 × 1.4826 × median``
    (a 2.5σ gate for Gaussian noise), floored at ``1e-9 ×`` the extent of ``dst``. The winner
    is refitted by least squares on its inliers, re-gating ``refine_steps`` times.
    Deterministic for a given ``seed``.

    Returns:
        ``(s, R [3, 3], t [3], inliers [N] bool)``, kinds as :func:`umeyama`.
    """
    s_pts, d_pts = _points(src, "src"), _points(dst, "dst").to(as_tensor(src).device)
    _check_pair(s_pts, d_pts)
    if iterations < 1:
        raise InvalidOptionError(f"iterations must be ≥ 1, got {iterations}")
    if threshold is not None and not threshold > 0:
        raise InvalidOptionError(f"threshold must be positive, got {threshold}")
    n = s_pts.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    # Three distinct indices per hypothesis.
    idx = torch.argsort(torch.rand(iterations, n, generator=gen), dim=1)[:, :3].to(s_pts.device)
    s, R, t, S, _ = _umeyama_batched(s_pts[idx], d_pts[idx], with_scale)
    pred = s[:, None, None] * torch.einsum("bij,nj->bni", R, s_pts) + t[:, None]
    res = (pred - d_pts[None]).norm(dim=-1)  # [B, N]
    ok = torch.isfinite(res).all(-1) & (S[:, 1] > _DEGENERATE_RTOL * S[:, 0]) & (s > 0)
    if not ok.any():
        raise AlignmentFailedError(
            "every sampled triple of points was degenerate (collinear); the points do not span a plane"
        )
    extent = float((d_pts.max(0).values - d_pts.min(0).values).norm())
    floor = 1e-9 * max(extent, 1e-12)
    if threshold is None:
        med = res.median(dim=1).values.masked_fill(~ok, float("inf"))
        best = int(torch.argmin(med))
        gate = max(2.5 * 1.4826 * float(med[best]), floor)
    else:
        counts = (res < threshold).sum(-1).masked_fill(~ok, -1)
        best = int(torch.argmax(counts))
        gate = float(threshold)
    inliers = res[best] < gate
    fit = (float(s[best]), R[best], t[best])
    for _ in range(max(refine_steps, 1)):
        if int(inliers.sum()) < 3:
            break
        s1, R1, t1, S1, _ = _umeyama_batched(s_pts[inliers][None], d_pts[inliers][None], with_scale)
        if not S1[0, 1] > _DEGENERATE_RTOL * S1[0, 0]:
            break
        fit = (float(s1[0]), R1[0], t1[0])
        r = (fit[0] * s_pts @ fit[1].T + fit[2] - d_pts).norm(dim=-1)
        if threshold is None:
            gate = max(2.5 * 1.4826 * float(r[inliers].median()), floor)
        new = r < gate
        if torch.equal(new, inliers):
            break
        inliers = new
    if int(inliers.sum()) < 3:
        raise AlignmentFailedError("fewer than 3 inliers survived; the correspondences are mostly outliers")
    return fit[0], _out(fit[1], src), _out(fit[2], src), like_input(inliers, src)


@dataclass(frozen=True)
class IcpResult:
    """Result of :func:`icp_refine`.

    Attributes:
        transform: the refined map from the source cloud onto the destination cloud.
        fitness: fraction of source points with a destination point within ``max_distance``.
        inlier_rmse: RMSE of those correspondences after the transform.
    """

    transform: Similarity
    fitness: float
    inlier_rmse: float


def _cloud_points(c, name: str) -> np.ndarray:
    pts = c.points if isinstance(c, PointCloud) else c
    p = as_tensor(pts).detach().to(torch.float64).cpu()
    if p.ndim != 2 or p.shape[-1] != 3:
        raise InvalidPointCloudError(f"{name} must be a PointCloud or [N, 3] points, got shape {tuple(p.shape)}")
    if p.shape[0] < 3:
        raise InvalidPointCloudError(f"{name} has {p.shape[0]} points; ICP needs at least 3")
    if not torch.isfinite(p).all():
        raise InvalidPointCloudError(f"{name} has NaN/inf coordinates; drop them before ICP")
    return p.numpy()


def icp_refine(
    src_cloud: PointCloud | ArrayLike,
    dst_cloud: PointCloud | ArrayLike,
    init: Similarity | ArrayLike | None = None,
    max_distance: float = 0.05,
    with_scale: bool = False,
    max_iterations: int = 50,
) -> IcpResult:
    """Point-to-point ICP (open3d) refining ``init`` so that ``T(src) ≈ dst``.

    Args:
        src_cloud, dst_cloud: :class:`PointCloud` or ``[N, 3]`` points.
        init: starting transform (a :class:`Similarity` or a ``[4, 4]`` matrix); identity if None.
        max_distance: correspondence gate, in ``dst`` units; set it to a few times the expected
            residual misalignment (too small: nothing matches; too large: wrong matches).
        with_scale: also refine the scale (open3d's ``with_scaling``).
        max_iterations: ICP iterations.
    """
    import open3d as o3d  # lazy: heavy import, only needed here

    if not max_distance > 0:
        raise InvalidOptionError(f"max_distance must be positive, got {max_distance}")
    src = _cloud_points(src_cloud, "src_cloud")
    dst = _cloud_points(dst_cloud, "dst_cloud")
    if init is None:
        init = Similarity.identity()
    elif not isinstance(init, Similarity):
        init = Similarity.from_matrix(init)
    pcs = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(src))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(dst))
    res = o3d.pipelines.registration.registration_icp(
        pcs,
        pcd,
        float(max_distance),
        init.matrix().cpu().numpy(),
        o3d.pipelines.registration.TransformationEstimationPointToPoint(with_scaling=bool(with_scale)),
        o3d.pipelines.registration.ICPConvergenceCriteria(
            relative_fitness=1e-10, relative_rmse=1e-10, max_iteration=int(max_iterations)
        ),
    )
    M = np.asarray(res.transformation).copy()
    return IcpResult(Similarity.from_matrix(M), float(res.fitness), float(res.inlier_rmse))


def _depth_map(x: ArrayLike, name: str) -> torch.Tensor:
    d = as_tensor(x)
    if d.ndim != 2:
        raise InvalidDepthError(f"{name} must be a single [H, W] map, got shape {tuple(d.shape)}; loop over frames")
    return d.detach().to(torch.float64)


def fit_depth_scale_shift(
    pred: ArrayLike,
    target: ArrayLike,
    valid: ArrayLike | None = None,
    space: str = "depth",
    threshold: float | None = None,
    iterations: int = 128,
    seed: int = 0,
    refine_steps: int = 5,
):
    """Robust fit of ``target ≈ scale · pred + shift`` over the valid pixels of one frame.

    In ``space="disparity"`` the fit is ``1/target ≈ scale · (1/pred) + shift`` (the natural
    space for affine-invariant monocular depth); the returned pair then applies to
    disparities — use :func:`apply_depth_scale_shift` with the same ``space`` to map ``pred``.

    Outliers (holes of the render, occlusion edges, sky) are rejected like
    :func:`robust_umeyama`: the least-median of many 2-pixel hypotheses seeds the fit, pixels
    within ``2.5 × 1.4826 × median`` residual (or ``threshold``, in the units of the fitted
    space) are inliers, then least squares on the inliers, re-gated ``refine_steps`` times.

    Args:
        pred, target: ``[H, W]`` depth maps (z-depth).
        valid: optional ``[H, W]`` bool mask of pixels to use (e.g. render mask == 0).
            Pixels where either map is non-finite or ≤ 0 are always excluded.

    Returns:
        ``(scale, shift, inliers [H, W] bool)``, floats and the input's kind.

    Raises:
        InvalidDepthError: shapes differ; AlignmentFailedError: fewer than 2 usable pixels or a
        constant ``pred`` over them.
    """
    if space not in ("depth", "disparity"):
        raise InvalidOptionError(f"space must be 'depth' or 'disparity', got {space!r}")
    p, q = _depth_map(pred, "pred"), _depth_map(target, "target").to(as_tensor(pred).device)
    if p.shape != q.shape:
        raise InvalidDepthError(
            f"pred {tuple(p.shape)} and target {tuple(q.shape)} depth maps differ in size; resize one"
        )
    m = torch.isfinite(p) & torch.isfinite(q) & (p > 0) & (q > 0)
    if valid is not None:
        v = as_tensor(valid).to(device=p.device)
        if v.shape != p.shape:
            raise InvalidDepthError(f"valid mask {tuple(v.shape)} does not match the depth maps {tuple(p.shape)}")
        m = m & v.bool()
    x, y = p[m], q[m]
    if space == "disparity":
        x, y = 1.0 / x, 1.0 / y
    n = x.numel()
    if n < 2:
        raise AlignmentFailedError(
            f"only {n} valid pixel(s) to fit depth scale/shift; need at least 2 (is the mask all holes?)"
        )
    if float(x.max() - x.min()) <= 1e-12 * float(x.abs().max()):
        raise AlignmentFailedError("pred is constant over the valid pixels; scale and shift cannot both be fitted")
    gen = torch.Generator().manual_seed(int(seed))
    i = torch.randint(0, n, (iterations, 2), generator=gen).to(x.device)
    x0, x1, y0, y1 = x[i[:, 0]], x[i[:, 1]], y[i[:, 0]], y[i[:, 1]]
    dx = x1 - x0
    good = dx.abs() > 1e-12 * x.abs().max()
    a = (y1 - y0) / torch.where(good, dx, torch.ones_like(dx))
    b = y0 - a * x0
    floor = 1e-9 * float(y.abs().max())
    res = (a[:, None] * x[None] + b[:, None] - y[None]).abs()
    if threshold is None:
        med = res.median(dim=1).values.masked_fill(~good, float("inf"))
        best = int(torch.argmin(med))
        gate = max(2.5 * 1.4826 * float(med[best]), floor)
    else:
        if not threshold > 0:
            raise InvalidOptionError(f"threshold must be positive, got {threshold}")
        counts = (res < threshold).sum(-1).masked_fill(~good, -1)
        best = int(torch.argmax(counts))
        gate = float(threshold)
    if not bool(good.any()):
        best_a, best_b = 1.0, 0.0
        inl = torch.ones_like(x, dtype=torch.bool)
    else:
        best_a, best_b = float(a[best]), float(b[best])
        inl = res[best] < gate
    for _ in range(max(refine_steps, 1)):
        if int(inl.sum()) < 2:
            break
        A = torch.stack([x[inl], torch.ones_like(x[inl])], -1)
        sol = torch.linalg.lstsq(A, y[inl][:, None]).solution[:, 0]
        best_a, best_b = float(sol[0]), float(sol[1])
        r = (best_a * x + best_b - y).abs()
        if threshold is None:
            gate = max(2.5 * 1.4826 * float(r[inl].median()), floor)
        new = r < gate
        if torch.equal(new, inl):
            break
        inl = new
    full = torch.zeros_like(m)
    full[m] = inl
    return best_a, best_b, like_input(full, pred)


def apply_depth_scale_shift(pred: ArrayLike, scale: float, shift: float, space: str = "depth") -> ArrayLike:
    """Map ``pred`` depth with a fit from :func:`fit_depth_scale_shift` (same ``space``).

    In disparity space the result is ``1 / (scale / pred + shift)``; pixels whose aligned
    disparity is ≤ 0 (behind the camera) become ``inf``.
    """
    p = as_tensor(pred)
    if space == "depth":
        out = scale * p + shift
    elif space == "disparity":
        disp = scale / p + shift
        out = torch.where(disp > 0, 1.0 / disp, torch.full_like(disp, float("inf")))
    else:
        raise InvalidOptionError(f"space must be 'depth' or 'disparity', got {space!r}")
    return like_input(out, pred)
