"""MemoryBank and Cache3D: immutability, the release's update rule, atomic save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import worldstereo_core.memory as memory
from worldstereo_core.cameras import Cameras
from worldstereo_core.errors import (
    CorruptFileError,
    InvalidCameraError,
    InvalidImageError,
    InvalidInputError,
    InvalidOptionError,
    MissingFileError,
    OutputPathError,
    ShapeMismatchError,
)
from worldstereo_core.memory import Cache3D, MemoryBank, keyframe_update_indices
from worldstereo_core.pointcloud import PointCloud

K = torch.tensor([[20.0, 0, 8], [0, 20, 6], [0, 0, 1]])


def _cams(n: int, h: int = 12, w: int = 16) -> Cameras:
    w2c = torch.eye(4).repeat(n, 1, 1)
    w2c[:, 0, 3] = -torch.arange(n, dtype=torch.float32) * 0.1
    return Cameras(w2c, K.expand(n, 3, 3), h, w)


def _bank() -> MemoryBank:
    g = torch.Generator().manual_seed(0)
    return MemoryBank.from_image(torch.rand(1, 12, 16, 3, generator=g), K=K)


def test_keyframe_update_indices_match_release_rule():
    # Hand-derived from the rule: skip frame 0, end on the last frame, spare frames spread
    # over the start offset and the gaps with the larger steps first.
    assert keyframe_update_indices(21, 8) == [3, 6, 9, 12, 14, 16, 18, 20]
    assert keyframe_update_indices(81, 8) == [10, 20, 30, 40, 50, 60, 70, 80]
    assert keyframe_update_indices(9, 8) == list(range(1, 9))
    assert keyframe_update_indices(20, 8) == [3, 6, 9, 11, 13, 15, 17, 19]
    for f in range(9, 100):
        idx = keyframe_update_indices(f, 8)
        steps = np.diff([0] + idx)
        assert idx[-1] == f - 1 and len(set(idx)) == 8 and idx[0] >= 1
        assert steps.max() - steps.min() <= 1 and (np.diff(steps) <= 0).all()
    with pytest.raises(InvalidOptionError, match="at most 7"):
        keyframe_update_indices(8, 8)


def test_update_returns_new_bank_and_keeps_old():
    bank = _bank()
    w_before = bank.w2c.clone()
    frames = torch.rand(21, 12, 16, 3)
    cams = _cams(21)
    new = bank.update(frames, cams, "traj0")
    assert len(bank) == 1 and bank.sources == ("input",)
    torch.testing.assert_close(bank.w2c, w_before)
    assert len(new) == 9
    assert new.sources[1:] == tuple(f"traj0:kf{i}" for i in [3, 6, 9, 12, 14, 16, 18, 20])
    torch.testing.assert_close(new.w2c[1:], cams.w2c[[3, 6, 9, 12, 14, 16, 18, 20]].to(new.w2c.dtype))
    assert torch.equal(new.frames[2], frames[6])
    assert new.frames[0] is bank.frames[0]  # unchanged tensors are shared, not copied
    # Updating the new bank does not touch it either.
    newer = new.update(frames, cams, "traj1")
    assert len(new) == 9 and len(newer) == 17


def test_from_views_and_sizes_and_subset():
    cams = _cams(3, 12, 16)
    bank = MemoryBank.from_views(torch.rand(3, 12, 16, 3), cams, ["pano:00", "pano:01", "pano:02"])
    big = MemoryBank.from_image(np.random.rand(24, 32, 3).astype(np.float32), K=K * 2)
    assert bank.sizes.tolist() == [[12, 16]] * 3
    mixed = MemoryBank(
        bank.frames + big.frames,
        torch.cat([bank.w2c, big.w2c.float()]),
        torch.cat([bank.K, big.K.float()]),
        bank.sources + big.sources,
    )
    assert mixed.sizes.tolist() == [[12, 16]] * 3 + [[24, 32]]
    sub = mixed.subset([3, 0])
    assert sub.sources == ("input", "pano:00") and sub.frames[0].shape == (24, 32, 3)
    assert MemoryBank.from_views(torch.rand(2, 12, 16, 3), _cams(2)).sources == ("view:00", "view:01")


def test_bank_validation_errors():
    img = torch.rand(12, 16, 3)
    with pytest.raises(ShapeMismatchError, match="counts disagree"):
        MemoryBank((img, img), torch.eye(4)[None], K[None], ("a", "b"))
    with pytest.raises(InvalidImageError, match=r"\[H, W, 3\]"):
        MemoryBank((torch.rand(12, 16),), torch.eye(4)[None], K[None], ("a",))
    bad = img.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InvalidImageError, match="NaN"):
        MemoryBank((bad,), torch.eye(4)[None], K[None], ("a",))
    with pytest.raises(InvalidImageError, match=r"\[0, 1\]"):
        MemoryBank((img * 255,), torch.eye(4)[None], K[None], ("a",))
    with pytest.raises(InvalidCameraError, match="rigid"):
        MemoryBank((img,), 2 * torch.eye(4)[None], K[None], ("a",))
    with pytest.raises(InvalidCameraError, match="NaN"):
        MemoryBank((img,), torch.full((1, 4, 4), float("nan")), K[None], ("a",))
    with pytest.raises(InvalidCameraError, match="zero focal"):
        MemoryBank((img,), torch.eye(4)[None], torch.zeros(1, 3, 3), ("a",))
    with pytest.raises(InvalidInputError, match="at least one"):
        MemoryBank((), torch.zeros(0, 4, 4), torch.zeros(0, 3, 3), ())
    bank = _bank()
    with pytest.raises(ShapeMismatchError, match="one camera per frame"):
        bank.update(torch.rand(21, 12, 16, 3), _cams(20), "t")
    with pytest.raises(ShapeMismatchError, match="resize"):
        bank.update(torch.rand(21, 10, 16, 3), _cams(21), "t")
    with pytest.raises(ShapeMismatchError, match="resize"):
        MemoryBank.from_views(torch.rand(2, 10, 16, 3), _cams(2))
    with pytest.raises(InvalidInputError, match="out of range"):
        bank.subset([1])


def test_bank_save_load_round_trip_exact(tmp_path):
    bank = _bank().update(torch.rand(21, 12, 16, 3), _cams(21), "traj0")
    mixed = MemoryBank(
        bank.frames + (torch.rand(6, 8, 3),),
        torch.cat([bank.w2c, bank.w2c[:1]]),
        torch.cat([bank.K, bank.K[:1] / 2]),
        bank.sources + ("small",),
    )
    target = tmp_path / "bank"
    mixed.save(target)
    back = MemoryBank.load(target)
    assert back.sources == mixed.sources
    assert torch.equal(back.w2c, mixed.w2c) and torch.equal(back.K, mixed.K)
    assert all(torch.equal(a, b) for a, b in zip(back.frames, mixed.frames))
    # Overwriting an existing bank works and leaves nothing else behind.
    _bank().save(target)
    assert len(MemoryBank.load(target)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


def test_failed_save_leaves_previous_bank_intact(tmp_path, monkeypatch):
    target = tmp_path / "bank"
    old = _bank()
    old.save(target)
    new = old.update(torch.rand(21, 12, 16, 3), _cams(21), "traj0")
    real = memory._save_tensors

    def crash(tensors, file):
        if file.name == "frames.safetensors":
            real(tensors, file.with_name("partial"))
            raise OSError("disk full (simulated)")
        real(tensors, file)

    monkeypatch.setattr(memory, "_save_tensors", crash)
    with pytest.raises(OSError, match="simulated"):
        new.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]  # no temp folder left
    back = MemoryBank.load(target)
    assert len(back) == 1 and torch.equal(back.frames[0], old.frames[0])


def test_load_errors(tmp_path):
    with pytest.raises(MissingFileError, match="no saved"):
        MemoryBank.load(tmp_path / "missing")
    target = tmp_path / "bank"
    _bank().save(target)
    man = json.loads((target / "manifest.json").read_text())
    man["version"] = 99
    (target / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CorruptFileError, match="version 99"):
        MemoryBank.load(target)
    man["version"] = 1
    (target / "manifest.json").write_text(json.dumps(man))
    (target / "frames.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="missing frames.safetensors"):
        MemoryBank.load(target)
    with pytest.raises(CorruptFileError, match="not a"):
        Cache3D.load(target)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("precious")
    with pytest.raises(OutputPathError, match="refusing to replace"):
        _bank().save(tmp_path / "user")
    assert (tmp_path / "user" / "notes.txt").read_text() == "precious"
    (tmp_path / "nomanifest").mkdir()
    with pytest.raises(CorruptFileError, match="manifest"):
        MemoryBank.load(tmp_path / "nomanifest")


def _grid_cloud(offset: float = 0.0, n: int = 10) -> PointCloud:
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 2, indexing="ij"), -1).reshape(-1, 2)
    pts = torch.cat([g * 0.1 + offset, torch.zeros(len(g), 1, dtype=torch.float64)], 1)
    return PointCloud(pts, torch.full_like(pts, 0.5))


def test_cache_merge_is_immutable_and_downsamples():
    cache = Cache3D(_grid_cloud(), voxel_size=0.1)
    before = cache.cloud.points.clone()
    merged = cache.merge(_grid_cloud(0.001), remove_outliers=False)
    torch.testing.assert_close(cache.cloud.points, before)
    assert len(cache) == 100
    # Each incoming point falls in the voxel of its twin, so voxels merge back to 100 points.
    assert len(merged) == 100 and merged.voxel_size == 0.1
    capped = cache.merge(_grid_cloud(5.0), max_points=150, remove_outliers=False)
    assert len(capped) <= 150 and capped.max_points == 150
    raw = Cache3D.empty().merge(_grid_cloud(), remove_outliers=False)
    assert len(raw) == 100


def test_cache_merge_removes_incoming_outliers():
    cloud = _grid_cloud(n=20)
    far = PointCloud(torch.tensor([[50.0, 50.0, 50.0]], dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))
    merged = Cache3D.empty().merge(PointCloud.cat([cloud, far]))
    assert len(merged) == 400
    assert float(merged.cloud.points.abs().max()) < 10
    with pytest.raises(InvalidInputError, match="PointCloud"):
        Cache3D.empty().merge(np.zeros((3, 3)))
    with pytest.raises(InvalidOptionError, match="voxel_size"):
        Cache3D.empty().merge(cloud, voxel_size=-1.0)
    with pytest.raises(InvalidOptionError, match="voxel_size"):
        Cache3D(cloud, voxel_size=0.0)


def test_cache_save_load_round_trip_and_failure(tmp_path, monkeypatch):
    nrm = torch.nn.functional.normalize(torch.rand(100, 3, dtype=torch.float64), dim=-1)
    c = _grid_cloud()
    cache = Cache3D(PointCloud(c.points, c.colors, nrm), voxel_size=0.05, max_points=1000)
    target = tmp_path / "cache"
    cache.save(target)
    back = Cache3D.load(target)
    assert torch.equal(back.cloud.points, cache.cloud.points)
    assert torch.equal(back.cloud.colors, cache.cloud.colors)
    assert torch.equal(back.cloud.normals, nrm)
    assert (back.voxel_size, back.max_points) == (0.05, 1000)

    def crash(tensors, file):
        raise OSError("interrupted (simulated)")

    monkeypatch.setattr(memory, "_save_tensors", crash)
    with pytest.raises(OSError):
        Cache3D(_grid_cloud(3.0)).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert torch.equal(Cache3D.load(target).cloud.points, cache.cloud.points)
