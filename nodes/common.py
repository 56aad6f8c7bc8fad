"""Shared pieces of the node adapters: socket types, tensor conversions, progress."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .comfy_v3 import io

CATEGORY = "WorldStereo"


def search_aliases(*names: str) -> dict:
    """``search_aliases=[...]`` for ``io.Schema`` where this ComfyUI's Schema has the field (newer
    than 0.3.75), else nothing: the node library then finds the nodes by the paper-card names
    (LoadWan, DMDSampler, ...) too. Display names and node ids already contain the words, so the
    search also finds them on older servers."""
    import dataclasses

    if dataclasses.is_dataclass(io.Schema) and "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}:
        return {"search_aliases": list(names)}
    return {}


# Custom socket types. Values travelling on them are immutable worldstereo_core objects.
Trajectory = io.Custom("WS_TRAJECTORY")
PointCloud = io.Custom("WS_POINTCLOUD")
MemoryBank = io.Custom("WS_MEMORY_BANK")
Retrieval = io.Custom("WS_RETRIEVAL")  # worldstereo_core.retrieval.References
Scene = io.Custom("WS_SCENE")
Cameras = io.Custom("WS_CAMERAS")


def raise_if_interrupted() -> bool:
    """Raise ComfyUI's own interruption if the user pressed cancel, else ``False``: the core's
    ``interrupt`` callback (the check :class:`Progress` makes on every update)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
    return False


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
        raise_if_interrupted()
        if total is not None and total != self.total:
            self.total = max(1, int(total))
        self._bar.update_absolute(int(done), self.total)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# Inputs several nodes declare: one definition each, so that their names, ranges and tooltips
# cannot drift apart (saved workflows and the help pages depend on them)
# --------------------------------------------------------------------------------------------


def seed_input(tooltip: str) -> io.Int.Input:
    """A fixed ``seed`` of the core's random parts (synthetic scenes, depth corruption, robust fits), not
    changed after a run: 0 … 2³¹−1, the range the core's seeds are kept in (the Scene Loop reduces its
    64-bit noise seed to it)."""
    return io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False, tooltip=tooltip)


def noise_seed_input(tooltip: str) -> io.Int.Input:
    """The video model's noise ``seed``: 64 bits with ComfyUI's control-after-generate widget, as the
    core samplers' seed."""
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=tooltip)


def size_inputs(
    width: int, height: int, *, min: int, max: int, step: int, tooltips: tuple[str, str], optional: bool = False
) -> list:
    """The ``width`` and ``height`` inputs of a node that makes images of a chosen size (pixels)."""
    return [
        io.Int.Input(name, default=value, min=min, max=max, step=step, optional=optional, tooltip=tip)
        for name, value, tip in (("width", width, tooltips[0]), ("height", height, tooltips[1]))
    ]


def trajectories_input(
    default: str = "orbit,up,right,left",
    tooltip: str = "Comma-separated presets, in order (paper: orbit,up,right,left).",
) -> io.String.Input:
    """The ``trajectories`` of a scene loop: preset names, in generation order (see :func:`loop_specs`)."""
    return io.String.Input("trajectories", default=default, tooltip=tooltip)


def retrieval_mode_input(
    name: str = "retrieval_mode", tooltip: str = "Frustum-overlap scoring: aabb (release) or volume (paper)."
) -> io.Combo.Input:
    """How SSM retrieval scores a bank camera against a keyframe (``worldstereo_core.retrieval``)."""
    from worldstereo_core.retrieval import RETRIEVAL_MODES

    return io.Combo.Input(name, options=list(RETRIEVAL_MODES), default="aabb", tooltip=tooltip)


def reference_cut_input(tooltip: str, optional: bool = False) -> io.Combo.Input:
    """How SSM retrieval cuts more candidate references than the model takes (``retrieval.REDUCE_RULES``)."""
    from worldstereo_core.retrieval import REDUCE_RULES

    return io.Combo.Input(
        "reference_cut", options=list(REDUCE_RULES), default="spread", optional=optional, tooltip=tooltip
    )


def clip_alignment_input(name: str, tooltip: str, optional: bool = False) -> io.Combo.Input:
    """How a clip's depth is brought onto the 3D cache (``merge.CLIP_ALIGNMENTS``; the loop's default first)."""
    from worldstereo_core.merge import CLIP_ALIGNMENTS

    return io.Combo.Input(name, options=list(CLIP_ALIGNMENTS), default="depth", optional=optional, tooltip=tooltip)


