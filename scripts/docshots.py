"""Take the README picture of the scene inspector on the synthetic-scene preview workflow.

    python scripts/docshots.py        (from the repo root, with the test env's python)

Starts ComfyUI with the pack (the newest frontend when ``WORLDSTEREO_FRONTEND_NEW`` is set, as
``scripts/test.sh`` sets it), opens the real frontend in headless Chromium, loads
``example_workflows/preview_synthetic.json``, queues it from the page and waits (up to 6 min; the
whole script takes about 40 s on 2 CPU cores) until the Oracle Scene Loop's inspector is ready
and the run has finished. Then it enlarges that node, frames it, turns the 3D view to an
elevated three-quarter view of the room cloud and the trajectories' frustums (all layers on),
and writes

    web/docs/images/inspector_scene_loop.png   (just the node)
    docs/inspector_preview_workflow.png        (the whole page)

and then, on a small graph (the room's cloud as the cache of a Trajectory Builder), the editor
with five keyframes taken from the run's orbit, one selected and rolled:

    web/docs/images/trajectory_editor.png

Exits non-zero with a message if the run fails or the panel never becomes ready.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_workflows import HIDE_BANNERS_JS

from comfy_server import CHROMIUM, CHROMIUM_ARGS, REPO_ROOT, WEBGL_ARGS, ComfyServer

WORKFLOW = REPO_ROOT / "example_workflows" / "preview_synthetic.json"
NODE_SHOT = REPO_ROOT / "web" / "docs" / "images" / "inspector_scene_loop.png"
PAGE_SHOT = REPO_ROOT / "docs" / "inspector_preview_workflow.png"
LOOP_TYPE = "WorldStereoOracleSceneLoop"
READY_TIMEOUT_S = 360.0
VIEWPORT = {"width": 1600, "height": 1200}
NODE_SIZE = (940, 980)  # canvas px; the inspector gets what the sockets and widgets leave (~940x670)
# the 3D view: yaw from the first camera's heading (rad), pitch (rad, > 0 looks down), distance
# in units of the cameras' extent, how far the target moves from the cameras' centre towards the
# cloud's (0..1), and how far (in units of the distance) the room is lifted in the picture.
# Looking back towards the input camera from high up shows the whole room, its objects and the
# four trajectories' arcs (their keyframe frustums hide the memory views at the same poses).
VIEW = (2.7, 0.8, 1.85, 1.0, 0.06)

EDITOR_TYPE = "WorldStereoTrajectoryBuilder"
EDITOR_SHOT = REPO_ROOT / "web" / "docs" / "images" / "trajectory_editor.png"
EDITOR_NODE_SIZE = (900, 960)
EDITOR_VIEW = (0.5, 0.6, 1.7, 0.5, 0.0)  # as VIEW: a three-quarter view from above the start camera
# the editor picture's graph: the synthetic room's cloud as the cache of a Trajectory Builder
EDITOR_GRAPH = {
    "nodes": {
        "scene": ("WorldStereoSyntheticScene", [0, 0], {"scene": "room", "width": 288, "height": 160}),
        "cloud": ("WorldStereoBuildPointCloud", [0, 400], {}),
        "traj": (EDITOR_TYPE, [420, 0], {"preset": "orbit", "num_frames": 81}),
        "save": ("WorldStereoSaveCameraJson", [1500, 0], {"filename_prefix": "docshots/camera"}),
    },
    "links": [
        ("scene", "image", "cloud", "image"),
        ("scene", "depth", "cloud", "depth"),
        ("scene", "camera", "cloud", "camera"),
        ("scene", "camera", "traj", "camera"),
        ("scene", "depth", "traj", "depth"),
        ("cloud", "cloud", "traj", "cache"),
        ("traj", "trajectory", "save", "trajectory"),
    ],
}


def find_node_js(node_type: str) -> str:
    """JS expression: the graph's first node of a type (ids are the workflow's business)."""
    return f"window.app.graph._nodes.find(n => n.type === {json.dumps(node_type)})"


FIND_NODE_JS = find_node_js(LOOP_TYPE)

STATE_JS = """(type) => {
  const n = window.app.graph._nodes.find(n => n.type === type);
  if (!n) return {missing: true};
  const p = n.__wsInspector;
  return {state: p ? (p.root.dataset.state || 'none') : 'none',
          message: p ? p.message.textContent : '', webgl2: p ? p.root.dataset.webgl2 : null};
}"""

# the save-video nodes get video previews after the run, taller than the node's stored size,
# and then overlap the nodes below them: grow each node to what it needs (GROW_JS), let the
# DOM widgets move, then restack each column of nodes (same x) top to bottom with each node's
# bottom taken from its DOM widgets too (RESTACK_JS). Only for the page shot: nothing is saved.
GROW_JS = """() => {
  for (const n of window.app.graph._nodes) {
    const need = n.computeSize?.();
    if (need) n.setSize([Math.max(n.size[0], need[0]), Math.max(n.size[1], need[1])]);
  }
  window.app.graph.setDirtyCanvas(true, true);
}"""
RESTACK_JS = """() => {
  const c = window.app.canvas, T = window.LiteGraph.NODE_TITLE_HEIGHT || 30, cols = {};
  const r = c.canvas.getBoundingClientRect(), k = c.canvas.width / r.width;  // CSS px -> canvas px
  const bottom = (n) => {  // graph y of the node's lowest part, DOM widgets included
    let y = n.pos[1] + n.size[1];
    for (const w of n.widgets || []) {
      const el = w.element;
      if (!el || !el.isConnected || el.offsetParent === null) continue;
      const b = el.getBoundingClientRect();
      if (b.height > 0) y = Math.max(y, c.ds.convertCanvasToOffset([0, (b.bottom - r.top) * k])[1]);
    }
    return y;
  };
  for (const n of window.app.graph._nodes) (cols[Math.round(n.pos[0])] ||= []).push(n);
  for (const col of Object.values(cols)) {
    col.sort((a, b) => a.pos[1] - b.pos[1]);
    let floor = -Infinity;
    for (const n of col) {
      const was = n.pos[1], y = bottom(n);  // DOM widgets only follow on the next redraw
      if (was - T - 16 < floor) n.pos = [n.pos[0], floor + T + 16];
      floor = y + n.pos[1] - was;
    }
  }
  window.app.graph.setDirtyCanvas(true, true);
}"""

# the whole graph in the viewport, with a margin for the menus around the canvas
FIT_GRAPH_JS = """(vp) => {
  const c = window.app.canvas, nodes = window.app.graph._nodes, T = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
  const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - T));
  const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
  const s = Math.min(1, (vp.width - 160) / (x1 - x0), (vp.height - 200) / (y1 - y0));
  c.ds.scale = s;
  c.ds.offset = [(vp.width / 2) / s - (x0 + x1) / 2, (vp.height / 2 + 20) / s - (y0 + y1) / 2];
  window.app.graph.setDirtyCanvas(true, true);
}"""

# enlarge the node and centre the canvas on it at scale 1. The nodes right of it move right by
# the growth: they would overlap it, and DOM widgets (Preview3D's) draw above any canvas node.
FOCUS_NODE_JS = """([type, size, vp]) => {
  const c = window.app.canvas, n = window.app.graph._nodes.find(n => n.type === type), T = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
  const right = n.pos[0] + n.size[0], grow = size[0] - n.size[0] + 240;  // links then bend outside the shot
  for (const m of window.app.graph._nodes) if (m !== n && m.pos[0] >= right) m.pos = [m.pos[0] + grow, m.pos[1]];
  n.setSize(size);
  c.ds.scale = 1;
  // a little below the centre: the frontend's run toolbar floats over the canvas' top right
  c.ds.offset = [vp.width / 2 - (n.pos[0] + n.size[0] / 2), vp.height / 2 + 40 - (n.pos[1] - T + (n.size[1] + T) / 2)];
  window.app.graph.setDirtyCanvas(true, true);
}"""

# an elevated three-quarter orbit (VIEW). The distance scales with the cameras' extent
# (trajectories and memory views), not the cloud's box: depth-edge streaks and far walls
# inflate the box, and the frustums should stay big enough to read. World y points down
# (ARCHITECTURE §3): a positive pitch looks down on the floor. The yaw is relative to the first
# camera's heading, so the view does not depend on the scene's frame.
ORBIT_JS = """([type, yawOffset, pitch, distScale, mix, lift]) => {
  const v = window.app.graph._nodes.find(n => n.type === type).__wsInspector.viewer, s = v.scene;
  v.resetView();
  const center = (w) => {  // camera centre -R^T t of a row-major rigid w2c
    const t = [w[3], w[7], w[11]];
    return [0, 1, 2].map(j => -(w[j] * t[0] + w[4 + j] * t[1] + w[8 + j] * t[2]));
  };
  const cams = [...s.trajectories.flatMap(t => t.poses), ...(s.memory?.poses || [])].map(p => center(p.w2c));
  const lo = [0, 1, 2].map(i => Math.min(...cams.map(c => c[i])));
  const hi = [0, 1, 2].map(i => Math.max(...cams.map(c => c[i])));
  const extent = Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
  v.orbit.target = lo.map((x, i) => (1 - mix) * (x + hi[i]) / 2 + mix * v.bounds.center[i]);
  v.orbit.yaw += yawOffset;
  v.orbit.pitch = pitch;
  v.orbit.dist = extent * distScale;
  // move the target along the view's "down" (row 1 of the w2c): the room rises in the picture
  const w = v.viewW2C();
  v.orbit.target = v.orbit.target.map((x, i) => x + w[4 + i] * lift * v.orbit.dist);
  for (const l of ['points', 'trajectories', 'keyframes', 'memory', 'retrieval']) v.setLayer(l, true);
  v.requestRender();
  return {extent, diag: v.bounds.diag, target: v.orbit.target};
}"""

# the node's box in client (CSS) px: title bar included
NODE_BOX_JS = """(type) => {
  const c = window.app.canvas, n = window.app.graph._nodes.find(n => n.type === type), T = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
  const r = c.canvas.getBoundingClientRect(), k = r.width / c.canvas.width;  // canvas px -> CSS px
  const [x, y] = c.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - T]);
  return {x: r.left + x * k, y: r.top + y * k, width: n.size[0] * c.ds.scale * k,
          height: (n.size[1] + T) * c.ds.scale * k};
}"""


# builds EDITOR_GRAPH through LiteGraph, as a user would (same approach as build_workflows.py)
BUILD_JS = """(spec) => {
  const app = window.app, LG = window.LiteGraph;
  app.graph.clear();
  const made = {};
  for (const [key, [type, pos, values]] of Object.entries(spec.nodes)) {
    const node = LG.createNode(type);
    node.pos = pos;
    app.graph.add(node);
    for (const w of node.widgets || []) if (w.name in values) { w.value = values[w.name]; w.callback?.(w.value); }
    made[key] = node;
  }
  for (const [src, out, dst, inp] of spec.links) {
    const a = made[src], b = made[dst];
    a.connect(a.outputs.findIndex(s => s.name === out), b, b.inputs.findIndex(s => s.name === inp));
  }
  app.graph.setDirtyCanvas(true, true);
}"""

# after the run: five keyframes from the run's orbit, the middle one selected and rolled by
# 20° (its green roll handle off vertical), the timeline at frame 30 (EDITOR_VIEW: seen from above)
EDIT_JS = f"""() => {{
  const p = ({find_node_js(EDITOR_TYPE)}).__wsInspector, e = p.editor, v = p.viewer;
  e.fromLastRun(5);
  const k = e.keyframes[2], c = k.position, h = e.upHandle(2);
  const unit = (a) => {{ const n = Math.hypot(...a); return a.map(x => x / n); }};
  const f = unit([0, 1, 2].map(i => k.look_at[i] - c[i])), u = unit([0, 1, 2].map(i => h[i] - c[i]));
  const side = [f[1] * u[2] - f[2] * u[1], f[2] * u[0] - f[0] * u[2], f[0] * u[1] - f[1] * u[0]];
  const a = 20 * Math.PI / 180;  // roll 20°: what dragging the green handle sideways does
  e.keyframes[2] = {{ ...k, up: u.map((x, i) => x * Math.cos(a) + side[i] * Math.sin(a)) }};
  e.selected = 2;
  e.commit();
  e.setFrame(30);
  return e.status.textContent;
}}"""


def fail(msg: str, server: ComfyServer | None = None) -> int:
    print(f"docshots: {msg}", file=sys.stderr)
    if server is not None:
        print("--- ComfyUI log (tail) ---\n" + server.log()[-3000:], file=sys.stderr)
    return 1


def run_errors(server: ComfyServer) -> list[str]:
    """Messages of the prompts that failed: the panel never gets ready after a failed run."""
    out = []
    for pid, h in server.get("/history").json().items():
        status = h.get("status", {})
        if status.get("status_str") == "error":
            for kind, data in status.get("messages", []):
                if kind == "execution_error":
                    msg = data.get("exception_message", "").strip()
                    out.append(f"{data.get('node_type')} (node {data.get('node_id')}): {msg}")
            out = out or [f"prompt {pid} failed"]
    return out


def wait_ready(page, server: ComfyServer, timeout: float, node_type: str = LOOP_TYPE) -> str | None:
    """Wait for a node's inspector; returns an error message, or None once it is ready."""
    t0 = time.time()
    last = None
    while time.time() - t0 < timeout:
        st = page.evaluate(STATE_JS, node_type)
        if st.get("missing"):
            return f"no {node_type} node in the graph"
        if st["state"] == "ready":
            return None
        if st["state"] == "error":
            return f"inspector could not load the scene: {st['message']}"
        if st.get("webgl2") == "0":
            return "the browser has no WebGL2, the inspector cannot draw"
        errors = run_errors(server)
        if errors:
            return "the workflow failed: " + "; ".join(errors)
        if st["state"] != last:
            print(f"  [{time.time() - t0:5.0f}s] inspector: {st['state']}")
            last = st["state"]
        time.sleep(2)
    return f"inspector not ready within {timeout:.0f}s"


