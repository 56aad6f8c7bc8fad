"""§4.3 as the paper runs it: the full model with memory carried across trajectories, the
initial frame's depth as Umeyama anchor, JOG3R's camera metrics and the memory benchmark.

The oracle reconstructor gives exact depth; wrapping it in a known similarity puts its output
in a frame of its own (as a reconstructor without priors does), which the depth-anchor
alignment must undo exactly and the camera-centre alignment cannot.
"""

from __future__ import annotations

import json

import pytest
import torch
from scipy.spatial.transform import Rotation

from worldstereo_core.align import Similarity
from worldstereo_core.cameras import Cameras, invert_rigid
from worldstereo_core.errors import (
    AlignmentFailedError,
    InvalidOptionError,
    ShapeMismatchError,
)
from worldstereo_core.evaluate import OracleReconstructor, depth_anchor_alignment
from worldstereo_core.evaluate_loop import LoopEvaluationReport, evaluate_synthetic_loop, find_revisits
from worldstereo_core.interfaces import default_config
from worldstereo_core.metrics import LPIPS_UNAVAILABLE
from worldstereo_core.oracle import OracleGenerator
from worldstereo_core.recon.reconstruct import Reconstruction
from worldstereo_core.synthetic import make_scene
from worldstereo_core.trajectory import make_preset

H, W = 42, 70  # multiples of 14: the oracle reconstructor does not resize
TRAJS = ("orbit", "up")
S_OFF = Similarity(
    1.7,
    torch.tensor(Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()),
    torch.tensor([3.0, -1.0, 2.0]),
)


@pytest.fixture(scope="module")
def scene():
    return make_scene("room")


def _cfg():
    return default_config(H, W, num_keyframes=5)


def _moved(rec: Reconstruction, S: Similarity) -> Reconstruction:
    """``rec`` expressed in another frame: x ↦ S(x) (cloud, cameras, depth scale)."""
    c2w = rec.cameras.c2w.double()
    new = c2w.clone()
    new[:, :3, :3] = S.R @ c2w[:, :3, :3]
    new[:, :3, 3] = S.s * c2w[:, :3, 3] @ S.R.T + S.t
    cams = Cameras(
        invert_rigid(new).to(rec.cameras.w2c.dtype),
        rec.cameras.K,
        rec.cameras.height,
        rec.cameras.width,
    )
    pts = torch.as_tensor(S.apply(rec.cloud.points.double())).float()
    return Reconstruction(
        type(rec.cloud)(pts, rec.cloud.colors),
        rec.depth * S.s,
        rec.conf,
        rec.mask,
        cams,
        S.compose(rec.sim),
        rec.alignment,
        rec.prediction,
    )


class _OwnFrame:
    """A reconstructor whose output lives in its own frame (S_OFF of ours)."""

    def __init__(self, scene):
        self.inner = OracleReconstructor(scene)

    def __call__(self, frames, cameras):
        return _moved(self.inner(frames, cameras), S_OFF)


@pytest.fixture(scope="module")
def run(scene):
    return evaluate_synthetic_loop(
        scene,
        height=H,
        width=W,
        trajectories=TRAJS,
        config=_cfg(),
        reconstructor=_OwnFrame(scene),
    )


def test_memory_carried_loop_reaches_f_threshold_with_depth_anchor(run):
    rep = run.report
    assert rep.alignment == "depth_anchor"
    assert rep.overall["fscore"] > 0.95 and rep.overall["auc"] > 0.75
    # the anchor alignment undid the reconstructor's frame exactly: T = S_OFF⁻¹
    T = run.transform.compose(S_OFF)
    assert T.s == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(T.R, torch.eye(3, dtype=torch.float64), atol=1e-5)
    assert float(T.t.norm()) < 1e-4 * run.report.extent


def test_memory_is_carried_across_trajectories(run):
    steps = run.loop.steps
    assert [s.name for s in steps] == [
        "orbit",
        "up",
        "orbit",
    ]  # revisit: the first one again
    # the later clips saw the memory bank the earlier ones filled (SSM) and a grown cache (GGM)
    assert any(src.startswith("traj0:") for src in steps[1].references.sources)
    assert steps[2].cache_points >= steps[0].cache_points
    assert len(run.loop.bank) > 1 + 4
    assert run.report.num_frames == 1 + 3 * 4


def test_anchors_alignment_cannot_undo_the_reconstructors_frame(scene):
    bad = evaluate_synthetic_loop(
        scene,
        height=H,
        width=W,
        trajectories=("orbit",),
        revisit=False,
        config=_cfg(),
        reconstructor=_OwnFrame(scene),
        alignment="anchors",
    )
    assert bad.report.overall["fscore"] < 0.2


