"""Property-based fuzzing (hypothesis) of the inputs users and browsers hand us: camera.json files,
preset trajectories, keyframe edits and the inspector's binary protocol and request bodies.

The property everywhere: an input is either accepted and gives a well-formed value (finite,
rigid cameras; an exact round trip), or refused with a :class:`WorldStereoError` — never another
exception. Budgets are bounded (``max_examples``) so the file runs in seconds in CI; raise them
locally with ``WORLDSTEREO_FUZZ_PROFILE=long``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from testsupport import REPO_ROOT  # noqa: E402
from worldstereo_core import safe_json, scene_codec  # noqa: E402
from worldstereo_core.cameras import Cameras, intrinsics_from_fov  # noqa: E402
from worldstereo_core.errors import WorldStereoError  # noqa: E402
from worldstereo_core.pointcloud import PointCloud  # noqa: E402
from worldstereo_core.trajectory import (  # noqa: E402
    PRESETS,
    from_keyframes,
    load_camera_json,
    preset_from_controls,
    save_camera_json,
)

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("WORLDSTEREO_FUZZ_PROFILE", "ci"))


def _inspector():
    name = "worldstereo_test_inspector"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "nodes" / "inspector.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


H, W = 48, 64
FIRST = Cameras(torch.eye(4)[None], intrinsics_from_fov(60.0, H, W)[None], H, W)

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e3, 1e3),
    st.integers(-(10**30), 10**30),
    st.sampled_from([0, 1, -1, 0.5, 1e-300, 1e308]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=40,
)


def _matrix(n: int):
    return st.lists(st.lists(numbers, min_size=n, max_size=n), min_size=n, max_size=n)


def _rigid_or_noise():
    """Mostly valid w2c matrices (random rotation and translation), sometimes garbage."""

    @st.composite
    def rigid(draw):
        q = np.array([draw(st.floats(-1, 1)) for _ in range(4)])
        if np.linalg.norm(q) < 1e-3:
            q = np.array([1.0, 0, 0, 0])
        from scipy.spatial.transform import Rotation

        m = np.eye(4)
        m[:3, :3] = Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()
        m[:3, 3] = [draw(st.floats(-100, 100)) for _ in range(3)]
        return m.tolist()

    return st.one_of(rigid(), rigid(), rigid(), _matrix(4), st.lists(numbers, max_size=20))


def _assert_cameras_ok(cams: Cameras) -> None:
    assert torch.isfinite(cams.w2c).all() and torch.isfinite(cams.K).all()
    R = cams.w2c[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-3)
    assert cams.height > 0 and cams.width > 0


# --------------------------------------------------------------------------------------------
# camera.json


@given(doc=json_values)
def test_any_json_document_is_a_camera_json_or_a_clear_error(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("cj") / "camera.json"
    path.write_text(json.dumps(doc))
    try:
        traj = load_camera_json(path)
    except WorldStereoError as e:
        assert str(path) in str(e)
        return
    _assert_cameras_ok(traj.cameras)


@given(
    n=st.integers(1, 5),
    ext=st.data(),
    shared=st.booleans(),
    size=st.one_of(st.none(), st.tuples(st.integers(-5, 4000), st.integers(-5, 4000))),
    extra=st.dictionaries(st.sampled_from(["fps", "note", "motion_list", "0000"]), json_values, max_size=2),
)
def test_near_valid_camera_json_round_trips_or_is_refused(tmp_path_factory, n, ext, shared, size, extra):
    E = [ext.draw(_rigid_or_noise()) for _ in range(n)]
    K = [[ext.draw(st.sampled_from([500.0, 0.0, -3.0, float("nan")])), 0, 320], [0, 500, 240], [0, 0, 1]]
    doc = {**extra, "extrinsic": E, "intrinsic": K if shared else [K] * n}
    if size is not None:
        doc["height"], doc["width"] = size
    folder = tmp_path_factory.mktemp("cj")
    (folder / "camera.json").write_text(json.dumps(doc))
    try:
        traj = load_camera_json(folder / "camera.json")
    except WorldStereoError:
        return
    _assert_cameras_ok(traj.cameras)
    assert len(traj) == n
    save_camera_json(folder / "again.json", traj)  # what was accepted saves and reads back exactly
    back = load_camera_json(folder / "again.json")
    assert torch.equal(back.cameras.w2c, traj.cameras.w2c) and torch.equal(back.cameras.K, traj.cameras.K)


@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_safe_json_accepts_or_refuses_cleanly(text):
    try:
        value = safe_json.loads(text)
    except WorldStereoError:
        return
    json.dumps(value, allow_nan=False)  # whatever comes back is plain, finite JSON


# --------------------------------------------------------------------------------------------
# trajectories and keyframe edits


@given(name=st.sampled_from(sorted(PRESETS)), m=numbers, angle=numbers, extent=numbers, n=st.integers(-3, 200))
def test_presets_from_any_controls(name, m, angle, extent, n):
    try:
        traj, halvings = preset_from_controls(name, FIRST, m, angle=angle, extent=extent, num_frames=n)
    except WorldStereoError:
        return
    assert len(traj) == n and halvings >= 0
    _assert_cameras_ok(traj.cameras)
    assert torch.allclose(traj.cameras.w2c[0].double(), FIRST.w2c[0].double(), atol=1e-5)


vec3 = st.lists(st.floats(-50, 50), min_size=3, max_size=3)
keyframe = st.one_of(
    st.fixed_dictionaries({"position": vec3, "look_at": vec3}),
    st.fixed_dictionaries({"position": vec3, "look_at": vec3, "up": vec3}),
    st.fixed_dictionaries({"w2c": _rigid_or_noise()}),
    json_values,
)


@given(kfs=st.lists(keyframe, max_size=6), n=st.integers(0, 120), interp=st.sampled_from(["cubic", "linear", "spline"]))
def test_keyframe_edits_give_a_smooth_path_or_a_clear_error(kfs, n, interp):
    try:
        traj = from_keyframes(kfs, FIRST.K[0], H, W, num_frames=n, position_interp=interp)
    except WorldStereoError:
        return
    assert len(traj) == n
    _assert_cameras_ok(traj.cameras)


# --------------------------------------------------------------------------------------------
# the inspector's binary protocol and request bodies


@given(
    n=st.integers(0, 300),
    scale=st.sampled_from([1e-6, 1.0, 1e4]),
    budget=st.integers(1, 400),
    n_traj=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_inspector_blob_round_trips(n, scale, budget, n_traj, seed):
    g = torch.Generator().manual_seed(seed)
    cloud = PointCloud(torch.randn(n, 3, generator=g) * scale, torch.rand(n, 3, generator=g)) if n else None
    trajs = [preset_from_controls("orbit", FIRST, 2.0, num_frames=5 + i)[0] for i in range(n_traj)]
    scene = scene_codec.encode_scene(cloud, trajs)
    h = scene_codec.decode(scene.blob(budget))
    assert len(h["trajectories"]) == n_traj
    assert h["cameras_w2c"].shape[0] == sum(len(t) for t in trajs)
    if n:
        pts = cloud.points.double().numpy()
        span = pts.max(0) - pts.min(0)
        assert h["points"]["count"] == min(n, budget)
        # every decoded point is one of the cloud's, to 16-bit quantisation of the bounding box
        from scipy.spatial import cKDTree

        d, _ = cKDTree(pts).query(h["points_xyz"])
        assert d.max() <= np.linalg.norm(span) / 65535 * 2 + 1e-6 * scale


@given(data=st.binary(max_size=64), tail=st.binary(max_size=64))
def test_inspector_decoder_refuses_garbage(data, tail):
    blob = scene_codec.MAGIC + data[:4] + tail if data else data
    try:
        scene_codec.decode(blob)
    except (ValueError, KeyError, TypeError, IndexError, struct_error()):
        pass  # a Python reader used by tests; it must not hang or crash the interpreter


def struct_error():
    import struct

    return struct.error


@given(body=json_values)
def test_render_and_preset_requests_parse_or_refuse(body):
    insp = _inspector()
    for parse in (insp.parse_render_request, insp.parse_preset_request):
        try:
            value = parse(body)
        except WorldStereoError:
            continue
        if parse is insp.parse_render_request:
            cams, radius = value
            _assert_cameras_ok(cams)
            assert 0 < radius <= 0.1
        else:
            assert value.preset in PRESETS and 2 <= value.num_frames and math.isfinite(value.angle)


@given(raw=st.text(max_size=12))
def test_points_query_parses_or_refuses(raw):
    from aiohttp import web

    insp = _inspector()
    try:
        n = insp.parse_points(raw)
    except web.HTTPBadRequest:
        return
    assert raw.isascii() and 1 <= n <= insp.HARD_MAX_POINTS
