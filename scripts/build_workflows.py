"""Build the example workflows in the real frontend, so they are exactly what users save.

    python scripts/build_workflows.py            (writes workflows/*.json)

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
    with ComfyServer() as server, sync_playwright() as pw:
        server.post("/api/settings", json={"Comfy.TutorialCompleted": True})
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        for name, spec in WORKFLOWS.items():
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
            for label in ("Close", "Dismiss"):  # announcement banners of newer frontends
                button = page.get_by_role("button", name=label)
                if button.count():
                    button.first.click()
            page.wait_for_timeout(500)
            shot = REPO_ROOT / "docs" / f"{name}.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot))
            print(f"wrote docs/{name}.png")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
