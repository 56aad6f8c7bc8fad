"""The command line runs the loop headless and writes what it promises."""

from __future__ import annotations

import json

import torch

from testsupport import write_room_cloud_and_camera
from worldstereo_core import cli, pointcloud, render


def test_preview_writes_cloud_scene_videos_and_metrics(tmp_path, capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = cli.main(
            [
                "preview",
                "--scene",
                "room",
                "--out",
                str(tmp_path),
                "--trajectories",
                "orbit",
                "--height",
                "64",
                "--width",
                "96",
            ]
        )
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {"merged_cloud.ply", "scene.glb", "metrics.json", "ggm_render_orbit.mp4", "frames_orbit.mp4"} <= names
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["scores"]["fscore"] > 0.9 and [t["name"] for t in report["trajectories"]] == ["orbit"]
    assert len(pointcloud.load_ply(tmp_path / "merged_cloud.ply")) == report["trajectories"][0]["cache_points"]
    assert "F-score" in capsys.readouterr().out


def test_render_command_and_bad_input_exit_code(tmp_path, capsys):
    _, cloud, traj, _, _ = write_room_cloud_and_camera(tmp_path)
    assert cli.main(["render", str(tmp_path / "c.ply"), str(tmp_path / "camera.json"), str(tmp_path / "r.mp4")]) == 0
    assert (tmp_path / "r.mp4").stat().st_size > 0
    # the first pose is the input camera: the render there covers what the cloud covers
    out = render.render_point_cloud(cloud, traj.cameras[:1])
    assert float(out.mask.mean()) < 0.2
    (tmp_path / "bad.json").write_text('{"extrinsic": []}')
    assert cli.main(["render", str(tmp_path / "c.ply"), str(tmp_path / "bad.json"), str(tmp_path / "x.mp4")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
