"""The §4.3 benchmark on a synthetic scene with the oracle generator, checked independently.

The oracle reconstructor returns exact depth and cameras in another similarity frame, each
camera's rotation turned by a known angle: the centres stay exact, so Umeyama on them recovers
the frame exactly, RotErr must be (frames − 1) × angle, TransErr and ATE zero, and the aligned
cloud is computable by hand. Precision / recall / F / AUC are recomputed with brute-force
numpy nearest neighbours.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import (
    InvalidCameraError,
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    InvalidTrajectoryError,
    MissingFileError,
    ShapeMismatchError,
)
from worldstereo_core.evaluate import (
    BENCHMARK_TRAJECTORIES,
    OracleReconstructor,
    benchmark_presets,
    evaluate_generation,
    evaluate_synthetic,
    load_benchmark_trajectories,
)
from worldstereo_core.synthetic import make_scene

H, W = 28, 56  # multiples of 14 (the oracle reconstructor does not resize)
NAMES = ("eloop", "left")
NKF = 4
NOISE = 3.0


@pytest.fixture(scope="module")
def scene():
    return make_scene("room")


@pytest.fixture(scope="module")
def run(scene):
    rec = OracleReconstructor(scene, pose_noise_deg=NOISE, seed=1)
    res = evaluate_synthetic(scene, height=H, width=W, names=NAMES, num_keyframes=NKF, reconstructor=rec)
    return res, rec


def _nn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute-force distance from each row of a to its nearest row of b."""
    out = np.empty(len(a))
    bb = (b * b).sum(1)
    for i in range(0, len(a), 512):
        x = a[i : i + 512]
        d2 = (x * x).sum(1)[:, None] + bb[None] - 2 * x @ b.T
        out[i : i + 512] = np.sqrt(np.maximum(d2.min(1), 0))
    return out


def _prf(dp: np.ndarray, dg: np.ndarray, t: float) -> tuple[float, float, float]:
    """P/R/F from brute-force distances pred→gt (dp) and gt→pred (dg)."""
    p, r = float((dp < t).mean()), float((dg < t).mean())
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _gt(scene) -> np.ndarray:
    view = scene.default_view(H, W)
    trajs = benchmark_presets(view.cameras, view.median_depth, NAMES, num_keyframes=NKF)
    cams = Cameras.cat([view.cameras] + list(trajs.values()))
    return scene.surface_points(cams).points.double().numpy(), trajs


def test_cloud_and_metrics_match_independent_computation(scene, run) -> None:
    res, rec = run
    rep = res.report
    gt, trajs = _gt(scene)
    assert rep.num_gt_points == len(gt)
    extent = float(np.linalg.norm(gt.max(0) - gt.min(0)))
    assert rep.extent == pytest.approx(extent)
    assert rep.threshold == pytest.approx(0.01 * extent)
    ths = np.linspace(0.001, 0.02, 20) * extent
    assert np.allclose(rep.thresholds, ths)

    for k, name in enumerate(NAMES):
        cams = trajs[name]
        assert torch.allclose(
            res.reconstructions[name].cameras.c2w.double()[:, :3, 3], cams.c2w.double()[:, :3, 3], atol=1e-4
        )
        # independent cloud: exact depth lifted with the requested centres and the perturbed rotations
        depth = scene.render(cams)
        Rn = rec.perturbations[k]
        v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
        pts = []
        for f in range(NKF):
            K = cams.K[f].double().numpy()
            c2w = cams.c2w[f].double().numpy()
            d = depth.depth[f].double().numpy()
            cam = np.stack([(u - K[0, 2]) / K[0, 0] * d, (v - K[1, 2]) / K[1, 1] * d, d], -1)
            R = c2w[:3, :3] @ Rn[f].numpy()
            world = cam @ R.T + c2w[:3, 3]
            pts.append(world[depth.valid[f].numpy()])
        pred = np.concatenate(pts)
        got = res.clouds[name].points.double().numpy()
        assert got.shape == pred.shape
        assert np.allclose(got, pred, atol=5e-4)

        s = rep.trajectories[k]
        assert s.name == name and s.num_frames == NKF and s.num_points == len(pred) and s.alignment == "umeyama"
        dp, dg = _nn(pred, gt), _nn(gt, pred)
        p, r, fs = _prf(dp, dg, rep.threshold)
        assert (s.precision, s.recall, s.fscore) == pytest.approx((p, r, fs), abs=2e-3)
        fvals = np.array([_prf(dp, dg, t)[2] for t in ths])
        auc = float(np.sum((fvals[1:] + fvals[:-1]) * np.diff(ths)) / 2 / (ths[-1] - ths[0]))
        assert s.auc == pytest.approx(auc, abs=2e-3)
        # RotErr by hand: each non-first camera is turned by NOISE degrees → (F - 1) · NOISE
        Rp = res.reconstructions[name].cameras.c2w.double()[:, :3, :3]
        Rg = cams.c2w.double()[:, :3, :3]
        ang = []
        for f in range(NKF):
            M = (Rp[0].T @ Rp[f]) @ (Rg[0].T @ Rg[f]).T
            ang.append(math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(M)) - 1) / 2)))))
        assert s.rot_err_deg == pytest.approx(sum(ang), abs=1e-3)
        assert s.rot_err_deg == pytest.approx((NKF - 1) * NOISE, abs=1e-3)
        assert s.trans_err == pytest.approx(0.0, abs=1e-4) and s.ate == pytest.approx(0.0, abs=1e-4)

    union = np.concatenate([res.clouds[n].points.double().numpy() for n in NAMES])
    p, r, fs = _prf(_nn(union, gt), _nn(gt, union), rep.threshold)
    assert (rep.overall["precision"], rep.overall["recall"], rep.overall["fscore"]) == pytest.approx(
        (p, r, fs), abs=2e-3
    )
    assert rep.overall["rot_err_deg"] == pytest.approx((NKF - 1) * NOISE, abs=1e-3)


