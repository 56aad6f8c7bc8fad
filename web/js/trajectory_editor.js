// Trajectory editor on WorldStereoTrajectoryBuilder: keyframe handles in the 3D view (drag the
// square to move the camera, the diamond to turn it), add / delete, timeline scrub with a view
// through any pose and the server's GGM render of the cache there, camera.json import/export.
// The edited keyframes live in the node's `keyframes` widget (saved with the workflow, sent
// with the prompt); editing switches `preset` to "keyframes".

import { kFromFovY, poseAxes, vec } from "./math3d.js";
import {
  cameraJson, interpolate, keyframePosition, keyframeTarget, keyframeW2C, modelKeyframeIndices,
  parseCameraJson, parseKeyframes, serializeKeyframes, withPosition, withTarget, withUp,
} from "./keyframes.js";
import { addFrustum, VertexList } from "./renderer.js";
import { fetchPresetPlan, fetchRender } from "./scene_data.js";

export const EDITOR_NODE = "WorldStereoTrajectoryBuilder";
const EDIT_COLOR = [0.35, 0.95, 1.0];
const SELECT_COLOR = [1, 1, 1];
const PREVIEW_COLOR = [1.0, 0.55, 0.15];
const PICK_RADIUS = 12;
const PRESET_CONTROLS = ["preset", "median_depth", "angle", "extent", "num_frames"];
const NOT_PRESETS = new Set(["keyframes", "camera_json"]);

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  Object.assign(e, attrs);
  if (text) e.textContent = text;
  return e;
}

export class TrajectoryEditor {
  constructor(panel) {
    this.panel = panel;
    this.node = panel.node;
    this.viewer = panel.viewer;
    this.keyframes = [];
    this.selected = -1;
    this.frame = 0;
    this._text = null;
    this.drag = null;
    this._buildUI();
    this.viewer.handlers = {
      down: (x, y, ev) => this._down(x, y, ev),
      move: (x, y) => this._move(x, y),
      up: () => this._up(),
    };
    this._hookWidgets();
    this.presetPreview = null;
    this._controlsKey = null;
    this._previewSeq = 0;
    // Vue-mode widgets do not always call widget.callback: watch the preset controls too
    this._watch = setInterval(() => this._checkControls(), 400);
    // keys while the 3D view has focus (the panel stops them before LiteGraph sees them, so
    // Delete removes a keyframe, never the node)
    this.viewer.canvas.addEventListener("keydown", (ev) => this._key(ev));
    this.sync(true);
  }

  /** A run's scene arrived: it shows the path of the current controls, so drop the preview. */
  runLoaded() {
    this._previewSeq++;
    this._abort?.abort();
    this.presetPreview = null;
    this.previewNote = null;
    this._controlsKey = JSON.stringify(this.controls());
    this.root().dataset.preview = "0";
    this.sync(true);
  }

  dispose() {
    clearInterval(this._watch);
    this.pause();
    this._abort?.abort();
  }

  /** The node's preset controls as the server reads them. */
  controls() {
    const num = (name, d) => {
      const v = Number(this.widget(name)?.value);
      return Number.isFinite(v) ? v : d;
    };
    return { preset: String(this.widget("preset")?.value ?? ""), median_depth: num("median_depth", 0),
             angle: num("angle", 0), extent: num("extent", 0), num_frames: this.numFrames() };
  }

  usesKeyframes() { return this.widget("preset")?.value === "keyframes"; }

  _checkControls() {
    const key = JSON.stringify(this.controls());
    if (key === this._controlsKey) return;
    this._controlsKey = key;
    clearTimeout(this._previewTimer);
    this._previewTimer = setTimeout(() => this.previewPreset(), 150);
  }

  /**
   * Live preset preview: the path the server would build with the current controls, planned
   * on the server from the last run's start camera and cache, drawn in place of the run's.
   */
  async previewPreset() {
    const c = this.controls();
    const seq = ++this._previewSeq;
    this._abort?.abort();
    if (NOT_PRESETS.has(c.preset) || !c.preset) {
      this._setPreview(null);
      return;
    }
    const token = this.panel.token;
    if (!token || !this.panel.entry?.planner) {
      this._setPreview(null, "run the workflow once to preview presets live");
      return;
    }
    this._abort = typeof AbortController === "function" ? new AbortController() : null;
    try {
      const plan = await fetchPresetPlan(this.panel.api, token, c, this._abort?.signal);
      if (seq !== this._previewSeq || token !== this.panel.token) return;
      this._setPreview(plan);
    } catch (e) {
      if (e?.name === "AbortError" || seq !== this._previewSeq) return;
      this._setPreview(null, String(e.message || e));
    }
  }

