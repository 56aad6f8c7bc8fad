"""Uni3C nodes: put the open-source Uni3C camera ControlNet on a loaded model, and build its 81-frame condition.

Uni3C (ewrfcas/Uni3C) is the predecessor of WorldStereo's GGM branch. Its file (ComfyUI's
``Wan21_Uni3C_controlnet_fp16.safetensors``) lives in ``models/controlnet/``. With it the sampler runs
in *video mode*: the whole 81-frame render video and hole mask (not 21 keyframes) condition the branch,
and an 81-frame video is decoded.
"""

from __future__ import annotations

from worldstereo_core.errors import InvalidInputError

from .comfy_v3 import io
from .common import CATEGORY, Trajectory, dtype_input, model_files, option
from .models import DTYPES, GGMControl, WSModel, ggm_condition

SUB = f"{CATEGORY}/model"
FOLDER = "controlnet"  # ComfyUI's own folder; kijai's Wan21_Uni3C_controlnet_*.safetensors are put there
MODEL_DTYPE = "same as model"


class WorldStereoLoadUni3C(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = model_files(FOLDER)
        default = next((f for f in files if "uni3c" in f.lower()), files[0] if files else None)
        return io.Schema(
            node_id="WorldStereoLoadUni3C",
            display_name="Load Uni3C ControlNet",
            category=SUB,
            description="Replaces the model's GGM branch by the Uni3C camera ControlNet (same architecture, "
            "trained on whole 81-frame videos). The transformer's weights are shared, not copied; the input "
            "model is unchanged. The result samples in video mode: connect Uni3C Control, not GGM Control.",
            inputs=[
                WSModel.Input(
                    "model",
                    tooltip="From Load Wan2.1 WorldStereo Model (the camera checkpoint is Wan2.1-I2V "
                    "with the GGM branch, the base Uni3C was trained on).",
                ),
                io.Combo.Input(
                    "uni3c_name",
                    options=files,
                    default=default,
                    tooltip="A Uni3C ControlNet in ComfyUI/models/controlnet/ (e.g. "
                    "Wan21_Uni3C_controlnet_fp16.safetensors); released or controlnet.pth key layout, "
                    "safetensors only.",
                ),
                dtype_input(
                    "Weights dtype of the branch; default: the transformer's.", [MODEL_DTYPE, *DTYPES], MODEL_DTYPE
                ),
            ],
            outputs=[WSModel.Output(display_name="model", tooltip="The model with Uni3C as its control branch.")],
        )

    @classmethod
    def execute(cls, model, uni3c_name, dtype) -> io.NodeOutput:
        import folder_paths

        from worldstereo_core.models.generate import with_uni3c

        if model.video_mode:
            raise InvalidInputError(
                "this model already has a Uni3C branch; connect Load Wan2.1 WorldStereo Model directly"
            )
        path = folder_paths.get_full_path_or_raise(FOLDER, uni3c_name)
        weights_dtype = None if dtype == MODEL_DTYPE else option(DTYPES, dtype, "dtype")
        return io.NodeOutput(with_uni3c(model, path, weights_dtype))


class WorldStereoUni3CControl(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoUni3CControl",
            display_name="Uni3C Control (WorldStereo)",
            category=SUB,
            description="The Uni3C condition: the 3D cache rendered at EVERY pose of the trajectory (81, not the "
            "21 keyframes), its hole mask and all the cameras (Plücker rays at 81 frames). Render with GGM "
            "Render Cache, keyframes_only off. For a model from Load Uni3C ControlNet.",
            inputs=[
                io.Image.Input("render", tooltip="Cache renders, one per pose: 1 + 4k frames (81 as released)."),
                io.Mask.Input(
                    "hole_mask", tooltip="1 where the render has a hole, 0 where the cache covers it; one per pose."
                ),
                Trajectory.Input("trajectory", tooltip="The trajectory the render was made along (1 + 4k poses)."),
            ],
            outputs=[
                GGMControl.Output(
                    display_name="ggm", tooltip="The video-mode condition for the DMDSampler (WorldStereo)."
                )
            ],
        )

    @classmethod
    def execute(cls, render, hole_mask, trajectory) -> io.NodeOutput:
        return io.NodeOutput(ggm_condition(render, hole_mask, trajectory, video=True))


NODES = [WorldStereoLoadUni3C, WorldStereoUni3CControl]
