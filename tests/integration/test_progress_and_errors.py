"""Long nodes report progress on /ws and stop on interrupt; bad input fails with a clear error."""

from __future__ import annotations


def loop_graph(trajectories: str = "orbit,up", width: int = 208, height: int = 128) -> dict:
    return {
        "1": {
            "class_type": "WorldStereoSyntheticScene",
            "inputs": {"scene": "room", "seed": 0, "width": width, "height": height},
        },
        "2": {
            "class_type": "WorldStereoOracleSceneLoop",
            "inputs": {
                "scene": ["1", 3],
                "image": ["1", 0],
                "depth": ["1", 1],
                "camera": ["1", 2],
                "trajectories": trajectories,
                "clip_depth": "exact",
                "retrieval_mode": "aabb",
                "seed": 0,
            },
        },
        "3": {
            "class_type": "WorldStereoSaveReport",
            "inputs": {"report": ["2", 6], "filename_prefix": "worldstereo/test_report"},
        },
    }


def test_scene_loop_reports_progress(comfy_server):
    result = comfy_server.run(loop_graph(), timeout=600)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    loop_progress = [p for p in result.progress if p.get("node") == "2"]
    assert loop_progress, "the scene loop sent no progress events"
    assert loop_progress[-1]["value"] == loop_progress[-1]["max"] == 1 + 5 * 2
    values = [p["value"] for p in loop_progress]
    assert values == sorted(values)


def test_interrupt_stops_the_scene_loop(comfy_server):
    interrupted = []

    def on_event(event):
        if event.get("type") == "progress" and event["data"].get("node") == "2" and not interrupted:
            interrupted.append(True)
            comfy_server.interrupt()

    # a fresh seed so ComfyUI's cache cannot answer from the previous run
    graph = loop_graph("orbit,up,right,left")
    graph["2"]["inputs"]["seed"] = 12345
    result = comfy_server.run(graph, timeout=600, on_event=on_event)
    assert interrupted
    assert result.status == "interrupted", result.events[-3:]
    # the server is still usable afterwards
    assert comfy_server.get("/queue").json()["queue_running"] == []


def test_bad_input_gives_an_actionable_error(comfy_server):
    graph = {
        "1": {
            "class_type": "WorldStereoSyntheticScene",
            "inputs": {"scene": "room", "seed": 0, "width": 128, "height": 96},
        },
        "2": {
            "class_type": "WorldStereoTrajectoryBuilder",
            "inputs": {
                "camera": ["1", 2],
                "preset": "camera_json",
                "median_depth": 1.0,
                "angle": 0.0,
                "extent": 0.0,
                "num_frames": 81,
                "camera_json": "",
                "keyframes": "",
            },
        },
        "3": {
            "class_type": "WorldStereoSaveCameraJson",
            "inputs": {"trajectory": ["2", 0], "filename_prefix": "worldstereo/never"},
        },
    }
    result = comfy_server.run(graph, timeout=300)
    assert result.status == "error"
    err = result.error
    assert err["node_id"] == "2"
    assert "camera_json" in err["exception_message"] and "path" in err["exception_message"]
    assert not list((comfy_server.base_dir / "output").rglob("never*")), "a failed run left a file behind"


def test_one_clip_nodes_refuse_the_loops_trajectories_and_write_nothing(comfy_server):
    """Save camera.json holds one trajectory: given the scene loop's two it names the problem (a
    WorldStereoError, not a bare ValueError) before taking an output name."""
    graph = loop_graph()  # the same loop as above: ComfyUI's cache runs it once
    graph["3"] = {
        "class_type": "WorldStereoSaveCameraJson",
        "inputs": {"trajectory": ["2", 1], "filename_prefix": "worldstereo/never_two"},
    }
    result = comfy_server.run(graph, timeout=600)
    assert result.status == "error" and result.error["node_id"] == "3", (result.error, comfy_server.log()[-3000:])
    assert "connect one trajectory (got 2)" in result.error["exception_message"]
    assert result.error["exception_type"].rsplit(".", 1)[-1] == "InvalidTrajectoryError"
    assert not list((comfy_server.base_dir / "output").rglob("never_two*")), "a refused save left a file behind"