def model_name_input(folder: str, tooltip: str) -> io.Combo.Input:
    """A Load node's ``model_name``: the ``.safetensors`` files under ``models/<folder>/``."""
    return io.Combo.Input("model_name", options=model_files(folder), tooltip=tooltip)


def dtype_input(tooltip: str, options: Iterable[str] = DTYPES, default: str = "fp32") -> io.Combo.Input:
    """A Load node's ``dtype``: one of ``options``' names (a dict such as :data:`DTYPES` gives its keys;
    :func:`option` turns the value into a dtype)."""
    return io.Combo.Input("dtype", options=list(options), default=default, tooltip=tooltip)


def load_model_file(load, folder: str, model_name: str, dtype: str, what: str, layout: str | None = None, **kwargs):
    """``load(path, device=, dtype=, **kwargs)`` of a Load node's file choice: the path checked by
    :func:`model_file_path`, ComfyUI's torch device, the ``dtype`` combo's value."""
    import comfy.model_management

    path = model_file_path(folder, model_name, what, *([layout] if layout else []))
    device = comfy.model_management.get_torch_device()
    return load(path, device=device, dtype=option(DTYPES, dtype, "dtype"), **kwargs)


def filename_prefix_input(default: str, target: str = "file") -> io.String.Input:
    """The ``filename_prefix`` of a Save node (``target``: what it writes, a file or a folder)."""
    return io.String.Input(
        "filename_prefix", default=default, tooltip=f"Output {target} prefix, relative to ComfyUI's output folder."
    )


def saved_path_output(name: str = "path", tooltip: str = "Path relative to the output folder.") -> io.String.Output:
    """A Save node's output: where it wrote, relative to ComfyUI's output folder."""
    return io.String.Output(display_name=name, tooltip=tooltip)


def option(options: dict, value, what: str):
    """``options[value]`` for a combo input. ComfyUI 0.3.75 does not check V3 combo values against
    their options (any string reaches ``execute`` through the API), so a lookup says what is allowed."""
    from worldstereo_core.errors import InvalidChoiceError

    try:
        return options[value]
    except (KeyError, TypeError):
        raise InvalidChoiceError(f"{what} is {value!r}; choose one of {sorted(options)}") from None


def register_model_folder(name: str) -> None:
    """``models/<name>/`` in ComfyUI's model folders: loose ``.safetensors`` files, or one
    subfolder per model (e.g. ``model.safetensors`` + ``config.json``). Idempotent; folders a
    user set in ``extra_model_paths.yaml`` are kept."""
    import os

    import folder_paths

    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], {".safetensors"})


def model_files(name: str) -> list[str]:
    """The ``.safetensors`` files under a ComfyUI model folder (relative names; none for a folder
    ComfyUI does not know)."""
    import folder_paths

    try:
        return [f for f in folder_paths.get_filename_list(name) if f.endswith(".safetensors")]
    except KeyError:
        return []


def model_file_path(folder: str, name: str, what: str, layout: str = "model.safetensors (+ config.json)") -> str:
    """Full path of ``name`` (a Load node's combo value) under ``models/<folder>/``, or a
    :class:`CheckpointMismatchError` that says where the files go."""
    import folder_paths

    from worldstereo_core.errors import MissingFileError

    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise MissingFileError(
            f"{what} weights {name!r} not found under models/{folder}/; put {layout} in a subfolder there and "
            "refresh the node list"
        )
    return path


def cap_points(cloud, max_points: int):
    """The cloud voxel-downsampled to at most ``max_points`` points (``0`` keeps all)."""
    from worldstereo_core.pointcloud import voxel_downsample

    if max_points <= 0 or len(cloud) <= max_points:
        return cloud
    # start from a fine grid (1/4000 of the cloud's diagonal); the cap then grows it
    diag = float((cloud.points.amax(0) - cloud.points.amin(0)).norm())
    return voxel_downsample(cloud, voxel_size=max(diag, 1e-6) / 4000, max_points=max_points)


def max_points_input(
    tooltip: str = "Voxel-downsample to at most this many points (0 = keep all).",
    default: int = 0,
    *,
    min: int = 0,
    max: int = 50_000_000,
    step: int = 10_000,
) -> io.Int.Input:
    """The ``max_points`` cap of a node that makes or writes a point cloud (:func:`cap_points` or the writer's
    own deterministic subset)."""
    return io.Int.Input("max_points", default=default, min=min, max=max, step=step, tooltip=tooltip)


