"""Evaluate node: the paper's benchmark protocol (§4.3) on a synthetic scene or a real scene folder."""

from __future__ import annotations

from worldstereo_core import evaluate as eval_lib
from worldstereo_core import evaluate_loop
from worldstereo_core.errors import InvalidOptionError, MissingInputError
from worldstereo_core.recon.estimators import MoGeDepthEstimator

from .comfy_v3 import io
from .common import CATEGORY, Progress, Scene, option, seed_input, size_inputs, trajectories_input
from .depth import MoGe
from .recon import WorldMirror

SUB_RECON = f"{CATEGORY}/reconstruction"


class Evaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        # models imports this module, so its socket type is taken at schema time
        from .models import WSModel

        return io.Schema(
            node_id="WorldStereoEvaluate",
            display_name="Evaluate Reconstruction Benchmark (WorldStereo)",
            category=SUB_RECON,
            description="The paper's §4.3 protocol. protocol=full_model (the paper's): one scene loop over the "
            "trajectories with the 3D cache and memory bank carried from clip to clip, every generated keyframe "
            "reconstructed together, aligned to the ground truth (depth_anchor: Umeyama on the initial frame's "
            "depth, the paper's MipNeRF360 alignment; anchors; icp) and scored: precision / recall / F-score, AUC, "
            "RotErr / TransErr / ATE, RRA / RTA at 5/10/15/30° and mAA(30), and the memory benchmark (PSNR / SSIM "
            "of views revisiting an earlier generation; LPIPS only through the Python API). "
            "protocol=per_trajectory: each trajectory from a fresh scene. The scene is the synthetic one (oracle "
            "generator) or a real one: a folder in ComfyUI's input folder with images/, camera.json and depth/ "
            "or points.ply, generated with the connected WorldStereo model and reconstructed with WorldMirror.",
            is_output_node=True,
            inputs=[
                Scene.Input(
                    "scene",
                    optional=True,
                    tooltip="The synthetic scene (Synthetic Scene's scene output). Leave it unconnected "
                    "to evaluate the scene_folder.",
                ),
                trajectories_input(
                    ",".join(eval_lib.BENCHMARK_TRAJECTORIES),
                    "Comma-separated presets, in generation order (benchmark: eloop,up,left,right).",
                ),
                *size_inputs(
                    392,
                    224,
                    min=28,
                    max=2048,
                    step=2,
                    tooltips=(
                        "Frame width (a multiple of 14 for the oracle reconstructor; of 16 for the real model).",
                        "Frame height (a multiple of 14 for the oracle reconstructor; of 16 for the real model).",
                    ),
                ),
                io.Int.Input(
                    "num_keyframes",
                    default=21,
                    min=2,
                    max=81,
                    tooltip="Frames generated per trajectory (the released model: 21 of 81 poses).",
                ),
                io.Combo.Input(
                    "alignment",
                    options=list(eval_lib.LOOP_ALIGNMENTS),
                    default="anchors",
                    tooltip="depth_anchor: Umeyama between the reconstructed and true points of the "
                    "initial frame (the paper's, needs its true depth); anchors: the reconstruction's "
                    "Umeyama on camera centres; icp: first camera + scaled ICP against the ground "
                    "truth.",
                ),
                io.Float.Input(
                    "pose_noise_deg",
                    default=0.0,
                    min=0.0,
                    max=30.0,
                    step=0.1,
                    tooltip="Oracle reconstructor: rotate each predicted camera by this angle about a "
                    "random axis (camera 0 untouched), like a real reconstructor's error.",
                ),
                io.Float.Input(
                    "threshold_fraction",
                    default=0.01,
                    min=0.0001,
                    max=0.2,
                    step=0.001,
                    tooltip="F-score distance as a fraction of the ground truth's bounding-box diagonal.",
                ),
                seed_input("Seed of the pose noise, the generation and the loop's robust fits."),
                WorldMirror.Input(
                    "worldmirror",
                    optional=True,
                    tooltip="Reconstruct with this WorldMirror (no camera priors) instead of the "
                    "oracle; needed for a scene_folder (also gives the loop its depth there).",
                ),
                io.Combo.Input(
                    "protocol",
                    options=["full_model", "per_trajectory"],
                    default="full_model",
                    optional=True,
                    tooltip="full_model: one loop, memory carried across trajectories (the paper); "
                    "per_trajectory: each trajectory on its own from the input view.",
                ),
                io.Boolean.Input(
                    "revisit",
                    default=True,
                    optional=True,
                    tooltip="full_model: run the first trajectory again at the end, so the memory "
                    "benchmark compares its views with their first generation.",
                ),
                io.String.Input(
                    "scene_folder",
                    default="",
                    optional=True,
                    tooltip="A real scene: a folder in ComfyUI's input folder with images/ (the first "
                    "is the input view), camera.json (one camera per image), depth/<stem>.npy and/or "
                    "points.ply. Used when no synthetic scene is connected.",
                ),
                WSModel.Input(
                    "model",
                    optional=True,
                    tooltip="From Load WorldStereo Model: generates the scene_folder's trajectories "
                    "(the synthetic scene uses the oracle).",
                ),
                io.String.Input(
                    "prompt",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip="scene_folder: what the scene looks like (the model's prompt).",
                ),
                MoGe.Input(
                    "moge",
                    optional=True,
                    tooltip="scene_folder: estimate the input view's depth with MoGe-2 (as the model runs "
                    "in use) instead of reading depth/.",
                ),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="JSON report (per trajectory and overall).")],
        )

    @classmethod
    def execute(
        cls,
        trajectories,
        width,
        height,
        num_keyframes,
        alignment,
        pose_noise_deg,
        threshold_fraction,
        seed,
        scene=None,
        worldmirror=None,
        protocol="full_model",
        revisit=True,
        scene_folder="",
        model=None,
        prompt="",
        moge=None,
    ) -> io.NodeOutput:
        from worldstereo_core.interfaces import default_config

        names = [t.strip() for t in trajectories.split(",") if t.strip()]
        if not names:
            raise InvalidOptionError("no trajectories given; e.g. eloop,up,left,right")
        alignment = option({a: a for a in eval_lib.LOOP_ALIGNMENTS}, alignment, "alignment")
        protocol = option({"full_model": "full_model", "per_trajectory": "per_trajectory"}, protocol, "protocol")
        # what the loop protocols (synthetic and real) take alike
        loop_kwargs = {
            "config": default_config(height, width, num_keyframes=num_keyframes),
            "alignment": alignment,
            "threshold_fraction": threshold_fraction,
            "seed": seed,
        }
        if scene is None:
            names = names + names[:1] * bool(revisit)
            result = _evaluate_folder(
                scene_folder, names, (height, width), protocol, worldmirror, model, prompt, moge, **loop_kwargs
            )
        else:
            if worldmirror is not None:
                reconstructor = eval_lib.WorldMirrorReconstructor(worldmirror, target_size=max(width, height))
            else:
                reconstructor = eval_lib.OracleReconstructor(scene, pose_noise_deg=pose_noise_deg, seed=seed)
            view = {"height": height, "width": width, "reconstructor": reconstructor}  # both synthetic protocols
            if protocol == "full_model":
                progress = Progress(1 + 5 * (len(names) + bool(revisit)) + 2)
                result = evaluate_loop.evaluate_synthetic_loop(
                    scene, trajectories=names, revisit=revisit, progress=progress, **view, **loop_kwargs
                )
            else:
                result = eval_lib.evaluate_synthetic(
                    scene,
                    names=names,
                    num_keyframes=num_keyframes,
                    alignment=alignment,
                    threshold_fraction=threshold_fraction,
                    progress=Progress(max(1, len(names))),
                    **view,
                )
        report = result.report
        return io.NodeOutput(report.to_json(), ui={"text": [report.summary()]})


