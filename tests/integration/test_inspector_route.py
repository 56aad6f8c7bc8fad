"""The inspector's data path: blob encoding, the token registry, and the route on a real server.

The first half runs in-process (``nodes/inspector.py`` loaded by path, aiohttp handlers on a
test server); the second half queues a graph on a real ComfyUI with the pack installed and
fetches what the nodes published. Set ``WORLDSTEREO_PACK_SOURCE`` to test another checkout.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from testsupport import REPO_ROOT, identity_camera, random_cloud, require_comfyui
from worldstereo_core import scene_codec as codec
from worldstereo_core import trajectory as traj_lib
from worldstereo_core.errors import InvalidCameraError, InvalidPointCloudError, InvalidTrajectoryError
from worldstereo_core.pointcloud import PointCloud


def _load_inspector():
    name = "worldstereo_test_inspector"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "nodes" / "inspector.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


insp = _load_inspector()


_cloud, _camera = random_cloud, identity_camera


def node_outputs(server, result, node_id: str, timeout: float = 20.0) -> dict:
    """A node's UI outputs from the history. ComfyUI sends execution_success before it stores
    the history entry, so the harness's snapshot can be empty: poll until it is there."""
    import time

    deadline = time.time() + timeout
    outputs = result.outputs
    while node_id not in outputs and time.time() < deadline:
        time.sleep(0.2)
        outputs = server.get(f"/history/{result.prompt_id}").json().get(result.prompt_id, {}).get("outputs", {})
    assert node_id in outputs, (node_id, outputs)
    return outputs[node_id]


# ---------------------------------------------------------------------------------------------
# registry (the wire format itself is tested in tests/unit/test_scene_codec.py)
# ---------------------------------------------------------------------------------------------


def test_publish_returns_ui_entry_and_registers():
    reg = insp.Registry()
    ui = insp.publish(cloud=_cloud(300), trajectories=[_camera()], max_points=100, registry=reg)
    (entry,) = ui[insp.UI_KEY]
    assert set(ui) == {"worldstereo_inspector"}
    assert insp.TOKEN_RE.match(entry["token"])
    assert (entry["points"], entry["stored_points"], entry["total_points"], entry["trajectories"]) == (100, 300, 300, 1)
    assert entry["planner"] is False and entry["memory"] == 0
    stored = reg.get(entry["token"])
    assert stored.data[:4] == b"WSI1" and entry["bytes"] == len(stored.data)
    assert codec.decode(stored.data)["points"]["count"] == 100  # the node's budget is the default
    json.dumps(ui)  # travels in the executed message and the history


def _scene_of_bytes(n_points: int):
    return codec.encode_scene(_cloud(n_points)) if n_points else codec.encode_scene()


def test_registry_is_bounded_lru():
    small = _scene_of_bytes(10)
    reg = insp.Registry(max_entries=3, max_bytes=int(small.nbytes * 3.5))
    a, b, c = (reg.put(_scene_of_bytes(10)) for _ in range(3))
    assert reg.get(a) is not None  # a becomes most recent
    d = reg.put(_scene_of_bytes(10))
    assert reg.get(b) is None and all(reg.get(t) is not None for t in (a, c, d)) and len(reg) == 3
    mid = _scene_of_bytes(200)  # over the byte budget with the others: oldest dropped until it fits
    assert mid.nbytes < reg.max_bytes < mid.nbytes + 3 * small.nbytes
    e = reg.put(mid)
    assert reg.get(e) is not None and reg.total_bytes <= reg.max_bytes
    assert len(reg) == 1 + (reg.max_bytes - mid.nbytes) // small.nbytes < 4
    big = reg.put(_scene_of_bytes(2000))  # the newest is kept even if alone too big
    assert reg.get(big) is not None and len(reg) == 1
    for bad in ("", "../" * 5, "A" * 32, big.upper(), big + "0", None, 5):
        assert reg.get(bad) is None
    with pytest.raises(InvalidPointCloudError, match="max_points"):
        reg.put(small, default_points=0)


