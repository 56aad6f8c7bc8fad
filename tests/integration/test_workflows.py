"""Every shipped example workflow converts to an API graph and executes to success on the server.

The files run as shipped. Only two things change, in memory: sizes (the release's 480×832 and
a 2048×1024 panorama would take hours on two CPU cores with any weights) and the weights behind
the model file names (tiny random weights are written under the real names the workflows use,
e.g. ``models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors``).
"""

from __future__ import annotations

import json

import pytest

from testsupport import LOADER_FOLDERS, RELEASE_FILES, REPO_ROOT, WORKFLOWS, ci_overrides, write_tiny_weights_for


def test_there_are_example_workflows():
    names = {p.stem for p in WORKFLOWS}
    assert {
        "preview_synthetic",
        "preview_synthetic_step_by_step",
        "single_view",
        "panorama",
        "step_by_step",
        "uni3c",
    } <= names
    assert not (REPO_ROOT / "workflows").exists(), "example workflows live in example_workflows/ (ComfyUI's name)"
    for p in WORKFLOWS:
        assert p.with_suffix(".jpg").is_file(), f"{p.name} has no thumbnail {p.stem}.jpg beside it"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_is_shipped_as_users_run_it(path):
    """Real inputs, real model names, release sizes, the paper's trajectories; no CI stand-ins."""
    workflow = json.loads(path.read_text())
    text = json.dumps(workflow)
    assert "CI:" not in text and "tiny" not in text.lower(), f"{path.name} names a test stand-in"
    nodes = workflow["nodes"]
    types = {n["type"] for n in nodes}
    for n in nodes:
        if n["type"] == "LoadImage":
            assert (REPO_ROOT / "example_inputs" / n["widgets_values"][0]).is_file(), n["widgets_values"]
        if n["type"] == "ImageScale":
            assert tuple(n["widgets_values"][1:3]) in {(832, 480), (2048, 1024)}, n["widgets_values"]
        if n["type"] in ("WorldStereoSceneLoop", "WorldStereoOracleSceneLoop"):  # four trajectories
            assert "orbit,up,right,left" in n["widgets_values"] or "orbit,orbit,orbit,orbit" in n["widgets_values"]
        if n["type"] == "WorldStereoDepthEstimate":
            assert n["widgets_values"][-1] == 9, "the release's MoGe resolution level"
        if n["type"] in LOADER_FOLDERS:
            named = {v for v in n["widgets_values"] if isinstance(v, str)} & RELEASE_FILES
            assert named, f"{n['type']} names none of the release's files: {n['widgets_values']}"
    if "WorldStereoLoadModel" in types:
        assert "LoadImage" in types, "a real-model workflow starts from the user's image"
        if "WorldStereoLoadUni3C" not in types:  # Uni3C makes one video, no scene
            assert "WorldStereoLoadWorldMirror" in types, "the release reconstructs with WorldMirror"
        loader = next(n for n in nodes if n["type"] == "WorldStereoLoadModel")
        offered = {m["name"]: m for m in loader["properties"]["models"]}
        assert {
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
            "clip_vision_h.safetensors",
            "wan_2.1_vae.safetensors",
            "wan2.1_i2v_480p_14B_bf16.safetensors",
        } <= set(offered)
        assert all(m["url"].startswith("https://huggingface.co/") for m in loader["properties"]["models"])
        # the checkpoint widget names the released weights file, which the loader node offers for download
        checkpoint = loader["widgets_values"][0]
        assert checkpoint in {"worldstereo-memory-dmd/model.safetensors", "worldstereo-camera/model.safetensors"}
        assert offered[checkpoint] == {
            "name": checkpoint,
            "url": f"https://huggingface.co/hanshanxue/WorldStereo/resolve/main/{checkpoint}",
            "directory": "worldstereo",
        }


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_executes(comfy_server, object_info, path):
    from workflow_api import ui_to_api

    workflow = json.loads(path.read_text())
    assert workflow.get("version") == 0.4 and workflow["nodes"] and "links" in workflow
    api = ui_to_api(workflow, object_info)
    write_tiny_weights_for(api, comfy_server.base_dir / "models")
    result = comfy_server.run(ci_overrides(api), timeout=900, workflow=workflow)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    files = comfy_server.output_files(result)
    assert files
    for f in files:
        assert f.is_file() and f.stat().st_size > 0, f


def test_example_inputs_are_in_the_input_folder(comfy_server):
    """The pack copied its example inputs into ComfyUI's input folder when it loaded, so Load
    Image lists them; they are the shipped files."""
    shipped = sorted(p.name for p in (REPO_ROOT / "example_inputs").iterdir() if p.suffix in (".png", ".jpg"))
    assert shipped
    listed = comfy_server.object_info()["LoadImage"]["input"]["required"]["image"][0]
    for name in shipped:
        copy = comfy_server.base_dir / "input" / name
        assert copy.read_bytes() == (REPO_ROOT / "example_inputs" / name).read_bytes()
        assert name in listed


def test_scene_loop_paper_switches(comfy_server, object_info):
    """single_view.json with the paper's ablations switched (GGM off, SSM off, Umeyama alignment,
    4 bank frames per clip, two trajectories): runs, and the report shows the bank size asked for."""
    from workflow_api import ui_to_api

    workflow = json.loads((REPO_ROOT / "example_workflows" / "single_view.json").read_text())
    api = ci_overrides(ui_to_api(workflow, object_info))
    write_tiny_weights_for(api, comfy_server.base_dir / "models")
    (loop,) = [k for k, v in api.items() if v["class_type"] == "WorldStereoSceneLoop"]
    api[loop]["inputs"].update(
        ggm=False,
        ssm=False,
        alignment="umeyama",
        bank_frames_per_clip=4,
        trajectories="orbit,up",
        reference_cut="coverage",
    )
    result = comfy_server.run(api, timeout=900)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    (report_node,) = [k for k, v in api.items() if v["class_type"] == "WorldStereoSaveReport"]
    report = json.loads(
        comfy_server.get(f"/history/{result.prompt_id}").json()[result.prompt_id]["outputs"][report_node]["text"][0]
    )
    assert report["memory_bank_views"] == 1 + 2 * 4
    assert [t["name"] for t in report["trajectories"]] == ["orbit", "up"]
