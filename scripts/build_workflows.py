"""Build the example workflows in the real frontend, so they are exactly what users save.

    python scripts/build_workflows.py [NAME ...]   (writes example_workflows/NAME.json and .jpg)

Each workflow is declared below as nodes (type, position, widget values) and links, in the form
a user runs it: Load Image of an example input the pack ships (``example_inputs/``), the model
files under the names ComfyUI users have them (with their official downloads in
``properties.models``), the release's sizes. The script starts ComfyUI with the pack, creates the
nodes through LiteGraph in headless Chromium, connects and groups them, saves
``app.graph.serialize()`` and a JPEG thumbnail beside it (ComfyUI's template browser shows it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_server import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, ComfyServer

# hides the frontend's announcement banners (e.g. "Introducing Nodes 2.0") from pictures
HIDE_BANNERS_JS = """() => {
  for (const el of document.querySelectorAll('body *')) {
    if (el.children.length === 0 && /^Introducing /.test(el.textContent.trim())) {
      let box = el;
      while (box.parentElement && box.parentElement.getBoundingClientRect().height < 80) box = box.parentElement;
      box.style.display = 'none';
    }
  }
}"""

# --- the files a user has, as ComfyUI users name them, and where the official copies are ---
WAN_REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
WORLDSTEREO_HF = "https://huggingface.co/hanshanxue/WorldStereo/resolve/main"
WORLDMIRROR_HF = "https://huggingface.co/tencent/HY-World-2.0/resolve/main"
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
CLIP_VISION = "clip_vision_h.safetensors"
VAE = "wan_2.1_vae.safetensors"
BASE_MODEL = "wan2.1_i2v_480p_14B_bf16.safetensors"  # fills the backbone keys the released files lack
# models/worldstereo/<folder>/{config.json, model.safetensors}; the loader lists each folder by its weights file
CHECKPOINT = "worldstereo-memory-dmd/model.safetensors"
CAMERA_CHECKPOINT = "worldstereo-camera/model.safetensors"  # what Uni3C drives (camera control only)
MOGE = "moge-2-vitl-normal/model.safetensors"  # converted from Ruicheng/moge-2-vitl-normal's model.pt
WORLDMIRROR = "HY-WorldMirror-2.0/model.safetensors"  # tencent/HY-World-2.0, subfolder HY-WorldMirror-2.0

# properties.models of a loader node: the frontend's missing-model dialog offers these downloads
# for the files a node's widgets name (name = widget value, directory = ComfyUI model folder)
WAN_MODELS = [
    {"name": TEXT_ENCODER, "url": f"{WAN_REPACKAGED}/text_encoders/{TEXT_ENCODER}", "directory": "text_encoders"},
    {"name": CLIP_VISION, "url": f"{WAN_REPACKAGED}/clip_vision/{CLIP_VISION}", "directory": "clip_vision"},
    {"name": VAE, "url": f"{WAN_REPACKAGED}/vae/{VAE}", "directory": "vae"},
    {"name": BASE_MODEL, "url": f"{WAN_REPACKAGED}/diffusion_models/{BASE_MODEL}", "directory": "diffusion_models"},
]
UNI3C = "Wan21_Uni3C_controlnet_fp16.safetensors"  # models/controlnet/, as ComfyUI's Wan wrappers name it
UNI3C_MODELS = [
    {
        "name": UNI3C,
        "url": f"https://huggingface.co/Kijai/WanVideo_comfy/resolve/main/{UNI3C}",
        "directory": "controlnet",
    }
]
WORLDMIRROR_MODELS = [{"name": WORLDMIRROR, "url": f"{WORLDMIRROR_HF}/{WORLDMIRROR}", "directory": "worldmirror"}]
EXAMPLE_IMAGE = "worldstereo_kitchen.png"  # example_inputs/, copied into ComfyUI's input folder on load
EXAMPLE_PANORAMA = "worldstereo_panorama.jpg"
# prompt.json ("long caption") of the release's example photorealistic-indoor-dining_spaces-030
KITCHEN_PROMPT = (
    "A bright, modern kitchen features white cabinets, stainless steel appliances, and a light gray hexagonal "
    "tile floor.  A stainless steel refrigerator stands on the left, and a stainless steel range and oven are "
    "on the right.  A farmhouse sink is centered beneath a window showcasing a view of trees.  Recessed "
    "lighting illuminates the space, and a pendant light hangs above the sink.  A backsplash of small, light "
    "gray tiles with a subtle pattern runs along the wall behind the sink and range.  Under-cabinet lighting "
    "is visible above the cabinets.  The ceiling is a light gray, and the overall atmosphere is clean and airy."
)
# traj_caption.json of the release's panorama example (view0/traj0)
PANORAMA_PROMPT = (
    "A long, narrow corridor stretches into the distance, its concrete floor cracked and broken, with patches of "
    "green weeds pushing through the fissures. On either side, rusted metal railings line the walkway, their "
    "surfaces weathered and corroded. The walls are painted a faded white, but large sections have peeled away, "
    "revealing the gray concrete beneath. A few fluorescent lights hang from the ceiling, casting a dim, cool "
    "glow that highlights the decay."
)
RELEASE_W, RELEASE_H = 832, 480  # the release's 480×832 generation size (DESIGN §3)
PAPER_TRAJECTORIES = "orbit,up,right,left"  # the paper's order (appendix)
PANO_H = 1024  # panoramas are brought to 2048×1024: finer than the bank views' ~240 px per radian


def node(type_: str, pos, values=None, title=None, models=None, size=None) -> dict:
    return {"type": type_, "pos": list(pos), "values": values or {}, "title": title, "models": models, "size": size}


def note(pos, text: str, size=(420, 260)) -> dict:
    return node("MarkdownNote", pos, {"text": text}, size=list(size))


def _load_model(pos: list[int], checkpoint: str = CHECKPOINT) -> dict:
    """Load Wan2.1 WorldStereo Model with a released checkpoint and the Wan files under their real names."""
    widgets = {
        "checkpoint": checkpoint,
        "variant": "auto",
        "text_encoder": TEXT_ENCODER,
        "clip_vision": CLIP_VISION,
        "vae": VAE,
        "dtype": "bf16",
        "base_model": BASE_MODEL,
    }
    # the checkpoint's entry too: the frontend offers the weights file (its config.json is on the same page)
    checkpoint_model = {"name": checkpoint, "url": f"{WORLDSTEREO_HF}/{checkpoint}", "directory": "worldstereo"}
    return node("WorldStereoLoadModel", pos, widgets, models=[checkpoint_model, *WAN_MODELS])


def _load_moge(pos: list[int]) -> dict:
    return node("WorldStereoLoadMoGe", pos, {"model_name": MOGE, "variant": "auto", "dtype": "fp32"})


def _model_loaders(x: int, y: int) -> dict:
    """The three loaders every real workflow uses, with the real file names."""
    return {
        "model": _load_model([x, y]),
        "moge": _load_moge([x, y + 380]),
        "worldmirror": node(
            "WorldStereoLoadWorldMirror",
            [x, y + 560],
            {"model_name": WORLDMIRROR, "dtype": "fp32"},
            models=WORLDMIRROR_MODELS,
        ),
    }


def _input_view(x: int, y: int, image: str) -> dict:
    """Load Image → the release's 832×480 (centre crop)."""
    return {
        "load": node("LoadImage", [x, y], {"image": image}),
        "size": node(
            "ImageScale",
            [x, y + 380],
            {"upscale_method": "lanczos", "width": RELEASE_W, "height": RELEASE_H, "crop": "center"},
            title="Generation size (480×832, centre crop)",
        ),
    }


