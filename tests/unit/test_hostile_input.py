"""Reproductions of the hostile / careless input defects of issue 16 (library half), and the
one owner of atomic writes (worldstereo_core.atomic). The server half (file inputs, routes,
interrupts) is in tests/integration/test_hostile_battery.py."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from worldstereo_core import atomic, safe_json
from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.errors import CorruptFileError, InvalidOptionError, MalformedJsonError
from worldstereo_core.memory import Cache3D, MemoryBank
from worldstereo_core.pointcloud import PointCloud
from worldstereo_core.trajectory import load_camera_json


def _bank(n: int = 3) -> MemoryBank:
    g = torch.Generator().manual_seed(0)
    w2c = torch.eye(4).repeat(n, 1, 1)
    w2c[:, 0, 3] = torch.arange(n, dtype=torch.float32)
    K = intrinsics_from_fov(60.0, 12, 16).float().expand(n, 3, 3)
    return MemoryBank(
        tuple(torch.rand(12, 16, 3, generator=g) for _ in range(n)), w2c, K, tuple(f"v{i}" for i in range(n))
    )


# --------------------------------------------------------------------------------------------
# defect 6: a camera.json with one shared 3×3 intrinsic


def test_camera_json_with_one_shared_intrinsic_is_read(tmp_path):
    w2c = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    w2c[:, 0, 3] = torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64)
    K = [[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]]
    path = tmp_path / "camera.json"
    path.write_text(json.dumps({"extrinsic": w2c.tolist(), "intrinsic": K}))
    traj = load_camera_json(path)
    assert len(traj) == 3 and (traj.cameras.height, traj.cameras.width) == (480, 640)
    assert torch.equal(traj.cameras.K, torch.tensor(K, dtype=torch.float64).expand(3, 3, 3))
    assert torch.equal(traj.cameras.w2c, w2c)
    # the same intrinsic given as a batch of one, straight to Cameras
    cams = Cameras(w2c, torch.tensor([K], dtype=torch.float64), 480, 640)
    assert cams.K.shape == (3, 3, 3)
    # two intrinsics for three poses is still refused, and says so
    path.write_text(json.dumps({"extrinsic": w2c.tolist(), "intrinsic": [K, K]}))
    with pytest.raises(CorruptFileError, match="3 extrinsics but 2 intrinsics"):
        load_camera_json(path)


@pytest.mark.parametrize(
    "body, match",
    [
        ("[" * 8000 + "]" * 8000, "nested too deeply"),
        ('{"extrinsic": [' + "9" * 5000 + "]}", "characters"),
        ('{"extrinsic": [1e999]}', "out of the float64 range"),
        ('{"extrinsic": [NaN]}', "finite"),
        (b'{"extrinsic": "\xff\xfe"}', "UTF-8"),
    ],
)
def test_camera_json_with_hostile_shapes_is_refused(tmp_path, body, match):
    path = tmp_path / "camera.json"
    (path.write_bytes if isinstance(body, bytes) else path.write_text)(body)
    with pytest.raises(CorruptFileError, match=match) as info:
        load_camera_json(path)
    assert str(path) in str(info.value)


def test_safe_json_limits():
    assert safe_json.loads('{"a": [[1, 2.5], {"b": null}]}') == {"a": [[1, 2.5], {"b": None}]}
    assert safe_json.loads(b"[1]") == [1]
    with pytest.raises(MalformedJsonError, match="nested"):
        safe_json.loads("[[[[1]]]]", max_depth=3)
    assert safe_json.loads("[[[1]]]", max_depth=3) == [[[1]]]
    with pytest.raises(MalformedJsonError, match="Infinity"):
        safe_json.loads("[-Infinity]")
    with pytest.raises(MalformedJsonError, match="not valid JSON"):
        safe_json.loads("{'a': 1}")
    # a float64 written in full precision is accepted
    x = 0.1 + 0.2
    assert safe_json.loads(json.dumps([x]))[0] == x and math.isfinite(x)


# --------------------------------------------------------------------------------------------
# defect 4: damaged memory banks name the bank and the file; killed saves are cleaned up


def _damage(target, how):
    if how == "truncated frames":
        f = target / "frames.safetensors"
        f.write_bytes(f.read_bytes()[:100])
        return "frames.safetensors"
    if how == "flipped byte in cameras":
        f = target / "cameras.safetensors"
        data = bytearray(f.read_bytes())
        data[3] ^= 0xFF  # inside the 8-byte header length
        f.write_bytes(bytes(data))
        return "cameras.safetensors"
    man = json.loads((target / "manifest.json").read_text())
    if how == "count abc":
        man["count"] = "abc"
        (target / "manifest.json").write_text(json.dumps(man))
        return "count"
    if how == "count too large":
        man["count"] = 7
        (target / "manifest.json").write_text(json.dumps(man))
        return "inconsistent"
    if how == "manifest not json":
        (target / "manifest.json").write_text("{" * 5000)
        return "manifest.json"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["truncated frames", "flipped byte in cameras", "count abc", "count too large", "manifest not json"]
)
def test_damaged_bank_names_bank_and_file(tmp_path, how):
    target = tmp_path / "bank"
    _bank().save(target)
    what = _damage(target, how)
    with pytest.raises(CorruptFileError) as info:
        MemoryBank.load(target)
    msg = str(info.value)
    assert str(target) in msg and what in msg and "re-save" in msg


def test_damaged_cache_names_the_file(tmp_path):
    target = tmp_path / "cache"
    Cache3D(PointCloud(torch.rand(50, 3), torch.rand(50, 3))).save(target)
    f = target / "cloud.safetensors"
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(CorruptFileError, match="cloud.safetensors is damaged"):
        Cache3D.load(target)


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    from worldstereo_core import memory
    from worldstereo_core.memory import MemoryBank
    real = memory._save_tensors
    def save_then_die(tensors, file):
        real(tensors, file)
        if file.name == "frames.safetensors":
            os.kill(os.getpid(), signal.SIGKILL)   # killed mid-save: nothing can clean up
    memory._save_tensors = save_then_die
    bank = MemoryBank((torch.rand(8, 8, 3),), torch.eye(4)[None], torch.tensor([[[8., 0, 4], [0, 8., 4], [0, 0, 1]]]), ("v",))
    bank.save(sys.argv[1])
""")


