// WorldStereo scene inspector: a DOM widget on every WorldStereo node whose output carries a
// `worldstereo_inspector` entry (nodes/inspector.py `publish`), and the trajectory editor on
// TrajectoryBuilder. Plain ES modules; the only host APIs used are app.registerExtension,
// beforeRegisterNodeDef/onExecuted/onNodeCreated, node.addDOMWidget and api.fetchApi.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { LAYERS, LINK_COLOR, PALETTE, Viewer } from "./renderer.js";
import { poseAxes } from "./math3d.js";
import { fetchScene, UI_KEY } from "./scene_data.js";
import { EDITOR_NODE, TrajectoryEditor } from "./trajectory_editor.js";

const WIDGET_NAME = "worldstereo_inspector";
const BUDGET_PROPERTY = "worldstereo_points";
const BUDGETS = [1000, 5000, 25000, 50000, 100000, 200000, 500000, 1000000, 2000000];
const DEFAULT_BUDGET = 200000; // worldstereo_core/scene_codec.py DEFAULT_MAX_POINTS
const MIN_HEIGHT = 360;
const STYLE_ID = "worldstereo-inspector-style";

const CSS = `
.ws-inspector { display:flex; flex-direction:column; width:100%; height:100%; box-sizing:border-box;
  font: 11px/1.3 system-ui, sans-serif; color:#ddd; background:#1b1b1f; border-radius:6px; overflow:hidden; }
.ws-inspector .ws-bar, .ws-inspector .ws-editor-bar { display:flex; flex-wrap:wrap; gap:4px; align-items:center;
  padding:3px 4px; background:#26262c; }
.ws-inspector .ws-view { position:relative; flex:1 1 auto; min-height:120px; }
.ws-inspector .ws-btn { font:inherit; color:#eee; background:#3a3a44; border:1px solid #555; border-radius:4px;
  padding:1px 6px; cursor:pointer; }
.ws-inspector .ws-btn:hover { background:#4a4a56; }
.ws-inspector .ws-toggle { display:inline-flex; align-items:center; gap:2px; cursor:pointer; user-select:none; }
.ws-inspector .ws-toggle input { margin:0; }
.ws-inspector .ws-status { opacity:0.8; margin-left:4px; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
.ws-inspector .ws-timeline { flex:1 1 120px; min-width:80px; }
.ws-inspector .ws-message { position:absolute; inset:0; display:flex; align-items:center; justify-content:center;
  text-align:center; padding:12px; color:#bbb; pointer-events:none; }
.ws-inspector .ws-tip { position:absolute; pointer-events:none; background:rgba(0,0,0,0.8); color:#fff;
  padding:2px 5px; border-radius:3px; white-space:nowrap; display:none; z-index:2; }
.ws-inspector .ws-tip-img { display:none; margin-top:3px; max-width:160px; max-height:160px; }
.ws-inspector .ws-budget { padding:0 2px; }
.ws-inspector .ws-pip { position:absolute; right:4px; bottom:4px; max-width:45%; max-height:45%;
  border:1px solid #888; background:#000; cursor:pointer; display:none; z-index:2; }
.ws-inspector .ws-flash { position:absolute; left:4px; bottom:4px; background:rgba(120,40,40,0.9); color:#fff;
  padding:2px 6px; border-radius:3px; display:none; z-index:3; }
`;

function ensureStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const s = document.createElement("style");
  s.id = STYLE_ID;
  s.textContent = CSS;
  document.head.appendChild(s);
}

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  Object.assign(e, attrs);
  if (text) e.textContent = text;
  return e;
}

const LAYER_LABELS = { points: "Points", trajectories: "Paths", keyframes: "Keyframes", memory: "Memory", retrieval: "Links" };