  _setPreview(plan, note = null) {
    this.presetPreview = plan;
    this.previewNote = note;
    const run = this.panel.scene?.trajectories || [];
    if (this.viewer.ok && this.panel.scene) this.viewer.setTrajectories(plan ? [{ ...plan, color: PREVIEW_COLOR }] : run);
    this.root().dataset.preview = plan ? "1" : "0";
    this.redraw();
  }

  root() { return this.panel.root; }

  /** Draw the preset preview again over a freshly loaded scene of the same run. */
  reapplyPreview() { this._setPreview(this.presetPreview, this.previewNote); }

  /** Poses drawn and scrubbed: the edited keyframes, else the preset preview, else the last run. */
  activePoses() {
    if (this.usesKeyframes() && this.keyframes.length) return this.path();
    if (this.presetPreview) return this.presetPreview.poses.map((p) => p.w2c);
    return (this.panel.scene?.trajectories?.[0]?.poses || []).map((p) => p.w2c);
  }

  widget(name) { return this.node.widgets?.find((w) => w.name === name); }

  numFrames() {
    const n = Number(this.widget("num_frames")?.value);
    return Number.isFinite(n) && n >= 2 ? Math.min(1024, Math.round(n)) : 81;
  }

  /** Intrinsics and image size for previews: the last run's, else a 60° view at 480x768. */
  intrinsics() {
    const t = this.panel.scene?.trajectories?.[0];
    if (t && t.poses.length) return { K: t.poses[0].K, width: t.width, height: t.height };
    return { K: kFromFovY(41, 768, 480), width: 768, height: 480 };
  }

  // ---- widget <-> state ------------------------------------------------------------------------
  _hookWidgets() {
    for (const name of ["keyframes", ...PRESET_CONTROLS]) {
      const w = this.widget(name);
      if (!w) continue;
      const cb = w.callback;
      w.callback = (...args) => {
        const r = cb?.apply(w, args);
        this.sync();
        this._checkControls();
        return r;
      };
    }
  }

  /** Re-read the keyframes widget (the user may have typed in it) and redraw. */
  sync(force = false) {
    const text = this.widget("keyframes")?.value ?? "";
    if (force || text !== this._text) {
      this._text = text;
      const { keyframes, error } = parseKeyframes(text);
      this.keyframes = keyframes;
      this.error = error;
      if (this.selected >= keyframes.length) this.selected = keyframes.length - 1;
    }
    this.redraw();
  }

  /** Write the keyframes to the widget (and switch the preset to "keyframes"). */
  commit() {
    const text = serializeKeyframes(this.keyframes);
    this._text = text;
    const w = this.widget("keyframes");
    if (w) {
      w.value = text;
      w.callback?.(text);
    }
    const preset = this.widget("preset");
    if (preset && this.keyframes.length && preset.value !== "keyframes") {
      preset.value = "keyframes";
      preset.callback?.("keyframes");
    }
    this.node.setDirtyCanvas?.(true, true);
    this.node.graph?.change?.();
    this.redraw();
  }

  // ---- drawing ---------------------------------------------------------------------------------
  path() { return interpolate(this.keyframes, this.numFrames()); }

