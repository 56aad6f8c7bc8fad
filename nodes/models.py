"""Model nodes: load WorldStereo + Wan encoders/VAE, build the GGM / SSM conditions, sample keyframes.

Weights come from ComfyUI's model folders: WorldStereo checkpoints from ``models/worldstereo/<name>/``
(``config.json`` + ``model.safetensors``, as released), the Wan2.1 encoders and VAE from the standard
``text_encoders``, ``clip_vision`` and ``vae`` folders — or from a diffusers Wan2.1-I2V-14B-480P folder.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from worldstereo_core import attention_backends
from worldstereo_core.checkpoint import INDEX_SUFFIX, folder_entry_file
from worldstereo_core.errors import (
    InvalidInputError,
    MissingFileError,
    MissingInputError,
    ShapeMismatchError,
)
from worldstereo_core.retrieval import REDUCE_RULES, References

from .comfy_v3 import io
from .common import (
    CATEGORY,
    KEYFRAME_FPS,
    Cameras,
    Depth,
    MemoryBank,
    PointCloud,
    Progress,
    Retrieval,
    Trajectory,
    clip_alignment_input,
    dtype_input,
    frames_video,
    image_to_hwc,
    loop_specs,
    model_files,
    model_folder,
    noise_seed_input,
    one_trajectory,
    option,
    raise_if_interrupted,
    reference_cut_input,
    retrieval_mode_input,
    scene_loop_outputs,
    scene_loop_result,
    search_aliases,
    starts_input,
    trajectories_input,
    user_path,
    z_depth,
)
from .common import DTYPES as COMMON_DTYPES
from .depth import MoGe
from .memory import DINOv2
from .model_manager import ensure_loaded
from .recon import WorldMirror

if TYPE_CHECKING:  # generate.py pulls in transformers; the nodes import it when they run
    from worldstereo_core.models.generate import PrecomputedConditioning, SamplingSettings

SUB = f"{CATEGORY}/model"
FOLDER = "worldstereo"

WSModel = io.Custom("WS_MODEL")
GGMControl = io.Custom("WS_GGM")
SSMControl = io.Custom("WS_SSM")

FROM_WAN = "from wan_folder"
NO_BASE = "none (the checkpoint holds the whole transformer)"
SKIP_TEXT = "none (connect CONDITIONING)"
SKIP_CLIP = "none (connect CLIP_VISION_OUTPUT)"
DTYPES = {name: COMMON_DTYPES[name] for name in ("bf16", "fp16", "fp32")}  # the release's bf16 listed first
ATTENTION_BACKENDS = ["default", *attention_backends.ATTENTION_BACKENDS]
"""``default`` = :data:`~worldstereo_core.attention_backends.DEFAULT_ATTENTION_BACKEND`; the others
name a backend explicitly (``sdpa_cudnn`` is ours, the rest are diffusers' names)."""
SAMPLER_CHOICES = {"auto": None, "dmd-4": "dmd", "unipc-40": "unipc"}
WEIGHT_DTYPES = {"default": "bf16", "fp8_e4m3fn_scaled": "fp8_e4m3fn_scaled"}
"""``default``: the transformer in ``dtype``; ``fp8_e4m3fn_scaled``: its block projections in scaled fp8."""
# Trade-offs in the tooltips below: bench/issue13_targets.py on an NVIDIA H200, 2026-12-05, torch 2.11, random
# weights, memory-DMD at 480x832, 21 keyframes + 8 references (45 240 tokens); README "Performance" has the table.
ATTENTION_TOOLTIP = (
    "Attention kernel. default = sdpa_cudnn: PyTorch SDPA with cuDNN's fused kernel first (falls back to flash / "
    "efficient / math where cuDNN cannot run): 564 TFLOP/s at a block's shape on an H200 vs 362 for the flash "
    "kernel; one step 4.40 s. native = PyTorch's own choice (torch 2.11 also picks cuDNN on Hopper: 4.39 s). "
    "_native_cudnn (diffusers, with copies): 4.52 s. sdpa_fp8_cudnn: self-attention on cuDNN's fp8 kernel "
    "(Hopper GPUs; pip install --no-deps nvidia-cudnn-frontend==1.32.0): 676 TFLOP/s with its quantisation (kernel "
    "alone 833) vs 588 for bf16 cuDNN on an H100; one eager bf16 step "
    "4.24 vs 4.54 s, fp8 weights + compile 2.86 s; changes the numbers (predicted velocity within cosine 0.998 of "
    "bf16 on random weights), so not the default. flash / sage / xformers need their package."
)
WEIGHT_DTYPE_TOOLTIP = (
    "default: the transformer in dtype (bf16: ~35 GB). fp8_e4m3fn_scaled: its block projections stored as float8 "
    "e4m3 with a per-channel scale, quantised while loading: 18.6 GiB of weights, trajectory peak 46 instead of 62 "
    "GiB, predicted velocity within cosine 0.999 of bf16. Speed (H200): one step 4.37 s vs 4.39 s eager; with "
    "compile 3.41 s vs 3.83 s. Needed for 24 GB cards."
)
BLOCKS_TO_SWAP_TOOLTIP = (
    "Keep this many of the 40 transformer blocks in pinned CPU memory; each is copied to the GPU just before it "
    "runs while the next is prefetched on a side stream. 0 = all on the GPU. fp8 + 30 blocks + offload 'encoders': "
    "peak 19 GiB (fits 24 GB cards), trajectory 23.6 s vs 20.0 s resident (H200); costs ~0.4 GB (fp8) / 0.8 GB "
    "(bf16) of RAM per block."
)
COMPILE_TOOLTIP = (
    "torch.compile each transformer block (regional: the 40 main blocks share one graph); the first run pays the "
    "compile time (~15 s on an H200). Fuses the norms, modulation, RoPE and fp8 quantisation: one step 3.83 s "
    "instead of 4.39 s (bf16), 3.41 s instead of 4.37 s (fp8); whole trajectory 17.6 s (bf16), 15.9 s (fp8)."
)


def _prompt_inputs() -> list:
    """prompt and negative_prompt: the same text controls on the Sampler and the Scene Loop."""
    return [
        io.String.Input("prompt", default="", multiline=True, tooltip="What the scene looks like."),
        io.String.Input(
            "negative_prompt",
            default="",
            multiline=True,
            tooltip="Used with CFG only (UniPC). Empty = the checkpoint's default.",
        ),
    ]


CLIP_SCALING_NOTE = (
    "Note: ComfyUI's CLIP Vision Encode uses standard CLIP scaling (pixels in 0-1), the release fed CLIP pixels "
    "in 0-255 with the same mean/std, and the weights were trained on that; the built-in encode (clip_vision on "
    "the loader) reproduces the release."
)


def _conditioning_inputs(text_scope: str, image_scope: str) -> list:
    """positive, negative, clip_vision_output: ComfyUI's own encoders (CLIPLoader type wan + CLIP Text Encode,
    CLIP Vision Loader + CLIP Vision Encode) in place of the loader's, on the Sampler and the Scene Loop."""
    return [
        io.Conditioning.Input(
            "positive", optional=True, tooltip=f"ComfyUI UMT5 text conditioning; replaces the prompt text{text_scope}."
        ),
        io.Conditioning.Input(
            "negative",
            optional=True,
            tooltip=f"ComfyUI UMT5 negative conditioning; replaces negative_prompt{text_scope}.",
        ),
        io.ClipVisionOutput.Input(
            "clip_vision_output",
            optional=True,
            tooltip=f"ComfyUI CLIP vision output of the image (clip_vision_h); replaces the built-in CLIP encode"
            f"{image_scope}. {CLIP_SCALING_NOTE}",
        ),
    ]


def comfy_embeddings(positive, negative, clip_vision_output) -> PrecomputedConditioning:
    """ComfyUI's CONDITIONING / CLIP_VISION_OUTPUT as :func:`generate_keyframes`' precomputed embeddings.

    CONDITIONING is ComfyUI's list of ``[tensor [B, L, 4096], options]``: one entry of batch 1 holds the
    prompt's UMT5 embedding, cut to Wan's 512 tokens (:func:`_cond_tensor`). CLIP_VISION_OUTPUT's
    ``penultimate_hidden_states`` ``[1, 257, 1280]`` are the tokens Wan's I2V reads (one image).
    Returns a :class:`~worldstereo_core.models.generate.PrecomputedConditioning` (None where not given).

    Raises:
        MissingInputError: an empty CONDITIONING, or a CLIP_VISION_OUTPUT without its hidden states.
        InvalidInputError: a CONDITIONING of several entries or prompts (:func:`_cond_tensor`), or a
            CLIP_VISION_OUTPUT of several images (which one the clip starts from would be a guess).
    """
    from worldstereo_core.models.generate import PrecomputedConditioning

    text, negative_text = _cond_tensor(positive, "positive"), _cond_tensor(negative, "negative")
    image = None
    if clip_vision_output is not None:
        image = getattr(clip_vision_output, "penultimate_hidden_states", None)
        if not torch.is_tensor(image):
            raise MissingInputError(
                "clip_vision_output has no penultimate_hidden_states; connect a CLIP Vision Encode output "
                "(CLIP Vision Loader with clip_vision_h)"
            )
        image = _one_embedding(
            image,
            "clip_vision_output",
            "[1, 257, 1280]; connect a CLIP Vision Encode output",
            "image encodings; WorldStereo conditions a clip on one start image: connect CLIP Vision Encode of a "
            "single image (batch 1)",
        )
    return PrecomputedConditioning(text, negative_text, image)


def _cond_tensor(conditioning, what: str) -> torch.Tensor | None:
    """The UMT5 embedding ``[1, L ≤ 512, 4096]`` of a ComfyUI CONDITIONING input ``what``, as Wan truncates.

    Wan's text cross-attention reads one prompt's tokens, and the sampler draws one scene: several entries
    (Conditioning Combine, which ComfyUI's own samplers run as separate conditions and mix) or a batch of
    prompts have no single meaning here, so they are refused rather than cut to the first.
    """
    if conditioning is None:
        return None
    if not conditioning or not torch.is_tensor(conditioning[0][0]):
        raise MissingInputError(f"{what} CONDITIONING is empty; connect a CLIP Text Encode (UMT5) output")
    if len(conditioning) != 1:
        raise InvalidInputError(
            f"{what} CONDITIONING holds {len(conditioning)} entries (e.g. from Conditioning Combine); WorldStereo "
            "reads one prompt embedding: connect a single CLIP Text Encode (UMT5) output, or put the prompts into "
            "one text"
        )
    tokens = _one_embedding(
        conditioning[0][0],
        f"{what} CONDITIONING",
        "[1, tokens, 4096]; connect a CLIP Text Encode (UMT5) output",
        "prompts; WorldStereo samples one scene from one prompt: encode a single prompt (batch 1)",
    )
    return tokens[:, :512]


def _one_embedding(tokens: torch.Tensor, name: str, expected: str, batch_fix: str) -> torch.Tensor:
    """``tokens`` ``[1, L, C]`` as float32, else an error naming input ``name``: the shape ``expected`` (with
    what to connect), or, for a batch, ``batch_fix`` (what the rows are and why one is needed)."""
    if tokens.ndim != 3:
        raise ShapeMismatchError(f"{name} has shape {tuple(tokens.shape)}, expected {expected}")
    if tokens.shape[0] != 1:
        raise InvalidInputError(f"{name} holds a batch of {tokens.shape[0]} {batch_fix}")
    return tokens.float()


def _sampler_inputs() -> list:
    """sampler, steps, cfg, shift: the same controls on the Sampler and the Scene Loop."""
    return [
        io.Combo.Input(
            "sampler",
            options=list(SAMPLER_CHOICES),
            default="auto",
            tooltip="auto: dmd-4 for the memory-dmd checkpoint, else unipc-40.",
        ),
        io.Int.Input("steps", default=0, min=0, max=200, tooltip="0 = the sampler's default (4 / 40)."),
        io.Float.Input(
            "cfg",
            default=5.0,
            min=1.0,
            max=20.0,
            step=0.1,
            tooltip="Classifier-free guidance for UniPC (1 = off); DMD ignores it.",
        ),
        io.Float.Input(
            "shift",
            default=0.0,
            min=0.0,
            max=20.0,
            step=0.1,
            tooltip="Timestep shift; 0 = default (DMD: the checkpoint's gen_shift, 5; UniPC: 3).",
        ),
    ]


def sampling_settings(sampler: str | None, steps: int, cfg: float, shift: float, seed: int) -> SamplingSettings:
    """The controls of :func:`_sampler_inputs` and the seed as the core's
    :class:`~worldstereo_core.models.generate.SamplingSettings` (``sampler`` already mapped from
    its choice; 0 steps or shift = the sampler's default)."""
    from worldstereo_core.models.generate import SamplingSettings

    return SamplingSettings(sampler=sampler, steps=steps or None, guidance_scale=cfg, shift=shift or None, seed=seed)


def register_model_folder() -> None:
    """Register ``models/worldstereo`` with ComfyUI, keeping paths that extra_model_paths.yaml added."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, default, is_default=True)
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], {".safetensors", ".json"})


register_model_folder()


# The release's layout (hanshanxue/WorldStereo): one subfolder per checkpoint holding config.json and
# model.safetensors, the two files its loader fetches (FuchengSu/WorldStereo models/worldstereo_wrapper.py,
# WorldStereo.from_pretrained); the weights are one file, not shards.
CHECKPOINT_FILE = "model.safetensors"
RELEASE_PAGE = "https://huggingface.co/hanshanxue/WorldStereo/tree/main"


def checkpoint_entry(files: list[str]) -> str | None:
    """The file a checkpoint folder is listed by, given the names of the files in it: the one the loader reads
    it through (:func:`~worldstereo_core.checkpoint.folder_entry_file`: the release's ``model.safetensors``, a
    sharded set's index, or the only ``.safetensors`` file); None without a config.json or such a file."""
    return folder_entry_file(files, CHECKPOINT_FILE) if "config.json" in files else None


def _checkpoints_by_folder() -> dict[str, set[str]]:
    """The checkpoint entries (:func:`checkpoint_entry`, ``<folder>/<file>``) found under each ``worldstereo``
    model folder. The walk follows symlinks: a link the admin put into a model folder lists what it leads to."""
    import folder_paths

    found: dict[str, set[str]] = {}
    for base in folder_paths.get_folder_paths(FOLDER):
        entries = found.setdefault(base, set())
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            entry = checkpoint_entry(files)
            if entry is not None:
                entries.add(posixpath.normpath(posixpath.join(os.path.relpath(root, base).replace(os.sep, "/"), entry)))
    return found


def list_checkpoints() -> list[str]:
    """The ``checkpoint`` combo: ``<folder>/<file>`` for each checkpoint folder under the ``worldstereo``
    model folders (e.g. ``worldstereo-memory-dmd/model.safetensors``; :func:`checkpoint_entry`).

    The entry names a file, not the folder, because the frontend's missing-model check only looks at
    widget values that end in a model file extension and are absent from the options (frontend 1.58.1's
    missing-model scan); a folder name would never be offered for download."""
    return sorted(set().union(*_checkpoints_by_folder().values()))


def _checkpoint_folder_name(name: str) -> str:
    """The folder part of a ``checkpoint`` value: ``worldstereo-memory-dmd/model.safetensors`` (a listed
    entry, or any weights / index file) → ``worldstereo-memory-dmd``; a bare folder name, as workflows saved
    before the entries named the file, is kept."""
    if name.endswith(".safetensors") or name.endswith(INDEX_SUFFIX):
        return posixpath.dirname(name.replace(os.sep, "/"))
    return name


def _checkpoint_path(name: str) -> str:
    """The checkpoint folder of a ``checkpoint`` value (a :func:`list_checkpoints` entry, or the bare folder
    name older workflows saved). ComfyUI 0.3.75 does not check V3 combo values against their options, so
    under each model folder where the value is neither a listed entry nor its folder (the listing follows
    links the admin made), the path it names there must lie inside that folder after resolving symlinks.

    Raises:
        UnsafePathError: the value leads out of any of the model folders (checked before anything is read).
        MissingFileError: no checkpoint folder of that name, or one without config.json.
    """
    by_base = _checkpoints_by_folder()
    bases = list(by_base)
    folder = _checkpoint_folder_name(name)
    # Each model folder the value is looked up in gates it on its own: a value inside the first folder can
    # still lead out of another ('..' from a folder of another name, a hidden link the listing skips). All
    # are checked before any is read, so the answer does not depend on what exists outside.
    paths = []
    for base, entries in by_base.items():
        if name in entries or folder in {_checkpoint_folder_name(e) for e in entries}:
            paths.append(os.path.join(base, folder))  # listed under this folder: the admin's links are followed
        else:
            paths.append(
                user_path(
                    folder or name,
                    "checkpoint",
                    roots=[base],
                    base=base,
                    kind="new",
                    where="ComfyUI's worldstereo model folders (models/worldstereo/)",
                )
            )
    for path in paths:
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    for path in paths:  # the weights are there (e.g. downloaded from the frontend's dialog), the config not
        if os.path.isfile(os.path.join(path, CHECKPOINT_FILE)):
            raise MissingFileError(
                f"WorldStereo checkpoint {name!r}: {path} has {CHECKPOINT_FILE} but no "
                f"config.json; download config.json from the same subfolder of {RELEASE_PAGE} into that folder "
                "(the release's own loader needs both files too)"
            )
    raise MissingFileError(
        f"WorldStereo checkpoint {name!r} not found in {bases}; put the released "
        "worldstereo-camera / worldstereo-memory / worldstereo-memory-dmd folders (config.json + model.safetensors, "
        f"from {RELEASE_PAGE}) into ComfyUI/models/worldstereo/"
    )


def _prefer(options: list[str], *words: str) -> str:
    for w in words:
        for o in options:
            if w in o.lower():
                return o
    return options[0]


def _component_input(name: str, folder: str, prefer: tuple[str, ...], tooltip: str, skip: str | None = None):
    """A Wan component's combo on the loader: the files of ``models/<folder>`` (the first whose name holds
    one of ``prefer``'s words is the default), the wan_folder's copy, and ``skip`` (none) where the
    component may come from another node instead."""
    options = [*model_files(folder), FROM_WAN, *([skip] if skip else [])]
    return io.Combo.Input(name, options=options, default=_prefer(options, *prefer), tooltip=tooltip)


def _base_default(files: list[str]) -> str:
    """The first Wan2.1 I2V 480p file of models/diffusion_models (the base the release names), else the
    wan_folder: never another model that happens to be first in the list."""
    for words in (("i2v", "480p", "14b"), ("i2v", "480p")):
        for f in files:
            if all(w in f.lower() for w in words) and "2.2" not in f and "2_2" not in f:
                return f
    return FROM_WAN


def _wan_path(wan_folder: str) -> str | None:
    """The diffusers Wan folder: inside ComfyUI's model folders (symlinks resolved), or None."""
    if not wan_folder.strip():
        return None
    return model_folder(wan_folder, "wan_folder")


def _component(choice: str, folder: str, wan: str | None, what: str) -> str | None:
    if choice in (SKIP_TEXT, SKIP_CLIP):
        return None
    if choice == FROM_WAN:
        if wan is None:
            raise MissingInputError(
                f"{what} is set to '{FROM_WAN}' but wan_folder is empty; pick a file or set wan_folder"
            )
        return wan
    import folder_paths

    return folder_paths.get_full_path_or_raise(folder, choice)


@dataclass(frozen=True)
class GGMCondition:
    """What travels on WS_GGM: the 21 keyframe renders, hole masks and cameras of one trajectory
    (``video``: every pose instead, 81 — the Uni3C condition from Uni3C Control)."""

    render: torch.Tensor  # [F, H, W, 3] in [0, 1]
    mask: torch.Tensor  # [F, H, W], 1 = hole
    cameras: object  # worldstereo_core.cameras.Cameras of the F keyframes (video: of all poses)
    trajectory: object  # worldstereo_core.trajectory.Trajectory
    video: bool = False
    # the 3D cache the render was made from (worldstereo_core.pointcloud.PointCloud), when connected: the
    # paper-SSM checkpoints read their pointmaps (target keyframes and paired references) from it
    cache: object = None


@dataclass(frozen=True)
class SSMCondition:
    """What travels on WS_SSM: the retrieved references as the video model takes them."""

    references: References


class WorldStereoLoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        base_files = model_files("diffusion_models")
        ckpts = list_checkpoints()
        return io.Schema(
            node_id="WorldStereoLoadModel",
            display_name="Load Wan2.1 WorldStereo Model",
            **search_aliases("LoadWan", "Load WorldStereo Model"),
            category=SUB,
            description="Loads a WorldStereo 2.0 checkpoint (camera, memory or the 4-step memory-dmd) with the "
            "Wan2.1-I2V-14B encoders and VAE it runs on. Weights stream from safetensors straight to the GPU; "
            "ComfyUI's loaded models are unloaded first to make room, and the bundle is then managed by ComfyUI's "
            "memory manager ('Unload models' and other workflows' loads offload it to the CPU; the next run loads it "
            "back). Everything is read from local files.",
            inputs=[
                io.Combo.Input(
                    "checkpoint",
                    options=ckpts,
                    default=_prefer(ckpts, "dmd", "memory") if ckpts else None,
                    tooltip="A checkpoint folder in ComfyUI/models/worldstereo/ (config.json + model.safetensors, "
                    "as released: worldstereo-camera, worldstereo-memory or worldstereo-memory-dmd), listed by its "
                    "weights file, e.g. worldstereo-memory-dmd/model.safetensors. The bare folder name that older "
                    "workflows saved still loads.",
                ),
                io.Combo.Input(
                    "variant",
                    options=["auto", "camera", "memory", "dmd", "paper", "paper-dmd"],
                    default="auto",
                    tooltip="auto: read it from the checkpoint's config.json (model_type), else from its folder name "
                    "(worldstereo-camera / -memory / -memory-dmd), as the release does. paper / paper-dmd: the "
                    "paper's SSM (memory branch on stitched pairs; trained with `worldstereo train`); it reads the "
                    "3D cache's pointmaps: the Scene Loop passes its live cache, the DMDSampler the cache connected "
                    "to GGM Control.",
                ),
                _component_input(
                    "text_encoder",
                    "text_encoders",
                    ("umt5",),
                    "UMT5-XXL (models/text_encoders, e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors), "
                    "the diffusers wan_folder, or none to connect CONDITIONING to the sampler instead.",
                    skip=SKIP_TEXT,
                ),
                _component_input(
                    "clip_vision",
                    "clip_vision",
                    ("clip_vision_h", "vit-h", "clip"),
                    "CLIP ViT-H image encoder (models/clip_vision, e.g. clip_vision_h.safetensors), "
                    "the diffusers wan_folder, or none to connect a CLIP_VISION_OUTPUT to the sampler.",
                    skip=SKIP_CLIP,
                ),
                _component_input(
                    "vae",
                    "vae",
                    ("wan_2.1", "wan2.1", "wan"),
                    "Wan 2.1 VAE (models/vae, e.g. wan_2.1_vae.safetensors) or the diffusers "
                    "wan_folder; it encodes and decodes each of the 21 keyframes independently.",
                ),
                io.String.Input(
                    "wan_folder",
                    default="",
                    tooltip="Optional diffusers Wan2.1-I2V-14B-480P folder inside ComfyUI's model folders "
                    "(relative to ComfyUI/models, e.g. diffusers/Wan2.1-I2V-14B-480P, or a folder listed in "
                    "extra_model_paths.yaml) for components set to 'from wan_folder'; its tokenizer/ is "
                    "used too.",
                ),
                dtype_input(
                    "Weights dtype (the release runs bf16). fp8 text encoders are dequantised.", DTYPES, "bf16"
                ),
                io.Combo.Input(
                    "offload",
                    options=["none", "encoders", "sequential"],
                    default="none",
                    tooltip="none: all on the GPU (~80 GB for full DMD runs); encoders: UMT5/CLIP stay on "
                    "the CPU between uses; sequential: also swap transformer blocks in one at a time "
                    "(slow, fits small GPUs; needs ~40 GB of RAM).",
                ),
                io.Combo.Input(
                    "attention_backend", options=ATTENTION_BACKENDS, default="default", tooltip=ATTENTION_TOOLTIP
                ),
                io.Combo.Input(
                    "base_model",
                    options=[*base_files, FROM_WAN, NO_BASE],
                    default=_base_default(base_files),
                    optional=True,
                    tooltip="Wan2.1-I2V-14B-480P weights that fill the backbone keys a WorldStereo file "
                    "lacks, as the release does (it builds the transformer from its base model): a file in "
                    "models/diffusion_models (e.g. wan2.1_i2v_480p_14B_bf16 or _fp8_scaled; fp8 is "
                    "dequantised) or the wan_folder's transformer/. Read only if the checkpoint lacks keys; "
                    "the log says which key groups came from which file.",
                ),
                # optional: graphs saved before these options existed still validate (defaults apply)
                io.Combo.Input(
                    "weight_dtype",
                    options=list(WEIGHT_DTYPES),
                    default="default",
                    tooltip=WEIGHT_DTYPE_TOOLTIP,
                    optional=True,
                ),
                io.Int.Input("blocks_to_swap", default=0, min=0, max=40, tooltip=BLOCKS_TO_SWAP_TOOLTIP, optional=True),
                io.Boolean.Input("compile", default=False, tooltip=COMPILE_TOOLTIP, optional=True),
            ],
            outputs=[WSModel.Output(display_name="model", tooltip="The loaded WorldStereo model bundle.")],
        )

    @classmethod
    def validate_inputs(cls, checkpoint) -> bool:
        """Take ``checkpoint`` values that are not among the listed entries: naming the input here makes
        ComfyUI skip its combo check for it, so workflows saved with the bare folder name
        (``worldstereo-memory-dmd``, before the entries named the file) still queue on ComfyUI builds that
        check V3 combos. ``execute`` resolves the value and says what is wrong (:func:`_checkpoint_path`)."""
        return True

    @classmethod
    def execute(
        cls,
        checkpoint,
        variant,
        text_encoder,
        clip_vision,
        vae,
        wan_folder,
        dtype,
        offload,
        attention_backend,
        base_model=FROM_WAN,
        weight_dtype="default",
        blocks_to_swap=0,
        compile=False,
    ) -> io.NodeOutput:
        import comfy.model_management as mm

        from worldstereo_core.models.generate import load_models

        wan = _wan_path(wan_folder)
        te = _component(text_encoder, "text_encoders", wan, "text_encoder")
        cv = _component(clip_vision, "clip_vision", wan, "clip_vision")
        va = _component(vae, "vae", wan, "vae")
        # from wan_folder with no folder set: no base (the loader names the fix if the checkpoint needs one)
        base = (
            None
            if base_model == NO_BASE or (base_model == FROM_WAN and wan is None)
            else (_component(base_model, "diffusion_models", wan, "base_model"))
        )
        mm.unload_all_models()  # free what ComfyUI holds before streaming ~35 GB in
        mm.soft_empty_cache()
        models = load_models(
            _checkpoint_path(checkpoint),
            wan,
            text_encoder=te,
            image_encoder=cv,
            vae=va,
            variant=None if variant == "auto" else variant,
            device=mm.get_torch_device(),
            dtype=option(DTYPES, dtype, "dtype"),
            offload=offload,
            attention_backend=None if attention_backend == "default" else attention_backend,
            with_text_encoder=te is not None,
            with_image_encoder=cv is not None,
            base_model=base,
            weight_format=option(WEIGHT_DTYPES, weight_dtype, "weight_dtype"),
            blocks_to_swap=blocks_to_swap,
            compile=compile,
        )
        ensure_loaded(models)  # registered with ComfyUI's manager: "unload models" and other loads can offload it
        return io.NodeOutput(models)


class WorldStereoGGMControl(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoGGMControl",
            display_name="GGM Control (WorldStereo)",
            **search_aliases("GGMControl"),
            category=SUB,
            description="Global-Geometric Memory condition: the 3D cache rendered along the trajectory, its hole "
            "mask and the keyframe cameras (whose Plücker rays the ControlNet branch also sees).",
            inputs=[
                io.Image.Input(
                    "render", tooltip="Cache renders: 21 keyframes (or one per pose; keyframes are picked)."
                ),
                io.Mask.Input("hole_mask", tooltip="1 where the render has a hole, 0 where the cache covers it."),
                Trajectory.Input("trajectory", tooltip="The trajectory the render was made along."),
                PointCloud.Input(
                    "cache",
                    optional=True,
                    tooltip="The 3D cache the render was made from (the cache input of GGM Render Cache). Needed "
                    "by the paper-SSM checkpoints (variant paper / paper-dmd): their memory branch reads the "
                    "cache's pointmaps at the keyframes and at the references. Other checkpoints ignore it.",
                ),
            ],
            outputs=[GGMControl.Output(display_name="ggm", tooltip="The GGM condition for the sampler.")],
        )

    @classmethod
    def execute(cls, render, hole_mask, trajectory, cache=None) -> io.NodeOutput:
        return io.NodeOutput(ggm_condition(render, hole_mask, trajectory, video=False, cache=cache))


def ggm_condition(render: torch.Tensor, hole_mask: torch.Tensor, trajectory, video: bool, cache=None) -> GGMCondition:
    """The GGM Control / Uni3C Control value: one trajectory's renders, masks and cameras, checked.

    Keyframe mode takes the 21 keyframes (or one render per pose, then keeps the keyframes); video
    mode (Uni3C) takes one render per pose, ``1 + 4k`` poses, and all their cameras. ``cache``: the
    3D cache's cloud, carried for the paper-SSM checkpoints (checked non-empty).
    """
    from worldstereo_core.models.generate import video_latent_frames

    traj = one_trajectory(trajectory, "each clip is sampled on its own")
    mask = hole_mask if hole_mask.ndim == 3 else hole_mask[None]
    if video:
        video_latent_frames(len(traj))  # 1 + 4k poses, checked before any sampling
        want, how = len(traj), "one per pose (GGM Render Cache with keyframes_only off): Uni3C takes every frame"
    else:
        idx = traj.keyframe_indices()
        if len(traj) != len(idx):  # one render per pose: keep the keyframes
            sel = torch.as_tensor(idx, dtype=torch.long)
            render = render[sel] if render.shape[0] == len(traj) else render
            mask = mask[sel] if mask.shape[0] == len(traj) else mask
        want, how = len(idx), f"{len(idx)} keyframes (RenderCache with keyframes_only) or one per pose"
    if render.shape[0] != want or mask.shape[0] != want:
        raise ShapeMismatchError(
            f"render has {render.shape[0]} frames and hole_mask {mask.shape[0]} for a trajectory of {len(traj)} "
            f"poses; give {how}"
        )
    H, W = render.shape[1:3]
    if tuple(mask.shape[1:]) != (H, W):
        raise ShapeMismatchError(
            f"hole_mask is {tuple(mask.shape[1:])} but render is {(H, W)}; use RenderCache's outputs"
        )
    cams = traj.cameras if video else traj.keyframes()
    if (cams.height, cams.width) != (H, W):
        cams = cams.resized(H, W)
    if cache is not None:
        cache = cache.require_nonempty("3D cache")
    return GGMCondition(render[..., :3].float(), mask.float(), cams, traj, video=video, cache=cache)


class WorldStereoSSMControl(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSSMControl",
            display_name="SSM Control (WorldStereo)",
            **search_aliases("SSMControl"),
            category=SUB,
            description="Spatial-Stereo Memory condition: the retrieved memory views, their ref_index (the keyframe "
            "each is stitched beside) and cameras. Only the memory and memory-dmd checkpoints use it; without "
            "it they take the input image as the single reference, as the release does for one view.",
            inputs=[Retrieval.Input("retrieval", tooltip="Output of Retrieve 3D FOV.")],
            outputs=[SSMControl.Output(display_name="ssm", tooltip="The reference condition for the sampler.")],
        )

    @classmethod
    def execute(cls, retrieval) -> io.NodeOutput:
        if len(retrieval) == 0:
            raise InvalidInputError("the retrieval holds no reference; leave SSM unconnected to use the input image")
        return io.NodeOutput(SSMCondition(retrieval))  # a References: what the sampler takes


class WorldStereoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSampler",
            display_name="DMDSampler (WorldStereo)",
            **search_aliases("DMDSampler", "WorldStereo Sampler"),
            category=SUB,
            description="Generates the 21 keyframes of one trajectory: DMD (4 steps, no CFG; the memory-dmd "
            "checkpoint) or UniPC (40 steps, CFG 5.0; camera/memory checkpoints). Each keyframe is decoded on "
            "its own. With a Uni3C model (Load Uni3C ControlNet + Uni3C Control) it generates the whole "
            "81-frame video instead. Outputs the frames and the trajectory they follow.",
            inputs=[
                WSModel.Input("model", tooltip="From Load Wan2.1 WorldStereo Model."),
                io.Image.Input(
                    "image", tooltip="The input view (first frame); resized to the render's size if needed."
                ),
                GGMControl.Input("ggm", tooltip="From GGM Control (or Uni3C Control for a Uni3C model)."),
                *_prompt_inputs(),
                *_sampler_inputs(),
                noise_seed_input("Noise seed; the same seed on the same device gives the same frames."),
                SSMControl.Input("ssm", optional=True, tooltip="From SSM Control (memory and paper-SSM checkpoints)."),
                *_conditioning_inputs("", ""),
            ],
            outputs=[
                io.Image.Output(
                    display_name="keyframes",
                    tooltip="The generated keyframes [21, H, W, 3] "
                    "(with Uni3C: the whole video, one frame per pose, [81, H, W, 3]).",
                ),
                Trajectory.Output(display_name="trajectory", tooltip="The trajectory the keyframes follow."),
                io.Video.Output(
                    display_name="video",
                    tooltip="The frames as ComfyUI's VIDEO (for core Save Video): "
                    "keyframes at 8 fps, a Uni3C model's 81 frames at Wan's 16 fps.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        image,
        ggm,
        prompt,
        negative_prompt,
        sampler,
        steps,
        cfg,
        shift,
        seed,
        ssm=None,
        positive=None,
        negative=None,
        clip_vision_output=None,
    ) -> io.NodeOutput:

        from worldstereo_core.models.generate import generate_keyframes, sampling_steps

        conditioning = comfy_embeddings(positive, negative, clip_vision_output)  # checked before any work
        ensure_loaded(model)  # back on the GPU if ComfyUI offloaded it; other models make room
        if ggm.video != model.video_mode:
            raise MissingInputError(
                "the model has the Uni3C branch (video mode, 81 frames): connect Uni3C Control, not GGM Control"
                if model.video_mode
                else "this condition is for the Uni3C branch (81 frames): put Load Uni3C ControlNet after the model "
                "loader, or use GGM Control (21 keyframes)"
            )
        if model.uses_pairs and ggm.cache is None:
            raise MissingInputError(
                f"the {model.variant!r} checkpoint (the paper's SSM) reads pointmaps from the 3D cache: connect the "
                "cache that GGM Render Cache rendered to GGM Control's cache input"
            )
        img = image_to_hwc(image)
        H, W = ggm.render.shape[1:3]
        if tuple(img.shape[:2]) != (H, W):
            x = torch.nn.functional.interpolate(
                img.permute(2, 0, 1)[None], size=(H, W), mode="bicubic", antialias=True, align_corners=False
            )
            img = x[0].permute(1, 2, 0).clamp(0, 1)
        choice = option(SAMPLER_CHOICES, sampler, "sampler")
        total = sampling_steps(model, choice, steps)
        progress = Progress(total)

        frames = generate_keyframes(
            model,
            img,
            prompt,
            negative_prompt or None,
            ggm.cameras,
            ggm.render,
            ggm.mask,
            ssm.references if ssm is not None else None,  # the camera variant raises: it has no SSM
            sampling=sampling_settings(choice, steps, cfg, shift, seed),
            conditioning=conditioning,
            on_step=lambda i, n: progress(i + 1, n),
            interrupt=raise_if_interrupted,
            cache=ggm.cache if model.uses_pairs else None,
        )
        # Wan's 16 fps for a whole 81-frame video (Uni3C); keyframes at the pack's keyframe rate
        return io.NodeOutput(frames, ggm.trajectory, frames_video(frames, 16.0 if ggm.video else KEYFRAME_FPS))


class WorldStereoSceneLoop(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoSceneLoop",
            display_name="WorldStereo Scene Loop",
            category=SUB,
            description="The whole WorldStereo loop with the video model: input view → 3D cache → for each "
            "trajectory (paper order orbit → up → right → left): GGM render of the cache, SSM retrieval from "
            "the memory bank, 21 generated keyframes, their depth (WorldMirror 2.0 or MoGe-2, at the "
            "known cameras) aligned "
            "to the cache, merge, memory update. Start from the input view's depth, or from a given cache and "
            "bank (a panorama's point cloud and 27 views). The image size sets the generation size (multiples "
            "of 16; the release runs 480×832-class buckets).",
            inputs=[
                WSModel.Input(
                    "model", tooltip="From Load Wan2.1 WorldStereo Model (memory or memory-dmd use the bank)."
                ),
                io.Image.Input(
                    "image",
                    tooltip="The input view; it opens every clip that starts from it. Its size "
                    "is the generation size (multiples of 16, e.g. 480×832).",
                ),
                Cameras.Input(
                    "camera",
                    tooltip="The input view's camera (Depth Estimate's, or a panorama "
                    "view's); it defines the world frame. K is rescaled to the image if sizes differ.",
                ),
                *_prompt_inputs(),
                trajectories_input(),
                *_sampler_inputs(),
                noise_seed_input("Noise seed of the first clip (clip i uses seed + i) and of the robust fits."),
                retrieval_mode_input(),
                io.Int.Input(
                    "depth_resolution_level",
                    default=9,
                    min=0,
                    max=9,
                    tooltip="MoGe's token budget for the generated frames: 0 = fastest, 9 = upstream "
                    "(WorldMirror ignores it).",
                ),
                MoGe.Input(
                    "moge",
                    optional=True,
                    tooltip="From Load MoGe-2: the depth of the generated frames, at their known field "
                    "of view. Connect this or worldmirror.",
                ),
                WorldMirror.Input(
                    "worldmirror",
                    optional=True,
                    tooltip="From Load WorldMirror 2.0 (the release's reconstruction): the depth of "
                    "each clip with the known cameras as priors. Used instead of moge if both are "
                    "connected.",
                ),
                Depth.Input(
                    "depth",
                    optional=True,
                    tooltip="The input view's z-depth (e.g. Depth Estimate). Not needed with a cache.",
                ),
                MemoryBank.Input(
                    "bank",
                    optional=True,
                    tooltip="Start from this memory bank (e.g. the panorama's 27 views) instead "
                    "of the input image alone.",
                ),
                PointCloud.Input(
                    "cache",
                    optional=True,
                    tooltip="Start from this 3D cache (e.g. Panorama Point Cloud, in the camera's "
                    "world) instead of lifting the input depth.",
                ),
                io.String.Input(
                    "prompts",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip="One prompt per line, in trajectory order (the release captions each "
                    "trajectory); a blank line or an empty box = the scene prompt above.",
                ),
                starts_input(),
                # the paper's ablation switches (release behaviour by default)
                io.Boolean.Input(
                    "ggm",
                    default=True,
                    optional=True,
                    tooltip="Global-Geometric Memory: the 3D cache rendered along the trajectory guides "
                    "the ControlNet. Off (the paper's ablation): an empty render, cameras only.",
                ),
                io.Boolean.Input(
                    "ssm",
                    default=True,
                    optional=True,
                    tooltip="Spatial-Stereo Memory: retrieved memory-bank views are given as references. "
                    "Off (the paper's ablation): none (the start image is the only reference).",
                ),
                clip_alignment_input(
                    "alignment",
                    "How each clip's depth is brought onto the cache: depth = per-frame robust "
                    "scale/shift (default); umeyama = one similarity per clip.",
                    optional=True,
                ),
                io.Int.Input(
                    "bank_frames_per_clip",
                    default=8,
                    min=1,
                    max=20,
                    optional=True,
                    tooltip="Keyframes of each clip added to the memory bank (release: 8).",
                ),
                reference_cut_input(
                    "How more than 8 candidate references are cut: dinov2_fps = the release "
                    "(connect dinov2); spread = evenly along the trajectory (no model); coverage, fps.",
                    optional=True,
                ),
                DINOv2.Input(
                    "dinov2", optional=True, tooltip="From Load DINOv2: image features for reference_cut dinov2_fps."
                ),
                # ComfyUI's encoders (appended: saved graphs keep their slots)
                *_conditioning_inputs(
                    " of every trajectory (leave prompts empty: both at once is an error)",
                    " for the clips that open with this image (the input view); a clip that starts elsewhere "
                    "(continue, a bank view) is encoded by the loader's clip_vision",
                ),
            ],
            outputs=scene_loop_outputs("JSON report of what the loop did."),
        )

    @classmethod
    def execute(
        cls,
        model,
        image,
        camera,
        prompt,
        negative_prompt,
        trajectories,
        sampler,
        steps,
        cfg,
        shift,
        seed,
        retrieval_mode,
        depth_resolution_level,
        moge=None,
        worldmirror=None,
        depth=None,
        bank=None,
        cache=None,
        prompts="",
        starts="",
        ggm=True,
        ssm=True,
        alignment="depth",
        bank_frames_per_clip=8,
        reference_cut="spread",
        dinov2=None,
        positive=None,
        negative=None,
        clip_vision_output=None,
    ) -> io.NodeOutput:

        from worldstereo_core.interfaces import START_INPUT

        depth = None if depth is None else z_depth(depth)

        from worldstereo_core import pipeline
        from worldstereo_core.interfaces import default_config
        from worldstereo_core.memory import Cache3D
        from worldstereo_core.merge import CLIP_ALIGNMENTS
        from worldstereo_core.models.generate import WorldStereoFrameGenerator, sampling_steps
        from worldstereo_core.models.vae import check_spatial_size
        from worldstereo_core.recon.estimators import MoGeDepthEstimator, WorldMirrorDepthEstimator

        if model.video_mode:
            raise InvalidInputError(
                "the Scene Loop runs the keyframe model (GGM, 21 keyframes); a model with the Uni3C branch samples "
                "whole 81-frame videos — use it with Uni3C Control and the DMDSampler (WorldStereo)"
            )
        if moge is None and worldmirror is None:
            raise MissingInputError(
                "connect a depth model: Load MoGe-2 to 'moge' or Load WorldMirror 2.0 to 'worldmirror'; the loop "
                "needs the depth of the generated frames"
            )
        names = loop_specs(trajectories, starts, prompts)  # counts and names checked before any clip runs
        embeds = comfy_embeddings(positive, negative, clip_vision_output)
        if positive is not None and any(spec.prompt is not None for spec in names):
            raise InvalidInputError(
                "both per-trajectory prompts and a positive CONDITIONING are given: the CONDITIONING replaces the "
                "text of every trajectory. Empty 'prompts', or disconnect 'positive' (and let the loader's text "
                "encoder read the prompts)"
            )
        elsewhere = [str(spec.start) for spec in names if spec.start != START_INPUT]
        if clip_vision_output is not None and elsewhere and model.image_encoder is None:
            raise MissingInputError(
                f"clip_vision_output encodes the input view, but trajectories start from {', '.join(elsewhere)}: "
                "their start images need the loader's clip_vision (set it on Load Wan2.1 WorldStereo Model), or "
                "start every trajectory from the input"
            )
        img = image_to_hwc(image)[None]
        H, W = img.shape[1:3]
        check_spatial_size(H, W, "the input image's sides")  # before minutes of work, not inside the first clip
        cam = camera[:1]
        if (cam.height, cam.width) != (H, W):
            cam = cam.resized(H, W)
        choice = option(SAMPLER_CHOICES, sampler, "sampler")
        kind = choice or model.default_sampler
        per_clip = sampling_steps(model, kind, steps)
        stages = 1 + 5 * len(names)
        progress = Progress(stages + per_clip * len(names))
        done = {"stages": 0, "samples": 0}

        def on_stage(step: int, total: int) -> None:
            done["stages"] = step
            progress(done["stages"] + done["samples"])

        def on_step(i: int, n: int) -> None:
            done["samples"] = (generator.calls - 1) * per_clip + min(i + 1, per_clip)
            progress(done["stages"] + done["samples"])

        ensure_loaded(model)  # back on the GPU if ComfyUI offloaded it; other models make room
        generator = WorldStereoFrameGenerator(
            model,
            prompt,
            negative_prompt or None,
            sampling=sampling_settings(choice, steps, cfg, shift, seed),
            conditioning=embeds,
            on_step=on_step,
            interrupt=raise_if_interrupted,
            image_embeds_of=None if clip_vision_output is None else img,
        )
        if worldmirror is not None:
            estimator, depth_source = WorldMirrorDepthEstimator(worldmirror), "worldmirror"
        else:
            estimator, depth_source = MoGeDepthEstimator(moge, resolution_level=depth_resolution_level), "moge"
        result = pipeline.run_scene_loop(
            img,
            cam,
            None if depth is None else depth[:1].float(),
            generator,
            estimator,
            names,
            default_config(
                H,
                W,
                retrieval_mode=retrieval_mode,
                ggm=bool(ggm),
                ssm=bool(ssm),
                clip_alignment=option({a: a for a in CLIP_ALIGNMENTS}, alignment, "alignment"),
                bank_update=int(bank_frames_per_clip),
                reference_cut=option({r: r for r in REDUCE_RULES}, reference_cut, "reference_cut"),
            ),
            seed=seed % 2**31,
            progress=on_stage,
            bank=bank,
            cache=None if cache is None else Cache3D(cache),
            image_features=dinov2,
        )
        report = _loop_report(
            result, model, kind, per_clip, cfg, seed, depth_source, bank is not None, cache is not None
        )
        report["conditioning"] = {  # where the text and image embeddings came from
            "text": "CONDITIONING" if positive is not None else "prompt (loader's text encoder)",
            "image": "CLIP_VISION_OUTPUT (clips that open with the input view)"
            if clip_vision_output is not None
            else "loader's clip_vision",
        }
        return scene_loop_result(
            result,
            report,
            f"{len(result.steps)} trajectories, {len(result.cloud)} points, {len(result.bank)} memory views",
        )


def _loop_report(
    result,
    model,
    sampler: str,
    steps: int,
    cfg: float,
    seed: int,
    depth_source: str,
    given_bank: bool,
    given_cache: bool,
) -> dict:
    """What a real-model run did (no ground truth, so no scores): settings, then per trajectory the
    references chosen, how the frames' depth was aligned and the cache size — the fields of
    :func:`worldstereo_core.pipeline.loop_report`."""
    from worldstereo_core.pipeline import steps_report

    trajs = steps_report(result.steps)
    cams = result.cameras
    return {
        "view": {"height": cams.height, "width": cams.width},
        "model": {
            "variant": model.variant,
            "sampler": sampler,
            "steps": steps,
            "guidance_scale": cfg if sampler == "unipc" else None,
            "seed": int(seed),
        },
        "depth_source": depth_source,
        "start": {"bank": "given" if given_bank else "input image", "cache": "given" if given_cache else "input depth"},
        "median_depth": float(result.median_depth),
        "input_points": len(result.input_cloud),
        "memory_bank_views": len(result.bank),
        "cache_points": len(result.cloud),
        "trajectories": trajs,
    }


class WorldStereoLastFrame(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WorldStereoLastFrame",
            display_name="Last Frame and Camera (WorldStereo)",
            category=SUB,
            description="The last generated frame of a clip and the camera it was made at (the trajectory's last "
            "pose): the start of a continuing trajectory, as the release's second trajectories start from the "
            "first one's last frame. Feed camera to Trajectory Builder, image to GGM Render Cache (first_frame) "
            "and to the Sampler.",
            inputs=[
                io.Image.Input(
                    "frames", tooltip="A clip's frames (Sampler keyframes: 21, or a Uni3C video: one per pose)."
                ),
                Trajectory.Input("trajectory", tooltip="The trajectory the frames follow (the Sampler's output)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The last frame [1, H, W, 3]."),
                Cameras.Output(
                    display_name="camera", tooltip="Its camera (the trajectory's last pose, K at the frame's size)."
                ),
            ],
        )

    @classmethod
    def execute(cls, frames, trajectory) -> io.NodeOutput:
        traj = one_trajectory(trajectory, "the one the frames follow")
        counts = {len(traj.keyframe_indices()), len(traj)}  # keyframes (GGM) or every pose (Uni3C)
        if frames.ndim != 4 or frames.shape[0] not in counts:
            raise ShapeMismatchError(
                f"got {tuple(frames.shape)} frames for a trajectory of {len(traj)} poses; connect the frames "
                f"generated along it ({' or '.join(str(c) for c in sorted(counts))} frames)"
            )
        H, W = frames.shape[1:3]
        # keyframes include the trajectory's last pose, so the last frame is always at its last camera
        cam = traj.cameras[len(traj) - 1 :]
        if (cam.height, cam.width) != (H, W):
            cam = cam.resized(H, W)
        return io.NodeOutput(frames[-1:, ..., :3].float().clone(), cam)


NODES = [
    WorldStereoLoadModel,
    WorldStereoGGMControl,
    WorldStereoSSMControl,
    WorldStereoSampler,
    WorldStereoSceneLoop,
    WorldStereoLastFrame,
]