def test_preset_request_validation():
    ok = insp.parse_preset_request({"preset": "orbit", "angle": 30, "num_frames": 21})
    assert ok == insp.PresetRequest("orbit", 0.0, 30.0, 0.0, 21)
    bad = [
        None,
        [],
        {"preset": "spin"},
        {"preset": 3},
        {"preset": "up", "angle": -1},
        {"preset": "up", "angle": 400},
        {"preset": "up", "num_frames": 1},
        {"preset": "up", "num_frames": 2.5},
        {"preset": "up", "num_frames": 5000},
        {"preset": "up", "median_depth": float("nan")},
        {"preset": "up", "extent": "far"},
    ]
    for body in bad:
        with pytest.raises(InvalidTrajectoryError):
            insp.parse_preset_request(body)


def test_plan_preset_equals_the_node_rule():
    """The live preview re-plans from the stored start camera exactly like the node does."""
    cam = _camera()
    # a dense wall 1.2 units ahead: a forward move of 0.9 · m = 1.8 passes through it and is halved
    u, v = torch.meshgrid(torch.linspace(-0.15, 0.15, 61), torch.linspace(-0.15, 0.15, 61), indexing="xy")
    wall = PointCloud(torch.stack([u.ravel(), v.ravel(), torch.full((u.numel(),), 1.2)], 1), torch.rand(u.numel(), 3))
    reg = insp.Registry()
    token = reg.put(codec.encode_scene(wall), planner=insp.PresetPlanner(cam, depth_median=2.0))
    plan = insp.plan_preset(
        reg.get(token), insp.parse_preset_request({"preset": "forward", "extent": 0.9, "num_frames": 17})
    )
    expect, halvings = traj_lib.preset_from_controls(
        "forward", cam, 2.0, extent=0.9, num_frames=17, cache_points=reg.get(token).scene.cloud().points
    )
    assert plan["halvings"] == halvings >= 1 and plan["median_depth"] == 2.0
    np.testing.assert_allclose(np.array(plan["w2c"]).reshape(-1, 4, 4), expect.w2c.double().numpy(), atol=1e-9)
    # the camera never gets closer to the wall than the rule allows
    centre_z = np.linalg.inv(np.array(plan["w2c"]).reshape(-1, 4, 4))[:, 2, 3]
    assert centre_z.max() < 1.2 - 0.02
    # the median depth of the request wins over the depth's; none at all is an error
    plan2 = insp.plan_preset(reg.get(token), insp.parse_preset_request({"preset": "up", "median_depth": 3.0}))
    assert plan2["median_depth"] == 3.0 and len(plan2["w2c"]) == 81 and plan2["keyframes"] == list(range(0, 81, 4))
    bare = reg.put(codec.encode_scene(), planner=insp.PresetPlanner(cam))
    with pytest.raises(InvalidTrajectoryError, match="median_depth"):
        insp.plan_preset(reg.get(bare), insp.parse_preset_request({"preset": "up"}))


def test_render_request_validation():
    cam, r = insp.parse_render_request(
        {"w2c": np.eye(4).ravel().tolist(), "K": [50, 0, 32, 0, 50, 24, 0, 0, 1], "height": 48, "width": 64}
    )
    assert (cam.height, cam.width, r) == (48, 64, 0.008)
    bad = [
        None,
        [],
        {"w2c": [1] * 16},
        {"w2c": [1] * 15, "K": [1] * 9, "height": 48, "width": 64},
        {"w2c": np.eye(4).ravel().tolist(), "K": [50, 0, 32, 0, 50, 24, 0, 0, 1], "height": 5000, "width": 5000},
        {
            "w2c": np.eye(4).ravel().tolist(),
            "K": [50, 0, 32, 0, 50, 24, 0, 0, 1],
            "height": 48,
            "width": 64,
            "radius": 1.0,
        },
        {"w2c": [float("nan")] * 16, "K": [50, 0, 32, 0, 50, 24, 0, 0, 1], "height": 48, "width": 64},
    ]
    for body in bad:
        with pytest.raises(InvalidCameraError):
            insp.parse_render_request(body)