def image_to_hwc(image: torch.Tensor, index: int = 0) -> torch.Tensor:
    """One ``[H, W, 3]`` float image from a ComfyUI IMAGE batch ``[N, H, W, C]``."""
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [N, H, W, C], got shape {tuple(image.shape)}")
    return image[index, ..., :3].float()


def output_dir() -> str:
    import folder_paths

    return folder_paths.get_output_directory()


# --------------------------------------------------------------------------------------------
# File and folder inputs: the one gate every path a user types goes through
# --------------------------------------------------------------------------------------------


def _inside(path: str, root: str, allow_root: bool) -> bool:
    import os

    if path == root:
        return allow_root
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # different drives (Windows)
        return False


def model_roots() -> list[str]:
    """Every model folder ComfyUI knows: ``models/`` and the folders of each model type,
    including those added in ``extra_model_paths.yaml``."""
    import folder_paths

    roots = [folder_paths.models_dir]
    for paths, _ in folder_paths.folder_names_and_paths.values():
        roots.extend(paths)
    return roots


def user_path(value: str, what: str, *, roots: list[str], base: str, kind: str, where: str) -> str:
    """The real path of a file or folder input, checked to lie inside one of ``roots``.

    ``value`` is relative to ``base`` (or absolute); ComfyUI's annotations ``"name [input]"``,
    ``"name [output]"`` pick that folder as the base (``folder_paths.get_annotated_filepath``).
    Symlinks are resolved before the check, so no link leads out of the folders. ``kind``:
    ``"file"`` / ``"folder"`` must exist as a regular file / a folder; ``"new"`` is a path to be
    written (a folder strictly below a root; it may not exist yet). The error for a path
    outside the folders is the same whether or not it exists, so requests cannot probe the disk.

    Raises:
        UnsafePathError: empty, outside the folders, or not an existing file / folder.
    """
    import os

    import folder_paths

    from worldstereo_core.errors import UnsafePathError

    text = value.strip() if isinstance(value, str) else ""
    if not text or "\x00" in text:
        raise UnsafePathError(f"{what} is empty or not a path; give a path inside {where}")
    path = folder_paths.get_annotated_filepath(text, base)
    real = os.path.realpath(path)
    if not any(_inside(real, os.path.realpath(r), allow_root=kind != "new") for r in roots):
        raise UnsafePathError(
            f"{what} {text!r} is not inside {where}; give a path relative to that folder (absolute paths, '..' "
            "and symlinks may not lead out of it)"
        )
    if kind == "file" and not os.path.isfile(real):
        raise UnsafePathError(f"{what} {text!r}: there is no such file in {where}")
    if kind == "folder" and not os.path.isdir(real):
        raise UnsafePathError(f"{what} {text!r}: there is no such folder in {where}")
    return real


def _input_path(value: str, what: str, kind: str) -> str:
    """An existing file or folder (``kind``) in ComfyUI's input folder, or with ``" [output]"`` appended
    one in the output folder."""
    import folder_paths

    return user_path(
        value,
        what,
        roots=[folder_paths.get_input_directory(), folder_paths.get_output_directory()],
        base=folder_paths.get_input_directory(),
        kind=kind,
        where="ComfyUI's input folder (or its output folder, with ' [output]' appended)",
    )


def input_file(value: str, what: str) -> str:
    """A file input (camera.json, …): a file in ComfyUI's input folder, or with ``" [output]"``
    appended one in the output folder (e.g. what Save camera.json wrote)."""
    return _input_path(value, what, "file")


def input_folder(value: str, what: str) -> str:
    """An existing folder input (a scene to evaluate, …) in ComfyUI's input folder, or with
    ``" [output]"`` appended one in the output folder."""
    return _input_path(value, what, "folder")


def output_folder(value: str, what: str) -> str:
    """A folder below ComfyUI's output folder, to write (``must_exist=False``) or read."""
    return user_path(value, what, roots=[output_dir()], base=output_dir(), kind="new", where="ComfyUI's output folder")