def _evaluate_folder(scene_folder, names, size, protocol, worldmirror, model, prompt, moge, **loop_kwargs):
    """The full-model protocol on a real scene folder with the real model (see Evaluate); ``size``:
    ``(height, width)`` of the frames, ``loop_kwargs``: config, alignment, threshold_fraction and seed."""
    from worldstereo_core.models.generate import SamplingSettings, WorldStereoFrameGenerator
    from worldstereo_core.recon.estimators import WorldMirrorDepthEstimator

    from .common import input_folder

    if not str(scene_folder).strip():
        raise MissingInputError("connect a synthetic scene, or give scene_folder (a folder in ComfyUI's input folder)")
    if protocol != "full_model":
        raise InvalidOptionError("a scene_folder is evaluated with protocol=full_model (the paper's); set it")
    folder = input_folder(scene_folder, "scene_folder")
    real = evaluate_loop.load_scene_folder(folder, *size)  # inputs checked before minutes of generation
    if loop_kwargs["alignment"] == "depth_anchor":
        real.anchor_depth()  # a folder without depth/ fails here, not after the loop
    if model is None or worldmirror is None:
        raise MissingInputError(
            "a scene_folder needs the WorldStereo model (Load WorldStereo Model → model) to generate and "
            "WorldMirror (Load WorldMirror → worldmirror) to reconstruct; the oracle exists only for synthetic scenes"
        )
    input_depth = None
    if moge is not None:
        depth, _valid = MoGeDepthEstimator(moge)(real.images[:1], real.cameras[:1])
        input_depth = depth
    progress = Progress(1 + 5 * len(names) + 2)
    generator = WorldStereoFrameGenerator(model, prompt, sampling=SamplingSettings(seed=loop_kwargs["seed"]))
    return evaluate_loop.evaluate_real_scene(
        real,
        generator,
        WorldMirrorDepthEstimator(worldmirror),
        eval_lib.WorldMirrorReconstructor(worldmirror),
        input_depth=input_depth,
        trajectories=names,
        progress=progress,
        **loop_kwargs,
    )


NODES = [Evaluate]