  redraw() {
    const lines = new VertexList(), markers = new VertexList();
    const d = this.viewer.frustumDepth();
    const { K, width, height } = this.intrinsics();
    const used = this.usesKeyframes();
    if (used) {
      const path = this.path();
      for (let i = 0; i + 1 < path.length; i++) lines.line(poseAxes(path[i]).center, poseAxes(path[i + 1]).center, EDIT_COLOR, 0.9);
      for (const k of modelKeyframeIndices(path.length)) addFrustum(lines, path[k], K, width, height, d * 0.7, EDIT_COLOR, 0.45);
    }
    // keyframes not in use (another preset is chosen) stay editable, dimmed: editing one
    // switches the preset back to "keyframes"
    const alpha = used ? 1 : 0.35;
    this.keyframes.forEach((k, i) => {
      const sel = i === this.selected;
      const col = sel ? SELECT_COLOR : EDIT_COLOR;
      const p = keyframePosition(k), t = this.target(i), u = this.upHandle(i);
      addFrustum(lines, keyframeW2C(k), K, width, height, d, col, alpha);
      lines.line(p, t, col, 0.6 * alpha);
      lines.line(p, u, [0.5, 1.0, 0.5], 0.6 * alpha);
      markers.push(p, col, sel ? 13 : 11, alpha);
      markers.push(t, [1.0, 0.8, 0.3], sel ? 9 : 7, alpha);
      markers.push(u, [0.5, 1.0, 0.5], sel ? 8 : 6, alpha);
    });
    const poses = this.scrubPoses();
    if (poses.length) {
      const f = Math.min(this.frame, poses.length - 1);
      addFrustum(lines, poses[f], K, width, height, d * 1.2, [1, 0.3, 0.9], 1);
    }
    this.viewer.setOverlay(lines, markers);
    this._updateTimeline();
    const n = this.keyframes.length;
    let text = `${n} keyframe${n === 1 ? "" : "s"}` + (this.selected >= 0 ? ` · #${this.selected} selected` : "");
    if (!used) {
      const c = this.controls();
      if (this.presetPreview) {
        const h = this.presetPreview.halvings;
        text = `preview: ${c.preset}, ${this.presetPreview.poses.length} poses` +
          (h ? ` (shortened ${h}× by the cache)` : "") + " — run to apply";
      } else if (this.previewNote) {
        text = `${c.preset}: ${this.previewNote}`;
      } else {
        text = `preset ${c.preset}` + (n ? ` · ${text} (dimmed: used with preset "keyframes")` : "");
      }
    } else if (!n) {
      text += " · add one at the current view, or take them from the last run";
    }
    this.status.textContent = this.error ? `⚠ ${this.error}` : text;
  }

  /** Roll handle of keyframe i: a point on the camera's image-up direction (−y). */
  upHandle(i) {
    const { center, down } = poseAxes(keyframeW2C(this.keyframes[i]));
    return vec.add(center, vec.scale(down, -0.6 * this.viewer.frustumDepth())); // just above the frustum
  }

  /** Target handle of keyframe i (w2c keyframes: a point along the optical axis). */
  target(i) {
    return keyframeTarget(this.keyframes[i], 0.25 * this.viewer.bounds.diag);
  }

  // ---- picking and dragging --------------------------------------------------------------------
  /** Screen position (CSS px of the canvas) of keyframe i's position or target handle. */
  handleScreen(i, which = "position") {
    return this.viewer.worldToScreen(this.handlePoint(i, which));
  }

  handlePoint(i, which) {
    if (which === "position") return keyframePosition(this.keyframes[i]);
    return which === "up" ? this.upHandle(i) : this.target(i);
  }

  /** Page (client) coordinates of a handle, for tests and tooling. */
  handleClientPos(i, which = "position") {
    const s = this.handleScreen(i, which);
    if (!s) return null;
    const c = this.viewer.canvas, r = c.getBoundingClientRect();
    return [r.left + (s[0] * r.width) / c.clientWidth, r.top + (s[1] * r.height) / c.clientHeight];
  }

  _pick(x, y) {
    let best = null;
    const vp = this.viewer.viewProj();
    this.keyframes.forEach((k, i) => {
      for (const which of ["position", "target", "up"]) {
        const p = this.handlePoint(i, which);
        const s = this.viewer.worldToScreen(p, vp);
        if (!s) continue;
        const dist = Math.hypot(s[0] - x, s[1] - y);
        // positions win ties over targets: they are what users grab most
        const score = dist - (which === "position" ? 2 : 0);
        if (dist <= PICK_RADIUS && (!best || score < best.score)) best = { i, which, score, p };
      }
    });
    return best;
  }

  _down(x, y) {
    this.sync();
    const hit = this._pick(x, y);
    if (!hit) return false;
    this.selected = hit.i;
    this.drag = { i: hit.i, which: hit.which, ref: hit.p };
    this.redraw();
    return true;
  }

  _move(x, y) {
    if (!this.drag) return;
    const { i, which, ref } = this.drag;
    const p = this.viewer.screenToWorld(x, y, ref);
    const k = this.keyframes[i];
    if (which === "position") {
      const np = withPosition(k, p);
      if (vec.norm(vec.sub(keyframeTarget(np, 1), keyframePosition(np))) < 1e-9) return;
      this.keyframes[i] = np;
    } else if (which === "up") {
      const r = withUp(k, p, 0.25 * this.viewer.bounds.diag);
      if (!r) return;
      this.keyframes[i] = r;
    } else {
      if (vec.norm(vec.sub(p, keyframePosition(k))) < 1e-6) return;
      this.keyframes[i] = withTarget(k, p);
    }
    this.dirtyDrag = true;
    this.redraw();
  }

