"""The scene inspector's wire format (worldstereo_core.scene_codec): round trips through the
Python reader, budgets as uniform prefixes, thumbnails, retrieval links, bounds — and the
browser's reader (web/js/scene_data.js, run under node) decoding bytes written here."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from testsupport import REPO_ROOT, identity_camera, random_cloud
from worldstereo_core import cameras as cam_lib
from worldstereo_core import scene_codec as codec
from worldstereo_core import trajectory as traj_lib
from worldstereo_core.errors import InvalidCameraError, InvalidPointCloudError, InvalidTrajectoryError, WorldStereoError
from worldstereo_core.memory import MemoryBank

_cloud, _camera = random_cloud, identity_camera


def test_blob_round_trip_points_cameras_keyframes():
    cloud = _cloud(1000)
    traj = traj_lib.make_preset("orbit", _camera(), 2.0)
    data = codec.encode(cloud, [traj], max_points=5000)
    h = codec.decode(data)
    assert data[:4] == b"WSI1" and len(data) % 4 == 0
    p = h["points"]
    assert p["count"] == p["total"] == 1000
    span = np.array(p["bbox_max"]) - np.array(p["bbox_min"])
    np.testing.assert_allclose(
        span, (cloud.points.max(0).values - cloud.points.min(0).values).double().numpy(), rtol=1e-6
    )
    # the points travel in the registry's random order; quantisation error at most half a step
    order = codec.subsample_order(1000, codec.HARD_MAX_POINTS)
    assert sorted(order.tolist()) == list(range(1000))
    cloud = cloud.select(order)
    err = np.abs(h["points_xyz"] - cloud.points.double().numpy())
    assert (err <= span / 65535 / 2 + 1e-6).all()
    assert np.abs(h["points_rgb"].astype(int) - np.rint(cloud.colors.numpy() * 255)).max() == 0
    t = h["trajectories"][0]
    assert (t["first"], t["count"], t["height"], t["width"]) == (0, 81, 48, 64)
    assert t["keyframes"] == list(range(0, 81, 4))
    np.testing.assert_allclose(h["cameras_w2c"], traj.w2c.double().numpy(), atol=1e-6)
    np.testing.assert_allclose(h["cameras_K"], traj.K.double().numpy(), rtol=1e-6)
    # nine bytes per point plus a small header and the cameras
    assert len(data) - 9 * 1000 - 81 * 25 * 4 < 1024


def test_budget_is_a_uniform_prefix_deterministic_without_duplicates():
    cloud = _cloud(5000)
    scene = codec.encode_scene(cloud)
    d1, d2 = scene.blob(700), codec.encode(cloud, max_points=700)
    assert d1 == d2  # same cloud, same preview
    h = codec.decode(d1)
    assert h["points"]["count"] == 700 and h["points"]["total"] == h["points"]["stored"] == 5000
    # every shown point is an original point (exact subset up to quantisation, no averaging)
    from scipy.spatial import cKDTree

    span = np.linalg.norm(np.array(h["points"]["bbox_max"]) - np.array(h["points"]["bbox_min"]))
    dist, idx = cKDTree(cloud.points.double().numpy()).query(h["points_xyz"])
    assert dist.max() <= span / 65535 and len(set(idx.tolist())) == 700
    # a smaller budget is a prefix of a larger one, so changing it never reshuffles the view
    small = codec.decode(scene.blob(300))
    np.testing.assert_array_equal(small["points_xyz"], h["points_xyz"][:300])
    # and the prefix is spread over the whole cloud, not one corner (uniform subsample)
    lo, hi = cloud.points.min(0).values.numpy(), cloud.points.max(0).values.numpy()
    mid = (lo + hi) / 2
    octant = ((small["points_xyz"] > mid) * [1, 2, 4]).sum(1)
    assert np.bincount(octant, minlength=8).min() > 300 / 8 * 0.5
    # a budget over the stored points returns them all
    assert codec.decode(scene.blob(codec.HARD_MAX_POINTS))["points"]["count"] == 5000


def test_memory_bank_thumbnails():
    from PIL import Image

    from worldstereo_core.memory import MemoryBank

    cam = _camera(48, 64)
    red = torch.zeros(48, 64, 3)
    red[..., 0] = 1.0
    blue = torch.zeros(300, 200, 3)
    blue[..., 2] = 1.0
    K2 = cam_lib.intrinsics_from_fov(60.0, 300, 200)[None]
    bank = MemoryBank(
        frames=(red, blue),
        w2c=torch.eye(4).expand(2, 4, 4).clone(),
        K=torch.cat([cam.K, K2]).float(),
        sources=("input", "pano:01"),
    )
    h = codec.decode(codec.encode(None, [], memory=bank))
    assert h["memory"]["labels"] == ["input", "pano:01"] and h["memory"]["sizes"] == [[48, 64], [300, 200]]
    a, b = (Image.open(io.BytesIO(t)) for t in h["thumbnails"])
    assert a.format == "JPEG" and a.size == (64, 48) and b.size == (107, 160)  # longer side ≤ 160
    ra, rb = np.asarray(a.convert("RGB")).mean((0, 1)), np.asarray(b.convert("RGB")).mean((0, 1))
    assert ra[0] > 240 and ra[2] < 15 and rb[2] > 240 and rb[0] < 15
    # a Cameras batch has no frames: frustums only
    assert codec.decode(codec.encode(None, [], memory=cam))["memory"]["thumbnails"] is None


def test_memory_and_retrieval_links():
    from worldstereo_core import retrieval as ret_lib

    cam = _camera()
    traj = traj_lib.make_preset("left", cam, 2.0)
    bank = cam_lib.Cameras.cat([cam, traj.keyframes()[10:11], traj.keyframes()[20:21]])
    picked = bank[torch.tensor([0, 2])]
    r = ret_lib.References(
        images=(torch.zeros(48, 64, 3),) * 2,
        w2c=picked.w2c,
        K=picked.K,
        ref_index=torch.tensor([0, 11]),
        bank_indices=torch.tensor([0, 2]),
        sources=("a", "b"),
        scores=torch.tensor([0.9, 0.5]),
        assignment=torch.tensor([0] * 11 + [2] * 9),
        slots=torch.arange(1, 21),
    )
    h = codec.decode(codec.encode(None, [traj], memory=bank, retrieval=[r]))
    assert h["points"] is None
    m = h["memory"]
    assert (m["first"], m["count"]) == (81, 3) and m["sizes"] == [[48, 64]] * 3
    np.testing.assert_allclose(h["cameras_w2c"][81 + 1], traj.keyframes().w2c[10].numpy(), atol=1e-6)
    links = h["retrieval"][0]["links"]
    assert len(links) == 20
    assert links[0] == {"slot": 1, "pose": 4, "ref": 0, "score": pytest.approx(0.9)}
    assert links[11]["pose"] == 48 and links[11]["ref"] == 2 and links[11]["score"] == pytest.approx(0.5)
    assert links[12]["score"] is None  # only the first keyframe choosing a reference has its score
    # References made by hand (no assignment): first choices only, no scores
    from dataclasses import replace

    refs = replace(r, scores=None, assignment=None, slots=None)
    h = codec.decode(codec.encode(None, [traj], memory=bank, retrieval=[refs]))
    assert h["retrieval"][0]["links"] == [
        {"slot": 1, "pose": 4, "ref": 0, "score": None},
        {"slot": 12, "pose": 48, "ref": 2, "score": None},
    ]
    with pytest.raises(InvalidTrajectoryError, match="must be References"):
        codec.encode(None, [traj], memory=bank, retrieval=[object()])


@pytest.mark.parametrize("num_poses", [2, 41, 101])
def test_retrieval_links_point_at_the_models_keyframes(num_poses):
    """Links and keyframe marks use the keyframes the model and the retrieval use (41 poses:
    every 2nd pose, 101: every 5th), not a fixed stride of 4."""
    from worldstereo_core import retrieval as ret_lib

    cam = _camera()
    traj = traj_lib.make_preset("left", cam, 2.0, num_frames=num_poses)
    kf = traj_lib.keyframe_indices(num_poses).tolist()
    bank = traj.cameras[torch.as_tensor(kf[::-1])]  # bank view b shows keyframe pose kf[-1 - b]
    frames = torch.zeros(len(bank), cam.height, cam.width, 3)
    r = ret_lib.retrieve(traj, MemoryBank.from_views(frames, bank), max_refs=21)
    h = codec.decode(codec.encode(None, [traj], memory=bank, retrieval=[r]))
    assert h["trajectories"][0]["keyframes"] == kf
    links = h["retrieval"][0]["links"]
    assert [link["slot"] for link in links] == list(range(1, len(kf)))
    assert [link["pose"] for link in links] == kf[1:] == r.poses.tolist()
    assert all(kf[-1 - link["ref"]] == link["pose"] for link in links)  # each keyframe links to its own view


@pytest.mark.parametrize("bad", [0, -5, codec.HARD_MAX_POINTS + 1, True, 2.5, "100"])
def test_bad_budget_raises(bad):
    with pytest.raises(InvalidPointCloudError, match="max_points"):
        codec.encode(_cloud(10), max_points=bad)


def test_bad_inputs_raise_actionable_errors():
    with pytest.raises(InvalidPointCloudError, match="PointCloud"):
        codec.encode(torch.zeros(5, 3))
    with pytest.raises(InvalidTrajectoryError, match="Trajectory or a Cameras"):
        codec.encode(None, [torch.eye(4)])
    with pytest.raises(InvalidCameraError, match="MemoryBank or a Cameras"):
        codec.encode(None, [], memory=[1, 2])
    traj = traj_lib.make_preset("up", _camera(), 1.0, num_frames=5)
    with pytest.raises(InvalidTrajectoryError, match="at most"):
        codec.encode(None, [traj] * (codec.MAX_POSES // 5 + 1))
    from worldstereo_core import retrieval as ret_lib

    r = ret_lib.References(
        images=(torch.zeros(48, 64, 3),),
        w2c=torch.eye(4)[None],
        K=_camera().K,
        ref_index=torch.tensor([0]),
        bank_indices=torch.tensor([3]),
        sources=("x",),
        scores=torch.tensor([1.0]),
        assignment=torch.tensor([3]),
        slots=torch.tensor([1]),
    )
    with pytest.raises(InvalidCameraError, match="memory bank the retrieval"):
        codec.encode(None, [traj], memory=_camera(), retrieval=r)
    with pytest.raises(InvalidTrajectoryError, match="one trajectory per retrieval"):
        codec.encode(None, [], memory=_camera(), retrieval=[r])
    assert issubclass(InvalidPointCloudError, WorldStereoError)


# ---------------------------------------------------------------------------------------------
# the browser's reader on bytes written by Python
# ---------------------------------------------------------------------------------------------

# Decodes a blob file with web/js/scene_data.js (the module the frontend loads) and prints what
# the inspector draws: every camera, the dequantised points, colours, header parts, thumbnails.
_NODE_SCRIPT = """
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
const { decodeScene } = await import(pathToFileURL(process.argv[2]).href);
const buf = readFileSync(process.argv[3]);
const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
const s = decodeScene(ab);
const p = s.points;
const xyz = [];
if (p) for (let i = 0; i < p.count; i++) for (let a = 0; a < 3; a++)
  xyz.push(p.bboxMin[a] + p.positions[3 * i + a] / 65535 * (p.bboxMax[a] - p.bboxMin[a]));