def _view_depth_links() -> list:
    """:func:`_input_view`'s image, at the generation size, into Depth Estimate with the MoGe loader's model."""
    return [
        ("load", "IMAGE", "size", "image"),
        ("size", "IMAGE", "depth", "image"),
        ("moge", "moge", "depth", "moge"),
    ]


def _saves(x: int, y: int, prefix: str, report: bool = True) -> dict:
    """Save PLY / GLB / MP4 / report and Preview 3D of the scene."""
    out = {
        "ply": node("WorldStereoSavePointCloud", [x, y], {"filename_prefix": f"worldstereo/{prefix}_cloud"}),
        "glb": node("WorldStereoSaveSceneGLB", [x, y + 120], {"filename_prefix": f"worldstereo/{prefix}_scene"}),
        "frames": node("WorldStereoSaveVideo", [x, y + 340], {"filename_prefix": f"worldstereo/{prefix}_frames"}),
        "preview": node("Preview3D", [x + 380, y], {}),
    }
    if report:
        out["report"] = node("WorldStereoSaveReport", [x, y + 480], {"filename_prefix": f"worldstereo/{prefix}_report"})
    return out


def _scene_loop(pos: list[int], size: list[int], **widgets) -> dict:
    """The Scene Loop of a real-model workflow: ``widgets`` (prompt, trajectories, …), the release's
    sampler choice and MoGe level, and a fixed seed (the example reproduces)."""
    settings = {"sampler": "auto", "depth_resolution_level": 9, "control_after_generate": "fixed"}
    return node("WorldStereoSceneLoop", pos, {**widgets, **settings}, size=size)