/** The widget's contents: toolbar, 3D view, and (on TrajectoryBuilder) the editor. */
export class InspectorPanel {
  constructor(node, { editor = false } = {}) {
    ensureStyle();
    this.node = node;
    this.api = api;
    this.token = null;
    this.scene = null;
    this.root = el("div", { className: "ws-inspector" });
    this.root.dataset.worldstereoInspector = "1";
    // keep LiteGraph from treating clicks and wheel on the panel as canvas gestures
    for (const type of ["pointerdown", "mousedown", "wheel", "keydown"]) this.root.addEventListener(type, (ev) => ev.stopPropagation());

    const bar = el("div", { className: "ws-bar" });
    const reset = el("button", { className: "ws-btn", title: "Back to the start view (double-click the view does the same)" }, "Reset");
    reset.addEventListener("click", (ev) => { ev.stopPropagation(); this.viewer.resetView(); });
    bar.appendChild(reset);
    this.toggles = {};
    for (const layer of LAYERS) {
      const lab = el("label", { className: "ws-toggle", title: `Show ${LAYER_LABELS[layer].toLowerCase()}` });
      const box = el("input", { type: "checkbox", checked: true });
      box.addEventListener("change", () => this.viewer.setLayer(layer, box.checked));
      lab.append(box, document.createTextNode(LAYER_LABELS[layer]));
      bar.appendChild(lab);
      this.toggles[layer] = box;
    }
    // the point budget: the server sends a uniform subsample of this size (saved with the node)
    this.budget = el("select", { className: "ws-btn ws-budget", title: "Points to show (a uniform subsample, chosen on the server)" });
    this.budget.addEventListener("change", (ev) => {
      ev.stopPropagation();
      const n = Number(this.budget.value);
      this.node.properties = this.node.properties || {};
      this.node.properties[BUDGET_PROPERTY] = n;
      if (this.entry) this.load(this.entry);
    });
    bar.appendChild(this.budget);
    this._fillBudget(null);
    const shot = el("button", { className: "ws-btn", title: "Save the view as PNG" }, "PNG");
    shot.addEventListener("click", (ev) => { ev.stopPropagation(); this.screenshot(); });
    bar.appendChild(shot);
    this.info = el("span", { className: "ws-status" });
    bar.appendChild(this.info);

    this.view = el("div", { className: "ws-view" });
    this.message = el("div", { className: "ws-message" });
    this.tip = el("div", { className: "ws-tip" });
    this.tipText = el("div");
    this.tipImg = el("img", { className: "ws-tip-img" });
    this.tip.append(this.tipText, this.tipImg);
    this.thumbURLs = [];
    this.pip = el("img", { className: "ws-pip", title: "Click to close" });
    this.pip.addEventListener("click", (ev) => { ev.stopPropagation(); this.pip.style.display = "none"; });
    this.flashBox = el("div", { className: "ws-flash" });
    this.root.append(bar, this.view);
    this.viewer = new Viewer(this.view);
    this.view.append(this.message, this.tip, this.pip, this.flashBox);
    if (!this.viewer.ok) {
      this.setMessage("WebGL2 is not available in this browser, so the 3D inspector cannot draw. " +
        "Turn on hardware acceleration or use a current Chrome, Edge, Firefox or Safari.");
      this.root.dataset.webgl2 = "0";
    } else {
      this.root.dataset.webgl2 = "1";
      this.setMessage(editor ? "Run the workflow to see the cache; keyframes can be edited meanwhile." : "Run the workflow to inspect this output.");
    }
    this.viewer.onHover = (x, y) => this.hover(x, y);
    this.editor = editor && this.viewer.ok ? new TrajectoryEditor(this) : null;
  }

  setMessage(text) {
    this.message.textContent = text || "";
    this.message.style.display = text ? "flex" : "none";
  }

  flash(text) {
    this.flashBox.textContent = text;
    this.flashBox.style.display = "block";
    clearTimeout(this._flashTimer);
    this._flashTimer = setTimeout(() => { this.flashBox.style.display = "none"; }, 4000);
  }