const thumbs = [];
for (const t of (s.memory ? s.memory.thumbnails : [])) thumbs.push(Array.from(new Uint8Array(await t.arrayBuffer())));
console.log(JSON.stringify({
  cameras: s.cameras.map((c) => [Array.from(c.w2c), Array.from(c.K)]),
  points: p ? { count: p.count, total: p.total, stored: p.stored, xyz, rgb: Array.from(p.colors) } : null,
  trajectories: s.trajectories.map((t) => ({ name: t.name, keyframes: t.keyframes, poses: t.poses.length })),
  memory: s.memory ? { labels: s.memory.labels, sizes: s.memory.sizes, poses: s.memory.poses.length } : null,
  retrieval: s.retrieval, thumbs, bytes: s.bytes,
}));
"""


def test_javascript_reader_decodes_python_bytes(tmp_path):
    """web/js/scene_data.js (what the browser runs) reads the blob exactly as the Python reader
    does: cameras, dequantised points, colours, keyframes, memory, links and thumbnails."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (JavaScript runtime) is not installed; the browser tests cover the reader")
    from worldstereo_core.retrieval import retrieve

    cam = _camera()
    traj = traj_lib.make_preset("left", cam, 2.0, num_frames=41)
    g = torch.Generator().manual_seed(3)
    views = traj.cameras[torch.tensor([0, 10, 20, 30, 40])]
    bank = MemoryBank.from_views(torch.rand(5, 48, 64, 3, generator=g), views)
    refs = retrieve(traj, bank)
    data = codec.encode(_cloud(777, seed=5), [traj], memory=bank, retrieval=[refs], max_points=500, title="js")
    (tmp_path / "scene.bin").write_bytes(data)
    (tmp_path / "decode.mjs").write_text(_NODE_SCRIPT)
    out = subprocess.run(
        [node, str(tmp_path / "decode.mjs"), str(REPO_ROOT / "web/js/scene_data.js"), str(tmp_path / "scene.bin")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    js = json.loads(out.stdout)
    py = codec.decode(data)
    assert js["bytes"] == len(data)
    cams = np.array([w + k for w, k in js["cameras"]])
    assert cams.shape == (41 + 5, 25)
    np.testing.assert_array_equal(cams[:, :16].reshape(-1, 4, 4), py["cameras_w2c"])  # same float32 values
    np.testing.assert_array_equal(cams[:, 16:].reshape(-1, 3, 3), py["cameras_K"])
    np.testing.assert_allclose(cams[:41, :16].reshape(-1, 4, 4), traj.w2c.double().numpy(), atol=1e-6)
    p = js["points"]
    assert (p["count"], p["total"], p["stored"]) == (500, 777, 777)
    np.testing.assert_allclose(np.array(p["xyz"]).reshape(-1, 3), py["points_xyz"], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.array(p["rgb"], dtype=np.uint8).reshape(-1, 3), py["points_rgb"])
    assert js["trajectories"] == [{"name": traj.name, "keyframes": traj_lib.keyframe_indices(41).tolist(), "poses": 41}]
    assert js["memory"] == {"labels": list(bank.sources), "sizes": [[48, 64]] * 5, "poses": 5}
    assert js["retrieval"] == py["retrieval"]
    links = js["retrieval"][0]["links"]
    assert [link["pose"] for link in links] == refs.poses.tolist() == list(range(2, 41, 2))
    assert [bytes(t) for t in js["thumbs"]] == py["thumbnails"]
