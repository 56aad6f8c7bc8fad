"""Scene nodes: the synthetic default input and its oracle generator."""

from __future__ import annotations

import torch

from worldstereo_core import interfaces, oracle, pipeline, synthetic

from .comfy_v3 import io
from .common import (
    CATEGORY,
    Cameras,
    Depth,
    Progress,
    Scene,
    Trajectory,
    loop_specs,
    render_trajectories,
    retrieval_mode_input,
    scene_loop_outputs,
    scene_loop_result,
    seed_input,
    size_inputs,
    starts_input,
    trajectories_input,
    z_depth,
)

SUB = f"{CATEGORY}/scene"


class SyntheticScene(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSyntheticScene",
            display_name="Synthetic Scene (WorldStereo)",
            category=SUB,
            description="A procedural scene with exact geometry: its input view (image, camera, "
            "exact depth) and the scene itself, which the oracle generator renders at any camera. "
            "The embedded default input: the whole pipeline runs on it without model weights.",
            inputs=[
                io.Combo.Input(
                    "scene",
                    options=list(synthetic.SCENE_NAMES),
                    default="room",
                    tooltip="room: a textured room with boxes and spheres; outdoor: ground, "
                    "objects and a distant dome.",
                ),
                seed_input("Jitters the objects and textures; the same seed gives the same scene."),
                *size_inputs(
                    416,
                    240,
                    min=64,
                    max=2048,
                    step=16,
                    tooltips=(
                        "Input view width in pixels (multiple of 16).",
                        "Input view height in pixels (multiple of 16).",
                    ),
                ),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The input view."),
                Depth.Output(display_name="depth", tooltip="Exact z-depth of the input view."),
                Cameras.Output(display_name="camera", tooltip="The input view's camera (w2c, K)."),
                Scene.Output(display_name="scene", tooltip="The scene, for the oracle generator and metrics."),
            ],
        )

    @classmethod
    def execute(cls, scene, seed, width, height) -> io.NodeOutput:
        s = synthetic.make_scene(scene, seed)
        view = s.default_view(height, width)
        return io.NodeOutput(view.image, view.depth, view.cameras, s)


class OracleGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoOracleGenerate",
            display_name="Oracle Generate (WorldStereo)",
            category=SUB,
            description="Stands in for the video model on a synthetic scene: renders the scene exactly at "
            "the trajectory's keyframes (frames and true depth). Use it to test a pipeline without weights.",
            inputs=[
                Scene.Input("scene", tooltip="The synthetic scene to render."),
                Trajectory.Input("trajectory", tooltip="The camera path."),
                io.Boolean.Input(
                    "keyframes_only",
                    default=True,
                    tooltip="Render the 21 keyframes (what the model generates) or every pose.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="Rendered frames [F, H, W, 3]."),
                Depth.Output(display_name="depth", tooltip="Their exact z-depth (0 where nothing was hit)."),
            ],
        )

    @classmethod
    def execute(cls, scene, trajectory, keyframes_only) -> io.NodeOutput:
        _, renders = render_trajectories(trajectory, keyframes_only, scene.render)
        return io.NodeOutput(torch.cat([r.rgb for r in renders]).float(), torch.cat([r.depth for r in renders]).float())


class OracleSceneLoop(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoOracleSceneLoop",
            display_name="Oracle Scene Loop (WorldStereo)",
            category=SUB,
            description="The whole WorldStereo loop on a synthetic scene, with the oracle generator in place "
            "of the video model: input view → 3D cache → for each trajectory (orbit → up → right → left): "
            "GGM render, SSM retrieval from the memory bank, generated keyframes, depth aligned to the "
            "cache, merge, memory update. Reports precision / recall / F-score of the merged cloud.",
            inputs=[
                Scene.Input("scene", tooltip="The synthetic scene (generator, depth oracle and ground truth)."),
                io.Image.Input("image", tooltip="The input view."),
                Depth.Input("depth", tooltip="The input view's z-depth."),
                Cameras.Input("camera", tooltip="The input view's camera; it defines the world frame."),
                trajectories_input(),
                io.Combo.Input(
                    "clip_depth",
                    options=["exact", "corrupted"],
                    default="exact",
                    tooltip="Depth of the generated frames: exact, or corrupted by a per-frame random "
                    "scale/shift (±20 %) and 1 % noise, as a real reconstruction would be.",
                ),
                retrieval_mode_input(),
                seed_input("Seed of the depth corruption and the robust fits."),
                starts_input(),
            ],
            outputs=scene_loop_outputs("JSON metrics report."),
        )

    @classmethod
    def execute(
        cls, scene, image, depth, camera, trajectories, clip_depth, retrieval_mode, seed, starts=""
    ) -> io.NodeOutput:
        depth = z_depth(depth)
        names = loop_specs(trajectories, starts)  # checked before any clip runs
        steps = 1 + 5 * len(names)
        progress = Progress(steps)
        cam = camera[:1]
        d = depth[:1].float()
        view = synthetic.SyntheticView(image[:1, ..., :3].float(), cam, d, d > 0)
        result = pipeline.run_oracle_loop(
            scene,
            names,
            depth_corruption=oracle.DepthCorruption() if clip_depth == "corrupted" else None,
            seed=seed,
            progress=progress,
            view=view,
            config=interfaces.default_config(cam.height, cam.width, retrieval_mode=retrieval_mode),
        )
        loop = result.loop
        report = pipeline.loop_report(result)
        return scene_loop_result(
            loop, report, f"F-score {report['scores']['fscore']:.4f} at {report['scores']['threshold']:.4f}"
        )


NODES = [SyntheticScene, OracleGenerate, OracleSceneLoop]
