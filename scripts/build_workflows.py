"""Build the example workflows in the real frontend, so they are exactly what users save.

    python scripts/build_workflows.py            (writes workflows/*.json)
    python scripts/build_workflows.py uni3c      (only the named workflows)

Each workflow is declared below as nodes (type, position, widget values) and links; the
script starts ComfyUI with the pack, creates the nodes through LiteGraph in headless
Chromium, connects them, and saves ``app.graph.serialize()``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_server import REPO_ROOT, ComfyServer  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

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

# name -> {"nodes": {key: (type, [x, y], {widget: value}, title|None)}, "links": [(src, out, dst, in)]}
WORKFLOWS: dict[str, dict] = {
    "preview_synthetic": {
        "nodes": {
            "scene": ("WorldStereoSyntheticScene", [40, 80], {"scene": "room", "width": 288, "height": 160}, None),
            "loop": ("WorldStereoOracleSceneLoop", [420, 80], {"trajectories": "orbit,up,right,left"}, None),
            "ply": ("WorldStereoSavePointCloud", [880, 40], {"filename_prefix": "worldstereo/preview_cloud"}, None),
            "glb": ("WorldStereoSaveSceneGLB", [880, 200], {"filename_prefix": "worldstereo/preview_scene"}, None),
            "renders": ("WorldStereoSaveVideo", [880, 420], {"filename_prefix": "worldstereo/preview_ggm_renders"}, None),
            "frames": ("WorldStereoSaveVideo", [880, 580], {"filename_prefix": "worldstereo/preview_frames"}, None),
            "report": ("WorldStereoSaveReport", [880, 740], {"filename_prefix": "worldstereo/preview_metrics"}, None),
            "preview": ("Preview3D", [1280, 40], {}, None),
        },
        "links": [
            ("scene", "image", "loop", "image"),
            ("scene", "depth", "loop", "depth"),
            ("scene", "camera", "loop", "camera"),
            ("scene", "scene", "loop", "scene"),
            ("loop", "cloud", "ply", "cloud"),
            ("loop", "cloud", "glb", "cloud"),
            ("loop", "trajectories", "glb", "trajectory_1"),
            ("loop", "renders", "renders", "frames"),
            ("loop", "frames", "frames", "frames"),
            ("loop", "report", "report", "report"),
            ("glb", "model_file", "preview", "model_file"),
        ],
    },
    "single_view": {
        "nodes": {
            "image": ("WorldStereoSyntheticScene", [40, 80], {"scene": "room", "width": 96, "height": 64},
                      "Input view (CI stand-in 96×64: use Load Image, e.g. 832×480)"),
            "moge": ("WorldStereoLoadMoGe", [40, 380], {"model_name": "moge-2-tiny/model.safetensors", "dtype": "fp32"},
                     "Load MoGe-2 (CI: tiny weights; use moge-2-vitl-normal)"),
            "depth": ("WorldStereoDepthEstimate", [420, 300], {"mode": "perspective", "resolution_level": 0},
                      "Depth Estimate MoGe-2 (CI: resolution_level 0; use 9)"),
            "model": ("WorldStereoLoadModel", [40, 560],
                      {"checkpoint": "worldstereo-memory-dmd", "text_encoder": "umt5_xxl_tiny.safetensors",
                       "clip_vision": "clip_vision_h_tiny.safetensors", "vae": "wan_2.1_vae_tiny.safetensors",
                       "dtype": "fp32"},
                      "Load WorldStereo Model (CI: tiny weights, fp32; use the released files, bf16)"),
            "loop": ("WorldStereoSceneLoop", [820, 80],
                     {"prompt": "a cozy living room with a sofa, a lamp and books on shelves",
                      "trajectories": "orbit,up", "sampler": "auto", "depth_resolution_level": 0,
                      "control_after_generate": "fixed"},
                     "WorldStereo Scene Loop (CI: 2 trajectories; paper: orbit,up,right,left)"),
            "ply": ("WorldStereoSavePointCloud", [1280, 40], {"filename_prefix": "worldstereo/single_view_cloud"}, None),
            "glb": ("WorldStereoSaveSceneGLB", [1280, 200], {"filename_prefix": "worldstereo/single_view_scene"}, None),
            "frames": ("WorldStereoSaveVideo", [1280, 420], {"filename_prefix": "worldstereo/single_view_frames"}, None),
            "renders": ("WorldStereoSaveVideo", [1280, 580], {"filename_prefix": "worldstereo/single_view_ggm"}, None),
            "report": ("WorldStereoSaveReport", [1280, 740], {"filename_prefix": "worldstereo/single_view_report"}, None),
            "preview": ("Preview3D", [1680, 40], {}, None),
        },
        "links": [
            ("image", "image", "depth", "image"),
            ("moge", "moge", "depth", "moge"),
            ("model", "model", "loop", "model"),
            ("image", "image", "loop", "image"),
            ("depth", "camera", "loop", "camera"),
            ("depth", "depth", "loop", "depth"),
            ("moge", "moge", "loop", "moge"),
            ("loop", "cloud", "ply", "cloud"),
            ("loop", "cloud", "glb", "cloud"),
            ("loop", "trajectories", "glb", "trajectory_1"),
            ("loop", "frames", "frames", "frames"),
            ("loop", "renders", "renders", "frames"),
            ("loop", "report", "report", "report"),
            ("glb", "model_file", "preview", "model_file"),
        ],
    },
    "panorama": {
        "nodes": {
            "pano": ("WorldStereoSyntheticScene", [40, 80], {"scene": "outdoor", "width": 128, "height": 64},
                     "Panorama (CI stand-in 128×64: use Load Image of a 2:1 equirectangular panorama)"),
            "moge": ("WorldStereoLoadMoGe", [40, 380], {"model_name": "moge-2-tiny/model.safetensors", "dtype": "fp32"},
                     "Load MoGe-2 (CI: tiny weights; use moge-2-vitl-normal)"),
            "depth": ("WorldStereoDepthEstimate", [400, 380], {"mode": "panorama", "resolution_level": 0},
                      "Panorama depth (CI: resolution_level 0; use 9)"),
            "views": ("WorldStereoPanoramaViews", [400, 80], {}, None),
            "bank": ("WorldStereoMemoryBankCreate", [740, 40], {"label": "panorama"}, None),
            "cloud": ("WorldStereoPanoramaPointCloud", [740, 240], {"remove_depth_edges": False},
                      "Panorama Point Cloud (CI: edges kept, tiny MoGe depth is noise; use on)"),
            "first": ("ImageFromBatch", [740, 480], {"batch_index": 0, "length": 1}, "Centre view (bank view 0)"),
            "size": ("ImageScale", [740, 620], {"upscale_method": "area", "width": 160, "height": 96, "crop": "disabled"},
                     "Generation size (CI 160×96; use 832×480)"),
            "model": ("WorldStereoLoadModel", [40, 620],
                      {"checkpoint": "worldstereo-memory-dmd", "text_encoder": "umt5_xxl_tiny.safetensors",
                       "clip_vision": "clip_vision_h_tiny.safetensors", "vae": "wan_2.1_vae_tiny.safetensors",
                       "dtype": "fp32"},
                      "Load WorldStereo Model (CI: tiny weights, fp32; use the released files, bf16)"),
            "loop": ("WorldStereoSceneLoop", [1080, 80],
                     {"prompt": "a sunny park with trees, benches and a stone path",
                      "trajectories": "orbit,right", "sampler": "auto", "depth_resolution_level": 0,
                      "control_after_generate": "fixed"},
                     "WorldStereo Scene Loop (CI: 2 trajectories; paper: orbit,up,right,left)"),
            "ply": ("WorldStereoSavePointCloud", [1520, 40], {"filename_prefix": "worldstereo/panorama_cloud"}, None),
            "glb": ("WorldStereoSaveSceneGLB", [1520, 200], {"filename_prefix": "worldstereo/panorama_scene"}, None),
            "frames": ("WorldStereoSaveVideo", [1520, 420], {"filename_prefix": "worldstereo/panorama_frames"}, None),
            "report": ("WorldStereoSaveReport", [1520, 580], {"filename_prefix": "worldstereo/panorama_report"}, None),
            "preview": ("Preview3D", [1900, 40], {}, None),
        },
        "links": [
            ("pano", "image", "views", "panorama"),
            ("pano", "image", "depth", "image"),
            ("moge", "moge", "depth", "moge"),
            ("views", "views", "bank", "images"),
            ("views", "cameras", "bank", "cameras"),
            ("pano", "image", "cloud", "panorama"),
            ("depth", "distance", "cloud", "distance"),
            ("views", "views", "first", "image"),
            ("first", "IMAGE", "size", "image"),
            ("model", "model", "loop", "model"),
            ("size", "IMAGE", "loop", "image"),
            ("depth", "camera", "loop", "camera"),
            ("moge", "moge", "loop", "moge"),
            ("bank", "bank", "loop", "bank"),
            ("cloud", "cloud", "loop", "cache"),
            ("loop", "cloud", "ply", "cloud"),
            ("loop", "cloud", "glb", "cloud"),
            ("loop", "trajectories", "glb", "trajectory_1"),
            ("loop", "frames", "frames", "frames"),
            ("loop", "report", "report", "report"),
            ("glb", "model_file", "preview", "model_file"),
        ],
    },
    "uni3c": {
        "nodes": {
            "image": ("WorldStereoSyntheticScene", [40, 80], {"scene": "room", "width": 64, "height": 64},
                      "Input view (CI stand-in 64×64: use Load Image + Depth Estimate, e.g. 832×480)"),
            "cloud": ("WorldStereoBuildPointCloud", [420, 40], {}, None),
            "traj": ("WorldStereoTrajectoryBuilder", [420, 300], {"preset": "orbit", "num_frames": 81}, None),
            "render": ("WorldStereoRenderCache", [860, 40], {"keyframes_only": False},
                       "GGM Render Cache (every pose: Uni3C takes all 81)"),
            "control": ("WorldStereoUni3CControl", [860, 320], {}, None),
            "model": ("WorldStereoLoadModel", [40, 400],
                      {"checkpoint": "worldstereo-camera", "text_encoder": "umt5_xxl_tiny.safetensors",
                       "clip_vision": "clip_vision_h_tiny.safetensors", "vae": "wan_2.1_vae_tiny.safetensors",
                       "dtype": "fp32"},
                      "Load WorldStereo Model (CI: tiny weights, fp32; use worldstereo-camera, bf16)"),
            "uni3c": ("WorldStereoLoadUni3C", [40, 760], {"uni3c_name": "uni3c_controlnet_tiny.safetensors"},
                      "Load Uni3C ControlNet (CI: tiny weights; use Wan21_Uni3C_controlnet_fp16.safetensors)"),
            "sampler": ("WorldStereoSampler", [1260, 80],
                        {"prompt": "a cozy living room with a sofa, a lamp and books on shelves", "sampler": "unipc-40",
                         "steps": 2, "control_after_generate": "fixed"},
                        "WorldStereo Sampler (CI: 2 steps; use 0 = 40)"),
            "video": ("WorldStereoSaveVideo", [1680, 80], {"filename_prefix": "worldstereo/uni3c_video"}, None),
            "renders": ("WorldStereoSaveVideo", [1680, 360], {"filename_prefix": "worldstereo/uni3c_render"}, None),
        },
        "links": [
            ("image", "image", "cloud", "image"),
            ("image", "depth", "cloud", "depth"),
            ("image", "camera", "cloud", "camera"),
            ("image", "camera", "traj", "camera"),
            ("image", "depth", "traj", "depth"),
            ("cloud", "cloud", "render", "cache"),
            ("traj", "trajectory", "render", "trajectory"),
            ("image", "image", "render", "first_frame"),
            ("render", "render", "control", "render"),
            ("render", "hole_mask", "control", "hole_mask"),
            ("traj", "trajectory", "control", "trajectory"),
            ("model", "model", "uni3c", "model"),
            ("uni3c", "model", "sampler", "model"),
            ("image", "image", "sampler", "image"),
            ("control", "ggm", "sampler", "ggm"),
            ("sampler", "keyframes", "video", "frames"),
            ("render", "render", "renders", "frames"),
        ],
    },
}

BUILD_JS = """
async (spec) => {
  const app = window.app, LG = window.LiteGraph;
  app.graph.clear();
  const made = {};
  for (const [key, [type, pos, values, title]] of Object.entries(spec.nodes)) {
    const node = LG.createNode(type);
    if (!node) throw new Error('unknown node type ' + type);
    node.pos = pos;
    if (title) node.title = title;
    app.graph.add(node);
    for (const w of node.widgets || []) {
      if (w.name in values) w.value = values[w.name];
    }
    made[key] = node;
  }
  for (const [src, out, dst, inp] of spec.links) {
    const a = made[src], b = made[dst];
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
  app.graph.setDirtyCanvas(true, true);
  return JSON.parse(JSON.stringify(app.graph.serialize()));
}
"""


def main() -> int:
    from playwright.sync_api import sync_playwright

    out_dir = REPO_ROOT / "workflows"
    out_dir.mkdir(exist_ok=True)
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "tests"))  # tiny_models: test support, not runtime
    from tiny_models import write_tiny_models

    server = ComfyServer()
    # tiny weights where users put the real ones, so the model combos hold the values the graphs use
    write_tiny_models(server.base_dir / "models")
    with server, sync_playwright() as pw:
        server.post("/api/settings", json={"Comfy.TutorialCompleted": True})
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
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
            (out_dir / f"{name}.json").write_text(json.dumps(graph, indent=2) + "\n")
            print(f"wrote workflows/{name}.json ({len(graph['nodes'])} nodes, {len(graph['links'])} links)")
            # a picture of the graph for the README
            # frame the graph: its top-left node near the canvas' top-left corner
            page.evaluate("""() => {
              const c = window.app.canvas, nodes = window.app.graph._nodes, s = 0.85;
              const minX = Math.min(...nodes.map(n => n.pos[0])), minY = Math.min(...nodes.map(n => n.pos[1]));
              c.ds.scale = s; c.ds.offset = [110 / s - minX, 150 / s - minY];
              window.app.graph.setDirtyCanvas(true, true);
            }""")
            # hide announcement banners (e.g. "Introducing Nodes 2.0") from the picture
            page.evaluate(HIDE_BANNERS_JS)
            page.wait_for_timeout(300)
            page.wait_for_timeout(500)
            shot = REPO_ROOT / "docs" / f"{name}.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot))
            print(f"wrote docs/{name}.png")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