def _loop_links() -> list:
    """:func:`_model_loaders`' model and WorldMirror, the generation-size view and its camera into the Scene Loop."""
    return [
        ("model", "model", "loop", "model"),
        ("size", "IMAGE", "loop", "image"),
        ("depth", "camera", "loop", "camera"),
        ("worldmirror", "worldmirror", "loop", "worldmirror"),
    ]


def _save_links(loop: str = "loop") -> list:
    """A scene loop's outputs into the :func:`_saves` nodes (and the GLB into Preview 3D)."""
    return [
        (loop, "cloud", "ply", "cloud"),
        (loop, "cloud", "glb", "cloud"),
        (loop, "trajectories", "glb", "trajectory_1"),
        (loop, "frames", "frames", "frames"),
        (loop, "report", "report", "report"),
        ("glb", "model_file", "preview", "model_file"),
    ]


SINGLE_VIEW_NOTE = """## WorldStereo: one image → 3D scene

1. **Load Image**: pick your own picture (any size; it is centre-cropped to 480×832).
2. The loop lifts it into the **3D cache** with MoGe-2 depth, then for each trajectory
   (orbit → up → right → left) renders the cache (**GGM**), retrieves memory views (**SSM**),
   generates 21 keyframes (DMD, 4 steps), reconstructs them with **WorldMirror 2.0** and merges
   them into the cache.
3. Outputs: merged point cloud (PLY), scene with cameras (GLB, shown in Preview 3D), frames (MP4).

Model files: see the pack's README (Model files). The missing-model dialog links the downloads.
"""

PANORAMA_NOTE = """## WorldStereo: 360° panorama → 3D scene

**Load Image**: a 2:1 equirectangular panorama. It is split into the release's 27 views
(the memory bank), its depth (MoGe-2, panorama mode) is lifted into the panorama **3D cache**, and
the scene loop generates an orbit from four bank views around the centre (`starts`:
input = the centre view, view:N = bank view N) with that bank and cache.
"""

STEP_NOTE = """## The WorldStereo loop, node by node

Top row: the input view → depth → **3D cache** (Build Point Cloud) and **memory bank**.
Each coloured group below is **one trajectory** of the paper's loop:
Trajectory Builder → GGM render of the cache → **GGM Control** · Retrieve 3D FOV → **SSM Control**
→ **DMDSampler** (21 keyframes) → **WorldMirror** reconstruction → **Align & Merge Clip** (Umeyama
Merge) into the cache → **Memory Bank Update**. Same result as the Scene Loop for the same inputs.

**Add a trajectory:** select the last group (click its title), copy (Ctrl+C) and paste it with
links (Ctrl+Shift+V) below; connect the *cache* output of the last Align & Merge Clip and the *bank*
output of the last Memory Bank Update to the copy's Align & Merge Clip / GGM Render / GGM Control /
Retrieve inputs, and pick the next preset (paper order: orbit, up, right, left). GGM Control's *cache*
is read only by the paper-SSM checkpoints (`worldstereo-paper-*`); the release's ignore it.
"""

SYNTHETIC_STEP_NOTE = """## The WorldStereo loop, node by node (no weights)

The same graph as *step_by_step*, on the synthetic room: **Oracle Generate** renders the exact
keyframes in place of the video model, so the loop's geometry and memory run without weights.
Each coloured group is one trajectory: plan → GGM render → SSM retrieval → frames → merge →
memory update. Copy a group to add a trajectory (see *step_by_step*).
"""


