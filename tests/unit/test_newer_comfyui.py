"""What the pack offers a ComfyUI newer than the 0.3.75 the tests run, and what it keeps on 0.3.75.

Newer ComfyUI (``comfy_api.latest``) has two things 0.3.75 lacks, and the pack uses them only where
the running build has them (feature detection, no version numbers):

* ``Schema.search_aliases``: ``Schema.get_v1_info`` copies the list into the node info
  (``NodeInfoV1.search_aliases``, ``None`` when empty) that ``GET /object_info`` sends, and the node
  library searches it. Every paper-card name must reach the node info of its node.
* File3D types: ``io.File3DAny`` (socket ``FILE_3D``), ``io.File3DGLB`` (``FILE_3D_GLB``) … carrying a
  ``Types.File3D`` (a path or bytes and its format), which core Preview 3D and the 3D nodes take. The
  save nodes then also output their file as one.

Newer ComfyUI also checks V3 combo values against their options (0.3.75 does not): the loader's
``validate_inputs`` keeps workflows saved with the bare checkpoint folder name queueing there.

Each case runs in a fresh interpreter against the real ComfyUI 0.3.75 ``comfy_api``: as it is (0.3.75
branch), or with the newer fields/types added the way upstream defines them (newer branch). The pack
is loaded by path as ComfyUI loads it, and node infos are built by ``GET_NODE_INFO_V1`` — what
``/object_info`` returns for a V3 node — and sent through JSON.
"""

from __future__ import annotations

import pytest

from testsupport import COMFY_START, LOAD_PACK, run_comfy_harness

# the paper card's node names -> the nodes each must name (MemoryBank: the bank's create/update nodes)
CARD_NAMES = {
    "LoadWan": {"WorldStereoLoadModel"},
    "BuildPointCloud": {"WorldStereoBuildPointCloud"},
    "TrajectoryBuilder": {"WorldStereoTrajectoryBuilder"},
    "MemoryBank": {"WorldStereoMemoryBankCreate", "WorldStereoMemoryBankUpdate"},
    "Retrieve3DFOV": {"WorldStereoRetrieve3DFOV"},
    "GGMControl": {"WorldStereoGGMControl"},
    "SSMControl": {"WorldStereoSSMControl"},
    "DMDSampler": {"WorldStereoSampler"},
    "WorldMirrorRecon": {"WorldStereoWorldMirrorRecon"},
    "UmeyamaMerge": {"WorldStereoUmeyamaMerge"},
}

HARNESS = (
    COMFY_START
    + r"""
newer = harness_args == ["newer"]
import comfy_api.latest as latest
import comfy_api.latest._io as _io
io = latest.io

if newer:
    # upstream's Schema field and its copy into the node info (NodeInfoV1.search_aliases, None when empty)
    @dataclasses.dataclass
    class NodeInfoV1(_io.NodeInfoV1):
        search_aliases: list = None

    @dataclasses.dataclass
    class Schema(io.Schema):
        search_aliases: list = dataclasses.field(default_factory=list)

        def get_v1_info(self, cls):
            info = dataclasses.asdict(super().get_v1_info(cls))
            return NodeInfoV1(**info, search_aliases=self.search_aliases if self.search_aliases else None)

    io.Schema = Schema
    # upstream's 3D file sockets and value
    io.File3DAny = io.Custom("FILE_3D")
    io.File3DGLB = io.Custom("FILE_3D_GLB")

    class File3D:
        def __init__(self, source, file_format=""):
            self.source = source
            self.format = file_format or source.rsplit(".", 1)[-1].lower()

    latest.Types.File3D = File3D

"""
    + LOAD_PACK
    + r"""infos = {}
for node in node_list:
    info = json.loads(json.dumps(node.GET_NODE_INFO_V1()))  # what GET /object_info sends
    infos[info["name"]] = info

# run the two 3D save nodes on a small cloud
import folder_paths
import torch
from worldstereo_core.pointcloud import PointCloud

out = tempfile.mkdtemp()
folder_paths.set_output_directory(out)
g = torch.Generator().manual_seed(0)
cloud = PointCloud(torch.rand(200, 3, generator=g) + torch.tensor([0.0, 0.0, 2.0]), torch.rand(200, 3, generator=g))
by_id = {n.GET_SCHEMA().node_id: n for n in node_list}
runs = {}
for node_id, args in (
    ("WorldStereoSavePointCloud", (cloud, "t/cloud")),
    ("WorldStereoSaveSceneGLB", (cloud, "t/scene", 1000)),
):
    result = by_id[node_id].execute(*args)
    values = []
    for v in result.args:
        if isinstance(v, str):
            values.append({"str": v})
        else:
            values.append({"type": type(v).__name__, "source": v.source, "format": v.format})
    runs[node_id] = {"values": values, "ui": result.ui}
print("RESULT " + json.dumps({"infos": infos, "runs": runs, "output_dir": out}))
"""
)


def _run(branch: str) -> dict:
    return run_comfy_harness(HARNESS, branch)


@pytest.fixture(scope="module")
def newer() -> dict:
    return _run("newer")


@pytest.fixture(scope="module")
def comfy_0_3_75() -> dict:
    return _run("0.3.75")


def test_every_card_name_reaches_the_node_info_of_a_newer_comfyui(newer):
    infos = newer["infos"]
    named: dict[str, set[str]] = {}
    for node_id, info in infos.items():
        for alias in info.get("search_aliases") or []:
            named.setdefault(alias, set()).add(node_id)
    for card, nodes in CARD_NAMES.items():
        assert named.get(card) == nodes, f"{card!r} names {named.get(card)} in /object_info, expected {nodes}"
    # the nodes without a card name send none (upstream: None, not an empty list)
    assert infos["WorldStereoSceneLoop"]["search_aliases"] is None