def test_camera_metrics_per_trajectory_exact_and_with_known_noise(run, scene):
    for t in run.report.trajectories:
        assert t["rot_err_deg"] == pytest.approx(0.0, abs=1e-3)
        assert t["rra@5"] == 1.0 and t["rta@5"] == 1.0 and t["maa@30"] == 1.0
        assert t["num_frames"] == 5  # the input view + 4 generated keyframes
    noisy = evaluate_synthetic_loop(
        scene,
        height=H,
        width=W,
        trajectories=("orbit",),
        revisit=False,
        config=_cfg(),
        reconstructor=OracleReconstructor(scene, pose_noise_deg=20.0, seed=2),
    )
    t = noisy.report.trajectories[0]
    # each of the 4 generated cameras turned by 20°, the input camera by 0 (first of the call)
    assert t["rot_err_deg"] == pytest.approx(4 * 20.0, abs=1e-3)
    assert t["rra@15"] < 1.0 and t["maa@30"] < 1.0


def test_memory_benchmark_compares_revisits_with_earlier_generations(run, scene):
    m = run.report.memory
    assert run.revisits == (
        (9, 1),
        (10, 2),
        (11, 3),
        (12, 4),
    )  # second orbit ↔ first orbit
    assert m["num_pairs"] == 4 and m["identical_pairs"] == 4 and m["ssim"] == pytest.approx(1.0)
    assert m["lpips"] is None and m["lpips_status"] == LPIPS_UNAVAILABLE
    assert "memory benchmark (4 revisited views): PSNR identical" in run.report.summary()
    assert m["psnr"] is None  # JSON has no infinity: the report must stay valid JSON
    json.loads(
        run.report.to_json(),
        parse_constant=lambda c: pytest.fail(f"{c} in the JSON report"),
    )

    class Forgetful(OracleGenerator):
        """Second pass darker by 20 %: a model that does not keep what it generated."""

        calls = 0

        def __call__(self, *a, **k):
            Forgetful.calls += 1
            out = super().__call__(*a, **k)
            return out * 0.8 if Forgetful.calls == 3 else out

    res = evaluate_synthetic_loop(
        scene,
        height=H,
        width=W,
        trajectories=TRAJS,
        config=_cfg(),
        generator=Forgetful(scene),
        reconstructor=OracleReconstructor(scene),
        lpips=lambda a, b: (a - b).abs().flatten(1).mean(1),
    )
    f, later, earlier = (
        res.frames,
        [p[0] for p in res.revisits],
        [p[1] for p in res.revisits],
    )
    mse = ((f[later] - f[earlier]).double() ** 2).flatten(1).mean(1)
    want = float((10 * torch.log10(1.0 / mse)).mean())
    assert res.report.memory["psnr"] == pytest.approx(want, rel=1e-6)
    assert res.report.memory["ssim"] < 0.999
    assert res.report.memory["lpips"] == pytest.approx(float((f[later] - f[earlier]).abs().mean()), rel=1e-5)


def test_depth_anchor_alignment_recovers_a_known_similarity(scene):
    view = scene.default_view(H, W)
    cams = make_preset("orbit", view.cameras, view.median_depth, 81).keyframes(5)  # centres span a plane
    rec = OracleReconstructor(scene)(scene.render(cams).rgb, cams)  # exact, in our frame
    T = depth_anchor_alignment(_moved(rec, S_OFF), view.depth, view.cameras)
    inv = S_OFF.inverse()
    assert T.s == pytest.approx(inv.s, rel=1e-6)
    assert torch.allclose(T.R, inv.R, atol=1e-6) and torch.allclose(T.t, inv.t, atol=1e-5)
    with pytest.raises(AlignmentFailedError):
        depth_anchor_alignment(rec, torch.zeros(H, W), view.cameras)
    with pytest.raises(ShapeMismatchError):
        depth_anchor_alignment(rec, torch.ones(H, W + 1), view.cameras)
    with pytest.raises(InvalidOptionError):
        depth_anchor_alignment(rec, view.depth, view.cameras, frame=5)


def test_find_revisits_by_hand():
    c2w = torch.eye(4).repeat(5, 1, 1)
    c2w[:, 0, 3] = torch.tensor([0.0, 1.0, 2.0, 1.0, 2.001])
    c2w[4, :3, :3] = torch.tensor(Rotation.from_euler("y", 0.2, degrees=True).as_matrix(), dtype=torch.float32)
    cams = Cameras(invert_rigid(c2w), torch.eye(3).repeat(5, 1, 1), 4, 4)
    # view 0 is the input (group −1): never matched; 3 ↔ 1 exact; 4 ↔ 2 within 0.5° and 0.01
    assert find_revisits(cams, [-1, 0, 0, 1, 1], 0.5, 0.01) == [(3, 1), (4, 2)]
    assert find_revisits(cams, [-1, 0, 0, 1, 1], 0.1, 0.01) == [(3, 1)]
    assert find_revisits(cams, [-1, 0, 0, 0, 0], 0.5, 0.01) == []
    with pytest.raises(ShapeMismatchError):
        find_revisits(cams, [0, 0], 0.5, 0.01)


def test_unknown_alignment_is_refused_before_any_work(scene):
    with pytest.raises(InvalidOptionError, match="alignment"):
        evaluate_synthetic_loop(
            scene,
            height=H,
            width=W,
            trajectories=("orbit",),
            config=_cfg(),
            alignment="best",
        )