def _step_group(
    key: str,
    y: int,
    preset: str,
    cache: tuple,
    bank: tuple,
    first: tuple,
    camera: tuple,
    depth: tuple,
    real: bool,
    prefix: str,
    prompt: str,
    index: int,
) -> tuple[dict, list, dict]:
    """One trajectory of the loop as separate nodes, in a group at height ``y``; returns (nodes, links, group).

    Settings are the Scene Loop's, so the graph gives the loop's result: the merge voxel from the
    input view's median depth (``start_depth``), and for trajectory ``index`` (from 0; loop seed 0)
    the loop's noise seed (seed + index), merge seed (seed · 7919 + index · 101) and bank label."""
    seed, label = index * 101, f"traj{index}:{preset}"

    def k(name: str) -> str:  # node keys of this group
        return f"{key}_{name}"

    last = 2440 if real else 2100  # x of the merge column
    n = {
        k("traj"): node(
            "WorldStereoTrajectoryBuilder", [520, y + 50], {"preset": preset}, title=f"Trajectory Builder ({preset})"
        ),
        k("render"): node("WorldStereoRenderCache", [1000, y + 50], {"keyframes_only": True}),
        k("retrieve"): node("WorldStereoRetrieve3DFOV", [1000, y + 260], {"mode": "aabb", "max_references": 8}),
        k("merge"): node("WorldStereoUmeyamaMerge", [last, y + 50], {"mode": "depth", "seed": seed}),
        k("update"): node("WorldStereoMemoryBankUpdate", [last, y + 300], {"num_frames_added": 8, "label": label}),
        k("video"): node(
            "WorldStereoSaveVideo", [last, y + 480], {"filename_prefix": f"worldstereo/{prefix}_{key}_frames"}
        ),
    }
    links = [
        (*camera, k("traj"), "camera"),
        (*depth, k("traj"), "depth"),
        (*cache, k("render"), "cache"),
        (k("traj"), "trajectory", k("render"), "trajectory"),
        (*first, k("render"), "first_frame"),
        (k("traj"), "trajectory", k("retrieve"), "trajectory"),
        (*bank, k("retrieve"), "bank"),
        (*cache, k("merge"), "cache"),
        (k("traj"), "trajectory", k("merge"), "trajectory"),
        (*depth, k("merge"), "start_depth"),
        (*bank, k("update"), "bank"),
        (k("traj"), "trajectory", k("update"), "trajectory"),
    ]
    if real:
        n[k("ggm")] = node("WorldStereoGGMControl", [1360, y + 50])
        n[k("ssm")] = node("WorldStereoSSMControl", [1360, y + 260])
        n[k("sample")] = node(
            "WorldStereoSampler",
            [1620, y + 50],
            {"prompt": prompt, "sampler": "auto", "seed": index, "control_after_generate": "fixed"},
            size=[420, 560],
        )
        n[k("recon")] = node("WorldStereoWorldMirrorRecon", [2080, y + 50], {"backend": "worldmirror"})
        links += [
            (k("render"), "render", k("ggm"), "render"),
            (k("render"), "hole_mask", k("ggm"), "hole_mask"),
            (k("traj"), "trajectory", k("ggm"), "trajectory"),
            (*cache, k("ggm"), "cache"),  # read by the paper-SSM checkpoints only; the release's ignore it
            (k("retrieve"), "retrieval", k("ssm"), "retrieval"),
            ("model", "model", k("sample"), "model"),
            (*first, k("sample"), "image"),
            (k("ggm"), "ggm", k("sample"), "ggm"),
            (k("ssm"), "ssm", k("sample"), "ssm"),
            (k("sample"), "keyframes", k("recon"), "frames"),
            (k("sample"), "trajectory", k("recon"), "trajectory"),
            ("worldmirror", "worldmirror", k("recon"), "worldmirror"),
            (k("sample"), "keyframes", k("merge"), "frames"),
            (k("recon"), "depth", k("merge"), "depth"),
            (k("sample"), "keyframes", k("update"), "frames"),
            (k("sample"), "keyframes", k("video"), "frames"),
        ]
    else:
        n[k("ggm_video")] = node(
            "WorldStereoSaveVideo",
            [1360, y + 50],
            {"filename_prefix": f"worldstereo/{prefix}_{key}_ggm"},
            title="GGM render (what the sampler would see)",
        )
        n[k("refs")] = node("PreviewImage", [1360, y + 260], {}, title="SSM references", size=[280, 300])
        n[k("oracle")] = node(
            "WorldStereoOracleGenerate",
            [1720, y + 50],
            {"keyframes_only": True},
            title="Oracle Generate (in place of the sampler)",
        )
        links += [
            ("scene", "scene", k("oracle"), "scene"),
            (k("traj"), "trajectory", k("oracle"), "trajectory"),
            (k("render"), "render", k("ggm_video"), "frames"),
            (k("retrieve"), "references", k("refs"), "images"),
            (k("oracle"), "frames", k("merge"), "frames"),
            (k("oracle"), "depth", k("merge"), "depth"),
            (k("oracle"), "frames", k("update"), "frames"),
            (k("oracle"), "frames", k("video"), "frames"),
        ]
    group = {
        "title": f"Trajectory {key[-1]}: {preset}  (GGM → SSM → generate → merge → memory)",
        "bounding": [500, y, last + 380 - 500, 720],
    }
    return n, links, group