# ---------------------------------------------------------------------------------------------
# handlers in-process (aiohttp test server)
# ---------------------------------------------------------------------------------------------


def _with_app(reg, fn):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def main():
        h = insp.make_handlers(reg)
        app = web.Application()
        app.router.add_get(insp.ROUTE + "/{token}", h.get_blob)
        app.router.add_post(insp.ROUTE + "/{token}/render", h.post_render)
        app.router.add_post(insp.ROUTE + "/{token}/preset", h.post_preset)
        async with TestClient(TestServer(app)) as client:
            return await fn(client)

    # The browser tests' session-wide sync Playwright keeps an event loop running in this
    # thread, so asyncio.run() cannot be used here: run the client in a thread of its own.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def test_handler_serves_known_tokens_only():
    reg = insp.Registry()
    ui = insp.publish(cloud=_cloud(200), trajectories=[_camera()], registry=reg)
    token = ui[insp.UI_KEY][0]["token"]
    other = insp.Registry().put(codec.encode_scene())  # a token of another registry is unknown here

    async def run(client):
        out = {}
        r = await client.get(f"{insp.ROUTE}/{token}")
        out["ok"] = (r.status, r.headers["Content-Type"], await r.read())
        out["budget"] = await (await client.get(f"{insp.ROUTE}/{token}?points=50")).read()
        for q in ("0", "-1", "abc", "1e3", str(codec.HARD_MAX_POINTS + 1), ""):
            out[f"points={q}"] = (await client.get(f"{insp.ROUTE}/{token}?points={q}")).status
        for name, path in {
            "other": f"{insp.ROUTE}/{other}",
            "short": f"{insp.ROUTE}/abc",
            "upper": f"{insp.ROUTE}/{token.upper()}",
            "encoded_traversal": f"{insp.ROUTE}/..%2F..%2Fetc%2Fpasswd",
            "dotdot": f"{insp.ROUTE}/{'.' * 2}",
            "sub": f"{insp.ROUTE}/{token}/x",
        }.items():
            out[name] = (await client.get(path)).status
        return out

    out = _with_app(reg, run)
    assert out["ok"][0] == 200 and out["ok"][1] == "application/octet-stream"
    assert out["ok"][2] == reg.get(token).data
    assert codec.decode(out["budget"])["points"]["count"] == 50
    assert all(v == 400 for k, v in out.items() if k.startswith("points=")), out
    for name in ("other", "short", "upper", "encoded_traversal", "dotdot", "sub"):
        assert out[name] in (404, 405), (name, out[name])


def test_render_handler_png_and_refusals():
    from PIL import Image

    reg = insp.Registry()
    # a wall of red points 2 units in front of an identity camera fills the view
    u, v = torch.meshgrid(torch.linspace(-2, 2, 120), torch.linspace(-2, 2, 120), indexing="xy")
    pts = torch.stack([u.ravel(), v.ravel(), torch.full((u.numel(),), 2.0)], 1)
    cols = torch.tensor([[1.0, 0.0, 0.0]]).expand(len(pts), 3).clone()
    token = insp.publish(cloud=PointCloud(pts, cols), registry=reg)[insp.UI_KEY][0]["token"]
    empty = insp.publish(trajectories=[_camera()], registry=reg)[insp.UI_KEY][0]["token"]
    body = {
        "w2c": np.eye(4).ravel().tolist(),
        "K": _camera().K[0].ravel().tolist(),
        "height": 48,
        "width": 64,
        "radius": 0.05,
    }

    async def run(client):
        r = await client.post(f"{insp.ROUTE}/{token}/render", json=body)
        png = await r.read()
        bad = await client.post(f"{insp.ROUTE}/{token}/render", json={"w2c": 3})
        unknown = await client.post(f"{insp.ROUTE}/{'0' * 32}/render", json=body)
        nocloud = await client.post(f"{insp.ROUTE}/{empty}/render", json=body)
        notjson = await client.post(
            f"{insp.ROUTE}/{token}/render", data=b"{", headers={"Content-Type": "application/json"}
        )
        huge = await client.post(f"{insp.ROUTE}/{token}/render", data=b" " * 20000)
        return r.status, png, bad.status, unknown.status, nocloud.status, notjson.status, huge.status

    status, png, bad, unknown, nocloud, notjson, huge = _with_app(reg, run)
    assert (notjson, huge) == (400, 413)
    assert status == 200
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (48, 64, 3)
    assert (img[20:28, 28:36, 0] > 200).all() and (img[20:28, 28:36, 1:] < 30).all()
    assert (bad, unknown, nocloud) == (400, 404, 404)


