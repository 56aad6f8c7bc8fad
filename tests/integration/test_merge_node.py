"""Align & Merge Clip (WorldStereoUmeyamaMerge) on the real server: synthetic scene → first cache → orbit → oracle frames with
exact depth → align + merge into the cache → saved cloud and report.

With exact depth the clip is already in the cache's world, so whichever mode aligns it, the
fitted scale must be 1 and the residual tiny; the merged cache must grow.
"""

from __future__ import annotations

import json
import time

import pytest


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def merge_graph(mode: str, width: int = 160, height: int = 96) -> dict:
    return {
        "1": _node("WorldStereoSyntheticScene", scene="room", seed=0, width=width, height=height),
        "2": _node(
            "WorldStereoBuildPointCloud",
            image=["1", 0],
            depth=["1", 1],
            camera=["1", 2],
            fov_degrees=60.0,
            remove_depth_edges=True,
            compress_far_depth=False,
            max_points=0,
        ),
        "3": _node(
            "WorldStereoTrajectoryBuilder",
            camera=["1", 2],
            preset="orbit",
            median_depth=0.0,
            angle=0.0,
            extent=0.0,
            num_frames=81,
            camera_json="",
            keyframes="",
            depth=["1", 1],
        ),
        "4": _node("WorldStereoOracleGenerate", scene=["1", 3], trajectory=["3", 0], keyframes_only=True),
        "5": _node(
            "WorldStereoUmeyamaMerge",
            cache=["2", 0],
            frames=["4", 0],
            depth=["4", 1],
            trajectory=["3", 0],
            mode=mode,
            voxel_size_fraction=0.01,
            seed=0,
        ),
        "6": _node("WorldStereoSavePointCloud", cloud=["5", 0], filename_prefix=f"worldstereo/test_merge_{mode}"),
        "7": _node("WorldStereoSaveReport", report=["5", 2], filename_prefix=f"worldstereo/test_merge_{mode}"),
    }


def _outputs(comfy_server, result) -> dict:
    """/history may lag the success event by a moment: poll for the outputs."""
    deadline = time.time() + 30
    outputs = result.outputs
    while not outputs.get("7") and time.time() < deadline:
        time.sleep(0.2)
        outputs = comfy_server.get(f"/history/{result.prompt_id}").json().get(result.prompt_id, {}).get("outputs", {})
    return outputs


@pytest.mark.parametrize("mode", ["depth", "umeyama"])
def test_umeyama_merge_node_aligns_exact_depth_with_scale_one(comfy_server, mode):
    info = comfy_server.object_info()
    assert "WorldStereoUmeyamaMerge" in info, "WorldStereoUmeyamaMerge is not registered"
    schema = info["WorldStereoUmeyamaMerge"]
    assert schema["category"] == "WorldStereo/memory"
    for name, spec in schema["input"]["required"].items():
        assert spec[1].get("tooltip"), f"input {name} has no tooltip"

    result = comfy_server.run(merge_graph(mode), timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    outputs = _outputs(comfy_server, result)
    report = json.loads(outputs["7"]["text"][0])
    assert report["mode"] == mode
    assert report["scale"] == pytest.approx(1.0, abs=0.01)
    assert report["rmse"] < 0.01 * report["median_depth"]
    assert report["points_added"] > 0 and report["cache_points_after"] > report["cache_points_before"]
    assert report["aligned_frames"] == 20
    frames = report["frames"]
    assert len(frames) == 21 and frames[0]["status"] == "input"
    if mode == "umeyama":
        sim = report["similarity"]
        assert sim["scale"] == pytest.approx(1.0, abs=0.01)
        assert max(abs(sim["rotation"][i][j] - (i == j)) for i in range(3) for j in range(3)) < 0.01
    else:
        assert all(abs(f["scale"] - 1) < 0.02 for f in frames[1:])
    files = [p for p in comfy_server.output_files(result) if p.suffix == ".ply"]
    assert files and files[0].exists() and files[0].stat().st_size > 1000