def _step_by_step(real: bool) -> dict:
    prefix = "step_by_step" if real else "preview_step_by_step"
    if real:
        nodes = {
            **_input_view(40, 80, EXAMPLE_IMAGE),
            **_model_loaders(40, 780),
            "depth": node("WorldStereoDepthEstimate", [420, 80], {"mode": "perspective", "resolution_level": 9}),
            "note": note([1700, 40], STEP_NOTE, (700, 460)),
        }
        image, depth, camera = ("size", "IMAGE"), ("depth", "depth"), ("depth", "camera")
        links = _view_depth_links()
        x_cloud, top = 820, 680
    else:
        nodes = {
            "scene": node("WorldStereoSyntheticScene", [40, 80], {"scene": "room", "width": 288, "height": 160}),
            "note": note([1300, 40], SYNTHETIC_STEP_NOTE, (600, 300)),
        }
        image, depth, camera = ("scene", "image"), ("scene", "depth"), ("scene", "camera")
        links = []
        x_cloud, top = 420, 360
    # the Scene Loop's first cache: edges removed, no far compression, voxel 1 % of the median depth
    nodes["cloud"] = node(
        "WorldStereoBuildPointCloud",
        [x_cloud, 80],
        {"remove_depth_edges": True, "compress_far_depth": False, "voxel_size_fraction": 0.01},
    )
    nodes["bank"] = node("WorldStereoMemoryBankCreate", [x_cloud + 380, 80], {"label": "input"})
    links += [
        (*image, "cloud", "image"),
        (*depth, "cloud", "depth"),
        (*camera, "cloud", "camera"),
        (*image, "bank", "images"),
        ("cloud", "camera", "bank", "cameras"),
    ]
    groups = [{"title": "Input view → depth → 3D cache + memory bank", "bounding": [0, 0, x_cloud + 760, top - 40]}]
    cache, bank = ("cloud", "cloud"), ("bank", "bank")
    y = top
    for i, preset in enumerate(["orbit", "up"], start=1):
        n, ls, g = _step_group(
            f"traj{i}",
            y,
            preset,
            cache,
            bank,
            image,
            ("cloud", "camera"),
            depth,
            real,
            prefix,
            KITCHEN_PROMPT,
            index=i - 1,
        )
        nodes.update(n)
        links += ls
        groups.append(g)
        cache, bank = (f"traj{i}_merge", "cache"), (f"traj{i}_update", "bank")
        y += g["bounding"][3] + 60
    x_out = groups[-1]["bounding"][0] + groups[-1]["bounding"][2] + 80
    nodes.update(
        {
            "ply": node("WorldStereoSavePointCloud", [x_out, top], {"filename_prefix": f"worldstereo/{prefix}_cloud"}),
            "glb": node(
                "WorldStereoSaveSceneGLB", [x_out, top + 120], {"filename_prefix": f"worldstereo/{prefix}_scene"}
            ),
            "save_bank": node(
                "WorldStereoMemoryBankSave", [x_out, top + 340], {"folder": f"worldstereo/{prefix}_bank"}
            ),
            "preview": node("Preview3D", [x_out + 380, top], {}),
        }
    )
    links += [
        (*cache, "ply", "cloud"),
        (*cache, "glb", "cloud"),
        (*bank, "save_bank", "bank"),
        ("traj1_traj", "trajectory", "glb", "trajectory_1"),
        ("traj2_traj", "trajectory", "glb", "trajectory_2"),
        ("glb", "model_file", "preview", "model_file"),
    ]
    return {"nodes": nodes, "links": links, "groups": groups}