def model_folder(value: str, what: str) -> str:
    """An existing folder inside ComfyUI's model folders (``models/`` or ``extra_model_paths.yaml``)."""
    import folder_paths

    return user_path(
        value,
        what,
        roots=model_roots(),
        base=folder_paths.models_dir,
        kind="folder",
        where="ComfyUI's model folders (models/, or a folder added in extra_model_paths.yaml)",
    )


def save_target(filename_prefix: str) -> tuple[str, str, int, str]:
    """``(folder, name, counter, subfolder)`` of ComfyUI's next free output name for a prefix,
    checked after resolving symlinks to lie inside the output folder."""
    import os

    import folder_paths

    from worldstereo_core.errors import OutputPathError, UnsafePathError

    out = output_dir()
    real_out = os.path.realpath(out)
    folder = None
    # checked before ComfyUI's helper too: it creates the folder, and checks without resolving symlinks
    sub = os.path.dirname(os.path.normpath(filename_prefix)) if isinstance(filename_prefix, str) else "/"
    if "\x00" not in sub and _inside(os.path.realpath(os.path.join(out, sub)), real_out, allow_root=True):
        try:
            folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out)
        except OSError as e:  # e.g. a file where the prefix needs a folder
            raise OutputPathError(f"cannot use filename_prefix {filename_prefix!r}: {e.strerror or e}") from None
        except Exception as e:  # ComfyUI raises a bare Exception for prefixes that leave the output folder
            if "outside the output folder" not in str(e):
                raise
            folder = None
    if folder is None or not _inside(os.path.realpath(folder), real_out, allow_root=True):
        raise UnsafePathError(
            f"filename_prefix {filename_prefix!r} leads out of ComfyUI's output folder; give a prefix relative to it "
            "(absolute paths, '..' and symlinks may not lead out of it)"
        )
    return folder, name, counter, subfolder


def save_path(filename_prefix: str, extension: str) -> tuple[str, str, str]:
    """``(full_path, filename, subfolder)`` of the next free output file for a prefix."""
    import os

    folder, name, counter, subfolder = save_target(filename_prefix)
    filename = f"{name}_{counter:05}_.{extension}"
    return os.path.join(folder, filename), filename, subfolder


def save_folder_path(filename_prefix: str) -> tuple[str, str]:
    """``(full_path, relative_path)`` of a fresh output folder ``<prefix>_00001_`` (ComfyUI's
    counter counts folders like files); it is not created (write it with ``atomic.write_folder``)."""
    import os

    folder, name, counter, subfolder = save_target(filename_prefix)
    leaf = f"{name}_{counter:05}_"
    return os.path.join(folder, leaf), (f"{subfolder}/{leaf}" if subfolder else leaf)


Depth = io.Custom("WS_DEPTH")  # float32 [N, H, W] z-depth, 0 where unknown
#: float32 [N, H, W]: distance along each equirectangular pixel's ray from the panorama centre, 0 where
#: unknown. Not z-depth (no single camera axis), so it has its own socket type: only Panorama Point Cloud
#: lifts it.
PanoDistance = io.Custom("WS_PANO_DISTANCE")

_PANO_DISTANCE_MARK = "_ws_panorama_ray_distance"


def mark_pano_distance(distance: torch.Tensor) -> torch.Tensor:
    """Mark a panorama ray-distance tensor that travels on a WS_DEPTH socket: Depth Estimate's ``depth``
    output in panorama mode, kept for workflows saved before WS_PANO_DISTANCE existed. Nodes that
    need z-depth refuse it (:func:`z_depth`)."""
    setattr(distance, _PANO_DISTANCE_MARK, True)
    return distance


def is_pano_distance(value) -> bool:
    return bool(getattr(value, _PANO_DISTANCE_MARK, False))


def z_depth(value: torch.Tensor, what: str = "depth") -> torch.Tensor:
    """A WS_DEPTH input that must be z-depth: refuses a panorama's ray distance (lifting it as z-depth
    would bend every plane of the panorama)."""
    if is_pano_distance(value):
        from worldstereo_core.errors import InvalidDepthError

        raise InvalidDepthError(
            f"{what} is a panorama's ray distance (Depth Estimate in panorama mode), not z-depth; lift it with "
            "Panorama Point Cloud (connect Depth Estimate's distance output there)"
        )
    return value


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