  _up() {
    if (this.drag && this.dirtyDrag) this.commit();
    this.drag = null;
    this.dirtyDrag = false;
  }

  // ---- actions ---------------------------------------------------------------------------------
  addAtView() {
    const v = this.viewer;
    let position, look_at;
    if (v.poseView) {
      const { center, forward } = poseAxes(v.poseView.w2c);
      position = center; look_at = vec.add(center, vec.scale(forward, 0.3 * v.bounds.diag));
    } else {
      position = v.eye(); look_at = v.orbit.target.slice();
    }
    const at = this.selected >= 0 ? this.selected + 1 : this.keyframes.length;
    this.keyframes.splice(at, 0, { position, look_at });
    this.selected = at;
    this.commit();
  }

  deleteSelected() {
    if (this.selected < 0 || this.selected >= this.keyframes.length) return;
    this.keyframes.splice(this.selected, 1);
    this.selected = Math.min(this.selected, this.keyframes.length - 1);
    this.commit();
  }

  /** Keyframes from the last run's trajectory: `count` evenly spaced poses, aimed as they were. */
  fromLastRun(count = 5) {
    const t = this.panel.scene?.trajectories?.[0];
    if (!t || !t.poses.length) {
      this.panel.flash("Run the workflow once: the keyframes are taken from its trajectory.");
      return;
    }
    const n = Math.min(count, t.poses.length), d = 0.3 * this.viewer.bounds.diag;
    this.keyframes = Array.from({ length: n }, (_, i) => {
      const w2c = t.poses[Math.round((i * (t.poses.length - 1)) / Math.max(1, n - 1))].w2c;
      const { center, forward } = poseAxes(w2c);
      return { position: center, look_at: vec.add(center, vec.scale(forward, d)) };
    });
    this.selected = 0;
    this.commit();
  }

  importCameraJson(text) {
    const { w2cs } = parseCameraJson(text);
    this.keyframes = w2cs.map((w2c) => ({ w2c }));
    const nf = this.widget("num_frames");
    if (nf) { nf.value = Math.max(2, w2cs.length); nf.callback?.(nf.value); }
    this.selected = 0;
    this.commit();
  }

  /** camera.json of the edited path (client interpolation = the server's rule) or the last run. */
  exportCameraJson() {
    const { K } = this.intrinsics();
    const poses = this.activePoses();
    if (!poses.length) throw new Error("nothing to export: add keyframes or run the workflow");
    return cameraJson(poses, poses.map(() => K));
  }

  // ---- timeline --------------------------------------------------------------------------------
  /** Poses the timeline scrubs (see activePoses). */
  scrubPoses() { return this.activePoses(); }

  _updateTimeline() {
    const poses = this.scrubPoses();
    this.timeline.max = String(Math.max(0, poses.length - 1));
    this.timeline.disabled = poses.length === 0;
    this.frame = Math.min(this.frame, Math.max(0, poses.length - 1));
    this.timeline.value = String(this.frame);
    this.frameLabel.textContent = poses.length ? `frame ${this.frame}/${poses.length - 1}` : "no path";
    if (this.lookThrough.checked && poses.length) {
      const { K, width, height } = this.intrinsics();
      this.viewer.viewFromPose(poses[this.frame], K, width, height);
    }
  }

  setFrame(f) {
    this.frame = f;
    this.redraw();
  }

  /** Play the path on the timeline (16 poses a second, looping); with "view" on, look through it. */
  play() {
    if (this._player || !this.scrubPoses().length) return;
    this.playButton.textContent = "❚❚";
    this._player = setInterval(() => {
      const n = this.scrubPoses().length;
      if (!n) { this.pause(); return; }
      this.setFrame((this.frame + 1) % n);
    }, 1000 / 16);
  }

  pause() {
    clearInterval(this._player);
    this._player = null;
    if (this.playButton) this.playButton.textContent = "▶";
  }