# name -> {"nodes": {key: node(...)}, "links": [(src, out, dst, in)], "groups": [...]}
WORKFLOWS: dict[str, dict] = {
    "preview_synthetic": {
        "nodes": {
            "scene": node("WorldStereoSyntheticScene", [40, 80], {"scene": "room", "width": 288, "height": 160}),
            "loop": node("WorldStereoOracleSceneLoop", [420, 80], {"trajectories": PAPER_TRAJECTORIES}),
            "ply": node("WorldStereoSavePointCloud", [880, 40], {"filename_prefix": "worldstereo/preview_cloud"}),
            "glb": node("WorldStereoSaveSceneGLB", [880, 200], {"filename_prefix": "worldstereo/preview_scene"}),
            "renders": node("WorldStereoSaveVideo", [880, 420], {"filename_prefix": "worldstereo/preview_ggm_renders"}),
            "frames": node("WorldStereoSaveVideo", [880, 580], {"filename_prefix": "worldstereo/preview_frames"}),
            "report": node("WorldStereoSaveReport", [880, 740], {"filename_prefix": "worldstereo/preview_metrics"}),
            "preview": node("Preview3D", [1280, 40], {}),
        },
        "links": [
            ("scene", "image", "loop", "image"),
            ("scene", "depth", "loop", "depth"),
            ("scene", "camera", "loop", "camera"),
            ("scene", "scene", "loop", "scene"),
            ("loop", "renders", "renders", "frames"),
            *_save_links(),
        ],
    },
    "preview_synthetic_step_by_step": _step_by_step(real=False),
    "single_view": {
        "nodes": {
            **_input_view(40, 80, EXAMPLE_IMAGE),
            **_model_loaders(40, 680),
            "depth": node("WorldStereoDepthEstimate", [420, 80], {"mode": "perspective", "resolution_level": 9}),
            "loop": _scene_loop([860, 80], [420, 700], prompt=KITCHEN_PROMPT, trajectories=PAPER_TRAJECTORIES),
            **_saves(1340, 80, "single_view"),
            "renders": node("WorldStereoSaveVideo", [1340, 800], {"filename_prefix": "worldstereo/single_view_ggm"}),
            "note": note([420, 380], SINGLE_VIEW_NOTE, (400, 560)),
        },
        "links": [
            *_view_depth_links(),
            *_loop_links(),
            ("depth", "depth", "loop", "depth"),
            ("loop", "renders", "renders", "frames"),
            *_save_links(),
        ],
    },
    "panorama": {
        "nodes": {
            "load": node(
                "LoadImage", [40, 80], {"image": EXAMPLE_PANORAMA}, title="Load Image (2:1 equirectangular panorama)"
            ),
            "pano_size": node(
                "ImageScale",
                [40, 480],
                {"upscale_method": "lanczos", "width": 2 * PANO_H, "height": PANO_H, "crop": "disabled"},
                title="Panorama size (2048×1024)",
            ),
            **_model_loaders(40, 680),
            "depth": node("WorldStereoDepthEstimate", [420, 200], {"mode": "panorama", "resolution_level": 9}),
            "views": node("WorldStereoPanoramaViews", [420, 80], {}),
            "bank": node("WorldStereoMemoryBankCreate", [800, 40], {"label": "panorama"}),
            "cloud": node("WorldStereoPanoramaPointCloud", [800, 160], {"remove_depth_edges": True}),
            "first": node(
                "ImageFromBatch", [800, 340], {"batch_index": 0, "length": 1}, title="Centre view (bank view 0)"
            ),
            "size": node(
                "ImageScale",
                [800, 470],
                {"upscale_method": "lanczos", "width": RELEASE_W, "height": RELEASE_H, "crop": "center"},
                title="Generation size (480×832)",
            ),
            # an orbit from four of the bank's level views, ~90° apart (bank order: 0 = centre, 3..10 =
            # azimuths 140°, 100°, …, −140°), so the scene is generated all around the panorama's centre
            "loop": _scene_loop(
                [1180, 80],
                [420, 760],
                prompt=PANORAMA_PROMPT,
                trajectories="orbit,orbit,orbit,orbit",
                starts="input,view:4,view:6,view:8",
            ),
            **_saves(1640, 80, "panorama"),
            "note": note([420, 680], PANORAMA_NOTE, (560, 260)),
        },
        "links": [
            ("load", "IMAGE", "pano_size", "image"),
            ("pano_size", "IMAGE", "views", "panorama"),
            ("pano_size", "IMAGE", "depth", "image"),
            ("moge", "moge", "depth", "moge"),
            ("views", "views", "bank", "images"),
            ("views", "cameras", "bank", "cameras"),
            ("pano_size", "IMAGE", "cloud", "panorama"),
            ("depth", "distance", "cloud", "distance"),
            ("views", "views", "first", "image"),
            ("first", "IMAGE", "size", "image"),
            *_loop_links(),
            ("bank", "bank", "loop", "bank"),
            ("cloud", "cloud", "loop", "cache"),
            *_save_links(),
        ],
    },
    "uni3c": {
        "nodes": {
            **_input_view(40, 80, EXAMPLE_IMAGE),
            "moge": _load_moge([40, 680]),
            "depth": node("WorldStereoDepthEstimate", [420, 80], {"mode": "perspective", "resolution_level": 9}),
            "cloud": node("WorldStereoBuildPointCloud", [420, 320], {}),
            "traj": node("WorldStereoTrajectoryBuilder", [820, 80], {"preset": "orbit", "num_frames": 81}),
            "render": node(
                "WorldStereoRenderCache",
                [1300, 80],
                {"keyframes_only": False},
                title="GGM Render Cache (every pose: Uni3C takes all 81)",
            ),
            "control": node("WorldStereoUni3CControl", [1300, 300]),
            "model": _load_model([820, 760], CAMERA_CHECKPOINT),
            "uni3c": node("WorldStereoLoadUni3C", [1300, 760], {"uni3c_name": UNI3C}, models=UNI3C_MODELS),
            "sampler": node(
                "WorldStereoSampler",
                [1700, 80],
                {"prompt": KITCHEN_PROMPT, "sampler": "unipc-40", "steps": 0, "control_after_generate": "fixed"},
                size=[420, 560],
            ),
            "video": node("WorldStereoSaveVideo", [2160, 80], {"filename_prefix": "worldstereo/uni3c_video"}),
            "renders": node("WorldStereoSaveVideo", [2160, 260], {"filename_prefix": "worldstereo/uni3c_render"}),
        },
        "links": [
            *_view_depth_links(),
            ("size", "IMAGE", "cloud", "image"),
            ("depth", "depth", "cloud", "depth"),
            ("depth", "camera", "cloud", "camera"),
            ("cloud", "camera", "traj", "camera"),
            ("depth", "depth", "traj", "depth"),
            ("cloud", "cloud", "render", "cache"),
            ("traj", "trajectory", "render", "trajectory"),
            ("size", "IMAGE", "render", "first_frame"),
            ("render", "render", "control", "render"),
            ("render", "hole_mask", "control", "hole_mask"),
            ("traj", "trajectory", "control", "trajectory"),
            ("model", "model", "uni3c", "model"),
            ("uni3c", "model", "sampler", "model"),
            ("size", "IMAGE", "sampler", "image"),
            ("control", "ggm", "sampler", "ggm"),
            ("sampler", "keyframes", "video", "frames"),
            ("render", "render", "renders", "frames"),
        ],
    },
    "step_by_step": _step_by_step(real=True),
}