  showImage(url, title) {
    if (this.pip.src?.startsWith("blob:")) URL.revokeObjectURL(this.pip.src);
    this.pip.src = url;
    this.pip.title = `${title} — click to close`;
    this.pip.style.display = "block";
  }

  /** The point budget chosen on this node (a saved node property), or null for the node's default. */
  pointBudget() {
    const n = Number(this.node.properties?.[BUDGET_PROPERTY]);
    return Number.isInteger(n) && n > 0 ? n : null;
  }

  /** Budget choices up to the points the server holds for this output. */
  _fillBudget(stored) {
    const current = this.pointBudget() ?? DEFAULT_BUDGET;
    const choices = BUDGETS.filter((n) => stored == null || n < stored);
    if (stored != null) choices.push(stored);
    if (!choices.includes(current) && (stored == null || current < stored)) choices.push(current);
    choices.sort((a, b) => a - b);
    this.budget.replaceChildren(...choices.map((n) => el("option", { value: String(n) },
      `${n === stored ? "all " : ""}${n >= 1e6 ? `${n / 1e6}M` : n >= 1e3 ? `${Math.round(n / 1e3)}k` : n} pts`)));
    const shown = stored == null ? current : Math.min(current, stored);
    this.budget.value = String(shown);
  }

  /** Fetch and show the scene of an `executed` UI entry {token, points, stored_points, total_points, ...}. */
  async load(entry) {
    if (!this.viewer.ok || !entry?.token) return;
    const token = entry.token;
    this.entry = entry;
    this.token = token;
    this.setMessage("Loading…");
    this.root.dataset.state = "loading";
    try {
      const scene = await fetchScene(this.api, token, this.pointBudget());
      if (this.token !== token) return; // a newer run arrived meanwhile
      const first = this.scene === null;
      this.scene = scene;
      for (const u of this.thumbURLs) URL.revokeObjectURL(u);
      this.thumbURLs = (scene.memory?.thumbnails || []).map((b) => URL.createObjectURL(b));
      this._fillBudget(scene.points ? scene.points.stored ?? scene.points.total : null);
      this.viewer.setScene(scene, { keepView: !first });
      const p = scene.points;
      const parts = [];
      if (p) parts.push(p.count === p.total ? `${p.count.toLocaleString()} pts` : `${p.count.toLocaleString()} of ${p.total.toLocaleString()} pts`);
      if (scene.trajectories.length) parts.push(`${scene.trajectories.length} path${scene.trajectories.length > 1 ? "s" : ""}`);
      if (scene.memory) parts.push(`${scene.memory.count} memory views`);
      parts.push(`${(scene.bytes / 1e6).toFixed(2)} MB`);
      this.info.textContent = parts.join(" · ");
      this.setMessage(p || scene.trajectories.length || scene.memory ? "" : "This output has nothing to draw.");
      // a new run shows the current controls' path; the same output refetched (another point
      // budget) keeps the editor's preset preview
      if (this.root.dataset.token !== token) this.editor?.runLoaded();
      else this.editor?.reapplyPreview();
      this.root.dataset.state = "ready";
      this.root.dataset.token = token;
    } catch (e) {
      if (this.token !== token) return;
      this.setMessage(String(e.message || e));
      this.root.dataset.state = "error";
    }
  }

