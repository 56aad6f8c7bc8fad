"""The one call: image + prompt + keyframe cameras + GGM render (+ SSM references) → decoded keyframes.

:func:`generate_keyframes` is what the release's keyframe pipelines do for one trajectory, in order:

1. text: UMT5 embeddings of the prompt (and of the negative prompt when CFG is on);
2. image: CLIP penultimate-layer tokens of the input image;
3. VAE: the I2V condition (mask + first-frame latent, 20 channels), the render keyframes encoded one
   by one (frame 0 replaced by the input image, as the release does), the references encoded one by
   one and laid out as ``concat[ref, ones(4), ref]``;
4. cameras: Plücker rays ``[d, o×d]`` at pixel resolution (SEVA-normalised cameras), the hole mask
   binarised at 0.5, and for the memory variants ``camera_qt`` of targets and references after a joint
   normalisation — with no retrieved references the input image at keyframe 0 is the single reference
   (the release's single-view mode);
5. sampling: DMD Euler (``dmd``) or UniPC with CFG (``unipc``), seeded;
6. decoding: each latent frame decoded alone → ``[F, H, W, 3]`` in [0, 1].

With the Uni3C camera ControlNet attached (:func:`with_uni3c`) the call runs in **video mode**, as
Uni3C's own pipeline (ewrfcas/Uni3C ``pipeline_pcd.py``) and the release's 81-frame path do: the
cameras, render and hole mask cover every pose (``1 + 4k``, 81), the I2V condition and the render are
VAE-encoded as causal videos in one pass each (21 latent frames), Plücker rays and mask stay at 81
frames (the branch's temporal stride-4 conv folds them), and the latents decode as one 81-frame video.

:class:`WorldStereoModels` bundles the networks; :func:`load_models` loads them from local files
(WorldStereo folder + Wan encoders/VAE as a diffusers folder or ComfyUI single files).
:class:`WorldStereoFrameGenerator` adapts the call to :class:`worldstereo_core.interfaces.FrameGenerator`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..cameras import Cameras, camera_qt, plucker_embedding, resize_K
from ..errors import InvalidInputError, InvalidOptionError, MissingInputError, ModelOutOfMemoryError, ShapeMismatchError
from .encoders import (
    TEXT_MAX_LENGTH,
    CLIPImageEncoder,
    PromptTokenizer,
    UMT5TextEncoder,
    load_image_encoder,
    load_text_encoder,
)
from .fp8 import WEIGHT_FORMATS
from .fp8_attention import fp8_attention_unavailable
from .loading import DMDSettings, load_worldstereo
from .offload import (
    OFFLOAD_MODES,
    block_swaps,
    enable_sequential_offload,
    execution_order,
    move_except,
    on_device,
    swap_last_blocks,
    swapped_module_ids,
)
from .paper_ssm import PointmapFrame, assign_pairs, encode_pair_inputs, pointmap_images
from .sampling import (
    DEFAULT_FLOW_SHIFT,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_UNIPC_STEPS,
    WorldStereoDenoiser,
    check_seed,
    clip_seed,
    initial_noise,
    sample_dmd,
    sample_unipc,
)
from .transformer_worldstereo import (
    DEFAULT_ATTENTION_BACKEND,
    MAX_REFERENCES,
    SDPA_FP8_CUDNN,
    WorldStereoInputs,
    WorldStereoTransformer,
)
from .transformer_worldstereo_paper import PAPER_VARIANTS, PaperInputs
from .vae import WanKeyframeVAE, check_spatial_size, images_to_video, load_wan_vae, video_to_images

if TYPE_CHECKING:
    from ..interfaces import References
    from ..pointcloud import PointCloud
    from .uni3c import Uni3CControlNet

log = logging.getLogger(__name__)

SAMPLERS = ("dmd", "unipc")
"""``dmd``: 4 Euler steps, no CFG (the distilled variant); ``unipc``: 40 UniPC steps with CFG 5.0."""


@dataclass(frozen=True)
class SamplingSettings:
    """How the video model samples a clip: the sampler's controls and the noise seed.

    Checked when made, so a bad setting fails before any model work (and before the first clip of
    a scene loop).

    Attributes:
        sampler: ``dmd`` or ``unipc`` (None: the checkpoint's own, :attr:`WorldStereoModels.default_sampler`).
        steps: sampler steps, ≥ 1 (None: the checkpoint's DMD steps, or 40 for UniPC; :func:`sampling_steps`).
        guidance_scale: CFG scale for UniPC (≤ 1 disables CFG); ignored by DMD.
        shift: timestep shift (None: the checkpoint's ``gen_shift`` for DMD, 3.0 for UniPC).
        seed: noise seed in ``[0, 2^64)`` (same seed + device → same frames).
    """

    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    shift: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise InvalidOptionError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or int(self.steps) < 1):
            raise InvalidOptionError(f"steps must be a positive integer or None, got {self.steps!r}")
        object.__setattr__(self, "seed", check_seed(self.seed))


@dataclass(frozen=True)
class PrecomputedConditioning:
    """Text and image conditioning encoded outside the bundle (e.g. ComfyUI's CONDITIONING and
    CLIP_VISION_OUTPUT); each given one replaces the bundle's own encoder for that input.

    Attributes:
        prompt_embeds / negative_prompt_embeds: ``[1, L ≤ 512, text_dim]`` UMT5 hidden states; they replace
            the prompt / negative prompt text and are zero-padded to 512 tokens, as Wan pads.
        image_embeds: ``[1, 257, image_dim]`` CLIP ViT-H penultimate tokens of the first frame
            (``CLIP_VISION_OUTPUT.penultimate_hidden_states``); replaces the CLIP encode.
    """

    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None


@dataclass(frozen=True)
class WorldStereoModels:
    """Everything :func:`generate_keyframes` needs, loaded and placed.

    Attributes:
        transformer: the WorldStereo video transformer (``variant``).
        vae: the Wan2.1 VAE in keyframe mode.
        text_encoder: UMT5-XXL with its tokenizer (``tokenizer`` is the same object's); None when the
            caller always passes precomputed text embeddings (e.g. ComfyUI's own UMT5 node).
        image_encoder: CLIP ViT-H vision tower; None when image embeddings are always passed.
        variant: ``camera``, ``memory`` or ``dmd``.
        device: where the computation runs.
        offload: ``none`` / ``encoders`` / ``sequential`` (see :mod:`.offload`).
    """

    transformer: WorldStereoTransformer
    vae: WanKeyframeVAE
    text_encoder: UMT5TextEncoder | None
    tokenizer: PromptTokenizer | None
    image_encoder: CLIPImageEncoder | None
    variant: str
    device: torch.device = torch.device("cpu")
    offload: str = "none"
    weight_format: str = "bf16"
    blocks_to_swap: int = 0
    compiled: bool = False

    def _placed(self) -> list[tuple[torch.nn.Module, set[int]]]:
        """(module, ids of submodules that stay on the host) for every module that lives on the device."""
        out = [(self.transformer, swapped_module_ids(self.transformer)), (self.vae.vae, set())]
        if self.offload == "none":
            out += [(e.model, set()) for e in (self.text_encoder, self.image_encoder) if e is not None]
        return out

    def device_weight_bytes(self) -> int:
        """Bytes of weights that :meth:`load_to_device` puts on the device (swapped blocks and offloaded
        encoders excluded) — what a memory manager must reserve for this bundle."""
        total = 0
        for module, skip in self._placed():
            for sub in module.modules():
                if id(sub) in skip:
                    continue
                for t in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
                    total += t.numel() * t.element_size()
        return total

    def load_to_device(self) -> None:
        """Move the resident weights to :attr:`device` (swapped blocks stay on the host, pinned)."""
        for module, skip in self._placed():
            move_except(module, self.device, skip)

    def offload_to_host(self) -> None:
        """Move every weight to the host, freeing the device (the inverse of :meth:`load_to_device`)."""
        for swap in block_swaps(self.transformer):
            swap.release()
        for module, skip in self._placed():
            move_except(module, "cpu", skip)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def uses_references(self) -> bool:
        return self.variant in ("memory", "dmd")

    @property
    def uses_pairs(self) -> bool:
        """True for the paper's SSM variants (references as stitched pairs + pointmaps of the 3D cache)."""
        return self.variant in PAPER_VARIANTS

    @property
    def default_sampler(self) -> str:
        return "dmd" if self.variant in ("dmd", "paper-dmd") else "unipc"

    @property
    def negative_prompt(self) -> str:
        cfg = getattr(self.transformer, "ws_config", None)
        return cfg.negative_prompt if cfg is not None else ""

    @property
    def latent_cond_mode(self) -> str:
        cfg = getattr(self.transformer, "ws_config", None)
        return cfg.latent_cond_mode if cfg is not None else "full_vae"

    @property
    def video_mode(self) -> bool:
        """True when the control branch is Uni3C (:func:`with_uni3c`): whole causal videos of ``1 + 4k``
        frames (81) instead of independent keyframes (21)."""
        return getattr(self.transformer, "control_branch", "ggm") == "uni3c"


def with_uni3c(
    models: WorldStereoModels, uni3c: Uni3CControlNet | str | os.PathLike, dtype: torch.dtype | None = None
) -> WorldStereoModels:
    """The same bundle with the Uni3C camera ControlNet as the control branch instead of GGM.

    ``uni3c`` is a loaded branch (:func:`~.loading.load_uni3c`) or the path of its safetensors file,
    which is then loaded onto the bundle's device in ``dtype`` (default: the transformer's); with
    ``offload='sequential'`` its blocks stay on the host and visit the device one at a time, like the
    main blocks. The bundle's transformer weights are shared, not copied, and the bundle is not
    modified (:func:`~.uni3c.attach_uni3c`). :func:`generate_keyframes` then runs in video mode.
    """
    from .loading import load_uni3c
    from .uni3c import attach_uni3c

    if isinstance(uni3c, (str, os.PathLike)):
        if dtype is None:
            dtype = models.transformer.proj_out.weight.dtype
        host = models.offload == "sequential" and models.device.type != "cpu"
        uni3c = load_uni3c(uni3c, device="cpu" if host else models.device, dtype=dtype)
        if host:
            enable_sequential_offload(uni3c, models.device, uni3c.controlnet_blocks)
    return dataclasses.replace(models, transformer=attach_uni3c(models.transformer, uni3c))


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_models(
    worldstereo: str | os.PathLike,
    wan: str | os.PathLike | None = None,
    *,
    text_encoder: str | os.PathLike | None = None,
    image_encoder: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    variant: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    encoder_dtype: torch.dtype | None = None,
    offload: str = "none",
    attention_backend: str | None = None,
    clip_pixel_scale: str = "release",
    with_text_encoder: bool = True,
    with_image_encoder: bool = True,
    base_model: str | os.PathLike | None = None,
    weight_format: str = "bf16",
    blocks_to_swap: int = 0,
    compile: bool = False,
) -> WorldStereoModels:
    """Load a WorldStereo checkpoint and the Wan2.1-I2V encoders and VAE from local files.

    Args:
        worldstereo: a ``worldstereo-camera`` / ``-memory`` / ``-memory-dmd`` folder (or its
            ``model.safetensors``).
        wan: a diffusers Wan2.1-I2V-14B-480P folder; fills whichever of ``text_encoder``,
            ``image_encoder``, ``vae``, ``tokenizer`` is not given.
        text_encoder / image_encoder / vae: single files (ComfyUI's ``umt5_xxl_*``, ``clip_vision_h``,
            ``wan_2.1_vae``) or diffusers subfolders.
        tokenizer: the UMT5 tokenizer folder / ``spiece.model`` (ComfyUI's umt5 files embed one).
        variant: overrides the checkpoint's ``model_type``.
        device: execution device (default: CUDA if available).
        dtype: transformer and VAE dtype; ``encoder_dtype`` (default ``dtype``) for UMT5 and CLIP.
        offload: ``none``, ``encoders`` or ``sequential``.
        attention_backend: ``sdpa_cudnn``, ``sdpa_fp8_cudnn`` (self-attention on cuDNN's fp8 kernel, Hopper
            + ``nvidia-cudnn-frontend``; changes the numbers, see :mod:`.fp8_attention`) or a diffusers
            attention backend name (``native``, ``flash``, ``_native_cudnn`` …); empty keeps
            :data:`~.transformer_worldstereo.DEFAULT_ATTENTION_BACKEND` (``sdpa_cudnn``: PyTorch SDPA, cuDNN's
            fused kernel first).
        with_text_encoder / with_image_encoder: False skips that encoder (the caller will pass
            precomputed embeddings to :func:`generate_keyframes`, e.g. from ComfyUI's own encoders).
        base_model: the Wan2.1-I2V-14B-480P transformer that fills backbone keys a checkpoint lacks, as
            the release does (a diffusers folder, or ComfyUI's ``wan2.1_i2v_480p_14B_*.safetensors``);
            default: ``wan``'s transformer, if ``wan`` has one. See :func:`~.loading.load_worldstereo`.
        weight_format: ``bf16`` or ``fp8_e4m3fn_scaled`` (the transformer's block projections in scaled
            float8, quantised as they load; see :mod:`.fp8`).
        blocks_to_swap: that many of the last main transformer blocks live in pinned host memory and are
            prefetched to the device block by block (:class:`.offload.BlockSwap`); 0 = all resident.
            Ignored with ``offload='sequential'`` (which swaps every block).
        compile: ``torch.compile`` each repeated block (regional compilation; compiled on first use).
    """
    if offload not in OFFLOAD_MODES:
        raise InvalidOptionError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    if weight_format not in WEIGHT_FORMATS:
        raise InvalidOptionError(f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}")
    device = default_device() if device is None else torch.device(device)
    if attention_backend == SDPA_FP8_CUDNN:  # refused before minutes of loading, with what to change
        reason = fp8_attention_unavailable(device)
        if reason is not None:
            raise InvalidOptionError(
                f"attention backend {SDPA_FP8_CUDNN!r} cannot run here: {reason}; choose 'default' ({DEFAULT_ATTENTION_BACKEND!r})"
            )
    encoder_dtype = dtype if encoder_dtype is None else encoder_dtype
    text_encoder = text_encoder if text_encoder is not None else wan
    image_encoder = image_encoder if image_encoder is not None else wan
    vae = vae if vae is not None else wan
    wanted = [("vae", vae)]
    wanted += [("text_encoder", text_encoder)] if with_text_encoder else []
    wanted += [("image_encoder", image_encoder)] if with_image_encoder else []
    missing = [n for n, v in wanted if v is None]
    if missing:
        raise MissingInputError(
            f"no source for {', '.join(missing)}: pass wan=<a diffusers Wan2.1-I2V-14B-480P folder> or the single "
            "files (umt5_xxl_*.safetensors, clip_vision_h.safetensors, wan_2.1_vae.safetensors)"
        )
    if tokenizer is None and wan is not None and os.path.isdir(os.path.join(wan, "tokenizer")):
        tokenizer = os.path.join(wan, "tokenizer")

    host = torch.device("cpu")
    enc_device = host if offload != "none" else device
    if base_model is None and wan is not None and os.path.isdir(os.path.join(wan, "transformer")):
        base_model = wan
    sequential = offload == "sequential" and device.type != "cpu"
    swap_n = 0 if sequential else int(blocks_to_swap)
    if swap_n < 0:
        raise InvalidOptionError(f"blocks_to_swap must be 0 or more (0 = every block resident), got {blocks_to_swap}")
    transformer = load_worldstereo(
        worldstereo,
        variant,
        device=host if sequential else device,
        dtype=dtype,
        base_model=base_model,
        weight_format=weight_format,
        blocks_on_host=swap_n,
    )
    if sequential:
        enable_sequential_offload(transformer, device, execution_order(transformer))
    elif swap_n:
        swap_last_blocks(transformer, device, swap_n)
    if attention_backend:
        try:
            transformer.set_attention_backend(attention_backend)
        except (ValueError, RuntimeError, ImportError) as exc:
            raise InvalidOptionError(
                f"attention backend {attention_backend!r} is not usable here ({exc}); leave it empty for the default "
                f"({DEFAULT_ATTENTION_BACKEND!r}: PyTorch SDPA, cuDNN's fused kernel first)"
            ) from None
    # each loader reads the architecture a file states (worldstereo_core.checkpoint), else the release's
    te = ie = None
    if with_text_encoder:
        te = load_text_encoder(text_encoder, tokenizer=tokenizer, device=enc_device, dtype=encoder_dtype)
    if with_image_encoder:
        ie = load_image_encoder(image_encoder, device=enc_device, dtype=encoder_dtype, pixel_scale=clip_pixel_scale)
    v = load_wan_vae(vae, device=device, dtype=dtype)
    tok = te.tokenizer if te is not None else None
    if compile:
        compile_blocks(transformer)
    return WorldStereoModels(
        transformer, v, te, tok, ie, transformer.variant, device, offload, weight_format, swap_n, bool(compile)
    )


def compile_blocks(transformer: WorldStereoTransformer) -> None:
    """``torch.compile`` every repeated block once (the 40 main blocks share one graph, as do the 20 control
    blocks). A swapped block compiles only its ``forward``, so its swap hooks stay outside the graph."""
    swap = getattr(transformer, "block_swap", None)
    swapped = {id(b) for b in swap.blocks} if swap is not None else set()
    for block in execution_order(transformer):
        if id(block) in swapped:
            block.forward = torch.compile(block.forward, dynamic=False)
        else:
            block.compile(dynamic=False)


# --------------------------------------------------------------------------------- input checks

VIDEO_TEMPORAL_FACTOR = WanKeyframeVAE.temporal_factor
"""Video mode: Wan's causal VAE puts frame 0 alone in latent frame 0, then 4 frames per latent frame."""


def video_latent_frames(num_frames: int) -> int:
    """Latent frames of a video-mode clip of ``num_frames`` poses (81 → 21); raises unless ``1 + 4k``, k ≥ 1."""
    k, rest = divmod(int(num_frames) - 1, VIDEO_TEMPORAL_FACTOR)
    if rest or k < 1:
        near = max(1, round((int(num_frames) - 1) / VIDEO_TEMPORAL_FACTOR)) * VIDEO_TEMPORAL_FACTOR + 1
        raise ShapeMismatchError(
            f"the Uni3C branch works on whole videos of 1 + 4k frames (81 as released); got {num_frames} "
            f"cameras/render frames — give every pose of the trajectory (e.g. {near}, or 81), not its keyframes "
            "(Uni3C Control prepares them)"
        )
    return k + 1


def _as_image(image: torch.Tensor) -> torch.Tensor:
    img = torch.as_tensor(image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ShapeMismatchError(f"image must be [H, W, 3] (or a batch of one) in [0, 1], got {tuple(img.shape)}")
    return img[..., :3].float()


def _check_inputs(
    image: torch.Tensor, cameras: Cameras, render: torch.Tensor, render_mask: torch.Tensor
) -> tuple[torch.Tensor, Cameras, torch.Tensor, torch.Tensor]:
    img = _as_image(image)
    H, W = img.shape[:2]
    check_spatial_size(H, W, "the input image and keyframes")
    if not isinstance(cameras, Cameras):
        raise InvalidInputError(f"keyframe_cameras must be a Cameras batch, got {type(cameras).__name__}")
    n = len(cameras)
    if n < 2:
        raise InvalidInputError(f"need at least 2 keyframe cameras (the release uses 21), got {n}")
    render = torch.as_tensor(render).float()
    if render.ndim == 3:
        render = render[None]
    if render.ndim != 4 or render.shape[-1] not in (3, 4):
        raise ShapeMismatchError(f"render must be [F, H, W, 3] in [0, 1], got {tuple(render.shape)}")
    render = render[..., :3]
    mask = torch.as_tensor(render_mask).float()
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 3:
        raise ShapeMismatchError(f"render_mask must be [F, H, W] (1 = hole), got {tuple(mask.shape)}")
    if render.shape[0] != n or mask.shape[0] != n:
        raise ShapeMismatchError(
            f"{render.shape[0]} render frames and {mask.shape[0]} mask frames for {n} keyframe cameras; give one "
            "render frame, one mask frame and one camera per keyframe (the release: 21)"
        )
    if tuple(render.shape[1:3]) != (H, W) or tuple(mask.shape[1:]) != (H, W):
        raise ShapeMismatchError(
            f"render {tuple(render.shape[1:3])} / mask {tuple(mask.shape[1:])} must have the image's size {(H, W)}; "
            "render the cache at the image resolution"
        )
    if (cameras.height, cameras.width) != (H, W):
        cameras = cameras.resized(H, W)  # K is in pixels of its image: rescale with it
    return img, cameras, render, mask


def _reference_inputs(
    references: References, n_frames: int, H: int, W: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(video [1, 3, R, H, W] in [-1, 1], w2c [R, 4, 4], ref_index [R] long)`` from retrieved references."""
    n = len(references)
    if n == 0:
        raise InvalidInputError("references is empty; pass None to use the input image as the only reference")
    if n > MAX_REFERENCES:
        raise InvalidOptionError(
            f"{n} references given; the memory model takes at most {MAX_REFERENCES} — retrieve fewer "
            "(retrieve(..., max_refs=8))"
        )
    ref_index = torch.as_tensor(references.ref_index).long().reshape(-1).cpu()
    if ref_index.shape[0] != n:
        raise ShapeMismatchError(f"{n} reference images but {ref_index.shape[0]} ref_index values")
    if bool(((ref_index < 0) | (ref_index > n_frames - 2)).any()):
        raise InvalidOptionError(
            f"ref_index values must be in [0, {n_frames - 2}] (keyframe slot − 1), got {ref_index.tolist()}"
        )
    frames = []
    for i, im in enumerate(references.images):
        t = torch.as_tensor(im).float()
        if t.ndim != 3 or t.shape[-1] not in (3, 4):
            raise ShapeMismatchError(f"reference image {i} must be [H, W, 3] in [0, 1], got {tuple(t.shape)}")
        t = t[..., :3].permute(2, 0, 1)[None]
        if tuple(t.shape[-2:]) != (H, W):
            # the release resizes references to the target size with bicubic interpolation
            t = F.interpolate(t, size=(H, W), mode="bicubic", align_corners=False)
        frames.append(t[0])
    video = torch.stack(frames, dim=1)[None] * 2.0 - 1.0  # [1, 3, R, H, W]
    return video, torch.as_tensor(references.w2c).float().reshape(n, 4, 4), ref_index


def ggm_inputs(
    vae: WanKeyframeVAE,
    image: torch.Tensor,
    cameras: Cameras,
    render: torch.Tensor,
    mask: torch.Tensor,
    device: torch.device,
    video: bool = False,
) -> dict[str, torch.Tensor]:
    """The control branch's inputs for one clip: ``render_latent [1, 16, F, h, w]`` (frame 0 replaced by
    ``image`` as the release does), ``render_mask [1, 1, F, H, W]`` (binarised at 0.5, 1 = hole) and
    ``plucker [1, 6, F, H, W]``.

    Keyframe mode (GGM): each render keyframe encoded alone, Plücker ``[d, o×d]`` of SEVA-normalised
    cameras. ``video`` (Uni3C): the whole render video in one causal pass (Uni3C's pipeline, and the
    release's 81-frame path of pipeline_pcd_keyframe), rays normalised the way Uni3C was trained
    (ewrfcas/Uni3C src/camera.py). ``image`` ``[H, W, 3]``, ``render`` ``[F, H, W, 3]`` in [0, 1], ``mask``
    ``[F, H, W]``. Inference and training (:mod:`worldstereo_core.training`) both build the inputs here.
    """
    H, W = image.shape[:2]
    render_video = images_to_video(torch.cat([image[None], render[1:]]).clamp(0, 1))  # [1, 3, F or 81, H, W]
    render_latent = vae.encode_video(render_video) if video else vae.encode_keyframes(render_video)
    plucker = plucker_embedding(
        cameras.w2c.float(), cameras.K.float(), H, W, convention="uni3c" if video else "worldstereo"
    )  # [F or 81, 6, H, W]
    return {
        "render_latent": render_latent.to(device),
        "render_mask": (mask >= 0.5).float()[None, None].to(device),
        "plucker": plucker.permute(1, 0, 2, 3)[None].to(device),
    }


def _paper_pair_inputs(
    vae: WanKeyframeVAE,
    image: torch.Tensor,
    cameras: Cameras,
    references: References | None,
    cache: PointCloud,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """``pair_latent`` / ``pointmap_latent`` of the paper's SSM for one clip (see :mod:`.paper_ssm`).

    The memory views are the retrieved references (or, without any, the input image at keyframe 0);
    each keyframe is paired with its best-scoring view; pointmaps are the cache rendered at the
    keyframes and at the paired views, normalised by the input view's cache depth.
    """
    from ..render import render_point_cloud

    H, W = image.shape[:2]
    if references is None or len(references) == 0:
        ref_images, ref_cams = image[None], cameras[:1]
    else:
        video, ref_w2c, _ = _reference_inputs(references, len(cameras), H, W)
        ref_images = video[0].permute(1, 2, 3, 0).add(1.0).mul(0.5)  # [R, H, W, 3] at the target size
        ref_K = torch.stack(
            [
                torch.as_tensor(resize_K(k, tuple(im.shape[:2]), (H, W))).float()
                for k, im in zip(torch.as_tensor(references.K).float(), references.images)
            ]
        )
        ref_cams = Cameras(ref_w2c.to(cameras.w2c.dtype), ref_K.to(cameras.K.dtype), H, W)
    pair = assign_pairs(cameras, ref_cams.w2c, ref_cams.K)
    paired = ref_cams[pair]
    target_depth = render_point_cloud(cache, cameras).depth
    ref_depth = render_point_cloud(cache, paired).depth
    frame = PointmapFrame.from_depth(cameras[:1], target_depth[0])
    pair_latent, pointmap_latent = encode_pair_inputs(
        vae, ref_images[pair], pointmap_images(target_depth, cameras, frame), pointmap_images(ref_depth, paired, frame)
    )
    return {"pair_latent": pair_latent.to(device), "pointmap_latent": pointmap_latent.to(device)}


def _text_embeds(t: torch.Tensor | None, what: str, dim: int, dev: torch.device) -> torch.Tensor | None:
    """``[1, L, dim]`` → ``[1, 512, dim]`` zero-padded (Wan zeroes every position past the prompt)."""
    if t is None:
        return None
    t = torch.as_tensor(t)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] != 1 or t.shape[2] != dim or t.shape[1] > TEXT_MAX_LENGTH:
        raise ShapeMismatchError(
            f"{what} must be [1, L ≤ {TEXT_MAX_LENGTH}, {dim}] (UMT5-XXL hidden states), got {tuple(t.shape)}"
        )
    return F.pad(t.to(dev), (0, 0, 0, TEXT_MAX_LENGTH - t.shape[1]))


def _oom_types() -> tuple[type[BaseException], ...]:
    return tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


def _is_cpu_oom(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


# --------------------------------------------------------------------------------- the one call


def sampling_steps(models: WorldStereoModels, sampler: str | None = None, steps: int | None = None) -> int:
    """The denoising steps :func:`generate_keyframes` runs: ``steps`` if given (and > 0), else the
    sampler's default — the checkpoint's DMD steps (release: 4) for ``"dmd"``,
    :data:`~worldstereo_core.models.sampling.DEFAULT_UNIPC_STEPS` (release: 40) for ``"unipc"``.
    ``sampler`` None is the checkpoint's own (:attr:`WorldStereoModels.default_sampler`)."""
    if steps:
        return int(steps)
    if (sampler or models.default_sampler) == "dmd":
        cfg = getattr(models.transformer, "ws_config", None)
        return int((cfg.dmd if cfg is not None else DMDSettings()).steps)
    return DEFAULT_UNIPC_STEPS


def generate_keyframes(
    models: WorldStereoModels,
    image: torch.Tensor,
    prompt: str,
    negative_prompt: str | None = None,
    keyframe_cameras: Cameras | None = None,
    render: torch.Tensor | None = None,
    render_mask: torch.Tensor | None = None,
    references: References | None = None,
    *,
    sampling: SamplingSettings = SamplingSettings(),
    conditioning: PrecomputedConditioning | None = None,
    on_step: Callable[[int, int], None] | None = None,
    interrupt: Callable[[], bool] | None = None,
    cache: PointCloud | None = None,
) -> torch.Tensor:
    """Generate the keyframes of one trajectory.

    Args:
        models: the loaded bundle (:func:`load_models`).
        image: ``[H, W, 3]`` in [0, 1], the first frame; H and W multiples of 16.
        prompt / negative_prompt: text; the negative prompt (default: the checkpoint config's) is used
            only with CFG (``unipc`` and ``guidance_scale > 1``).
        keyframe_cameras: the ``F`` keyframe cameras (release: 21), keyframe 0 = the input camera.
            In video mode (``models.video_mode``, a Uni3C branch: :func:`with_uni3c`) every pose of the
            trajectory instead, ``1 + 4k`` of them (81 → 21 latent frames).
        render: ``[F, H, W, 3]`` the 3D cache rendered at them (frame 0 is replaced by ``image``).
        render_mask: ``[F, H, W]``, 1 = hole.
        references: retrieved memory views (memory/dmd variants; ``None``: the input image is the single
            reference, as the release's single-view mode). The camera variant takes none.
        sampling: sampler, steps, CFG scale, shift and seed (:class:`SamplingSettings`; default: the
            checkpoint's sampler with its defaults, seed 0).
        conditioning: precomputed text / image embeddings (:class:`PrecomputedConditioning`, e.g. ComfyUI's
            CONDITIONING); each given one replaces the bundle's encoder for it.
        on_step: ``on_step(i, total)`` after each sampler step; interrupt: returns True to stop
            (:class:`~.sampling.SamplingInterrupted`) — or raises its own exception.
        cache: the 3D cache's cloud (paper-SSM variants only, required there): its pointmaps at the
            keyframes and at their paired references are the memory branch's geometry.
    Returns:
        ``[F, H, W, 3]`` float32 frames in [0, 1] on the CPU (video mode: all ``1 + 4k`` frames, decoded
        in one causal pass).
    """
    if keyframe_cameras is None or render is None or render_mask is None:
        raise MissingInputError("keyframe_cameras, render and render_mask are required (the GGM condition)")
    try:
        return _generate(
            models,
            image,
            prompt,
            negative_prompt,
            keyframe_cameras,
            render,
            render_mask,
            references,
            sampling,
            conditioning or PrecomputedConditioning(),
            on_step,
            interrupt,
            cache,
        )
    except BaseException as exc:
        # Free what the unwound frames still reference (activations, latents), so an error or an
        # interrupt never leaves memory held on the GPU.
        traceback.clear_frames(exc.__traceback__)
        for swap in block_swaps(models.transformer):
            swap.release()  # device copies of a block whose forward raised, prefetched ones
        oom = isinstance(exc, _oom_types()) or _is_cpu_oom(exc)
        if oom:
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not oom:
            raise
        log.warning("out of memory while generating (offload=%r): %s", models.offload, exc)
        H, W = _as_image(image).shape[:2]
        advice = (
            "load the model with offload='encoders' (encoders visit the GPU only to encode) or "
            "offload='sequential' (transformer blocks visit one at a time), use a smaller resolution "
            "(the released buckets are about 480×768) or fewer references"
            if models.offload != "sequential"
            else "use a smaller resolution (the released buckets are about 480×768) or fewer references"
        )
        raise ModelOutOfMemoryError(
            f"{models.device.type.upper()} out of memory generating {len(keyframe_cameras)} keyframes at {H}×{W} "
            f"(offload={models.offload!r}): {advice}"
        ) from None


def _generate(
    models: WorldStereoModels,
    image: torch.Tensor,
    prompt: str,
    negative_prompt: str | None,
    keyframe_cameras: Cameras,
    render: torch.Tensor,
    render_mask: torch.Tensor,
    references: References | None,
    sampling: SamplingSettings,
    conditioning: PrecomputedConditioning,
    on_step: Callable[[int, int], None] | None,
    interrupt: Callable[[], bool] | None,
    cache: PointCloud | None,
) -> torch.Tensor:
    if not isinstance(sampling, SamplingSettings):
        raise InvalidOptionError(f"sampling must be a SamplingSettings, got {type(sampling).__name__}")
    sampler = sampling.sampler or models.default_sampler
    steps, guidance_scale, shift = sampling.steps, sampling.guidance_scale, sampling.shift
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}")
    img, cams, rend, mask = _check_inputs(image, keyframe_cameras, render, render_mask)
    H, W = img.shape[:2]
    video = models.video_mode
    # keyframe mode: one latent frame per keyframe; video mode (Uni3C): Wan's causal 1 + 4k frames
    n = video_latent_frames(len(cams)) if video else len(cams)
    latent_cams = cams[::VIDEO_TEMPORAL_FACTOR] if video else cams  # latent frame k ↔ pose 4k (= keyframe k)
    if models.uses_pairs and cache is None:
        raise MissingInputError(
            f"the {models.variant!r} (paper-SSM) model needs the 3D cache for its pointmaps: run it in the Scene Loop "
            "(which passes the cache), or pass cache=<the cache's PointCloud>"
        )
    if references is not None and not (models.uses_references or models.uses_pairs):
        raise InvalidInputError(
            f"the {models.variant!r} checkpoint has no memory branch and takes no references; load "
            "worldstereo-memory(-dmd) for SSM, or leave the references unconnected"
        )
    ref = _reference_inputs(references, n, H, W) if references is not None else None
    dev = models.device
    swap = models.offload != "none"
    use_cfg = sampler == "unipc" and guidance_scale > 1.0
    if negative_prompt is None:
        negative_prompt = models.negative_prompt

    # 1-2. text and image conditioning
    text_dim = models.transformer.config.text_dim
    pos = _text_embeds(conditioning.prompt_embeds, "prompt_embeds", text_dim, dev)
    neg = (
        _text_embeds(conditioning.negative_prompt_embeds, "negative_prompt_embeds", text_dim, dev) if use_cfg else None
    )
    todo = ([prompt] if pos is None else []) + ([negative_prompt] if use_cfg and neg is None else [])
    if todo:
        if models.text_encoder is None:
            raise MissingInputError(
                "no text encoder is loaded: connect text conditioning (prompt/negative embeddings) or load the "
                "model with a UMT5 text encoder"
            )
        with on_device(models.text_encoder.model, dev, enabled=swap):
            encoded = models.text_encoder.encode(todo).to(dev)
        if pos is None:
            pos, encoded = encoded[:1], encoded[1:]
        if use_cfg and neg is None:
            neg = encoded[:1]
    text = torch.cat([pos, neg]) if use_cfg else pos
    first = images_to_video(img[None])[:, :, 0]  # [1, 3, H, W] in [-1, 1]
    if conditioning.image_embeds is not None:
        clip = torch.as_tensor(conditioning.image_embeds).to(dev)
        if clip.ndim == 2:
            clip = clip[None]
        if clip.ndim != 3 or clip.shape[0] != 1 or clip.shape[2] != models.transformer.config.image_dim:
            raise ShapeMismatchError(
                f"image_embeds must be [1, 257, {models.transformer.config.image_dim}] (CLIP ViT-H penultimate "
                f"layer), got {tuple(clip.shape)}"
            )
    else:
        if models.image_encoder is None:
            raise MissingInputError(
                "no image encoder is loaded: connect a CLIP vision output (clip_vision_h) or load the model with one"
            )
        with on_device(models.image_encoder.model, dev, enabled=swap):
            clip = models.image_encoder.encode(first).to(dev)

    # 3. VAE: I2V condition, render keyframes (frame 0 = the input image), references
    vae = models.vae
    # Uni3C's pipeline always encodes [image, 0 × 80] causally (the release's "full_vae")
    cond_mode = "full_vae" if video else models.latent_cond_mode
    condition = vae.encode_condition(first, n, mode=cond_mode).to(dev)  # [1, 20, F, h, w]
    kwargs: dict = ggm_inputs(vae, img, cams, rend, mask, dev, video=video)
    if models.uses_references:
        if ref is None:  # single-view mode: the input image at keyframe 0 is the reference
            ref_video, ref_w2c, ref_index = first[:, :, None], latent_cams.w2c[:1], torch.zeros(1, dtype=torch.long)
        else:
            ref_video, ref_w2c, ref_index = ref
        z = vae.encode_keyframes(ref_video).to(dev)  # [1, 16, R, h, w]
        kwargs["reference_latent"] = torch.cat([z, torch.ones_like(z[:, :4]), z], dim=1)
        kwargs["ref_index"] = ref_index.to(dev)
        qt, qt_ref = camera_qt(latent_cams.w2c.float(), ref_w2c.to(cams.w2c.device).float())
        kwargs["camera_qt"] = qt[None].to(dev)
        kwargs["camera_qt_ref"] = qt_ref[None].to(dev)

    inputs_type = WorldStereoInputs
    if models.uses_pairs:
        kwargs.update(_paper_pair_inputs(vae, img, cams, references, cache, dev))
        inputs_type = PaperInputs
    positive = inputs_type(text[:1], clip, **kwargs)
    negative = inputs_type(text[1:2], clip, **kwargs) if use_cfg else None
    denoiser = WorldStereoDenoiser(models.transformer, condition, positive, negative)

    # 5. sampling
    noise = initial_noise((1, vae.z_dim, n, H // 8, W // 8), sampling.seed, device=dev)
    if sampler == "dmd":
        cfg = getattr(models.transformer, "ws_config", None)
        settings = cfg.dmd if cfg is not None else DMDSettings()
        if steps is not None:
            settings = dataclasses.replace(settings, steps=int(steps))
        if shift is not None:
            settings = dataclasses.replace(settings, shift=float(shift))
        latents = sample_dmd(denoiser, noise, settings, on_step=on_step, interrupt=interrupt)
    else:
        latents = sample_unipc(
            denoiser,
            noise,
            steps=DEFAULT_UNIPC_STEPS if steps is None else int(steps),
            guidance_scale=guidance_scale,
            flow_shift=DEFAULT_FLOW_SHIFT if shift is None else float(shift),
            on_step=on_step,
            interrupt=interrupt,
        )
    del denoiser, positive, negative, kwargs, noise

    # 6. decode: each keyframe alone, or (video mode) the whole clip in one causal pass → 81 frames
    frames = vae.decode_video(latents) if video else vae.decode_keyframes(latents)  # [1, 3, F or 81, H, W]
    return video_to_images(frames).cpu()


def _one_image(image: torch.Tensor) -> torch.Tensor:
    """``[H, W, C]`` of an ``[H, W, C]`` or ``[1, H, W, C]`` image."""
    image = torch.as_tensor(image)
    return image[0] if image.ndim == 4 else image


class WorldStereoFrameGenerator:
    """The real video model as a :class:`worldstereo_core.interfaces.FrameGenerator`.

    Call ``i`` (one per trajectory, in the loop's order) uses seed ``sampling.seed + i`` (wrapped into
    torch's 64-bit range, :func:`~.sampling.clip_seed`), so a run is reproducible while clips get
    different noise (the release draws every clip's noise from one generator). Settings are checked
    here (:class:`SamplingSettings` checks its own when made), so a bad one fails before the first
    clip, not after minutes of generation.
    The camera variant ignores the loop's references (it has no memory branch).

    Precomputed conditioning (:class:`PrecomputedConditioning`, e.g. ComfyUI's CONDITIONING /
    CLIP_VISION_OUTPUT): its ``prompt_embeds`` / ``negative_prompt_embeds`` replace the text prompts
    for every clip, so a per-clip prompt is refused while they are set (one source of text per run).
    Its ``image_embeds`` encode one image, ``image_embeds_of`` (``[1, H, W, 3]`` or ``[H, W, 3]``): a
    clip that opens with that image uses them; any other start image (a continued clip's last frame,
    a memory-bank view) is encoded by the bundle's own CLIP encoder.
    """

    def __init__(
        self,
        models: WorldStereoModels,
        prompt: str,
        negative_prompt: str | None = None,
        sampling: SamplingSettings = SamplingSettings(),
        conditioning: PrecomputedConditioning | None = None,
        on_step: Callable[[int, int], None] | None = None,
        interrupt: Callable[[], bool] | None = None,
        image_embeds_of: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(sampling, SamplingSettings):
            raise InvalidOptionError(f"sampling must be a SamplingSettings, got {type(sampling).__name__}")
        conditioning = conditioning or PrecomputedConditioning()
        if (conditioning.image_embeds is None) != (image_embeds_of is None):
            raise InvalidInputError("image_embeds and image_embeds_of (the image they encode) go together")
        if models.video_mode:
            raise InvalidInputError(
                "the scene loop generates keyframes (GGM, 21 per clip); a model with the Uni3C branch samples whole "
                "81-frame videos — call generate_keyframes with every pose instead"
            )
        self.models = models
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.sampling = sampling
        self.conditioning = conditioning
        self.image_embeds_of = None if image_embeds_of is None else _one_image(image_embeds_of)
        self.on_step = on_step
        self.interrupt = interrupt
        self.calls = 0

    @property
    def uses_cache(self) -> bool:
        """The paper-SSM variants read the 3D cache (the scene loop then passes ``cache=``)."""
        return self.models.uses_pairs

    def __call__(self, image, cameras, render, mask, references, prompt: str | None = None, cache=None) -> torch.Tensor:
        """One clip; ``prompt`` (the loop's per-trajectory text) replaces the scene prompt for this call;
        ``cache`` (paper-SSM variants) is the loop's current 3D cache."""
        wants_refs = self.models.uses_references or self.models.uses_pairs
        refs = references if wants_refs and references is not None and len(references) else None
        if prompt is not None and self.conditioning.prompt_embeds is not None:
            raise InvalidInputError(
                "a per-clip prompt was given while prompt_embeds (CONDITIONING) replace the text of every clip; "
                "give one or the other"
            )
        encoded = self.image_embeds_of
        opens_with_encoded = encoded is not None and torch.equal(
            _one_image(image).to(encoded.device, encoded.dtype), encoded
        )
        sampling = dataclasses.replace(self.sampling, seed=clip_seed(self.sampling.seed, self.calls))
        self.calls += 1
        return generate_keyframes(
            self.models,
            image,
            self.prompt if prompt is None else prompt,
            self.negative_prompt,
            cameras,
            render,
            mask,
            refs,
            sampling=sampling,
            conditioning=self.conditioning
            if opens_with_encoded
            else dataclasses.replace(self.conditioning, image_embeds=None),
            on_step=self.on_step,
            interrupt=self.interrupt,
            cache=cache,
        )


__all__ = [
    "sampling_steps",
    "SAMPLERS",
    "ggm_inputs",
    "ModelOutOfMemoryError",
    "PrecomputedConditioning",
    "SamplingSettings",
    "WorldStereoFrameGenerator",
    "WorldStereoModels",
    "default_device",
    "generate_keyframes",
    "load_models",
    "video_latent_frames",
    "with_uni3c",
]