# --- real scenes: a folder of images + camera.json (+ depth/, points.ply) ---------------------


def _write_scene_folder(root, scene, cams, with_depth=True, with_points=False):
    import numpy as np
    from PIL import Image

    from worldstereo_core.export import save_pointcloud_ply
    from worldstereo_core.trajectory import Trajectory, save_camera_json

    out = scene.render(cams)
    (root / "images").mkdir()
    for i in range(len(cams)):
        Image.fromarray((out.rgb[i].numpy() * 255).round().astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
    if with_depth:
        (root / "depth").mkdir()
        for i in range(len(cams)):
            np.save(root / "depth" / f"{i:03d}.npy", out.depth[i].numpy())
    if with_points:
        save_pointcloud_ply(root / "points.ply", scene.surface_points(cams))
    save_camera_json(root / "camera.json", Trajectory(cams))
    return out


def test_real_scene_folder_runs_the_memory_carried_protocol(tmp_path, scene):
    from worldstereo_core.evaluate_loop import evaluate_real_scene, load_scene_folder
    from worldstereo_core.oracle import oracle_models

    view = scene.default_view(H, W)
    captured = make_preset("orbit", view.cameras, view.median_depth, 81).keyframes(9)  # the capture's cameras
    truth = _write_scene_folder(tmp_path, scene, captured)
    real = load_scene_folder(tmp_path)
    assert real.images.shape == (9, H, W, 3) and torch.equal(real.depth, truth.depth)
    assert torch.allclose(real.cameras.w2c, captured.w2c, atol=1e-6)
    gen, depth_fn = oracle_models(scene)
    res = evaluate_real_scene(
        real,
        gen,
        depth_fn,
        _OwnFrame(scene),
        trajectories=("orbit",),
        config=_cfg(),
    )
    # ground truth = the capture's depth maps lifted (the capture walked the orbit the loop plans)
    assert res.report.overall["precision"] > 0.95 and res.report.overall["fscore"] > 0.9
    assert res.report.scene == tmp_path.name and res.report.alignment == "depth_anchor"
    assert float(res.transform.compose(S_OFF).t.norm()) < 1e-4 * res.report.extent


def test_scene_folder_errors_say_what_to_fix(tmp_path, scene):
    from worldstereo_core.errors import MissingFileError
    from worldstereo_core.evaluate_loop import load_scene_folder

    with pytest.raises(MissingFileError, match="images/ and camera.json"):
        load_scene_folder(tmp_path)
    view = scene.default_view(H, W)
    cams = make_preset("orbit", view.cameras, view.median_depth, 81).keyframes(3)
    _write_scene_folder(tmp_path, scene, cams, with_depth=False)
    with pytest.raises(MissingFileError, match="neither depth/ nor points.ply"):
        load_scene_folder(tmp_path)
    (tmp_path / "images" / "003.png").write_bytes((tmp_path / "images" / "000.png").read_bytes())
    with pytest.raises(ShapeMismatchError, match="3 cameras for 4 images"):
        load_scene_folder(tmp_path)


def test_per_trajectory_protocol_also_aligns_by_the_depth_anchor(scene):
    from worldstereo_core.evaluate import evaluate_synthetic

    res = evaluate_synthetic(
        scene,
        height=H,
        width=W,
        names=("left",),
        num_keyframes=4,
        reconstructor=_OwnFrame(scene),
        alignment="depth_anchor",
    )
    assert res.report.trajectories[0].alignment == "depth_anchor"
    assert res.report.overall["fscore"] > 0.95
    T = res.transforms["left"].compose(S_OFF)
    assert T.s == pytest.approx(1.0, abs=1e-5) and float(T.t.norm()) < 1e-4 * res.report.extent


def test_loop_summary_table_layout():
    """The summary's camera table, cell by cell: 9-wide columns, 4 decimals, a dash for a metric a
    trajectory lacks (e.g. TransErr with too few cameras), in the header's column order."""
    report = LoopEvaluationReport(
        scene="s",
        alignment="icp",
        threshold=0.01,
        thresholds=(0.01, 0.02),
        extent=1.0,
        overall={"precision": 0.5, "recall": 0.4, "fscore": 0.3, "auc": 0.2},
        trajectories=(
            {"name": "orbit", "rot_err_deg": 1.23456, "trans_err": None, "ate": 0.1, "rra@15": 1.0, "rta@15": 0.5},
            {"name": "left", "trans_err": 2.0, "rta@15": 0.25, "maa@30": 0.75},
        ),
        memory=None,
        num_gt_points=100,
        num_frames=8,
    )
    assert report.summary().splitlines()[1:] == [
        "cloud: P 0.5000  R 0.4000  F 0.3000  AUC 0.2000",
        "trajectory    RotErr° TransErr      ATE   RRA@15   RTA@15   mAA@30",
        "orbit          1.2346        —   0.1000   1.0000   0.5000        —",
        "left                —   2.0000        —        —   0.2500   0.7500",
        "memory benchmark: no generated view revisits an earlier generation",
    ]