  _key(ev) {
    const n = this.scrubPoses().length;
    if ((ev.key === "Delete" || ev.key === "Backspace") && this.selected >= 0) this.deleteSelected();
    else if (ev.key === "Escape") { this.selected = -1; this.redraw(); }
    else if (ev.key === " ") { if (this._player) this.pause(); else this.play(); }
    else if (ev.key === "ArrowRight" && n) this.setFrame(Math.min(n - 1, this.frame + 1));
    else if (ev.key === "ArrowLeft" && n) this.setFrame(Math.max(0, this.frame - 1));
    else return;
    ev.preventDefault();
  }

  async renderAtFrame() {
    const poses = this.scrubPoses();
    const token = this.panel.token;
    if (!poses.length || !token || !this.panel.scene?.points) {
      this.panel.flash("The GGM render needs a run with the cache connected.");
      return;
    }
    let { K, width, height } = this.intrinsics();
    const s = Math.min(1, 512 / Math.max(width, height)); // keep the CPU render quick
    K = [K[0] * s, 0, K[2] * s, 0, K[4] * s, K[5] * s, 0, 0, 1];
    const w = Math.max(16, Math.round(width * s)), h = Math.max(16, Math.round(height * s));
    try {
      const url = await fetchRender(this.panel.api, token, poses[this.frame], K, w, h, 0.008);
      this.panel.showImage(url, `GGM render · frame ${this.frame}`);
    } catch (e) {
      this.panel.flash(String(e.message || e));
    }
  }

  _buildUI() {
    const bar = el("div", { className: "ws-editor-bar" });
    const btn = (label, title, fn) => {
      const b = el("button", { title, className: "ws-btn" }, label);
      b.addEventListener("click", (ev) => { ev.stopPropagation(); fn(); });
      bar.appendChild(b);
      return b;
    };
    btn("+ Key", "Add a keyframe at the current view (after the selected one)", () => this.addAtView());
    btn("Delete", "Delete the selected keyframe (Delete key; Esc deselects)", () => this.deleteSelected());
    btn("From run", "Replace the keyframes by 5 poses of the last run's trajectory", () => this.fromLastRun());
    const file = el("input", { type: "file", accept: ".json,application/json" });
    file.style.display = "none";
    file.addEventListener("change", async () => {
      const f = file.files?.[0];
      if (!f) return;
      try { this.importCameraJson(await f.text()); } catch (e) { this.panel.flash(`camera.json: ${e.message}`); }
      file.value = "";
    });
    bar.appendChild(file);
    btn("Import", "Import a camera.json (its poses become keyframes)", () => file.click());
    btn("Export", "Download the edited path as camera.json", () => {
      try {
        const blob = new Blob([this.exportCameraJson()], { type: "application/json" });
        const a = el("a", { href: URL.createObjectURL(blob), download: "camera.json" });
        a.click();
        setTimeout(() => URL.revokeObjectURL(a.href), 1000);
      } catch (e) { this.panel.flash(e.message); }
    });
    this.status = el("span", { className: "ws-status" });
    bar.appendChild(this.status);

    const tl = el("div", { className: "ws-editor-bar" });
    this.timeline = el("input", { type: "range", min: "0", max: "0", step: "1", value: "0", className: "ws-timeline" });
    this.timeline.addEventListener("input", (ev) => { ev.stopPropagation(); this.setFrame(Number(this.timeline.value)); });
    for (const type of ["pointerdown", "mousedown", "wheel"]) this.timeline.addEventListener(type, (ev) => ev.stopPropagation());
    this.playButton = el("button", { className: "ws-btn", title: "Play the path (space); ← → step a frame" }, "▶");
    this.playButton.addEventListener("click", (ev) => { ev.stopPropagation(); if (this._player) this.pause(); else this.play(); });
    this.frameLabel = el("span", { className: "ws-status" }, "no path");
    const lab = el("label", { className: "ws-toggle", title: "Look through the camera at this frame" });
    this.lookThrough = el("input", { type: "checkbox" });
    this.lookThrough.addEventListener("change", () => {
      if (!this.lookThrough.checked) this.viewer.resetView();
      this.redraw();
    });
    this.viewer.onLeavePoseView = () => { this.lookThrough.checked = false; };
    lab.append(this.lookThrough, document.createTextNode("view"));
    const render = el("button", { className: "ws-btn", title: "GGM render of the cache at this pose (server)" }, "Render");
    render.addEventListener("click", (ev) => { ev.stopPropagation(); this.renderAtFrame(); });
    tl.append(this.playButton, this.timeline, this.frameLabel, lab, render);
    this.panel.root.append(bar, tl);
  }
}
