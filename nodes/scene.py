"""Scene nodes: the synthetic default input and its oracle generator."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from worldstereo_core import synthetic

from .common import CATEGORY, Cameras, Depth, Scene

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
                io.Combo.Input("scene", options=list(synthetic.SCENE_NAMES), default="room",
                               tooltip="room: a textured room with boxes and spheres; outdoor: ground, "
                               "objects and a distant dome."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Jitters the objects and textures; the same seed gives the same scene."),
                io.Int.Input("width", default=416, min=64, max=2048, step=16,
                             tooltip="Input view width in pixels (multiple of 16)."),
                io.Int.Input("height", default=240, min=64, max=2048, step=16,
                             tooltip="Input view height in pixels (multiple of 16)."),
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


NODES = [SyntheticScene]