def render_trajectories(trajectory, keyframes_only: bool, render) -> tuple[list, list]:
    """``render(cameras)`` along each trajectory on a WS_TRAJECTORY socket, at its keyframes or every pose,
    with the progress bar and cancel between trajectories: ``(trajectories, renders)``."""
    trajs = trajectories_of(trajectory)
    progress = Progress(len(trajs))
    renders = []
    for i, traj in enumerate(trajs):
        renders.append(render(traj.keyframes() if keyframes_only else traj.cameras))
        progress(i + 1)
    return trajs, renders


def one_trajectory(value, why: str):
    """The one Trajectory on a WS_TRAJECTORY socket of a node that works on one clip; the scene loop's
    tuple of several is refused, saying ``why`` one is needed."""
    from worldstereo_core.errors import InvalidTrajectoryError

    trajs = trajectories_of(value)
    if len(trajs) != 1:
        raise InvalidTrajectoryError(f"connect one trajectory (got {len(trajs)}); {why}")
    return trajs[0]


def inspector_ui(title: str = "", **scene) -> dict:
    """The scene inspector's UI entry for a node's output (see nodes/inspector.py), or ``{}``
    when the scene cannot be shown — the preview is optional and never fails a finished run."""
    import logging

    from .inspector import publish

    try:
        return publish(title=title, **scene)
    except Exception as exc:
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
        io.Video.Output(
            display_name="video",
            tooltip="The generated keyframes as ComfyUI's VIDEO (for core Save "
            f"Video), {KEYFRAME_FPS:g} frames per second.",
        ),
    ]


#: Frame rate of the keyframe videos: the release's 81 poses at Wan's 16 fps are 5 s, so its 21
#: keyframes (every 4th pose) play in the same time at 4 fps; 8 fps, Save MP4's default, plays them
#: at double speed, which reads better for 21 frames.
KEYFRAME_FPS = 8.0


def frames_video(frames: torch.Tensor, fps: float = KEYFRAME_FPS):
    """``frames [F, H, W, 3]`` as a core VIDEO value (ComfyUI's VideoFromComponents)."""
    from fractions import Fraction

    from .comfy_v3 import InputImpl, Types

    return InputImpl.VideoFromComponents(
        Types.VideoComponents(images=frames.float().cpu(), audio=None, frame_rate=Fraction(fps).limit_denominator(1000))
    )


def scene_loop_result(loop, report: dict, text: str) -> io.NodeOutput:
    """A finished scene loop (``cloud``, ``bank``, ``steps``) as the node's outputs, its one-line
    summary and the scene inspector's entry (cloud, trajectories, memory bank, retrieval links)."""
    import json

    steps = loop.steps
    frames = torch.cat([s.frames for s in steps]).float()
    ui = {"text": [text]} | inspector_ui(
        "WorldStereo scene",
        cloud=loop.cloud,
        trajectories=[s.trajectory for s in steps],
        memory=loop.bank,
        retrieval=[s.references for s in steps],
    )
    return io.NodeOutput(
        loop.cloud,
        tuple(s.trajectory for s in steps),
        loop.bank,
        torch.cat([s.render.rgb for s in steps]).float(),
        torch.cat([s.render.mask for s in steps]).float(),
        frames,
        json.dumps(report, indent=2),
        frames_video(frames),
        ui=ui,
    )


def starts_input() -> io.String.Input:
    """The ``starts`` control of both scene-loop nodes (one start per trajectory, in order)."""
    return io.String.Input(
        "starts",
        default="",
        optional=True,
        tooltip="Where each trajectory starts, comma-separated in trajectory order: input (the input view), "
        "continue (the previous clip's last frame and its camera, as the release's second trajectories) or a "
        "memory-bank view number (e.g. view:5, one of the panorama's 27 views). Empty = every trajectory "
        "starts from the input view.",
    )


def loop_specs(trajectories: str, starts: str = "", prompts: str = "") -> tuple:
    """The loop's :class:`~worldstereo_core.interfaces.TrajectorySpec` from the nodes' text controls,
    checked (counts, names) before any clip runs.

    ``prompts``: one per line in trajectory order (trailing blank lines ignored; a blank line = the
    scene prompt for that trajectory); empty = the scene prompt for all.
    """
    from worldstereo_core.interfaces import trajectory_specs

    names = [t.strip() for t in trajectories.split(",") if t.strip()]
    start_list = [s.strip() for s in starts.split(",")] if starts.strip() else None
    lines = prompts.rstrip().split("\n") if prompts.strip() else None
    return trajectory_specs(names, start_list, [line.strip() for line in lines] if lines else None)