def test_comfyui_0_3_75_gets_no_search_aliases(comfy_0_3_75):
    """0.3.75's Schema has no such field: the pack passes none (its node info has no such key)."""
    infos = comfy_0_3_75["infos"]
    assert set(CARD_NAMES["DMDSampler"]) <= set(infos)
    assert not any("search_aliases" in info for info in infos.values())


def test_save_nodes_output_file3d_where_the_build_has_the_types(newer):
    from pathlib import Path

    for node_id, socket, fmt in (
        ("WorldStereoSavePointCloud", "FILE_3D", "ply"),
        ("WorldStereoSaveSceneGLB", "FILE_3D_GLB", "glb"),
    ):
        info = newer["infos"][node_id]
        assert info["output"] == ["STRING", socket] and info["output_name"] == ["model_file", "model_3d"]
        (path, file3d) = newer["runs"][node_id]["values"]
        assert file3d["type"] == "File3D" and file3d["format"] == fmt
        # the File3D is the file the node wrote (and shows), the one model_file names
        assert Path(file3d["source"]) == Path(newer["output_dir"]) / path["str"]
        assert Path(file3d["source"]).stat().st_size > 0
        assert newer["runs"][node_id]["ui"]["3d"][0]["filename"] == Path(path["str"]).name


def test_save_nodes_output_only_the_path_on_comfyui_0_3_75(comfy_0_3_75):
    for node_id in ("WorldStereoSavePointCloud", "WorldStereoSaveSceneGLB"):
        info = comfy_0_3_75["infos"][node_id]
        assert info["output"] == ["STRING"] and info["output_name"] == ["model_file"]
        assert [list(v) for v in comfy_0_3_75["runs"][node_id]["values"]] == [["str"]]


# Upstream ComfyUI checks a V3 combo's value against its options (execution.validate_inputs:
# ``isinstance(input_type, list) or input_type == io.Combo.io_type``), inside the branch it skips for
# inputs the node's ``validate_inputs`` names; 0.3.75 checks only V1 list combos. The harness runs
# 0.3.75's validate_inputs with V3 combos handed over in the V1 form (the options as the type), which
# makes its list check the upstream combo check.
COMBO_CHECK_HARNESS = (
    COMFY_START
    + r"""
import execution
import folder_paths
import nodes

"""
    + LOAD_PACK
    + r"""loader = next(n for n in node_list if n.GET_SCHEMA().node_id == "WorldStereoLoadModel")
nodes.NODE_CLASS_MAPPINGS["WorldStereoLoadModel"] = loader

models = tempfile.mkdtemp()  # a released checkpoint folder (the list reads names only)
os.makedirs(os.path.join(models, "worldstereo-memory-dmd"))
for name in ("config.json", "model.safetensors"):
    open(os.path.join(models, "worldstereo-memory-dmd", name), "w").close()
folder_paths.add_model_folder_path("worldstereo", models)

v1_get_input_info = execution.get_input_info


def upstream_combo_form(class_def, name, valid_inputs=None):
    input_type, category, extra = v1_get_input_info(class_def, name, valid_inputs)
    if input_type == "COMBO":
        return list(extra.get("options", [])), category, extra
    return input_type, category, extra


execution.get_input_info = upstream_combo_form
base = {
    "variant": "auto", "text_encoder": "from wan_folder", "clip_vision": "from wan_folder",
    "vae": "from wan_folder", "wan_folder": "", "dtype": "bf16", "offload": "none", "attention_backend": "default",
}


def check(**inputs):
    prompt = {"1": {"class_type": "WorldStereoLoadModel", "inputs": {**base, **inputs}}}
    ok, errors, _ = asyncio.run(execution.validate_inputs("p", prompt, "1", {}))
    return [e["type"] + ":" + e["details"] for e in errors] if not ok else []


result = {
    "options": loader.INPUT_TYPES()["required"]["checkpoint"][1]["options"],
    "listed": check(checkpoint="worldstereo-memory-dmd/model.safetensors"),
    "bare_folder": check(checkpoint="worldstereo-memory-dmd"),
    "bad_variant": check(checkpoint="worldstereo-memory-dmd/model.safetensors", variant="bogus"),
}
del loader.validate_inputs  # the node without its validate_inputs
result["bare_folder_unnamed"] = check(checkpoint="worldstereo-memory-dmd")
print("RESULT " + json.dumps(result))
"""
)


def test_saved_bare_checkpoint_folder_passes_the_upstream_combo_check():
    """Workflows saved before the checkpoint combo named the weights file hold the bare folder name.
    Upstream's combo check would refuse it as 'Value not in list'; the loader's validate_inputs takes the
    input out of that check (execute resolves it), while its other combos stay checked."""
    result = run_comfy_harness(COMBO_CHECK_HARNESS)
    assert "worldstereo-memory-dmd/model.safetensors" in result["options"]
    assert "worldstereo-memory-dmd" not in result["options"]
    assert result["listed"] == [] and result["bare_folder"] == []
    assert result["bad_variant"] and result["bad_variant"][0].startswith("value_not_in_list:variant")
    # the check bites: without validate_inputs the saved value is refused
    assert result["bare_folder_unnamed"] and result["bare_folder_unnamed"][0].startswith("value_not_in_list:checkpoint")
