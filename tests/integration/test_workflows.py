"""Every shipped example workflow converts to an API graph and executes to success on the server.

The files run as shipped. Only two things change, in memory: sizes (the release's 480×832 and
a 2048×1024 panorama would take hours on two CPU cores with any weights) and the weights behind
the model file names (tiny random weights are written under the real names the workflows use,
e.g. ``models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors``).
"""

from __future__ import annotations

import json

import pytest
from testsupport import REPO_ROOT, WORKFLOWS

# (width, height) of an ImageScale node as shipped -> the size CI runs (same orientation)
CI_SIZES = {(832, 480): (96, 64), (2048, 1024): (256, 128)}
# node type -> {input: value}: MoGe's fewest tokens and 2 UniPC steps instead of 40 (the
# release's values only cost time on random weights)
CI_SETTINGS = {
    "WorldStereoSampler": {"steps": 2},
    "WorldStereoDepthEstimate": {"resolution_level": 0},
    "WorldStereoSceneLoop": {"depth_resolution_level": 0},
}
# loader inputs that name a model file, and the ComfyUI model folder each is read from
LOADER_FOLDERS = {
    "WorldStereoLoadModel": {"checkpoint": "worldstereo", "text_encoder": "text_encoders",
                             "clip_vision": "clip_vision", "vae": "vae", "base_model": "diffusion_models"},
    "WorldStereoLoadMoGe": {"model_name": "moge"},
    "WorldStereoLoadWorldMirror": {"model_name": "worldmirror"},
    "WorldStereoLoadUni3C": {"uni3c_name": "controlnet"},
}
RELEASE_FILES = {"umt5_xxl_fp8_e4m3fn_scaled.safetensors", "clip_vision_h.safetensors", "wan_2.1_vae.safetensors",
                 "worldstereo-memory-dmd", "worldstereo-camera", "moge-2-vitl-normal/model.safetensors",
                 "HY-WorldMirror-2.0/model.safetensors", "Wan21_Uni3C_controlnet_fp16.safetensors",
                 "wan2.1_i2v_480p_14B_bf16.safetensors"}


def ci_overrides(api: dict) -> dict:
    """The API graph with CI sizes and settings (a copy; the workflow file is not touched)."""
    out = json.loads(json.dumps(api))
    for node in out.values():
        inputs = node["inputs"]
        if node["class_type"] == "ImageScale":
            size = (inputs["width"], inputs["height"])
            assert size in CI_SIZES, f"no CI size for an ImageScale to {size}; add it to CI_SIZES"
            inputs["width"], inputs["height"] = CI_SIZES[size]
        for name, value in CI_SETTINGS.get(node["class_type"], {}).items():
            if name in inputs:
                inputs[name] = value
    return out


def write_tiny_weights_for(api: dict, models_dir) -> set[str]:
    """Tiny weights under every model file name the graph's loaders use; returns those names."""
    from tiny_models import write_tiny_file

    names = set()
    for node in api.values():
        for name, folder in LOADER_FOLDERS.get(node["class_type"], {}).items():
            value = node["inputs"][name]
            names.add(value)
            if not (models_dir / folder / value).exists():
                write_tiny_file(models_dir, folder, value)
    return names


def test_there_are_example_workflows():
    names = {p.stem for p in WORKFLOWS}
    assert {"preview_synthetic", "preview_synthetic_step_by_step", "single_view", "panorama", "step_by_step",
            "uni3c"} <= names
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
        offered = {m["name"] for m in loader["properties"]["models"]}
        assert {"umt5_xxl_fp8_e4m3fn_scaled.safetensors", "clip_vision_h.safetensors", "wan_2.1_vae.safetensors",
                "wan2.1_i2v_480p_14B_bf16.safetensors"} <= offered
        assert all(m["url"].startswith("https://huggingface.co/") for m in loader["properties"]["models"])
        assert any(m["directory"] == "worldstereo" for m in workflow.get("models", []))


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