def test_preset_handler_plans_only_for_trajectory_builder_outputs():
    reg = insp.Registry()
    planned = reg.put(codec.encode_scene(_cloud(500)), planner=insp.PresetPlanner(_camera(), 2.0))
    plain = reg.put(codec.encode_scene(_cloud(500)))

    async def run(client):
        ok = await client.post(f"{insp.ROUTE}/{planned}/preset", json={"preset": "left", "angle": 30, "num_frames": 9})
        plan = await ok.json()
        statuses = [
            (await client.post(f"{insp.ROUTE}/{t}/preset", json=b)).status
            for t, b in (
                (plain, {"preset": "left"}),
                ("0" * 32, {"preset": "left"}),
                (planned, {"preset": "spin"}),
                (planned, {"preset": "left", "num_frames": 100000}),
            )
        ]
        return ok.status, plan, statuses

    status, plan, statuses = _with_app(reg, run)
    assert status == 200 and statuses == [404, 404, 400, 400]
    expect = traj_lib.make_preset("left", _camera(), 2.0, num_frames=9, angle=30.0)
    np.testing.assert_allclose(np.array(plan["w2c"]).reshape(-1, 4, 4), expect.w2c.double().numpy(), atol=1e-9)
    assert (plan["height"], plan["width"]) == (48, 64)


# ---------------------------------------------------------------------------------------------
# real ComfyUI server
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    require_comfyui()
    from comfy_server import ComfyServer

    source = Path(os.environ.get("WORLDSTEREO_PACK_SOURCE", REPO_ROOT))
    s = ComfyServer(pack_source=source).start()
    try:
        yield s
    finally:
        s.stop()


def _preview_graph(max_points: int = 0) -> dict:
    return {
        "1": {
            "class_type": "WorldStereoSyntheticScene",
            "inputs": {"scene": "room", "seed": 0, "width": 96, "height": 64},
        },
        "2": {
            "class_type": "WorldStereoBuildPointCloud",
            "inputs": {
                "image": ["1", 0],
                "depth": ["1", 1],
                "camera": ["1", 2],
                "fov_degrees": 60.0,
                "remove_depth_edges": True,
                "compress_far_depth": True,
                "max_points": max_points,
            },
        },
        "3": {"class_type": "WorldStereoSavePointCloud", "inputs": {"cloud": ["2", 0], "filename_prefix": "t/cloud"}},
    }