def test_killed_save_leaves_old_bank_and_next_load_and_save_clean_up(tmp_path):
    target = tmp_path / "bank"
    old = _bank()
    old.save(target)
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(target)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "bank"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".bank.tmp-"), leftovers
    back = MemoryBank.load(target)  # the old bank is intact, and loading removed the leftover
    assert len(back) == len(old) and torch.equal(back.frames[0], old.frames[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]
    # a leftover of an older release (no pid in its name) is removed by the next save
    (tmp_path / ".bank.tmp-0123abcd").mkdir()
    _bank(2).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


def test_temporary_folder_of_a_live_writer_is_kept(tmp_path):
    live = tmp_path / f".bank.tmp-{os.getppid()}-0123abcd"  # our parent process runs
    live.mkdir()
    other = tmp_path / ".other.tmp-0123abcd"
    other.mkdir()
    assert atomic.remove_stale_temporaries(tmp_path / "bank") == []
    assert live.exists() and other.exists()


# --------------------------------------------------------------------------------------------
# atomic writes: one owner


def test_write_folder_is_all_or_nothing(tmp_path):
    target = tmp_path / "export_00001_"

    def half_then_fail(tmp):
        (tmp / "images").mkdir()
        (tmp / "images" / "a.png").write_bytes(b"x")
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        atomic.write_folder(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []
    atomic.write_folder(target, lambda tmp: (tmp / "a.txt").write_text("1"))
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(FileExistsError):  # never replaced unless the caller allows it
        atomic.write_folder(target, lambda tmp: (tmp / "a.txt").write_text("2"))
    atomic.write_folder(target, lambda tmp: (tmp / "a.txt").write_text("2"), may_replace=lambda p: True)
    assert (target / "a.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export_00001_"]


def test_write_file_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.json"
    atomic.write_text(target, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt  # an interrupt mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic.write_file(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(IsADirectoryError):
        atomic.write_text(tmp_path, "x")


def test_every_writer_uses_the_atomic_module():
    """No writer of the library renames temporary files itself (one owner of atomic writes)."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "worldstereo_core"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "atomic.py":
            continue
        text = path.read_text()
        if "os.replace(" in text or "os.rename(" in text or "mkstemp(" in text:
            offenders.append(path.name)
    assert offenders == []


# --------------------------------------------------------------------------------------------
# defect 3: seeds near 2^64 − 1


def test_clip_seeds_wrap_without_overflow():
    from worldstereo_core.models.sampling import clip_seed, initial_noise

    top = 2**64 - 1  # the seed widget's maximum
    assert clip_seed(top, 0) == top and clip_seed(top, 1) == 0 and clip_seed(5, 3) == 8
    a = initial_noise((2, 3), clip_seed(top, 1))
    assert torch.equal(a, initial_noise((2, 3), 0))
    initial_noise((2, 3), top)  # the largest seed torch takes
    with pytest.raises(InvalidOptionError, match="2\\^64"):
        initial_noise((2, 3), 2**64)
    with pytest.raises(InvalidOptionError, match="2\\^64"):
        clip_seed(-1, 0)


def test_generator_at_the_largest_seed_runs_every_clip(tmp_path):
    from tiny_models import RELEASE_FOLDERS, write_tiny_models
    from worldstereo_core.models.generate import SamplingSettings, WorldStereoFrameGenerator, load_models

    paths = write_tiny_models(tmp_path / "models")
    m = load_models(
        paths[RELEASE_FOLDERS["camera"]],
        text_encoder=paths["text_encoder"],
        image_encoder=paths["image_encoder"],
        vae=paths["vae"],
        device="cpu",
        dtype=torch.float32,
    )
    n, h, w = 3, 16, 16
    w2c = torch.eye(4).repeat(n, 1, 1)
    w2c[:, 0, 3] = torch.linspace(0.0, 0.4, n)
    cams = Cameras(w2c, intrinsics_from_fov(60.0, h, w).float().expand(n, 3, 3), h, w)
    g = torch.Generator().manual_seed(0)
    image, render = torch.rand(1, h, w, 3, generator=g), torch.rand(n, h, w, 3, generator=g)
    mask = torch.zeros(n, h, w)
    gen = WorldStereoFrameGenerator(m, "a room", sampling=SamplingSettings(steps=1, guidance_scale=1.0, seed=2**64 - 1))
    gen(image, cams, render, mask, None)
    second = gen(image, cams, render, mask, None)  # clip 2 overflowed to 2^64 before the fix
    zero = WorldStereoFrameGenerator(m, "a room", sampling=SamplingSettings(steps=1, guidance_scale=1.0, seed=0))
    assert torch.equal(second, zero(image, cams, render, mask, None))
    # bad settings fail when the generator is made, before any clip
    with pytest.raises(InvalidOptionError):
        WorldStereoFrameGenerator(m, "a room", sampling=SamplingSettings(seed=2**64))
    with pytest.raises(Exception, match="sampler"):
        WorldStereoFrameGenerator(m, "a room", sampling=SamplingSettings(sampler="euler"))


def test_loop_settings_are_checked_before_any_stage():
    """An unknown retrieval mode fails before the first stage (lift) — not inside the first clip."""
    import dataclasses

    from worldstereo_core import pipeline, synthetic
    from worldstereo_core.errors import InvalidTrajectoryError
    from worldstereo_core.interfaces import default_config

    stages = []
    config = dataclasses.replace(default_config(64, 96), retrieval_mode="nearest")
    with pytest.raises(InvalidTrajectoryError, match="retrieval mode 'nearest'"):
        pipeline.run_oracle_loop(
            synthetic.make_scene("room"),
            ["orbit"],
            64,
            96,
            config=config,
            progress=lambda step, total: stages.append(step),
        )
    assert stages == []


def test_atomic_file_gets_the_mode_a_plain_open_gives(tmp_path):
    """Outputs renamed from a mkstemp temporary must not stay 0600 (others could not read them)."""
    from worldstereo_core.atomic import write_bytes

    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")
        out = write_bytes(tmp_path / "atomic.bin", b"x")
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777) == 0o644