  hover(x, y) {
    const s = this.viewer.scene || this.scene; // the viewer's: it may show the editor's preset preview
    let text = null, best = 8;
    if (s && this.viewer.layers.retrieval) {
      const vp = this.viewer.viewProj();
      for (const l of this.viewer.links || []) {
        const a = this.viewer.worldToScreen(l.a, vp), b = this.viewer.worldToScreen(l.b, vp);
        if (!a || !b) continue;
        const d = segmentDistance([x, y], a, b);
        if (d < best) {
          best = d;
          const t = s.trajectories[l.trajectory];
          const score = l.score == null ? "score of first choice only" : `score ${l.score.toFixed(3)}`;
          text = `${t.name} keyframe ${l.slot} (pose ${l.pose}) → memory ${l.ref}${l.label ? ` “${l.label}”` : ""} · ${score}`;
        }
      }
    }
    if (s && !text && this.viewer.layers.keyframes) {
      const vp = this.viewer.viewProj();
      s.trajectories.forEach((t) => t.keyframes.forEach((k, n) => {
        const p = t.poses[k] && this.viewer.worldToScreen(poseAxes(t.poses[k].w2c).center, vp);
        if (p && Math.hypot(p[0] - x, p[1] - y) < best) {
          best = Math.hypot(p[0] - x, p[1] - y);
          text = `${t.name} · keyframe ${n} (pose ${k})`;
        }
      }));
    }
    let thumb = null;
    if (s?.memory && !text && this.viewer.layers.memory) {
      const vp = this.viewer.viewProj();
      s.memory.poses.forEach((p, i) => {
        const c = this.viewer.worldToScreen(poseAxes(p.w2c).center, vp);
        if (c && Math.hypot(c[0] - x, c[1] - y) < best) {
          best = Math.hypot(c[0] - x, c[1] - y);
          const [h, w] = s.memory.sizes[i];
          text = `memory view ${i} “${s.memory.labels?.[i] ?? ""}” · ${w}×${h}`;
          thumb = this.thumbURLs[i] || null;
        }
      });
    }
    if (text) {
      this.tipText.textContent = text;
      if (thumb) { this.tipImg.src = thumb; this.tipImg.style.display = "block"; } else this.tipImg.style.display = "none";
      this.tip.style.left = `${Math.min(x + 12, this.view.clientWidth - 10)}px`;
      this.tip.style.top = `${y + 12}px`;
      this.tip.style.display = "block";
    } else {
      this.tip.style.display = "none";
    }
  }

  screenshot() {
    if (!this.viewer.ok) return;
    const a = el("a", { href: this.viewer.screenshotDataURL(), download: `worldstereo_${this.node.id}.png` });
    a.click();
  }
}

function segmentDistance(p, a, b) {
  const dx = b[0] - a[0], dy = b[1] - a[1];
  const L = dx * dx + dy * dy || 1;
  const t = Math.max(0, Math.min(1, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / L));
  return Math.hypot(p[0] - (a[0] + t * dx), p[1] - (a[1] + t * dy));
}

/** The node's inspector panel, adding the DOM widget on first use. */
export function ensurePanel(node, opts = {}) {
  if (node.__wsInspector) return node.__wsInspector;
  const panel = new InspectorPanel(node, opts);
  const widget = node.addDOMWidget(WIDGET_NAME, "WORLDSTEREO_INSPECTOR", panel.root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => MIN_HEIGHT,
    getValue: () => "",
    setValue: () => {},
  });
  widget.serialize = false; // never in widgets_values nor in the prompt
  panel.widget = widget;
  node.__wsInspector = panel;
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    panel.editor?.dispose();
    for (const u of panel.thumbURLs) URL.revokeObjectURL(u);
    panel.viewer.dispose();
    return onRemoved?.apply(this, arguments);
  };
  const size = node.computeSize?.() || node.size;
  node.setSize?.([Math.max(node.size?.[0] || 0, 440), Math.max(node.size?.[1] || 0, size[1])]);
  node.setDirtyCanvas?.(true, true);
  return panel;
}

app.registerExtension({
  name: "WorldStereo.Inspector",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("WorldStereo")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const r = onExecuted?.apply(this, arguments);
      const entry = output?.[UI_KEY]?.[0];
      if (entry) ensurePanel(this).load(entry);
      return r;
    };
    if (nodeData.name === EDITOR_NODE) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        ensurePanel(this, { editor: true });
        return r;
      };
      // after a workflow loads, the keyframes widget holds the saved text: redraw from it
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const r = onConfigure?.apply(this, arguments);
        this.__wsInspector?.editor?.sync(true);
        return r;
      };
    }
  },
});

export { PALETTE, LINK_COLOR };