BUILD_JS = """
async (spec) => {
  const app = window.app, LG = window.LiteGraph;
  app.graph.clear();
  const made = {};
  for (const [key, n] of Object.entries(spec.nodes)) {
    const node = LG.createNode(n.type);
    if (!node) throw new Error('unknown node type ' + n.type);
    node.pos = n.pos;
    if (n.title) node.title = n.title;
    app.graph.add(node);
    for (const w of node.widgets || []) {
      if (w.name in n.values) w.value = n.values[w.name];
    }
    for (const name of Object.keys(n.values)) {
      if (!(node.widgets || []).some(w => w.name === name)) throw new Error(`${key} (${n.type}) has no widget ${name}`);
    }
    if (n.models) node.properties.models = n.models;
    if (n.size) node.size = n.size;
    made[key] = node;
  }
  for (const [src, out, dst, inp] of spec.links) {
    const a = made[src], b = made[dst];
    if (!a || !b) throw new Error(`link ${src} -> ${dst}: unknown node`);
    const o = a.outputs.findIndex(s => s.name === out);
    let i = b.inputs.findIndex(s => s.name === inp);
    if (o < 0) throw new Error(`${src} has no output ${out}`);
    if (i < 0) {  // a widget input: turn it into a socket (older frontends need this)
      const w = (b.widgets || []).find(w => w.name === inp);
      if (!w) throw new Error(`${dst} has no input ${inp}`);
      if (b.convertWidgetToInput) b.convertWidgetToInput(w);
      i = b.inputs.findIndex(s => s.name === inp);
    }
    a.connect(o, b, i);
  }
  const colors = ['#3f5159', '#3f593f', '#593f59', '#59573f'];
  (spec.groups || []).forEach((g, k) => {
    const group = new LG.LGraphGroup(g.title);
    group.pos = [g.bounding[0], g.bounding[1]];
    group.size = [g.bounding[2], g.bounding[3]];
    group.color = colors[k % colors.length];
    app.graph.add(group);
  });
  app.graph.setDirtyCanvas(true, true);
  return JSON.parse(JSON.stringify(app.graph.serialize()));
}
"""