def test_report_json_and_summary(run) -> None:
    rep = run[0].report
    d = json.loads(rep.to_json())
    assert d["scene"] == "room" and d["alignment"] == "anchors"
    assert [t["name"] for t in d["trajectories"]] == list(NAMES)
    assert d["trajectories"][0]["fscore"] == rep.trajectories[0].fscore
    assert d["overall"]["auc"] == rep.overall["auc"] and len(d["thresholds"]) == 20
    text = rep.summary()
    assert "eloop" in text and "overall" in text


def test_exact_oracle_scores_perfect_precision_and_icp_keeps_alignment(scene) -> None:
    progress = []
    res = evaluate_synthetic(
        scene,
        height=H,
        width=W,
        names=("up",),
        num_keyframes=3,
        alignment="icp",
        progress=lambda s, t: progress.append((s, t)),
    )
    s = res.report.trajectories[0]
    assert progress == [(1, 1)]
    assert s.alignment == "icp" and s.precision > 0.999 and s.rot_err_deg == pytest.approx(0.0, abs=1e-3)
    T = res.transforms["up"]
    assert T.s == pytest.approx(1.0, abs=2e-3)
    assert torch.allclose(T.R, torch.eye(3, dtype=torch.float64), atol=2e-3)


def test_benchmark_presets_default_names(scene) -> None:
    view = scene.default_view(H, W)
    trajs = benchmark_presets(view.cameras, view.median_depth)
    assert tuple(trajs) == BENCHMARK_TRAJECTORIES == ("eloop", "up", "left", "right")
    for cams in trajs.values():
        assert len(cams) == 21 and torch.allclose(cams.w2c[0], view.cameras.w2c[0])


def test_load_release_benchmark_trajectories(fixtures_dir: Path, scene) -> None:
    folder = fixtures_dir / "upstream_examples/examples/reconstruction/kitchen"
    raw = load_benchmark_trajectories(folder)
    assert tuple(raw) == BENCHMARK_TRAJECTORIES and all(len(c) == 21 for c in raw.values())
    first = scene.default_cameras(H, W)
    anchored = load_benchmark_trajectories(folder, first=first, scale=2.0)
    for name in BENCHMARK_TRAJECTORIES:
        a, r = anchored[name], raw[name]
        assert (a.height, a.width) == (H, W)
        assert torch.allclose(a.c2w[0].double(), first.c2w[0].double(), atol=1e-5)
        rel_a = torch.linalg.inv(a.c2w[0].double()) @ a.c2w.double()
        rel_r = torch.linalg.inv(r.c2w[0].double()) @ r.c2w.double()
        assert torch.allclose(rel_a[:, :3, :3], rel_r[:, :3, :3], atol=1e-5)
        assert torch.allclose(rel_a[:, :3, 3], 2.0 * rel_r[:, :3, 3], atol=1e-4)
    with pytest.raises(MissingFileError, match="not found"):
        load_benchmark_trajectories(folder, names=("spiral",))


def test_bad_inputs(scene) -> None:
    view = scene.default_view(H, W)
    trajs = benchmark_presets(view.cameras, view.median_depth, ("up",), num_keyframes=3)
    gt = scene.surface_points(trajs["up"])

    def gen(image, cameras, render, mask, references):
        return scene.render(cameras).rgb

    rec = OracleReconstructor(scene)
    with pytest.raises(InvalidOptionError, match="alignment"):
        evaluate_generation(gen, rec, view.image, trajs, gt, alignment="chamfer")
    with pytest.raises(InvalidInputError, match="no trajectories"):
        evaluate_generation(gen, rec, view.image, {}, gt)
    with pytest.raises(InvalidCameraError, match="resized"):
        evaluate_generation(gen, rec, view.image, {"up": trajs["up"].resized(42, 84)}, gt)
    with pytest.raises(InvalidTrajectoryError, match="moving camera"):
        evaluate_generation(gen, rec, view.image, {"still": trajs["up"][:1]}, gt)
    with pytest.raises(InvalidOptionError, match="threshold"):
        evaluate_generation(gen, rec, view.image, trajs, gt, threshold=-1.0)
    with pytest.raises(InvalidImageError, match="generator returned"):
        evaluate_generation(lambda *a: torch.zeros(2, H, W, 3), rec, view.image, trajs, gt)
    with pytest.raises(InvalidInputError, match="Reconstruction"):
        evaluate_generation(gen, lambda f, c: None, view.image, trajs, gt)
    with pytest.raises(ShapeMismatchError, match="multiples of 14"):
        OracleReconstructor(scene)(torch.zeros(3, 30, 56, 3), trajs["up"].resized(30, 56))
    with pytest.raises(InvalidOptionError, match="pose_noise_deg"):
        OracleReconstructor(scene, pose_noise_deg=-1)
