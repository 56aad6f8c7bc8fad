"""Per-trajectory starts (input view, continuation, any bank view) and prompts in the scene loop.

The oracle renders the synthetic scene exactly, so a clip started from the wrong image or camera
shows up in the frames the generator is asked for, and in the merged cloud's score.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import InvalidInputError, InvalidTrajectoryError
from worldstereo_core.interfaces import (
    START_CONTINUE,
    LoopConfig,
    TrajectorySpec,
    parse_start,
    trajectory_specs,
)
from worldstereo_core.memory import MemoryBank
from worldstereo_core.metrics import pointcloud_prf
from worldstereo_core.oracle import OracleDepth
from worldstereo_core.pipeline import run_scene_loop, steps_report
from worldstereo_core.synthetic import make_scene
from worldstereo_core.trajectory import WONDER_LEAD_IN, make_preset

H, W = 48, 80
CFG = LoopConfig(radius=0.08)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Recorder:
    """The oracle, remembering what each clip was asked with (image, cameras, render, prompt)."""

    def __init__(self, scene):
        self.scene, self.calls = scene, []

    def __call__(self, image, cameras, render, mask, references, **kw):
        self.calls.append(dict(image=image.clone(), cameras=cameras, render=render.clone(), mask=mask.clone(), **kw))
        return self.scene.render(cameras).rgb


def test_start_and_prompt_parsing_and_validation():
    assert [parse_start(v) for v in ("", "input", "continue", "3", "view:12", 4)] == [
        "input",
        "input",
        "continue",
        3,
        12,
        4,
    ]
    for bad in ("view:x", "-1", -2, True, "next"):
        with pytest.raises(InvalidTrajectoryError):
            parse_start(bad)
    specs = trajectory_specs(["orbit", "up"], starts=["input", "continue"], prompts=["a hall", ""])
    assert specs == (TrajectorySpec("orbit", "input", "a hall"), TrajectorySpec("up", START_CONTINUE, None))
    with pytest.raises(InvalidTrajectoryError, match="3 prompts for 2 trajectories"):
        trajectory_specs(["orbit", "up"], prompts=["a", "b", "c"])
    with pytest.raises(InvalidTrajectoryError, match="first trajectory cannot 'continue'"):
        trajectory_specs(["orbit", "up"], starts=["continue", "input"])


def test_continuation_starts_from_the_previous_clips_last_frame_and_camera():
    scene = make_scene("room", seed=0)
    view = scene.default_view(H, W)
    gen = Recorder(scene)
    specs = [TrajectorySpec("orbit"), TrajectorySpec("right", START_CONTINUE), TrajectorySpec("up")]
    loop = run_scene_loop(view.image, view.cameras, view.depth, gen, OracleDepth(scene), specs, CFG, valid=view.valid)
    first, second, third = loop.steps
    # the second clip opens on the first clip's last frame, at its camera (the release's traj1)
    last_cam = first.keyframes[len(first.keyframes) - 1 :]
    assert torch.equal(gen.calls[1]["image"][0], first.frames[-1])
    torch.testing.assert_close(second.keyframes.w2c[0], last_cam.w2c[0])
    torch.testing.assert_close(second.trajectory.w2c[0], last_cam.w2c[0])
    assert torch.equal(gen.calls[1]["render"][0], first.frames[-1]) and float(gen.calls[1]["mask"][0].max()) == 0.0
    # the right turn is planned about the new view: it is not the input view's right turn
    from_input = make_preset("right", view.cameras, loop.median_depth, CFG.num_frames)
    assert not torch.allclose(second.trajectory.w2c[-1], from_input.w2c[-1], atol=1e-3)
    # the third is back at the input view
    assert torch.equal(gen.calls[2]["image"], view.image.reshape(1, H, W, 3).float())
    torch.testing.assert_close(third.keyframes.w2c[0], view.cameras.w2c[0])
    assert [s["start"] for s in steps_report(loop.steps)] == ["input", "continue", "input"]
    # the oracle's frames at those cameras still merge into the true surface
    gt = scene.surface_points(loop.cameras)
    assert pointcloud_prf(loop.cloud.points, gt.points, 0.01 * scene.extent)[2] > 0.95


def test_per_trajectory_prompts_reach_the_generator_and_default_to_the_scene_prompt():
    scene = make_scene("outdoor", seed=1)
    view = scene.default_view(H, W)
    gen = Recorder(scene)
    specs = trajectory_specs(["orbit", "up"], prompts=["a stone bridge", ""])
    loop = run_scene_loop(view.image, view.cameras, view.depth, gen, OracleDepth(scene), specs, CFG, valid=view.valid)
    assert gen.calls[0]["prompt"] == "a stone bridge"
    assert "prompt" not in gen.calls[1]  # no own prompt: the generator keeps its scene prompt
    assert [s.prompt for s in loop.steps] == ["a stone bridge", None]


def test_any_bank_view_can_start_a_clip():
    scene = make_scene("room", seed=0)
    view = scene.default_view(H, W)
    # a bank of three views at another size (the panorama's views are 832×480)
    turn = make_preset("pan", view.cameras, 2.0, 3, angle=60.0).cameras.resized(60, 100)
    bank = MemoryBank.from_views(scene.render(turn).rgb, turn, labels=["v0", "v1", "v2"])
    gen = Recorder(scene)
    loop = run_scene_loop(
        view.image,
        view.cameras,
        view.depth,
        gen,
        OracleDepth(scene),
        [TrajectorySpec("wonder", 2), TrajectorySpec("orbit", "view:1")],
        CFG,
        valid=view.valid,
        bank=bank,
    )
    for call, step, i in zip(gen.calls, loop.steps, (2, 1)):
        cam = Cameras(bank.w2c[i : i + 1], bank.K[i : i + 1], 60, 100).resized(H, W)
        torch.testing.assert_close(step.keyframes.w2c[0], cam.w2c[0])
        torch.testing.assert_close(step.keyframes.K[0], cam.K[0])
        assert call["image"].shape == (1, H, W, 3)
        # the opening frame is that view's picture, resized (the oracle's render of the view at H × W)
        want = scene.render(cam).rgb[0]
        assert (call["image"][0] - want).abs().mean() < 0.08
        assert (call["image"][0] - view.image.reshape(H, W, 3)).abs().mean() > 0.05
    assert [s.start for s in loop.steps] == [2, 1]


def test_bad_starts_fail_before_the_first_clip():
    scene = make_scene("room", seed=0)
    view = scene.default_view(H, W)
    gen = Recorder(scene)
    with pytest.raises(InvalidInputError, match=r"start view\(s\) \[3\].*1 views"):
        run_scene_loop(
            view.image,
            view.cameras,
            view.depth,
            gen,
            OracleDepth(scene),
            [TrajectorySpec("orbit"), TrajectorySpec("up", 3)],
            CFG,
            valid=view.valid,
        )
    with pytest.raises(InvalidTrajectoryError, match="cannot 'continue'"):
        run_scene_loop(
            view.image,
            view.cameras,
            view.depth,
            gen,
            OracleDepth(scene),
            [TrajectorySpec("orbit", "continue")],
            CFG,
            valid=view.valid,
        )
    assert gen.calls == []


def test_wonder_walks_level_after_rising_and_tilting():
    """The release's panorama walks (wonder_*/traj0, traj1), against hand geometry."""
    from scipy.spatial.transform import Rotation

    c2w0 = np.eye(4)
    c2w0[:3, :3] = Rotation.from_euler("x", -20, degrees=True).as_matrix()  # a view tilted up by 20°
    c2w0[:3, 3] = [1.0, -0.5, 2.0]
    K = torch.tensor([[50.0, 0, 40], [0, 50.0, 24], [0, 0, 1]])[None]
    first = Cameras(torch.linalg.inv(torch.as_tensor(c2w0))[None].float(), K, H, W)
    m = 3.0
    up = np.array([0.0, -1.0, 0.0])
    ahead = np.array([0.0, 0.0, 1.0])  # levelled forward of a camera pitched about x
    walk = make_preset("wonder", first, m, 81, world_up=up, distance=1.5)
    c = walk.cameras.c2w.double().numpy()
    np.testing.assert_allclose(c[:, :3, :3], np.repeat(c2w0[None, :3, :3], 81, 0), atol=1e-5)  # the view is kept
    np.testing.assert_allclose(c[-1, :3, 3], c2w0[:3, 3] + 1.5 * m * ahead, atol=1e-4)  # level, not along the tilt
    np.testing.assert_allclose(c[40, :3, 3], c2w0[:3, 3] + 0.75 * m * ahead, atol=1e-4)

    fly = make_preset("wonder", first, m, 81, world_up=up, distance=1.5, rise=0.1, pitch=30.0)
    c = fly.cameras.c2w.double().numpy()
    k = int(WONDER_LEAD_IN * 80)  # end of the lead-in: risen and tilted, not yet walked
    np.testing.assert_allclose(c[k, :3, 3], c2w0[:3, 3] + 0.1 * m * up, atol=1e-4)
    tilt = Rotation.from_matrix(c2w0[:3, :3].T @ c[k, :3, :3]).as_euler("xyz", degrees=True)
    np.testing.assert_allclose(tilt, [-30.0, 0.0, 0.0], atol=1e-3)  # −x rotation = looking down (y is down)
    np.testing.assert_allclose(c[-1, :3, 3], c2w0[:3, 3] + 0.1 * m * up + 1.5 * m * ahead, atol=1e-4)
    with pytest.raises(InvalidTrajectoryError, match="rise"):
        make_preset("wonder", first, m, 81, rise=-1.0)
