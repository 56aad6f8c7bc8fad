"""The scene loop with the oracle generator, end to end, against the synthetic scenes' truth.

Acceptance (issue 3): on both synthetic scenes the merged cloud reaches F ≥ 0.98 at 1 % of
the scene extent with exact depth, and F ≥ 0.90 with per-frame scale/shift (±20 %) and 1 %
noise — the ground truth being the scene's surface points seen by at least one camera of the
run. The runs are real (4 trajectories × 21 keyframes) at a small resolution.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.errors import (
    InvalidDepthError,
    InvalidImageError,
    InvalidTrajectoryError,
    WorldStereoError,
)
from worldstereo_core.interfaces import FrameGenerator, LoopConfig, References, default_config
from worldstereo_core.merge import CLIP_ALIGNMENTS, align_cloud_to_cache, lift_depth, merge_clip
from worldstereo_core.oracle import DepthCorruption, OracleDepth, OracleGenerator
from worldstereo_core.pipeline import DEFAULT_TRAJECTORIES, loop_report, run_oracle_loop, run_scene_loop
from worldstereo_core.pointcloud import PointCloud
from worldstereo_core.render import cache_surface_depth
from worldstereo_core.synthetic import make_scene

H, W = 96, 160  # small but real: 4 trajectories × 21 keyframes per run
KEYFRAMES = 21


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The loop is many mid-sized tensor ops; on a busy 2-core machine intra-op threading
    made it ~4× slower (measured 11.6 s vs 45.6 s wall per run), so these tests use one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs():
    """The four acceptance runs (scene × depth), computed once for the module."""
    out = {}
    for name in ("room", "outdoor"):
        for corrupt in (False, True):
            calls: list[tuple[int, int]] = []
            res = run_oracle_loop(
                make_scene(name, seed=0),
                height=H,
                width=W,
                depth_corruption=DepthCorruption(scale_range=0.2, noise=0.01) if corrupt else None,
                seed=0,
                progress=lambda s, n, calls=calls: calls.append((s, n)),
            )
            out[name, corrupt] = (res, calls)
    return out


@pytest.mark.parametrize("name", ["room", "outdoor"])
def test_exact_depth_reaches_f98(runs, name):
    res, _ = runs[name, False]
    sc = res.scores
    print(f"{name} exact: P={sc.precision:.4f} R={sc.recall:.4f} F={sc.fscore:.4f} @ {sc.threshold:.3f}")
    assert sc.threshold == pytest.approx(0.01 * make_scene(name).extent)
    assert sc.fscore >= 0.98
    # With exact depth every frame aligns with scale ≈ 1 and shift ≈ 0.
    for step in res.steps:
        al = step.alignment
        assert al.status[0] == "input" and all(s == "aligned" for s in al.status[1:])
        assert (al.scale[1:] - 1).abs().max() < 0.01
        assert al.shift[1:].abs().max() < 0.02 * res.loop.median_depth


@pytest.mark.parametrize("name", ["room", "outdoor"])
def test_corrupted_depth_reaches_f90_and_alignment_undoes_it(runs, name):
    res, _ = runs[name, True]
    sc = res.scores
    print(f"{name} corrupted: P={sc.precision:.4f} R={sc.recall:.4f} F={sc.fscore:.4f} @ {sc.threshold:.3f}")
    assert sc.fscore >= 0.90
    for step, (a, b) in zip(res.steps, res.applied_corruption):
        al = step.alignment
        assert all(s == "aligned" for s in al.status[1:])
        # corrupted = a·d + b (+ noise); aligned = s·corrupted + t  ⇒  s·a ≈ 1, s·b + t ≈ 0
        assert ((a[1:].double() - 1).abs() > 0.02).any(), "the corruption must really be there"
        assert (al.scale[1:] * a[1:].double() - 1).abs().max() < 0.03
        assert (al.scale[1:] * b[1:].double() + al.shift[1:]).abs().max() < 0.05 * res.loop.median_depth


@pytest.mark.parametrize("name", ["room", "outdoor"])
def test_depth_fusion_of_corrupted_oracle_depth_reaches_f95(runs, name):
    """Issue 5's criterion for depth fusion (per-frame scale/shift alignment to the cache, then
    fusion with the known cameras): F ≥ 0.95 at 1 % of the extent with per-frame scale/shift
    corrupted depth. These runs also carry 1 % noise, a harder case than asked."""
    res, _ = runs[name, True]
    assert res.scores.fscore >= 0.95, res.scores


def test_loop_structure_ggm_ssm_and_memory(runs):
    res, calls = runs["room", False]
    loop = res.loop
    assert [s.name for s in loop.steps] == list(DEFAULT_TRAJECTORIES)
    img = res.view.image[0]
    prev = len(loop.input_cloud)
    for i, step in enumerate(loop.steps):
        assert len(step.trajectory) == 81 and len(step.keyframes) == KEYFRAMES
        # every trajectory starts at the input camera
        torch.testing.assert_close(step.keyframes.w2c[0], res.view.cameras.w2c[0])
        # GGM condition: render + hole mask, frame 0 replaced by the input image
        assert step.render.rgb.shape == (KEYFRAMES, H, W, 3) and step.render.mask.shape == (KEYFRAMES, H, W)
        torch.testing.assert_close(step.render.rgb[0], img)
        assert float(step.render.mask[0].max()) == 0.0
        assert 0.0 < float(step.render.mask[1:].mean()) < 0.9  # the cache covers part of each view
        # SSM: at most 8 references from the bank as it was before this trajectory
        refs = step.references
        assert 1 <= len(refs) <= 8
        bank_size_before = 1 + 8 * i
        assert int(refs.bank_indices.max()) < bank_size_before
        assert ((refs.ref_index >= 0) & (refs.ref_index < KEYFRAMES - 1)).all()
        if i == 0:
            assert refs.sources == ("input",)
        # oracle frames are the scene at the keyframe cameras
        torch.testing.assert_close(step.frames, make_scene("room").render(step.keyframes).rgb)
        assert step.cache_points > 0.5 * prev  # grows (voxel merging may thin a little)
        prev = step.cache_points
    assert len(loop.bank) == 1 + 8 * len(DEFAULT_TRAJECTORIES)
    assert len(loop.cameras) == 1 + (KEYFRAMES - 1) * len(DEFAULT_TRAJECTORIES)
    # progress: 1 + 5 stages per trajectory, in order, ending at the total
    total = 1 + 5 * len(DEFAULT_TRAJECTORIES)
    assert calls == [(k, total) for k in range(1, total + 1)]
    # the JSON report says the same
    rep = json.loads(json.dumps(loop_report(res)))
    assert rep["scores"]["fscore"] == pytest.approx(res.scores.fscore)
    assert [t["aligned_frames"] for t in rep["trajectories"]] == [KEYFRAMES - 1] * len(DEFAULT_TRAJECTORIES)
    assert rep["memory_bank_views"] == len(loop.bank)
    # the merged cloud lies on the true surfaces
    dist = make_scene("room").distance_to_surface(res.cloud.points)
    assert float(torch.quantile(dist.double(), 0.99)) < 0.01 * make_scene("room").extent


def test_scores_can_fail_when_frames_come_from_wrong_cameras():
    """Negative control: depth rendered from cameras shifted by 0.4 m puts geometry in the
    wrong place; alignment cannot fix a wrong pose, and the F-score must show it."""
    scene = make_scene("room")

    class ShiftedDepth:
        def __call__(self, frames, cameras):
            c2w = cameras.c2w.clone()
            c2w[:, :3, 3] += torch.tensor([0.4, 0.0, 0.0])
            from worldstereo_core.cameras import invert_rigid

            out = scene.render(Cameras(invert_rigid(c2w), cameras.K, cameras.height, cameras.width))
            return out.depth, out.valid

    view = scene.default_view(48, 80)
    loop = run_scene_loop(
        view.image,
        view.cameras,
        view.depth,
        OracleGenerator(scene),
        ShiftedDepth(),
        ("right",),
        LoopConfig(radius=0.08),
        valid=view.valid,
    )
    from worldstereo_core.metrics import pointcloud_prf

    gt = scene.surface_points(loop.cameras)
    p, r, f = pointcloud_prf(loop.cloud.points, gt.points, 0.01 * scene.extent)
    assert p < 0.9 and f < 0.95


def test_loop_is_deterministic_and_generator_sees_the_conditions():
    scene = make_scene("outdoor", seed=1)
    seen = {}

    class Recorder:
        def __call__(self, image, cameras, render, mask, references):
            seen.update(image=image, cameras=cameras, render=render, mask=mask, references=references)
            return scene.render(cameras).rgb

    assert isinstance(Recorder(), FrameGenerator)
    cfg = LoopConfig(radius=0.08)
    corr = DepthCorruption(0.2, 0.01, hole_fraction=0.1)
    a = run_oracle_loop(scene, ("orbit",), 48, 80, depth_corruption=corr, seed=3, config=cfg)
    b = run_oracle_loop(scene, ("orbit",), 48, 80, depth_corruption=corr, seed=3, config=cfg)
    assert torch.equal(a.cloud.points, b.cloud.points)
    assert a.scores == b.scores
    view = scene.default_view(48, 80)
    run_scene_loop(view.image, view.cameras, view.depth, Recorder(), OracleDepth(scene), ("up",), cfg)
    assert seen["image"].shape == (1, 48, 80, 3)
    assert isinstance(seen["cameras"], Cameras) and len(seen["cameras"]) == KEYFRAMES
    assert seen["render"].shape == (KEYFRAMES, 48, 80, 3) and seen["mask"].shape == (KEYFRAMES, 48, 80)
    assert isinstance(seen["references"], References) and len(seen["references"]) == 1


def test_cache_surface_depth_is_the_mean_front_surface():
    # Two noisy layers of points: z ≈ 3 (left half of the view) in front of z ≈ 6 (everywhere).
    g = torch.Generator().manual_seed(0)
    K = intrinsics_from_fov(60, 32, 32)
    cams = Cameras(torch.eye(4)[None], K[None].float(), 32, 32)
    n = 200_000
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 8
    back = torch.cat([xy, 6 + 0.03 * torch.randn(n, 1, generator=g)], 1)
    xy2 = torch.rand(n, 2, generator=g) * torch.tensor([2.0, 4.0]) - torch.tensor([2.0, 2.0])
    front = torch.cat([xy2, 3 + 0.015 * torch.randn(n, 1, generator=g)], 1)
    depth, cov = cache_surface_depth(PointCloud(torch.cat([back, front]), torch.zeros(2 * n, 3)), cams, window=0.05)
    assert cov.all()
    # pixels whose ray at z = 3 hits the front patch (x ∈ [−2, 0)) see ≈ 3, others ≈ 6
    u = (torch.arange(32) + 0.5 - K[0, 2]) / K[0, 0] * 3
    v = (torch.arange(32) + 0.5 - K[1, 2]) / K[1, 1] * 3
    inside = ((u > -1.9) & (u < -0.1))[None, :] & ((v > -1.9) & (v < 1.9))[:, None]
    outside = (u > 0.1)[None, :].expand(32, 32)
    assert (depth[0][inside] - 3).abs().max() < 0.01  # mean of the layer, not its minimum
    assert (depth[0][outside] - 6).abs().max() < 0.02
    # the list form (union without concatenation) gives the same answer
    d2, _ = cache_surface_depth([back, front], cams, window=0.05)
    torch.testing.assert_close(d2, depth)


def test_bad_inputs_raise_clear_errors():
    scene = make_scene("room")
    view = scene.default_view(32, 48)
    gen, dep = OracleGenerator(scene), OracleDepth(scene)
    with pytest.raises(InvalidTrajectoryError, match="no trajectories"):
        run_scene_loop(view.image, view.cameras, view.depth, gen, dep, ())
    with pytest.raises(InvalidTrajectoryError, match="unknown preset"):
        run_scene_loop(view.image, view.cameras, view.depth, gen, dep, ("sideways",))
    with pytest.raises(InvalidDepthError, match="sizes differ"):
        run_scene_loop(view.image, view.cameras, view.depth[:, :16], gen, dep)
    bad = view.depth.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InvalidDepthError, match="NaN"):
        run_scene_loop(view.image, view.cameras, bad, gen, dep)
    with pytest.raises(InvalidDepthError, match="negative"):
        run_scene_loop(view.image, view.cameras, -view.depth, gen, dep)
    with pytest.raises(InvalidDepthError, match="no positive pixel"):
        run_scene_loop(view.image, view.cameras, torch.zeros_like(view.depth), gen, dep)
    two = Cameras.cat([view.cameras, view.cameras])
    with pytest.raises(InvalidTrajectoryError, match="exactly 1 pose"):
        run_scene_loop(view.image, two, view.depth, gen, dep)
    with pytest.raises(InvalidImageError, match=r"\[1, H, W, 3\]"):
        run_scene_loop(view.image[..., :1], view.cameras, view.depth, gen, dep)
    with pytest.raises(InvalidImageError, match="frame generator returned"):
        run_scene_loop(view.image, view.cameras, view.depth, lambda *a: torch.zeros(3, 32, 48, 3), dep, ("orbit",))
    with pytest.raises(InvalidTrajectoryError, match="SyntheticScene"):
        run_oracle_loop("room")
    for cls in (InvalidDepthError, InvalidImageError, InvalidTrajectoryError):
        assert issubclass(cls, WorldStereoError)


# ---------------------------------------------------------------------------------------------
# merge_clip / align_cloud_to_cache / starting from a given bank and cache
# ---------------------------------------------------------------------------------------------


def _first_cache(scene, h, w):
    """The loop's first cache: the input view's exact depth lifted, voxel 1 % of its median."""
    from worldstereo_core.memory import Cache3D

    view = scene.default_view(h, w)
    cfg = default_config(h, w)
    med = float(view.depth[view.valid].median())
    cloud = lift_depth(view.depth, view.valid, view.image, view.cameras, cfg.edge_threshold)
    return view, cfg, med, Cache3D.empty(0.01 * med, None).merge(cloud, remove_outliers=False)


def _rot_z(a: float) -> torch.Tensor:
    import math

    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_umeyama_merge_recovers_a_known_similarity():
    """A reconstruction in its own frame (true points mapped by s = 1.3, a 0.1 rad rotation and
    a shift) is brought back exactly, and the merged cache matches the truth."""
    from worldstereo_core.align import Similarity
    from worldstereo_core.cameras import invert_rigid
    from worldstereo_core.merge import point_map
    from worldstereo_core.metrics import pointcloud_prf
    from worldstereo_core.trajectory import make_preset

    scene = make_scene("room")
    view, cfg, med, cache = _first_cache(scene, 96, 160)
    kf = make_preset("orbit", view.cameras, med).keyframes()
    out = scene.render(kf)
    T = Similarity(1.3, _rot_z(0.1), torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64))  # world → reconstruction
    truth = T.inverse()
    recon = T.apply(point_map(out.depth, kf))  # [F, H, W, 3] point map in the reconstruction's frame

    clip = merge_clip(cache, out.rgb, recon, out.valid, kf, cfg, alignment="umeyama")
    S = clip.similarity
    assert S.s == pytest.approx(truth.s, abs=1e-3)
    assert (S.R - truth.R).abs().max() < 1e-3 and (S.t - truth.t).abs().max() < 1e-3
    assert clip.rmse < 0.002 * scene.extent
    al = clip.alignment
    assert al.status[0] == "input" and set(al.status[1:]) == {"aligned"}
    assert (al.scale[1:] == S.s).all() and int(al.covered.sum()) > 1000
    # the merged cloud lies on the scene: F ≥ 0.98 against the surfaces the clip's cameras see
    gt = scene.surface_points(kf)
    p, r, f = pointcloud_prf(clip.cache.cloud.points, gt.points, 0.01 * scene.extent)
    assert f >= 0.98, (p, r, f)
    assert len(clip.cache) > len(cache) and len(clip.cloud_added) > 0

    # the same reconstruction given as depth (× 1.3) + its own cameras (in its own frame)
    c2w = kf.c2w.to(torch.float64)
    own = c2w.clone()
    own[:, :3, :3] = T.R @ c2w[:, :3, :3]
    own[:, :3, 3] = T.apply(c2w[:, :3, 3])
    own_cams = Cameras(invert_rigid(own).float(), kf.K, kf.height, kf.width)
    ca = align_cloud_to_cache(out.depth * 1.3, kf, cache, out.valid, out.rgb, source_cameras=own_cams, config=cfg)
    assert ca.similarity.s == pytest.approx(truth.s, abs=1e-3)
    assert (ca.similarity.t - truth.t).abs().max() < 1e-3
    assert ca.num_inliers > 0.8 * ca.num_pairs

    # negative control: a wrong rotation of the known cameras cannot be explained away
    wrong = (
        T.apply(point_map(out.depth, kf))
        + torch.randn(recon.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.05 * med
    )
    noisy = merge_clip(cache, out.rgb, wrong, out.valid, kf, cfg, alignment="umeyama")
    assert noisy.rmse > 5 * clip.rmse


def test_merge_clip_depth_mode_undoes_per_frame_scale_and_shift():
    from worldstereo_core.synthetic import corrupt_depth
    from worldstereo_core.trajectory import make_preset

    scene = make_scene("outdoor")
    view, cfg, med, cache = _first_cache(scene, 64, 112)
    kf = make_preset("right", view.cameras, med).keyframes()
    out = scene.render(kf)
    cd = corrupt_depth(out.depth, 0.2, 0.0, generator=torch.Generator().manual_seed(1), valid=out.valid)
    clip = merge_clip(cache, out.rgb, cd.depth, cd.valid, kf, cfg, seed=5)
    al = clip.alignment
    ok = torch.tensor([s == "aligned" for s in al.status])
    assert al.status[0] == "input" and ok[1:].float().mean() > 0.9
    assert (al.scale[ok] * cd.scale[ok].double() - 1).abs().max() < 0.01
    assert clip.similarity is None and clip.rmse < 0.01 * med
    assert torch.isnan(al.rmse[0]) and (al.rmse[ok] < 0.01 * med).all()
    # inputs are not mutated, the result is a new cache, the call is deterministic
    again = merge_clip(cache, out.rgb, cd.depth, cd.valid, kf, cfg, seed=5)
    assert torch.equal(again.cache.cloud.points, clip.cache.cloud.points)
    # skip_first=False aligns frame 0 too (it is the input view: scale ≈ its corruption's inverse)
    all_frames = merge_clip(cache, out.rgb, cd.depth, cd.valid, kf, cfg, seed=5, skip_first=False)
    assert all_frames.alignment.status[0] == "aligned"
    assert float(all_frames.alignment.scale[0] * cd.scale[0]) == pytest.approx(1.0, abs=0.01)


def test_merge_clip_bad_inputs():
    from worldstereo_core.errors import (
        AlignmentFailedError,
        InvalidDepthError,
        InvalidImageError,
        InvalidInputError,
        InvalidOptionError,
    )
    from worldstereo_core.memory import Cache3D
    from worldstereo_core.trajectory import make_preset

    scene = make_scene("room")
    view, cfg, med, cache = _first_cache(scene, 32, 48)
    kf = make_preset("orbit", view.cameras, med).keyframes()
    out = scene.render(kf)
    # the message lists the options from CLIP_ALIGNMENTS itself, so a new alignment shows up in it
    with pytest.raises(InvalidOptionError, match=re.escape(f"one of {CLIP_ALIGNMENTS}")):
        merge_clip(cache, out.rgb, out.depth, out.valid, kf, cfg, alignment="icp")
    with pytest.raises(InvalidDepthError, match="point map"):
        merge_clip(cache, out.rgb, torch.zeros(len(kf), 32, 48, 3), None, kf, cfg)
    with pytest.raises(InvalidDepthError, match="one map per camera"):
        merge_clip(cache, out.rgb, out.depth[:5], None, kf, cfg)
    with pytest.raises(InvalidImageError, match="clip frames"):
        merge_clip(cache, out.rgb[..., :1], out.depth, None, kf, cfg)
    with pytest.raises(InvalidInputError, match="Cache3D"):
        merge_clip(cache.cloud, out.rgb, out.depth, None, kf, cfg)
    with pytest.raises(AlignmentFailedError, match="empty"):
        align_cloud_to_cache(out.depth, kf, Cache3D.empty(), config=cfg)
    # cameras looking away from the cache: no correspondences
    flip = torch.diag(torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    away = Cameras(flip @ kf.w2c, kf.K, kf.height, kf.width)
    with pytest.raises(AlignmentFailedError, match="does not overlap"):
        merge_clip(cache, out.rgb, out.depth, out.valid, away, cfg, alignment="umeyama")


def test_loop_starts_from_a_given_bank_and_cache():
    """The panorama case: the loop starts from several views and a cloud, not one image."""
    from worldstereo_core.memory import Cache3D, MemoryBank
    from worldstereo_core.trajectory import make_preset

    scene = make_scene("room")
    h, w = 48, 80
    view = scene.default_view(h, w)
    med = float(view.depth[view.valid].median())
    around = Cameras.cat([make_preset(p, view.cameras, med).cameras[-1:] for p in ("left", "right", "up")])
    start_views = Cameras.cat([view.cameras, around])
    bank = MemoryBank.from_views(
        scene.render(start_views).rgb, start_views, ["pano:00", "pano:01", "pano:02", "pano:03"]
    )
    cache = Cache3D(scene.surface_points(start_views))
    cfg = LoopConfig(radius=0.08)
    res = run_scene_loop(
        view.image,
        view.cameras,
        None,
        OracleGenerator(scene),
        OracleDepth(scene),
        ("orbit",),
        cfg,
        bank=bank,
        cache=cache,
    )
    assert res.input_cloud is cache.cloud
    assert len(res.bank) == len(bank) + 8
    assert set(res.steps[0].references.sources) <= set(bank.sources)
    assert res.steps[0].keyframes.w2c[0].equal(view.cameras.w2c[0].to(res.steps[0].keyframes.w2c.dtype))
    # the median depth comes from the cache seen by the input camera (≈ the depth's median)
    assert res.median_depth == pytest.approx(med, rel=0.05)
    assert all(s == "aligned" for s in res.steps[0].alignment.status[1:])
    from worldstereo_core.metrics import pointcloud_prf

    gt = scene.surface_points(Cameras.cat([start_views, res.cameras]))
    assert pointcloud_prf(res.cloud.points, gt.points, 0.01 * scene.extent)[2] >= 0.95
    # with depth too, the depth sets the median, the cache still replaces the input cloud
    res2 = run_scene_loop(
        view.image,
        view.cameras,
        view.depth,
        OracleGenerator(scene),
        OracleDepth(scene),
        ("orbit",),
        LoopConfig(radius=0.08, clip_alignment="umeyama"),
        valid=view.valid,
        bank=bank,
        cache=cache,
    )
    assert res2.median_depth == pytest.approx(med) and res2.input_cloud is cache.cloud
    assert res2.steps[0].alignment.scale[1:].sub(1).abs().max() < 0.01
    with pytest.raises(InvalidDepthError, match="starting cache"):
        run_scene_loop(view.image, view.cameras, None, OracleGenerator(scene), OracleDepth(scene), ("orbit",), cfg)
    with pytest.raises(WorldStereoError, match="non-empty Cache3D"):
        run_scene_loop(
            view.image,
            view.cameras,
            view.depth,
            OracleGenerator(scene),
            OracleDepth(scene),
            ("orbit",),
            cfg,
            cache=Cache3D.empty(),
        )
    behind = Cache3D(
        PointCloud(
            view.cameras.centers[0] - torch.tensor([[0.0, 0.0, 1.0]]) @ view.cameras.c2w[0, :3, :3].T, torch.zeros(1, 3)
        )
    )
    with pytest.raises(InvalidDepthError, match="in view of the input camera"):
        run_scene_loop(
            view.image, view.cameras, None, OracleGenerator(scene), OracleDepth(scene), ("orbit",), cfg, cache=behind
        )
    with pytest.raises(WorldStereoError, match=re.escape(f"clip_alignment must be one of {CLIP_ALIGNMENTS}")):
        run_scene_loop(
            view.image,
            view.cameras,
            view.depth,
            OracleGenerator(scene),
            OracleDepth(scene),
            ("orbit",),
            LoopConfig(clip_alignment="icp"),
        )


def test_loop_reference_cut_and_shortcut_settings():
    """LoopConfig.reference_cut and .retrieval_shortcuts reach the retrieval: the 'left' clip is
    pushed towards the views the earlier 'right' clip added (the release's view shortcut), and
    the release's DINOv2 cut runs on the features it is given."""
    scene = make_scene("room", seed=0)
    view = scene.default_view(32, 48)
    calls = []

    def features(images):
        calls.append(len(images))
        return torch.stack([im.float().mean((0, 1)) for im in images]).double().numpy()

    cfg = LoopConfig(radius=0.1, retrieval_shortcuts=(("left", "view_first", "right"),))
    res = run_scene_loop(
        view.image, view.cameras, view.depth, OracleGenerator(scene), OracleDepth(scene), ("right", "left"), cfg
    )
    left = res.steps[1].references
    pool = [i for i, s in enumerate(res.bank.sources) if s.startswith("traj0:right:")][3::2]
    assert len(pool) == 3
    for slot, a in zip(left.slots.tolist(), left.assignment.tolist()):
        if slot in (1, 2, 3, 5, 7, 9, 13, 17):  # the release's view-shortcut slots
            assert a == pool[int(slot / 21 * len(pool))]
    # the release's DINOv2 cut runs on the features it is given when more than 2 views qualify
    cut = run_scene_loop(
        view.image,
        view.cameras,
        view.depth,
        OracleGenerator(scene),
        OracleDepth(scene),
        ("right", "left"),
        LoopConfig(radius=0.1, max_references=2, reference_cut="dinov2_fps"),
        image_features=features,
    )
    assert calls and all(len(s.references) <= 2 for s in cut.steps)
    with pytest.raises(InvalidTrajectoryError, match="needs image_features"):
        run_scene_loop(
            view.image,
            view.cameras,
            view.depth,
            OracleGenerator(scene),
            OracleDepth(scene),
            ("up",),
            LoopConfig(reference_cut="dinov2_fps"),
        )
    with pytest.raises(InvalidTrajectoryError, match="must run before"):
        run_scene_loop(
            view.image,
            view.cameras,
            view.depth,
            OracleGenerator(scene),
            OracleDepth(scene),
            ("left", "right"),
            LoopConfig(retrieval_shortcuts=(("left", "view_first", "right"),)),
        )
    with pytest.raises(InvalidTrajectoryError, match="unknown reference_cut"):
        run_scene_loop(
            view.image,
            view.cameras,
            view.depth,
            OracleGenerator(scene),
            OracleDepth(scene),
            ("up",),
            LoopConfig(reference_cut="best"),
        )
