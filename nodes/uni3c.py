"""Uni3C nodes: put the open-source Uni3C camera ControlNet on a loaded model, and build its 81-frame condition.

Uni3C (ewrfcas/Uni3C) is the predecessor of WorldStereo's GGM branch. Its file (ComfyUI's
``Wan21_Uni3C_controlnet_fp16.safetensors``) lives in ``models/controlnet/``. With it the sampler runs
in *video mode*: the whole 81-frame render video and hole mask (not 21 keyframes) condition the branch,
and an 81-frame video is decoded.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from worldstereo_core.errors import InvalidTrajectoryError, ModelInputError

from .common import CATEGORY, Trajectory, trajectories_of
from .models import DTYPES, GGMCondition, GGMControl, WSModel

SUB = f"{CATEGORY}/model"
FOLDER = "controlnet"  # ComfyUI's own folder; kijai's Wan21_Uni3C_controlnet_*.safetensors are put there
MODEL_DTYPE = "same as model"


def _uni3c_files() -> list[str]:
    import folder_paths

    try:
        return [f for f in folder_paths.get_filename_list(FOLDER) if f.endswith(".safetensors")]
    except KeyError:
        return []


class WorldStereoLoadUni3C(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = _uni3c_files()
        default = next((f for f in files if "uni3c" in f.lower()), files[0] if files else None)
        return io.Schema(
            node_id="WorldStereoLoadUni3C",
            display_name="Load Uni3C ControlNet",
            category=SUB,
            description="Replaces the model's GGM branch by the Uni3C camera ControlNet (same architecture, "
            "trained on whole 81-frame videos). The transformer's weights are shared, not copied; the input "
            "model is unchanged. The result samples in video mode: connect Uni3C Control, not GGM Control.",
            inputs=[
                WSModel.Input("model", tooltip="From Load WorldStereo Model (the camera checkpoint is Wan2.1-I2V "
                              "with the GGM branch, the base Uni3C was trained on)."),
                io.Combo.Input("uni3c_name", options=files, default=default,
                               tooltip="A Uni3C ControlNet in ComfyUI/models/controlnet/ (e.g. "
                               "Wan21_Uni3C_controlnet_fp16.safetensors); released or controlnet.pth key layout, "
                               "safetensors only."),
                io.Combo.Input("dtype", options=[MODEL_DTYPE, *DTYPES], default=MODEL_DTYPE,
                               tooltip="Weights dtype of the branch; default: the transformer's."),
            ],
            outputs=[WSModel.Output(display_name="model", tooltip="The model with Uni3C as its control branch.")],
        )

    @classmethod
    def execute(cls, model, uni3c_name, dtype) -> io.NodeOutput:
        import folder_paths

        from worldstereo_core.models.generate import with_uni3c

        if model.video_mode:
            raise ModelInputError("this model already has a Uni3C branch; connect Load WorldStereo Model directly")
        path = folder_paths.get_full_path_or_raise(FOLDER, uni3c_name)
        return io.NodeOutput(with_uni3c(model, path, None if dtype == MODEL_DTYPE else DTYPES[dtype]))


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
                io.Mask.Input("hole_mask", tooltip="1 where the render has a hole, 0 where the cache covers it; "
                              "one per pose."),
                Trajectory.Input("trajectory", tooltip="The trajectory the render was made along (1 + 4k poses)."),
            ],
            outputs=[GGMControl.Output(display_name="ggm",
                                       tooltip="The video-mode condition for the WorldStereo Sampler.")],
        )

    @classmethod
    def execute(cls, render, hole_mask, trajectory) -> io.NodeOutput:
        from worldstereo_core.models.generate import video_latent_frames

        trajs = trajectories_of(trajectory)
        if len(trajs) != 1:
            raise InvalidTrajectoryError(f"connect one trajectory (got {len(trajs)}); each clip is sampled on its own")
        traj = trajs[0]
        video_latent_frames(len(traj))  # 1 + 4k poses, checked before any sampling
        mask = hole_mask if hole_mask.ndim == 3 else hole_mask[None]
        if render.shape[0] != len(traj) or mask.shape[0] != len(traj):
            raise ModelInputError(
                f"render has {render.shape[0]} frames and hole_mask {mask.shape[0]} for a trajectory of {len(traj)} "
                "poses; Uni3C needs one per pose (GGM Render Cache with keyframes_only off)"
            )
        H, W = render.shape[1:3]
        if tuple(mask.shape[1:]) != (H, W):
            raise ModelInputError(f"hole_mask is {tuple(mask.shape[1:])} but render is {(H, W)}; use RenderCache's outputs")
        cams = traj.cameras
        if (cams.height, cams.width) != (H, W):
            cams = cams.resized(H, W)
        return io.NodeOutput(GGMCondition(render[..., :3].float(), mask.float(), cams, traj, video=True))


NODES = [WorldStereoLoadUni3C, WorldStereoUni3CControl]