def test_route_serves_node_outputs_and_refuses_everything_else(server):
    from worldstereo_core.pointcloud import load_ply

    result = server.run(_preview_graph(), timeout=300)
    assert result.status == "success", (result.error, server.log()[-3000:])
    entries = node_outputs(server, result, "2")[insp.UI_KEY]
    token = entries[0]["token"]
    r = server.get(f"/worldstereo/inspector/{token}")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
    assert server.get(f"/api/worldstereo/inspector/{token}").content == r.content
    h = codec.decode(r.content)
    assert h["points"]["count"] == entries[0]["points"] > 1000
    assert len(h["trajectories"]) == 1 and h["trajectories"][0]["count"] == 1
    # the blob carries the very cloud the node produced (compare with its PLY, to quantisation)
    (ply,) = [
        server.base_dir / "output" / f["subfolder"] / f["filename"] for f in node_outputs(server, result, "3")["3d"]
    ]
    cloud = load_ply(ply)
    assert len(cloud) == h["points"]["total"]
    span = np.array(h["points"]["bbox_max"]) - np.array(h["points"]["bbox_min"])
    np.testing.assert_allclose(
        np.array(h["points"]["bbox_min"]), cloud.points.min(0).values.double().numpy(), atol=1e-5
    )
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(cloud.points.double().numpy()).query(h["points_xyz"])
    assert dist.max() <= np.linalg.norm(span) / 65535 + 1e-5

    refused = [
        f"/worldstereo/inspector/{'0' * 32}",
        "/worldstereo/inspector/..%2F..%2Fcomfyui.log",
        "/worldstereo/inspector/%2e%2e/%2e%2e/comfyui.log",
        "/worldstereo/inspector/" + token[:-1],
        "/worldstereo/inspector/" + "a" * 4096,
        "/worldstereo/inspector/",
        "/worldstereo/inspector/user",
    ]
    for path in refused:
        resp = server.get(path)
        assert resp.status_code in (404, 405), (path, resp.status_code)
        assert b"WSI1" not in resp.content[:8]


def test_route_respects_budget_and_renders(server):
    graph = _preview_graph()
    graph["1"]["inputs"]["seed"] = 1  # not cached from the test above: every node publishes
    graph["4"] = {
        "class_type": "WorldStereoTrajectoryBuilder",
        "inputs": {
            "camera": ["1", 2],
            "preset": "orbit",
            "median_depth": 0.0,
            "angle": 0.0,
            "extent": 0.0,
            "num_frames": 9,
            "camera_json": "",
            "keyframes": "",
            "depth": ["1", 1],
            "cache": ["2", 0],
        },
    }
    graph["5"] = {
        "class_type": "WorldStereoSaveCameraJson",
        "inputs": {"trajectory": ["4", 0], "filename_prefix": "t/cam"},
    }
    result = server.run(graph, timeout=300)
    assert result.status == "success", (result.error, server.log()[-3000:])
    entry = node_outputs(server, result, "4")[insp.UI_KEY][0]
    cloud_token = node_outputs(server, result, "2")[insp.UI_KEY][0]["token"]
    h = codec.decode(server.get(f"/worldstereo/inspector/{entry['token']}").content)
    assert h["trajectories"][0]["count"] == 9 and h["points"]["count"] > 0
    saved = traj_lib.load_camera_json(server.base_dir / "output" / node_outputs(server, result, "5")["text"][0])
    np.testing.assert_allclose(h["cameras_w2c"], saved.w2c.double().numpy(), atol=1e-5)
    body = {
        "w2c": h["cameras_w2c"][4].ravel().tolist(),
        "K": h["cameras_K"][4].ravel().tolist(),
        "height": 64,
        "width": 96,
    }
    r = server.post(f"/worldstereo/inspector/{entry['token']}/render", json=body)
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert server.post(f"/worldstereo/inspector/{'f' * 32}/render", json=body).status_code == 404
    # the user's budget, applied on the server
    assert entry["planner"] is True and entry["stored_points"] == h["points"]["stored"]
    few = codec.decode(server.get(f"/worldstereo/inspector/{entry['token']}?points=100").content)
    assert few["points"]["count"] == 100
    np.testing.assert_array_equal(few["points_xyz"], h["points_xyz"][:100])
    assert server.get(f"/worldstereo/inspector/{entry['token']}?points=0").status_code == 400

    # live preset preview: the route plans from the run's start camera what the node would build
    controls = {"preset": "right", "angle": 35.0, "extent": 0.0, "num_frames": 13, "median_depth": 0.0}
    r = server.post(f"/worldstereo/inspector/{entry['token']}/preset", json=controls)
    assert r.status_code == 200, r.text
    plan = r.json()
    graph["4"]["inputs"].update(controls)
    result = server.run(graph, timeout=300)
    assert result.status == "success", (result.error, server.log()[-3000:])
    built = traj_lib.load_camera_json(server.base_dir / "output" / node_outputs(server, result, "5")["text"][0])
    np.testing.assert_allclose(np.array(plan["w2c"]).reshape(-1, 4, 4), built.w2c.double().numpy(), atol=1e-5)
    assert len(plan["w2c"]) == 13
    # outputs of other nodes cannot plan
    assert server.post(f"/worldstereo/inspector/{cloud_token}/preset", json=controls).status_code == 404


