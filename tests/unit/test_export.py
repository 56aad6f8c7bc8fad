"""Exports read back by independent readers (open3d, plyfile, trimesh, imageio, hand parsers)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import (
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    MissingInputError,
    OutputPathError,
    ShapeMismatchError,
)
from worldstereo_core.export import (
    GLB_FROM_OPENCV,
    save_cameras_glb,
    save_colmap_text,
    save_pointcloud_ply,
    save_transforms_json,
    save_video_mp4,
)
from worldstereo_core.pointcloud import PointCloud
from worldstereo_core.tiny_configs import tiny_worldmirror_config


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues formula, independent of the code under test."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    Kx = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * Kx + (1 - np.cos(angle)) * Kx @ Kx


def _cameras(n: int = 5, seed: int = 0, shared_K: bool = True, H: int = 48, W: int = 64) -> Cameras:
    rng = np.random.default_rng(seed)
    w2c = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        # include a 180° rotation to exercise the quaternion branch away from w
        ang = np.pi if i == 1 else rng.uniform(-3, 3)
        w2c[i, :3, :3] = _rot(rng.normal(size=3), ang)
        w2c[i, :3, 3] = rng.normal(size=3)
    K = np.tile(np.array([[50.0, 0, W / 2], [0, 55.0, H / 2], [0, 0, 1]]), (n, 1, 1))
    if not shared_K:
        K[:, 0, 0] += np.arange(n)
    return Cameras(torch.from_numpy(w2c), torch.from_numpy(K), H, W)


def _cloud(n: int = 300, normals: bool = True, seed: int = 1) -> PointCloud:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, 3, generator=g, dtype=torch.float64)
    # colours on the 8-bit grid so the round trip is exact
    cols = torch.randint(0, 256, (n, 3), generator=g).double() / 255.0
    nrm = (
        torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1) if normals else None
    )
    return PointCloud(pts, cols, nrm)


# ---------------------------------------------------------------------------------------- PLY


@pytest.mark.parametrize("with_normals", [True, False])
def test_ply_read_by_open3d_and_plyfile(tmp_path: Path, with_normals: bool) -> None:
    import open3d as o3d
    from plyfile import PlyData

    cloud = _cloud(normals=with_normals)
    path = save_pointcloud_ply(tmp_path / "sub" / "cloud.ply", cloud)
    assert path.exists() and not list(path.parent.glob(".*tmp*"))

    pc = o3d.io.read_point_cloud(str(path))
    assert len(pc.points) == len(cloud)
    np.testing.assert_allclose(np.asarray(pc.points), cloud.points.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pc.colors), cloud.colors.numpy(), atol=1e-9)
    assert pc.has_normals() == with_normals
    if with_normals:
        np.testing.assert_allclose(np.asarray(pc.normals), cloud.normals.numpy(), atol=1e-6)

    ply = PlyData.read(str(path))
    v = ply["vertex"]
    assert v.count == len(cloud)
    assert ply.byte_order == "<" and not ply.text
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.round(cloud.colors.numpy() * 255).astype(np.uint8))
    names = {p.name for p in v.properties}
    assert ({"nx", "ny", "nz"} <= names) == with_normals


def test_ply_rejects_bad_input(tmp_path: Path) -> None:
    empty = PointCloud(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(InvalidInputError, match="empty"):
        save_pointcloud_ply(tmp_path / "a.ply", empty)
    bright = PointCloud(torch.zeros(2, 3), torch.full((2, 3), 200.0))
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        save_pointcloud_ply(tmp_path / "b.ply", bright)
    with pytest.raises(InvalidInputError, match="PointCloud"):
        save_pointcloud_ply(tmp_path / "c.ply", np.zeros((3, 3)))  # type: ignore[arg-type]
    with pytest.raises(OutputPathError, match="folder"):
        save_pointcloud_ply(tmp_path, _cloud())


def test_failed_write_leaves_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "c.ply"
    target.write_bytes(b"old")
    bright = PointCloud(torch.zeros(2, 3), torch.full((2, 3), 2.0))
    with pytest.raises(InvalidInputError):
        save_pointcloud_ply(target, bright)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------------------------------- GLB


def _glb_json(path: Path) -> dict:
    data = path.read_bytes()
    magic, version, total = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and total == len(data)
    n, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON" and n % 4 == 0
    return json.loads(data[20 : 20 + n])


def test_glb_points_and_frustums(tmp_path: Path) -> None:
    import trimesh

    cloud = _cloud(n=500, normals=False)
    cams_a = _cameras(4, seed=2)
    cams_b = _cameras(3, seed=3)
    path = save_cameras_glb(tmp_path / "scene.glb", cloud, [("orbit", cams_a), ("up", cams_b)], frustum_depth=0.5)

    scene = trimesh.load(str(path), force="scene")
    geoms = {name: scene.geometry[name] for name in scene.geometry}
    pcs = [g for g in geoms.values() if isinstance(g, trimesh.PointCloud)]
    assert len(pcs) == 1 and len(pcs[0].vertices) == 500
    S = GLB_FROM_OPENCV
    # undo the documented axis change: p_cv = S p_glb (S is its own inverse)
    back = np.asarray(pcs[0].vertices) @ S.T
    np.testing.assert_allclose(np.sort(back, axis=0), np.sort(cloud.points.numpy(), axis=0), atol=1e-5)
    got_rgb = np.asarray(pcs[0].colors)[:, :3]
    assert got_rgb.shape == (500, 3)
    # colours travel with their points: compare as sorted rows keyed by position
    order_file = np.lexsort(back.T)
    order_in = np.lexsort(cloud.points.numpy().T)
    np.testing.assert_array_equal(got_rgb[order_file], np.round(cloud.colors.numpy() * 255)[order_in])

    doc = _glb_json(path)
    line_meshes = {m["name"]: m for m in doc["meshes"] if m["primitives"][0]["mode"] == 1}
    assert set(line_meshes) == {"orbit", "up"}
    mats = [
        doc["materials"][line_meshes[n]["primitives"][0]["material"]]["pbrMetallicRoughness"]["baseColorFactor"]
        for n in ("orbit", "up")
    ]
    assert mats[0] != mats[1]

    for name, cams in (("orbit", cams_a), ("up", cams_b)):
        path3d = geoms[name]
        verts = np.asarray(path3d.vertices) @ S.T
        # camera centre = -Rᵀ t, from the input w2c
        w2c = cams.w2c.numpy()
        centers = -np.einsum("fji,fj->fi", w2c[:, :3, :3], w2c[:, :3, 3])
        for c in centers:
            assert np.min(np.linalg.norm(verts - c, axis=1)) < 1e-5
        # each far corner sits at z-depth 0.5 in its camera and projects onto an image corner
        for f in range(len(cams)):
            cam_pts = (w2c[f, :3, :3] @ verts.T).T + w2c[f, :3, 3]
            z_ok = np.abs(cam_pts[:, 2] - 0.5) < 1e-5
            uv = (cams.K.numpy()[f] @ cam_pts[z_ok].T).T
            uv = uv[:, :2] / uv[:, 2:]
            for corner in ([0, 0], [64, 0], [64, 48], [0, 48]):
                assert np.min(np.linalg.norm(uv - corner, axis=1)) < 1e-3
        # 10 segments per camera
        n_idx = doc["accessors"][line_meshes[name]["primitives"][0]["indices"]]["count"]
        assert n_idx == 20 * len(cams)


def test_glb_axis_convention_first_camera_looks_down_minus_z(tmp_path: Path) -> None:
    import trimesh

    cams = Cameras(torch.eye(4)[None], torch.tensor([[[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]]]), 12, 16)
    path = save_cameras_glb(tmp_path / "c.glb", None, [("t", cams)], frustum_depth=1.0)
    scene = trimesh.load(str(path), force="scene")
    verts = np.asarray(next(iter(scene.geometry.values())).vertices)
    # identity OpenCV camera: image plane in front (z = +1 in OpenCV) is at −Z in glTF,
    # and the top of the image (v = 0, y = −0.6 in OpenCV) is at +Y in glTF.
    far = verts[np.abs(verts[:, 2] + 1.0) < 1e-6]
    assert len(far) == 5  # 4 corners + up marker
    assert far[:, 1].max() > 0.6 - 1e-6 and np.isclose(far[:, 1].min(), -0.6, atol=1e-6)


def test_glb_max_points_and_errors(tmp_path: Path) -> None:
    import trimesh

    cloud = _cloud(n=1000, normals=False)
    path = save_cameras_glb(tmp_path / "p.glb", cloud, [], max_points=100)
    scene = trimesh.load(str(path), force="scene")
    pc = next(iter(scene.geometry.values()))
    assert len(pc.vertices) == 100
    # the subset consists of input points
    src = {tuple(np.round(p, 4)) for p in cloud.points.numpy()}
    assert all(tuple(np.round(p, 4)) in src for p in np.asarray(pc.vertices) @ GLB_FROM_OPENCV.T)

    with pytest.raises(MissingInputError, match="nothing to export"):
        save_cameras_glb(tmp_path / "x.glb", None, [])
    with pytest.raises(InvalidInputError, match="pair"):
        save_cameras_glb(tmp_path / "x.glb", None, [_cameras(2)])  # type: ignore[list-item]
    with pytest.raises(InvalidOptionError, match="frustum depth"):
        save_cameras_glb(tmp_path / "x.glb", None, [("a", _cameras(2))], frustum_depth=-1.0)
    with pytest.raises(ShapeMismatchError, match="colours"):
        save_cameras_glb(tmp_path / "x.glb", None, [("a", _cameras(2)), ("b", _cameras(2))], colors=[(1, 0, 0)])
    assert not (tmp_path / "x.glb").exists()


# ---------------------------------------------------------------------------------------- COLMAP


def _quat_to_R(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    """Hamilton quaternion → rotation (the formula COLMAP documents)."""
    return np.array(
        [
            [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)],
            [2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)],
            [2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)],
        ]
    )


def _parse_colmap(folder: Path) -> tuple[dict, dict, np.ndarray]:
    def data_lines(name: str) -> list[str]:
        return [ln for ln in (folder / name).read_text().splitlines() if ln and not ln.startswith("#")]

    cams = {}
    for ln in data_lines("cameras.txt"):
        tok = ln.split()
        assert tok[1] == "PINHOLE"
        cams[int(tok[0])] = (int(tok[2]), int(tok[3]), *map(float, tok[4:8]))
    images = {}
    raw = [ln for ln in (folder / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for first, second in zip(raw[0::2], raw[1::2]):
        tok = first.split()
        assert second.strip() == ""
        q = np.array(tok[1:5], float)
        t = np.array(tok[5:8], float)
        T = np.eye(4)
        T[:3, :3] = _quat_to_R(*q)
        T[:3, 3] = t
        images[tok[9]] = (int(tok[0]), int(tok[8]), T, q)
    pts = [ln.split() for ln in data_lines("points3D.txt")]
    return cams, images, np.array(pts, dtype=object) if pts else np.zeros((0, 8))


@pytest.mark.parametrize("shared", [True, False])
def test_colmap_round_trip(tmp_path: Path, shared: bool) -> None:
    cams = _cameras(6, seed=4, shared_K=shared)
    names = [f"frame_{i:04d}.png" for i in range(6)]
    cloud = _cloud(n=50, normals=False)
    folder = save_colmap_text(tmp_path / "sparse" / "0", cams, names, cloud)
    colmap_cams, images, pts = _parse_colmap(folder)
    assert len(colmap_cams) == (1 if shared else 6)
    assert list(images) == names
    for i, name in enumerate(names):
        img_id, cam_id, T, q = images[name]
        assert img_id == i + 1 and q[0] >= 0
        np.testing.assert_allclose(T, cams.w2c.numpy()[i], atol=1e-12)
        W, H, fx, fy, cx, cy = colmap_cams[cam_id]
        K = cams.K.numpy()[i]
        assert (W, H) == (64, 48)
        np.testing.assert_allclose([fx, fy, cx, cy], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    assert len(pts) == 50
    xyz = pts[:, 1:4].astype(float)
    rgb = pts[:, 4:7].astype(int)
    np.testing.assert_allclose(xyz, cloud.points.numpy(), rtol=1e-7, atol=1e-8)
    np.testing.assert_array_equal(rgb, np.round(cloud.colors.numpy() * 255).astype(int))
    assert [int(p) for p in pts[:, 0]] == list(range(1, 51))


def test_colmap_without_cloud_and_errors(tmp_path: Path) -> None:
    cams = _cameras(2)
    folder = save_colmap_text(tmp_path / "m", cams, ["a.png", "b.png"])
    assert _parse_colmap(folder)[2].shape[0] == 0
    with pytest.raises(ShapeMismatchError, match="one per camera"):
        save_colmap_text(tmp_path / "m", cams, ["a.png"])
    with pytest.raises(InvalidInputError, match="spaces"):
        save_colmap_text(tmp_path / "m", cams, ["a b.png", "c.png"])
    with pytest.raises(InvalidInputError, match="unique"):
        save_colmap_text(tmp_path / "m", cams, ["a.png", "a.png"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="not a folder"):
        save_colmap_text(tmp_path / "file", cams, ["a.png", "b.png"])
    with pytest.raises(InvalidInputError, match="Cameras"):
        save_colmap_text(tmp_path / "m", cams.w2c, ["a.png", "b.png"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- nerfstudio


@pytest.mark.parametrize("shared", [True, False])
def test_transforms_json(tmp_path: Path, shared: bool) -> None:
    cams = _cameras(4, seed=5, shared_K=shared)
    paths = [f"images/frame_{i:05d}.png" for i in range(4)]
    out = save_transforms_json(tmp_path / "transforms.json", cams, paths, ply_file_path="cloud.ply")
    doc = json.loads(out.read_text())
    assert [f["file_path"] for f in doc["frames"]] == paths
    assert doc["ply_file_path"] == "cloud.ply"
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    for i, fr in enumerate(doc["frames"]):
        c2w_gl = np.array(fr["transform_matrix"])
        np.testing.assert_allclose(c2w_gl, np.linalg.inv(cams.w2c.numpy()[i]) @ flip, atol=1e-12)
        src = doc if shared else fr
        K = cams.K.numpy()[i]
        assert (src["fl_x"], src["fl_y"], src["cx"], src["cy"]) == (K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        assert (src["w"], src["h"]) == (64, 48)
    assert ("fl_x" in doc) == shared
    with pytest.raises(ShapeMismatchError, match="one per camera"):
        save_transforms_json(tmp_path / "t.json", cams, paths[:2])


# ---------------------------------------------------------------------------------------- video


def test_mp4_round_trip(tmp_path: Path) -> None:
    import imageio.v3 as iio

    F, H, W = 5, 32, 48
    t = torch.linspace(0, 1, F)[:, None, None, None]
    frames = (torch.ones(F, H, W, 3) * t).float()
    path = save_video_mp4(tmp_path / "v" / "render.mp4", frames, fps=16)
    video = iio.imread(path, plugin="pyav") if _has_pyav() else np.stack(list(iio.imiter(path)))
    assert video.shape == (F, H, W, 3)
    means = video.reshape(F, -1).mean(1) / 255.0
    np.testing.assert_allclose(means, t.flatten().numpy(), atol=0.03)
    assert not list(path.parent.glob(".*tmp*"))


def test_mp4_odd_size_padded_and_numpy_input(tmp_path: Path) -> None:
    import imageio.v3 as iio

    frames = np.full((2, 15, 21, 3), 0.5, dtype=np.float32)
    path = save_video_mp4(tmp_path / "odd.mp4", frames)
    video = np.stack(list(iio.imiter(path)))
    assert video.shape == (2, 16, 22, 3)


def test_mp4_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match=r"\[F, H, W, 3\]"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(4, 8, 8))
    with pytest.raises(InvalidImageError, match="at least one"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(0, 8, 8, 3))
    with pytest.raises(InvalidImageError, match=r"\(x \+ 1\) / 2"):
        save_video_mp4(tmp_path / "a.mp4", -torch.ones(2, 8, 8, 3))
    with pytest.raises(InvalidImageError, match="NaN"):
        save_video_mp4(tmp_path / "a.mp4", torch.full((2, 8, 8, 3), float("nan")))
    with pytest.raises(InvalidOptionError, match="fps"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(2, 8, 8, 3), fps=0)
    assert not list(tmp_path.iterdir())


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_save_images_png_round_trip(tmp_path) -> None:
    from PIL import Image

    from worldstereo_core.export import save_images_png

    frames = torch.rand(3, 10, 14, 3, generator=torch.Generator().manual_seed(0))
    names = save_images_png(tmp_path / "images", frames)
    assert names == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == names  # no temp files left
    for i, n in enumerate(names):
        with Image.open(tmp_path / "images" / n) as im:
            assert im.mode == "RGB" and im.size == (14, 10)
            back = torch.from_numpy(np.asarray(im).copy()).float() / 255
        assert (back - frames[i]).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(InvalidImageError, match=r"\[F, H, W, 3\]"):
        save_images_png(tmp_path, frames[0])
    with pytest.raises(OutputPathError, match="prefix"):
        save_images_png(tmp_path, frames, prefix="../x")


# --------------------------------------------------------------------------------------------
# Gaussian-splat PLY

from worldstereo_core.export import SH_C0, gaussians_from_worldmirror, save_gaussian_ply  # noqa: E402

_GS_HEAD = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
_GS_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def _read_gs(path: Path):
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    assert ply.header.startswith("ply\nformat binary_little_endian 1.0")
    v = ply["vertex"]
    return v, [p.name for p in v.properties], {p.name: p.val_dtype for p in v.properties}


def _gaussians(n: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return {
        "means": rng.normal(size=(n, 3)),
        "quats": q * rng.uniform(0.5, 3.0, size=(n, 1)),  # not unit: the writer normalises
        "scales": rng.uniform(0.01, 0.5, size=(n, 3)),
        "opacities": np.array([0.0, 0.25, 0.5, 0.9, 1.0])[:n],
    }


def test_gaussian_ply_colors_every_property(tmp_path: Path) -> None:
    g = _gaussians()
    rgb = np.array([[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0.25], [0.2, 0.7, 0.9]])
    out = save_gaussian_ply(tmp_path / "sub" / "gs.ply", **g, colors=torch.tensor(rgb))
    v, names, dtypes = _read_gs(out)
    assert names == _GS_HEAD + _GS_TAIL  # degree 0: no f_rest
    assert all(np.dtype(t) == np.dtype("<f4") for t in dtypes.values())
    assert len(v.data) == 5
    col = lambda k: np.asarray(v[k], dtype=np.float64)
    np.testing.assert_allclose(np.stack([col(k) for k in "xyz"], 1), g["means"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.stack([col(k) for k in ("nx", "ny", "nz")], 1), 0)
    dc = np.stack([col(f"f_dc_{c}") for c in range(3)], 1)
    np.testing.assert_allclose(dc, (rgb - 0.5) / 0.28209479177387814, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(0.5 + SH_C0 * dc, rgb, atol=1e-6)  # viewer's decode gives the colour back
    np.testing.assert_allclose(
        np.stack([col(f"scale_{i}") for i in range(3)], 1), np.log(g["scales"]), rtol=1e-6, atol=1e-6
    )
    op = col("opacity")
    o = g["opacities"]
    np.testing.assert_allclose(op[1:4], np.log(o[1:4] / (1 - o[1:4])), atol=1e-5)
    assert np.isfinite(op).all() and op[0] < -13 and op[4] > 13  # 0 and 1 clipped, not ±inf
    np.testing.assert_allclose(1 / (1 + np.exp(-op)), o, atol=1e-5)
    rot = np.stack([col(f"rot_{i}") for i in range(4)], 1)
    np.testing.assert_allclose(rot, g["quats"] / np.linalg.norm(g["quats"], axis=1, keepdims=True), atol=1e-6)


def test_gaussian_ply_sh_degree2_channel_major_and_log_inputs(tmp_path: Path) -> None:
    n, K = 3, 9
    # Distinct, decodable values: sh[i, k, c] = 100 i + 10 k + c.
    sh = (100 * np.arange(n)[:, None, None] + 10 * np.arange(K)[None, :, None] + np.arange(3)[None, None, :]).astype(
        np.float64
    )
    g = _gaussians(n, seed=1)
    log_s = np.log(g["scales"])
    logits = np.array([-3.0, 0.0, 20.0])
    out = save_gaussian_ply(
        tmp_path / "gs.ply",
        g["means"],
        g["quats"],
        log_s,
        logits,
        sh=torch.tensor(sh),
        log_scales=True,
        opacity_logits=True,
    )
    v, names, _ = _read_gs(out)
    assert names == _GS_HEAD + [f"f_rest_{i}" for i in range(3 * (K - 1))] + _GS_TAIL
    for c in range(3):
        np.testing.assert_array_equal(v[f"f_dc_{c}"], sh[:, 0, c])
        for j in range(K - 1):
            # INRIA layout: f_rest index = channel · (K − 1) + coefficient
            np.testing.assert_array_equal(v[f"f_rest_{c * (K - 1) + j}"], sh[:, 1 + j, c])
    np.testing.assert_allclose(v["opacity"], logits)
    np.testing.assert_allclose(np.stack([v[f"scale_{i}"] for i in range(3)], 1), log_s, rtol=1e-6)


def test_gaussian_ply_errors_and_inputs_untouched(tmp_path: Path) -> None:
    g = _gaussians()
    rgb = np.full((5, 3), 0.5)
    before = {k: a.copy() for k, a in g.items()}
    save_gaussian_ply(tmp_path / "ok.ply", **g, colors=rgb)
    for k in g:
        np.testing.assert_array_equal(g[k], before[k])

    def bad(match: str, **kw) -> None:
        args = {**g, "colors": rgb, **kw}
        with pytest.raises(InvalidInputError, match=match):
            save_gaussian_ply(tmp_path / "bad.ply", **args)
        assert not (tmp_path / "bad.ply").exists()

    bad("exactly one", sh=np.zeros((5, 1, 3)))
    bad("exactly one", colors=None)
    bad(r"means must have shape", means=np.zeros((5, 2)))
    bad("N = 0", means=np.zeros((0, 3)))
    bad(r"quats must have shape \[5, 4\]", quats=np.ones((4, 4)))
    bad("zero quaternion", quats=np.concatenate([np.zeros((1, 4)), np.ones((4, 4))]))
    bad("must be > 0", scales=-g["scales"])
    bad(r"opacities must lie in \[0, 1\]", opacities=np.array([0.1, 0.2, 1.5, 0.3, 0.4]))
    bad("colours must lie", colors=rgb * 255)
    bad("NaN", means=np.full((5, 3), np.nan))
    bad(r"K = \(degree \+ 1\)", colors=None, sh=np.zeros((5, 5, 3)))


def test_gaussians_from_tiny_worldmirror(tmp_path: Path) -> None:
    from worldstereo_core.recon.worldmirror import WorldMirror, WorldMirrorOutput

    torch.manual_seed(0)
    cfg = tiny_worldmirror_config(enable_gs=True, sh_degree=1)
    model = WorldMirror(cfg).eval()
    B, S, H, W = 1, 2, 28, 28
    images = torch.rand(B, S, 3, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(images)
    sp = out.splats
    assert sp is not None and sp["means"].shape == (B, S, H, W, 3) and sp["sh"].shape == (B, S, H, W, 4, 3)

    mask = torch.rand(S, H, W, generator=torch.Generator().manual_seed(2)) > 0.3  # [S, H, W] with B = 1
    g = gaussians_from_worldmirror(out, mask)
    n_keep = int(mask.sum())
    assert g["means"].shape == (n_keep, 3) and g["sh"].shape == (n_keep, 4, 3)
    # Order is (b, s, y, x): the kept rows are exactly the masked pixels.
    torch.testing.assert_close(g["means"], sp["means"][0][mask])
    torch.testing.assert_close(g["opacities"], sp["opacities"][0][mask])
    path = save_gaussian_ply(tmp_path / "wm.ply", **g)
    v, names, _ = _read_gs(path)
    assert len(v.data) == n_keep
    assert names == _GS_HEAD + [f"f_rest_{i}" for i in range(9)] + _GS_TAIL
    np.testing.assert_allclose(
        np.stack([v[f"scale_{i}"] for i in range(3)], 1), np.log(sp["scales"][0][mask].numpy()), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(v["f_dc_1"], sp["sh"][0][mask][:, 0, 1].numpy(), rtol=1e-5, atol=1e-5)

    assert len(gaussians_from_worldmirror(out)["means"]) == B * S * H * W  # no mask: every pixel
    with pytest.raises(ShapeMismatchError, match="mask must have shape"):
        gaussians_from_worldmirror(out, torch.ones(S, H, W + 1, dtype=torch.bool))
    with pytest.raises(MissingInputError, match="no Gaussian splats"):
        gaussians_from_worldmirror(WorldMirrorOutput())
    with pytest.raises(MissingInputError, match="camera head"):
        gaussians_from_worldmirror(WorldMirrorOutput(splats={k: v for k, v in sp.items() if k != "means"}))
