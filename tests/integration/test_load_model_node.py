"""Load WorldStereo Model on the real server: the optional base_model input (Wan2.1 I2V backbone source)."""

from __future__ import annotations


def test_base_model_is_optional_with_a_safe_default(our_nodes):
    spec = our_nodes["WorldStereoLoadModel"]["input"]
    assert "base_model" not in spec["required"]  # saved workflows without it still load
    kind, extra = spec["optional"]["base_model"][0], spec["optional"]["base_model"][1]
    options = extra["options"] if kind == "COMBO" else kind  # V3 combos list their options in the dict
    assert "from wan_folder" in options and any(o.startswith("none") for o in options)
    # the server's models/diffusion_models holds no Wan2.1 I2V file: no arbitrary file is the default
    assert extra["default"] == "from wan_folder"
    assert "diffusion_models" in extra["tooltip"] and "dequantised" in extra["tooltip"]


def _checkpoint_spec(our_nodes) -> tuple[list[str], dict]:
    kind, extra = our_nodes["WorldStereoLoadModel"]["input"]["required"]["checkpoint"][:2]
    return (extra["options"] if kind == "COMBO" else kind), extra


def test_checkpoints_are_listed_by_their_weights_file(our_nodes):
    """Frontend 1.58.1 offers a missing model only for a widget value that ends in a model file extension
    and is absent from the combo's options, so each checkpoint folder (config.json + model.safetensors, as
    released) is listed by its weights file, never by the bare folder name."""
    from tiny_models import RELEASE_FOLDERS

    options, extra = _checkpoint_spec(our_nodes)
    assert {f"{folder}/model.safetensors" for folder in RELEASE_FOLDERS.values()} <= set(options)
    assert not set(RELEASE_FOLDERS.values()) & set(options)
    assert all(o.endswith(".safetensors") or o.endswith(".safetensors.index.json") for o in options), options
    assert extra["default"] == "worldstereo-memory-dmd/model.safetensors"


def _single_view_api(comfy_server, object_info, checkpoint: str) -> dict:
    """single_view.json with its checkpoint widget set to ``checkpoint`` (as a user saved it), CI sizes,
    tiny weights under the release's names, one trajectory."""
    import json

    from testsupport import WORKFLOWS, ci_overrides, write_tiny_weights_for
    from workflow_api import ui_to_api

    workflow = json.loads(next(p for p in WORKFLOWS if p.stem == "single_view").read_text())
    (loader,) = [n for n in workflow["nodes"] if n["type"] == "WorldStereoLoadModel"]
    assert loader["widgets_values"][0] == "worldstereo-memory-dmd/model.safetensors"
    loader["widgets_values"][0] = checkpoint
    api = ui_to_api(workflow, object_info)
    write_tiny_weights_for(api, comfy_server.base_dir / "models")
    api = ci_overrides(api)
    for node in api.values():
        if node["class_type"] == "WorldStereoSceneLoop":
            node["inputs"]["trajectories"] = "orbit"
    return api


def test_workflows_saved_with_the_bare_checkpoint_folder_still_run(comfy_server, object_info):
    """Workflows saved before the combo named the weights file hold ``worldstereo-memory-dmd``: it is no
    longer an option, yet it queues (the node takes the input out of ComfyUI's combo check) and loads the
    same folder (the load report names the file it read)."""
    api = _single_view_api(comfy_server, object_info, "worldstereo-memory-dmd")
    start = len(comfy_server.log())
    result = comfy_server.run(api, timeout=900)
    assert result.status == "success", (result.error, comfy_server.log()[-3000:])
    assert "worldstereo-memory-dmd/model.safetensors" in comfy_server.log()[start:]


def test_weights_without_their_config_json_say_where_to_get_it(comfy_server, object_info):
    """The frontend's download gives the weights file; without the release's config.json beside it the
    loader says to fetch that file from the same subfolder of the release page (and nothing runs)."""
    from tiny_models import write_tiny_worldstereo

    folder = comfy_server.base_dir / "models" / "worldstereo" / "weights-only"
    write_tiny_worldstereo(folder, "dmd")
    (folder / "config.json").unlink()
    api = _single_view_api(comfy_server, object_info, "weights-only/model.safetensors")
    result = comfy_server.run(api, timeout=600)
    assert result.status == "error"
    message = str(result.error)
    assert "config.json" in message and "https://huggingface.co/hanshanxue/WorldStereo/tree/main" in message