def wait_done(server: ComfyServer, timeout: float) -> str | None:
    """Wait until the queue is empty; returns an error message, or None when all went well."""
    deadline = time.time() + max(timeout, 30.0)
    while time.time() < deadline:
        q = server.get("/queue").json()
        if not q.get("queue_running") and not q.get("queue_pending"):
            errors = run_errors(server)
            return "the workflow failed: " + "; ".join(errors) if errors else None
        time.sleep(1)
    return "the workflow did not finish in time"


def node_shot(page, node_type: str, path: Path) -> None:
    """Screenshot of one node (title bar included) to ``path``."""
    box = page.evaluate(NODE_BOX_JS, node_type)
    pad = 6  # keep the node's rounded border and shadow
    clip = {"x": max(0.0, box["x"] - pad), "y": max(0.0, box["y"] - pad)}
    clip["width"] = min(VIEWPORT["width"] - clip["x"], box["width"] + 2 * pad)
    clip["height"] = min(VIEWPORT["height"] - clip["y"], box["height"] + 2 * pad)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), clip=clip)
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    print(f"wrote {shown} ({clip['width']:.0f}x{clip['height']:.0f})")


def main() -> int:
    from playwright.sync_api import sync_playwright

    t_start = time.time()
    new_fe = os.environ.get("WORLDSTEREO_FRONTEND_NEW")
    server = ComfyServer(front_end_root=Path(new_fe) if new_fe else None)
    print(f"frontend: {new_fe or 'the default of this ComfyUI'}")
    workflow = json.loads(WORKFLOW.read_text())
    with server, sync_playwright() as pw:
        # no tutorial nor workflow-validation dialogs over the canvas
        server.post("/api/settings", json={"Comfy.TutorialCompleted": True})
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS + WEBGL_ARGS,  # the inspector needs WebGL2
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(server.url, wait_until="domcontentloaded")
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            page.wait_for_timeout(500)
            # the name makes the tab read "preview_synthetic" instead of "Unsaved Workflow"
            page.evaluate(
                "async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }",
                [workflow, WORKFLOW.stem],
            )
            page.wait_for_timeout(1000)
            page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
            print(
                f"queued {WORKFLOW.relative_to(REPO_ROOT)}; waiting for the run and the scene-loop inspector (under a minute on CPU)"
            )
            err = wait_ready(page, server, READY_TIMEOUT_S)
            if err:
                shot = Path(tempfile.gettempdir()) / "docshots_failure.png"
                page.screenshot(path=str(shot))
                return fail(f"{err} (page at failure: {shot})", server)

            page.evaluate(HIDE_BANNERS_JS)
            # the saves and Preview3D run after the loop: wait for them, so the page shot has
            # no progress bar and Preview3D shows the scene
            err = wait_done(server, READY_TIMEOUT_S - (time.time() - t_start))
            if err:
                return fail(err, server)
            page.evaluate(ORBIT_JS, [LOOP_TYPE, *VIEW])
            # whole page: the graph fitted into the viewport, the inspector at its usual size
            # a few rounds: the video previews take their height only once their files load
            for _ in range(3):
                page.evaluate(GROW_JS)
                page.wait_for_timeout(400)
                page.evaluate(RESTACK_JS)
                page.wait_for_timeout(400)
            page.evaluate(FIT_GRAPH_JS, VIEWPORT)
            page.wait_for_timeout(800)  # canvas redraw, DOM widget repositioning, WebGL frame
            PAGE_SHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(PAGE_SHOT))
            print(f"wrote {PAGE_SHOT.relative_to(REPO_ROOT)}")

            # the node alone, enlarged so the 3D view is big
            page.evaluate(FOCUS_NODE_JS, [LOOP_TYPE, list(NODE_SIZE), VIEWPORT])
            page.wait_for_timeout(500)
            page.evaluate(ORBIT_JS, [LOOP_TYPE, *VIEW])  # the view's aspect changed with the size
            page.evaluate(HIDE_BANNERS_JS)
            page.wait_for_timeout(800)
            node_shot(page, LOOP_TYPE, NODE_SHOT)

            # the trajectory editor over the room's cache
            page.evaluate(BUILD_JS, EDITOR_GRAPH)
            page.wait_for_timeout(800)
            page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
            err = wait_ready(page, server, READY_TIMEOUT_S, EDITOR_TYPE) or wait_done(server, READY_TIMEOUT_S)
            if err:
                return fail(err, server)
            page.evaluate(FOCUS_NODE_JS, [EDITOR_TYPE, list(EDITOR_NODE_SIZE), VIEWPORT])
            page.wait_for_timeout(500)
            print(f"  editor: {page.evaluate(EDIT_JS)}")
            page.evaluate(ORBIT_JS, [EDITOR_TYPE, *EDITOR_VIEW])
            page.evaluate(HIDE_BANNERS_JS)
            page.wait_for_timeout(800)
            node_shot(page, EDITOR_TYPE, EDITOR_SHOT)
        finally:
            browser.close()
    print(f"done in {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