FRAME_JS = """(shot) => {
  const c = window.app.canvas, nodes = window.app.graph._nodes;
  const groups = window.app.graph._groups || [];
  const boxes = nodes.map(n => [n.pos[0], n.pos[1] - 30, n.pos[0] + n.size[0], n.pos[1] + n.size[1]])
    .concat(groups.map(g => [g.pos[0], g.pos[1], g.pos[0] + g.size[0], g.pos[1] + g.size[1]]));
  const minX = Math.min(...boxes.map(b => b[0])), minY = Math.min(...boxes.map(b => b[1]));
  const maxX = Math.max(...boxes.map(b => b[2])), maxY = Math.max(...boxes.map(b => b[3]));
  const s = Math.min(0.85, (shot.width - 40) / (maxX - minX), (shot.height - 60) / (maxY - minY));
  c.ds.scale = s; c.ds.offset = [shot.left / s - minX, shot.top / s - minY];
  window.app.graph.setDirtyCanvas(true, true);
}"""


def main() -> int:
    from playwright.sync_api import sync_playwright

    out_dir = REPO_ROOT / "example_workflows"
    out_dir.mkdir(exist_ok=True)
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "tests"))  # tiny_models: test support, not runtime
    from tiny_models import write_tiny_file, write_tiny_models

    server = ComfyServer()
    # tiny weights under the real names, so the model combos hold the values the graphs use
    write_tiny_models(server.base_dir / "models")
    for folder, name in (
        ("text_encoders", TEXT_ENCODER),
        ("clip_vision", CLIP_VISION),
        ("vae", VAE),
        ("worldstereo", CHECKPOINT),
        ("moge", MOGE),
        ("worldmirror", WORLDMIRROR),
        ("controlnet", UNI3C),
        ("diffusion_models", BASE_MODEL),
    ):
        write_tiny_file(server.base_dir / "models", folder, name)
    with server, sync_playwright() as pw:
        server.post("/api/settings", json={"Comfy.TutorialCompleted": True})
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        wanted = sys.argv[1:] or list(WORKFLOWS)
        unknown = sorted(set(wanted) - set(WORKFLOWS))
        if unknown:
            raise SystemExit(f"unknown workflows {unknown}; known: {sorted(WORKFLOWS)}")
        for name in wanted:
            spec = WORKFLOWS[name]
            graph = page.evaluate(BUILD_JS, spec)
            (out_dir / f"{name}.json").write_text(json.dumps(graph, indent=2, ensure_ascii=False) + "\n")
            print(f"wrote example_workflows/{name}.json ({len(graph['nodes'])} nodes, {len(graph['links'])} links)")
            # the graph fitted into the canvas below the menu bar, for the template thumbnail
            page.evaluate(FRAME_JS, {"left": 80, "top": 80, "width": 1500, "height": 900})
            page.evaluate(HIDE_BANNERS_JS)  # e.g. "Introducing Nodes 2.0"
            page.wait_for_timeout(800)
            thumb = out_dir / f"{name}.jpg"
            page.screenshot(path=str(thumb), type="jpeg", quality=80)
            print(f"wrote example_workflows/{name}.jpg")
            if name == "preview_synthetic":  # the README's picture of the graph
                page.screenshot(path=str(REPO_ROOT / "docs" / f"{name}.png"))
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