# ---------------------------------------------------------------------------------------------
# help pages: web/docs/<NodeId>.md for every node the server registers
# ---------------------------------------------------------------------------------------------

DOCS = REPO_ROOT / "web" / "docs"


def _input_specs(info: dict) -> list[tuple[str, str, dict, bool]]:
    out = []
    for group, optional in (("required", False), ("optional", True)):
        for name, spec in (info.get("input", {}).get(group) or {}).items():
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, opts, optional))
    return out


def doc_page(node_id: str, info: dict) -> str:
    """A help page skeleton from ``/object_info`` (description, inputs, outputs and tooltips).

    ``WORLDSTEREO_WRITE_DOCS=1`` writes it for nodes that have no page yet; hand-written notes
    are added below the generated part and never overwritten.
    """
    lines = [f"# {info.get('display_name') or node_id}", "", info.get("description", "").strip(), "", "## Inputs", ""]
    lines += ["| name | type | notes |", "| --- | --- | --- |"]
    for name, kind, opts, optional in _input_specs(info):
        tip = (opts.get("tooltip") or "").replace("|", "\\|").replace("\n", " ")
        default = f" Default `{opts['default']}`." if "default" in opts and opts["default"] != "" else ""
        lines.append(f"| `{name}`{' (optional)' if optional else ''} | {kind} | {tip}{default} |")
    lines += ["", "## Outputs", "", "| name | type | notes |", "| --- | --- | --- |"]
    names = info.get("output_name") or info.get("output") or []
    for i, kind in enumerate(info.get("output") or []):
        tips = info.get("output_tooltips") or []
        tip = (tips[i] if i < len(tips) and tips[i] else "").replace("|", "\\|")
        lines.append(f"| `{names[i]}` | {kind} | {tip} |")
    return "\n".join(lines) + "\n"


def test_every_node_has_a_help_page(server):
    info = {k: v for k, v in server.object_info().items() if k.startswith("WorldStereo")}
    assert info
    missing = [k for k in info if not (DOCS / f"{k}.md").exists()]
    if missing and os.environ.get("WORLDSTEREO_WRITE_DOCS") == "1":
        for k in missing:
            (DOCS / f"{k}.md").write_text(doc_page(k, info[k]))
        missing = []
    assert not missing, f"no help page for {missing}; run with WORLDSTEREO_WRITE_DOCS=1 to write skeletons"
    for k, v in info.items():
        text = (DOCS / f"{k}.md").read_text()
        names = [n for n, *_ in _input_specs(v)] + list(v.get("output_name") or [])
        absent = [n for n in names if f"`{n}`" not in text]
        assert not absent, f"{k}.md does not describe {absent}; update the page"
        for img in __import__("re").findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            assert (DOCS / img).exists(), f"{k}.md shows {img}, which is not in web/docs"
    # the frontend serves them where its help panel looks: /extensions/<pack>/docs/<Node>.md
    r = server.get(f"/extensions/worldstereo/docs/{next(iter(info))}.md")
    assert r.status_code == 200 and r.text.startswith("# ")
