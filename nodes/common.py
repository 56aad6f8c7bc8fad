"""Shared pieces of the node adapters: socket types, tensor conversions, progress."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from comfy_api.v0_0_2 import io

CATEGORY = "WorldStereo"

# Custom socket types. Values travelling on them are immutable worldstereo_core objects.
Trajectory = io.Custom("WS_TRAJECTORY")
PointCloud = io.Custom("WS_POINTCLOUD")
MemoryBank = io.Custom("WS_MEMORY_BANK")
Retrieval = io.Custom("WS_RETRIEVAL")
Scene = io.Custom("WS_SCENE")
Cameras = io.Custom("WS_CAMERAS")


@dataclass(frozen=True)
class RetrievedReferences:
    """What travels on a WS_RETRIEVAL socket: the retrieval, the chosen views, the trajectory."""

    retrieval: object  # worldstereo_core.retrieval.Retrieval
    references: object  # worldstereo_core.memory.MemoryBank of the chosen views, in ref order
    trajectory: object  # worldstereo_core.trajectory.Trajectory


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
