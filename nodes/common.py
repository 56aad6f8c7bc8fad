"""Shared pieces of the node adapters: socket types, tensor conversions, progress."""

from __future__ import annotations

import torch

from .comfy_v3 import io

CATEGORY = "WorldStereo"

# Custom socket types. Values travelling on them are immutable worldstereo_core objects.
Trajectory = io.Custom("WS_TRAJECTORY")
PointCloud = io.Custom("WS_POINTCLOUD")
MemoryBank = io.Custom("WS_MEMORY_BANK")
Retrieval = io.Custom("WS_RETRIEVAL")  # worldstereo_core.retrieval.References
Scene = io.Custom("WS_SCENE")
Cameras = io.Custom("WS_CAMERAS")


class Progress:
    """Progress bar on ComfyUI's ``/ws`` plus interruption checks, as a core callback.

    Core functions call ``progress(done, total)``; each call updates the node's bar and
    raises ComfyUI's interruption exception if the user pressed cancel.
    """

    def __init__(self, total: int = 1, node_id: str | None = None):
        import comfy.utils

        self._bar = comfy.utils.ProgressBar(max(1, int(total)), node_id=node_id)
        self.total = max(1, int(total))

    def __call__(self, done: int, total: int | None = None) -> None:
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        if total is not None and total != self.total:
            self.total = max(1, int(total))
        self._bar.update_absolute(int(done), self.total)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def register_model_folder(name: str) -> None:
    """``models/<name>/`` in ComfyUI's model folders: loose ``.safetensors`` files, or one
    subfolder per model (e.g. ``model.safetensors`` + ``config.json``). Idempotent; folders a
    user set in ``extra_model_paths.yaml`` are kept."""
    import os

    import folder_paths

    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], {".safetensors"})


def model_files(name: str) -> list[str]:
    """The ``.safetensors`` files under a registered model folder (relative names)."""
    import folder_paths

    return folder_paths.get_filename_list(name)


def cap_points(cloud, max_points: int):
    """The cloud voxel-downsampled to at most ``max_points`` points (``0`` keeps all)."""
    from worldstereo_core.pointcloud import voxel_downsample

    if max_points <= 0 or len(cloud) <= max_points:
        return cloud
    # start from a fine grid (1/4000 of the cloud's diagonal); the cap then grows it
    diag = float((cloud.points.amax(0) - cloud.points.amin(0)).norm())
    return voxel_downsample(cloud, voxel_size=max(diag, 1e-6) / 4000, max_points=max_points)


def image_to_hwc(image: torch.Tensor, index: int = 0) -> torch.Tensor:
    """One ``[H, W, 3]`` float image from a ComfyUI IMAGE batch ``[N, H, W, C]``."""
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [N, H, W, C], got shape {tuple(image.shape)}")
    return image[index, ..., :3].float()


def output_dir() -> str:
    import folder_paths

    return folder_paths.get_output_directory()


def save_path(filename_prefix: str, extension: str) -> tuple[str, str, str]:
    """``(full_path, filename, subfolder)`` of the next free output file for a prefix."""
    import os

    import folder_paths

    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir())
    filename = f"{name}_{counter:05}_.{extension}"
    return os.path.join(folder, filename), filename, subfolder

Depth = io.Custom("WS_DEPTH")  # float32 [N, H, W] z-depth, 0 where unknown


def saved(path_info: tuple[str, str, str]) -> dict:
    """UI result entry for a file written under ComfyUI's output folder."""
    _, filename, subfolder = path_info
    return {"filename": filename, "subfolder": subfolder, "type": "output"}


def relative_output_path(path_info: tuple[str, str, str]) -> str:
    """Path of an output file relative to the output folder (what Preview3D's model_file takes)."""
    _, filename, subfolder = path_info
    return f"{subfolder}/{filename}" if subfolder else filename


def trajectories_of(value) -> list:
    """A WS_TRAJECTORY socket carries one Trajectory or a tuple of them (the scene loop's)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def inspector_ui(title: str = "", **scene) -> dict:
    """The scene inspector's UI entry for a node's output (see nodes/inspector.py), or ``{}``
    when the scene cannot be shown — the preview is optional and never fails a finished run."""
    import logging

    from .inspector import publish

    try:
        return publish(title=title, **scene)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("worldstereo").warning("scene inspector preview skipped: %s", exc)
        return {}


def scene_loop_outputs(report_tooltip: str) -> list:
    """The outputs of both scene-loop nodes (oracle and model), in :func:`scene_loop_result`'s order."""
    return [
        PointCloud.Output(display_name="cloud", tooltip="The merged 3D cache."),
        Trajectory.Output(display_name="trajectories", tooltip="The trajectories, in order."),
        MemoryBank.Output(display_name="bank", tooltip="The final memory bank."),
        io.Image.Output(display_name="renders", tooltip="GGM renders of every trajectory's keyframes."),
        io.Mask.Output(display_name="hole_masks", tooltip="Their hole masks (1 = hole)."),
        io.Image.Output(display_name="frames", tooltip="The generated keyframes of every trajectory."),
        io.String.Output(display_name="report", tooltip=report_tooltip),
    ]


def scene_loop_result(loop, report: dict, text: str) -> io.NodeOutput:
    """A finished scene loop (``cloud``, ``bank``, ``steps``) as the node's outputs, its one-line
    summary and the scene inspector's entry (cloud, trajectories, memory bank, retrieval links)."""
    import json

    steps = loop.steps
    ui = {"text": [text]} | inspector_ui("WorldStereo scene", cloud=loop.cloud, trajectories=[s.trajectory for s in steps],
                                         memory=loop.bank, retrieval=[s.references for s in steps])
    return io.NodeOutput(
        loop.cloud,
        tuple(s.trajectory for s in steps),
        loop.bank,
        torch.cat([s.render.rgb for s in steps]).float(),
        torch.cat([s.render.mask for s in steps]).float(),
        torch.cat([s.frames for s in steps]).float(),
        json.dumps(report, indent=2),
        ui=ui,
    )
