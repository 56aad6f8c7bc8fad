"""Building and loading WorldStereo transformers (and the Uni3C branch) from safetensors.

A checkpoint is a folder with ``config.json`` + ``model.safetensors`` (the release's layout), a
sharded folder, or a single ``.safetensors`` file (its config is then read from a ``config.json``
beside it, the file's metadata, or the released defaults). Files, pickle refusal, key matching and
streaming are :mod:`worldstereo_core.checkpoint`'s; this module adds what is WorldStereo's: the
config (``config.json`` of the release, ``model_type`` from the folder name), the cause of a key
mismatch, the float32 modules, and filling the Wan2.1 backbone from a base model as the release does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import (
    PICKLE_SUFFIXES,
    ConversionPlan,
    SafetensorsSource,
    bind_recipe,
    checkpoint_files,
    config_json_beside,
    describe_keys,
    embedded_config,
    match_keys,
    open_tensor_source,
    read_safetensors_header,
    save_checkpoint,
    save_model_folder,
    stored_config,
    stream_weights,
    take,
)
from ..errors import CheckpointMismatchError, CorruptFileError, InvalidOptionError
from .conversion import plan_wan_transformer, scaled_identity_plan
from .fp8 import WEIGHT_FORMATS, convert_to_fp8, quantize_entry
from .transformer_worldstereo import (
    FULL_CONTROLNET_CONFIG,
    FULL_TRANSFORMER_CONFIG,
    VARIANTS,
    ControlNetConfig,
    WorldStereoTransformer,
)
from .transformer_worldstereo_paper import (
    FULL_MEMORY_CONFIG,
    PAPER_VARIANTS,
    MemoryBranchConfig,
    WorldStereoPaperTransformer,
)
from .uni3c import (
    UNI3C_CONFIG_METADATA_KEY,
    Uni3CControlNet,
    uni3c_config_from_shapes,
    uni3c_model_key,
)

MODEL_TYPES: Mapping[str, str] = {
    "worldstereo-camera": "camera",
    "worldstereo-memory": "memory",
    "worldstereo-memory-dmd": "dmd",
    # the paper's SSM (our option; no released weights): see transformer_worldstereo_paper.py
    "worldstereo-paper-memory": "paper",
    "worldstereo-paper-memory-dmd": "paper-dmd",
}
"""The release's ``config.json`` ``model_type`` values (and the paper variant's) and our variant names."""

ALL_VARIANTS: tuple[str, ...] = (*VARIANTS, *PAPER_VARIANTS)

logger = logging.getLogger(__name__)

# Prefixes other tools put in front of the diffusers key names; stripped when that makes the keys match.
_KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
# Parameters that diffusers keeps in float32 when loading Wan in half precision (its
# ``_keep_in_fp32_modules``); the release's loader does the same, so we match it.
_FP32_MODULES = frozenset({"time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"})


@dataclass(frozen=True)
class DMDSettings:
    """The DMD generator's timestep settings (``dmd_start_steps``, ``dmd_end_steps``, ``gen_shift``, ``dmd_steps``)."""

    # Defaults used when a config lacks the fields. The released config.json files (hanshanxue/WorldStereo)
    # are not in any stored copy we could read; these are the release's FlowGeneratorScheduler defaults
    # (FuchengSu/WorldStereo models/dmd_scheduler.py lines 14-20: start_timesteps 250,
    # num_train_timesteps 1000, dmd_steps 4) and the shift of its own example (same file, line 76:
    # shift=5.0). A config.json that carries the fields overrides them.
    start: float = 250.0
    end: float = 1000.0
    shift: float = 5.0
    steps: int = 4


@dataclass(frozen=True)
class WorldStereoConfig:
    """What a checkpoint's config says: variant, network sizes and sampler defaults."""

    variant: str
    transformer: Mapping[str, Any]
    controlnet: ControlNetConfig
    dmd: DMDSettings = field(default_factory=DMDSettings)
    negative_prompt: str = ""
    """The release config's ``negative_prompt`` (its runner passes it to every pipeline call)."""
    latent_cond_mode: str = "full_vae"
    """How the I2V condition is encoded (``full_vae`` / ``first_frame_only``; see ``vae.encode_condition``)."""
    memory: MemoryBranchConfig | None = None
    """The paper-SSM memory branch (``memory_cfg``; paper variants only)."""

    def to_json_dict(self) -> dict[str, Any]:
        """A ``config.json`` in the release's layout, plus our ``transformer`` sizes."""
        model_type = {v: k for k, v in MODEL_TYPES.items()}[self.variant]
        transformer = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.transformer.items()}
        return {
            "model_type": model_type,
            "controlnet_cfg": self.controlnet.to_dict(),
            "transformer": transformer,
            "dmd_start_steps": self.dmd.start,
            "dmd_end_steps": self.dmd.end,
            "gen_shift": self.dmd.shift,
            "dmd_steps": self.dmd.steps,
            "negative_prompt": self.negative_prompt,
            "latent_cond_mode": self.latent_cond_mode,
            **({"memory_cfg": self.memory.to_dict()} if self.memory is not None else {}),
        }

    def build(self) -> WorldStereoTransformer:
        """The network this config describes, on the current default device (``meta`` for a lazy build),
        with fresh weights; its ``ws_config`` is this config (what :func:`save_worldstereo` writes)."""
        if self.variant in PAPER_VARIANTS:
            model = WorldStereoPaperTransformer(self.variant, self.controlnet, self.memory, **self.transformer)
        else:
            model = WorldStereoTransformer(self.variant, self.controlnet, **self.transformer)
        model.ws_config = self
        return model


def released_config(variant: str) -> WorldStereoConfig:
    """The released sizes of ``variant`` (``camera``, ``memory``, ``dmd``, ``paper``, ``paper-dmd``)."""
    if variant not in ALL_VARIANTS:
        raise InvalidOptionError(f"unknown variant {variant!r}; use one of {ALL_VARIANTS}")
    # every variant shares the base and GGM sizes; the paper variants add the memory branch
    memory = FULL_MEMORY_CONFIG if variant in PAPER_VARIANTS else None
    return WorldStereoConfig(variant, dict(FULL_TRANSFORMER_CONFIG), FULL_CONTROLNET_CONFIG, memory=memory)


def build_transformer(variant: str) -> WorldStereoTransformer:
    """The network of ``variant`` at the released sizes with fresh weights (eval mode).

    Built on the current default device and dtype, so ``with torch.device("meta"):`` builds the
    17 B-parameter model without allocating. Other sizes: ``WorldStereoConfig(...).build()`` (test
    sizes: :func:`worldstereo_core.tiny_configs.build_tiny_transformer`).
    """
    return released_config(variant).build().eval()


def config_from_dict(
    cfg: Mapping[str, Any], variant: str | None = None, where: str = "config.json"
) -> WorldStereoConfig:
    """Parse a release-style ``config.json`` mapping. ``variant`` overrides its ``model_type``."""
    if not isinstance(cfg, Mapping):
        raise CorruptFileError(f"{where} must hold a JSON object")
    if variant is None:
        model_type = cfg.get("model_type", cfg.get("variant"))
        if model_type is None:
            raise CheckpointMismatchError(
                f"{where} has no 'model_type'; add one of {sorted(MODEL_TYPES)} or pass variant=... explicitly"
            )
        variant = MODEL_TYPES.get(model_type, model_type)
    if variant not in ALL_VARIANTS:
        raise CheckpointMismatchError(
            f"unknown variant/model_type {variant!r} in {where}; use one of {ALL_VARIANTS} / {sorted(MODEL_TYPES)}"
        )
    if "controlnet_cfg" not in cfg:
        raise CheckpointMismatchError(
            f"{where} has no 'controlnet_cfg'; use the config.json that came with the WorldStereo weights"
        )
    controlnet = ControlNetConfig.from_dict(cfg["controlnet_cfg"], where=f"{where}: controlnet_cfg")
    transformer = dict(FULL_TRANSFORMER_CONFIG)  # the release's sizes, the same for every variant
    extra = cfg.get("transformer", {})
    if not isinstance(extra, Mapping):
        raise CheckpointMismatchError(f"{where}: 'transformer' must be a JSON object of WanTransformer3DModel sizes")
    unknown = set(extra) - set(transformer) - {"pos_embed_seq_len"}
    if unknown:
        raise CheckpointMismatchError(f"{where}: unknown transformer field(s) {sorted(unknown)}")
    transformer.update(extra)
    transformer["patch_size"] = tuple(transformer["patch_size"])
    defaults = DMDSettings()
    try:
        dmd = DMDSettings(
            start=float(cfg.get("dmd_start_steps", defaults.start)),
            end=float(cfg.get("dmd_end_steps", defaults.end)),
            shift=float(cfg.get("gen_shift", defaults.shift)),
            steps=int(cfg.get("dmd_steps", defaults.steps)),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointMismatchError(f"{where}: DMD settings must be numbers ({exc})") from None
    negative_prompt = cfg.get("negative_prompt", "")
    latent_cond_mode = cfg.get("latent_cond_mode", "full_vae")
    if not isinstance(negative_prompt, str):
        raise CheckpointMismatchError(f"{where}: 'negative_prompt' must be a string")
    if latent_cond_mode not in ("full_vae", "first_frame_only"):
        raise CheckpointMismatchError(
            f"{where}: 'latent_cond_mode' must be 'full_vae' or 'first_frame_only', got {latent_cond_mode!r}"
        )
    memory = None
    if variant in PAPER_VARIANTS:
        if "memory_cfg" not in cfg:
            raise CheckpointMismatchError(
                f"{where} describes the paper-SSM variant but has no 'memory_cfg' (the memory branch sizes)"
            )
        memory = MemoryBranchConfig.from_dict(cfg["memory_cfg"], where=f"{where}: memory_cfg")
    return WorldStereoConfig(variant, transformer, controlnet, dmd, negative_prompt, latent_cond_mode, memory)


def resolve_checkpoint(path: str | os.PathLike) -> tuple[list[Path], Path | None]:
    """``(weight files, config.json or None)`` of a WorldStereo checkpoint folder or file.

    A folder holds ``config.json`` + ``model.safetensors`` (the release), a sharded set with its
    ``*.safetensors.index.json``, or one ``.safetensors`` file; a file may have a ``config.json`` beside it.
    """
    files = checkpoint_files(path, "WorldStereo checkpoint", preferred="model.safetensors")
    return files, config_json_beside(path, files)


def _group(key: str) -> str:
    parts = key.split(".")
    if parts[0] in ("controlnet", "memory_branch") and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}.*"
    return f"{parts[0]}.*"


_BRANCH_PREFIXES = ("controlnet.", "camera_embedding.", "memory_branch.")
"""What a WorldStereo checkpoint adds to Wan2.1: everything else is the backbone a base model can fill."""


def is_backbone_key(key: str) -> bool:
    """True for the Wan2.1-I2V backbone's keys (the ones the release fills from ``base_model``)."""
    return not key.startswith(_BRANCH_PREFIXES)


def _guess_cause(missing: set[str], unexpected: set[str], variant: str) -> str:
    groups_missing = {_group(k).split(".")[0] for k in missing}
    if missing and all(k.startswith("memory_branch.") for k in missing) and not unexpected:
        return (
            "the file has no memory_branch.*: it is a release checkpoint, not the paper-SSM variant — load it with "
            "its own variant, or build the paper variant from it with init_from_camera(...)"
        )
    if unexpected and all(k.startswith("memory_branch.") for k in unexpected) and not missing:
        return (
            "the file has memory_branch.*: it is a paper-SSM checkpoint — load it with variant='paper' (or 'paper-dmd')"
        )
    if any(k.startswith(("controlnet_patch_embedding.", "controlnet_mask_embedding.")) for k in unexpected):
        return (
            "this looks like a Uni3C ControlNet file (top-level controlnet_patch_embedding.*); WorldStereo "
            "checkpoints hold the whole transformer — load the worldstereo-camera/-memory folder instead, or "
            "load this file with load_uni3c(path) and put it on a base transformer with attach_uni3c(...)"
        )
    if missing and all(k.startswith("camera_embedding.") for k in missing) and not unexpected:
        return (
            "the file has no camera_embedding.*: it is a worldstereo-camera checkpoint — load it with variant='camera'"
        )
    if unexpected and all(k.startswith("camera_embedding.") for k in unexpected) and not missing:
        return (
            "the file has camera_embedding.*: it is a worldstereo-memory(-dmd) checkpoint — load it with "
            "variant='memory' (or 'dmd' for the distilled weights)"
        )
    if (
        missing
        and groups_missing <= {"blocks", "controlnet"}
        and not unexpected
        and (any(k.startswith("blocks.") for k in missing) and any(k.startswith("controlnet.") for k in missing))
    ):
        return (
            "the file has fewer blocks than the config describes — its config.json does not belong to these "
            "weights (e.g. a test file written at other sizes: pass its sizes with overrides=...)"
        )
    if (
        not unexpected
        and any(k.startswith("controlnet.controlnet_blocks.") for k in missing)
        and not any(k.startswith("controlnet.controlnet_patch_embedding.") for k in missing)
    ):
        return (
            "the file has fewer controlnet blocks than the config describes — the config (sizes) does not belong "
            "to these weights (e.g. a test file written at other sizes: pass its sizes with overrides=...)"
        )
    if missing and groups_missing == {"controlnet"}:
        return "the file has no controlnet.*: it is a plain Wan2.1 transformer, not a WorldStereo checkpoint"
    if missing and all(is_backbone_key(k) for k in missing) and not unexpected:
        return (
            "the file holds only the WorldStereo branches, not the Wan2.1 backbone — the release fills the backbone "
            "from its base model: pass base_model=<Wan2.1-I2V-14B-480P-Diffusers folder, or ComfyUI's "
            "models/diffusion_models/wan2.1_i2v_480p_14B_*.safetensors>"
        )
    return "the file is not a WorldStereo 2.0 checkpoint of this variant"


def _file_plan(keys: list[str], expected: Mapping[str, Any]) -> ConversionPlan:
    """The checkpoint's own keys, a known prefix stripped when that makes them the model's names
    (scaled fp8 weights dequantised: :func:`~.conversion.scaled_identity_plan`)."""
    plan = scaled_identity_plan(keys)
    if set(expected) - set(plan.targets):
        for prefix in _KNOWN_PREFIXES:
            stripped = scaled_identity_plan(keys, prefix=prefix)
            if (
                all(k.startswith(prefix) for k in keys)
                and set(stripped.targets) <= set(expected)
                and len(stripped.targets) > len(set(plan.targets) & set(expected))
            ):
                return stripped
    return plan


def _target_dtype(key: str, file_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None or not file_dtype.is_floating_point:
        return file_dtype
    parts = key.split(".")
    if parts[0] in ("controlnet", "memory_branch"):
        keep = len(parts) > 2 and parts[-2] == "norm"  # LayerNorm affine of the AdaLN blocks
    else:
        keep = any(p in _FP32_MODULES for p in parts)
    return torch.float32 if keep and dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass(frozen=True)
class LoadReport:
    """Where a loaded transformer's weights came from: ``{file: key groups}`` (``"blocks.* (400)"`` …)."""

    sources: Mapping[str, str]
    from_base: tuple[str, ...] = ()
    """Groups filled from the base model (empty when the checkpoint held everything)."""

    def __str__(self) -> str:
        return "; ".join(f"{f}: {groups}" for f, groups in self.sources.items())


def _resolve_config(
    files: list[Path],
    path: Path,
    variant: str | None,
    overrides: Mapping[str, Any] | None,
    header_keys: Iterable[str],
) -> WorldStereoConfig:
    """The checkpoint's config: ``config.json`` (the release), else the embedded one, else released
    defaults; ``overrides`` (a partial config, e.g. test sizes) merged over it."""
    raw, where = stored_config(path, files, "worldstereo", legacy=("worldstereo_config",))
    if raw is not None and variant is None and "model_type" not in raw and "variant" not in raw:
        # the release names the variant by the folder (its loader's model_type = subfolder)
        folder = (path if path.is_dir() else files[0].parent).name
        variant = MODEL_TYPES.get(folder)
    if raw is None:
        if variant is None:
            # a bare file: the camera_embedding MLP / the memory branch tell the architectures apart
            keys = set(header_keys)
            if any(k.startswith("memory_branch.") for k in keys):
                variant = "paper"
            else:
                variant = "memory" if any(k.startswith("camera_embedding.") for k in keys) else "camera"
        released = released_config(variant)
        raw = {"controlnet_cfg": released.controlnet.to_dict(), "transformer": dict(released.transformer)}
        if released.memory is not None:
            raw["memory_cfg"] = released.memory.to_dict()
        where = "released defaults"
    if overrides:
        raw = dict(raw)
        for k, v in overrides.items():
            if isinstance(v, Mapping) and isinstance(raw.get(k), Mapping):
                raw[k] = {**raw[k], **v}
            else:
                raw[k] = v
        where += " + overrides"
    return config_from_dict(raw, variant, where=where)


def load_worldstereo(
    path: str | os.PathLike,
    variant: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
    *,
    base_model: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    weight_format: str = "bf16",
    fp8_granularity: str = "channel",
    blocks_on_host: int = 0,
) -> WorldStereoTransformer:
    """Load a WorldStereo checkpoint (folder with ``config.json`` + ``model.safetensors``, a sharded
    folder, or one file) through :mod:`worldstereo_core.checkpoint`.

    ``variant`` overrides the config's ``model_type`` (``camera``/``memory``/``dmd``; the release's
    config.json names none — its folder name ``worldstereo-camera`` … does). The release's config.json
    carries no transformer sizes (its loader builds the transformer from ``base_model``): the released
    Wan2.1-I2V-14B sizes are used; ``overrides`` (a partial config dict, e.g. ``{"transformer": {...},
    "controlnet_cfg": {...}}``) replaces fields — how tests load small files written in the release's
    layout.

    ``base_model``: the Wan2.1-I2V-14B-480P weights the user has — a diffusers folder (its
    ``transformer/``) or ComfyUI's single file (``models/diffusion_models/wan2.1_i2v_480p_14B_{bf16,
    fp16,fp8_e4m3fn,fp8_scaled}.safetensors``, original key names; scaled fp8 dequantised). Backbone
    keys the checkpoint lacks are filled from it, as the release does (it builds the transformer from
    ``base_model`` and loads the checkpoint with ``strict=False``); keys the checkpoint has win. Any
    other mismatch raises :class:`CheckpointMismatchError` naming the key groups and the likely cause.

    What is known of the published files: ``worldstereo-memory-dmd/model.safetensors`` is one 34.9 GB
    bf16 file holding the complete transformer (1799 tensors, 17.43 B; a third-party read of its
    header), so it needs no base; the diffusers base ships its transformer in 14 shards with a
    ``diffusion_pytorch_model.safetensors.index.json`` (read as such). The camera / memory files and
    the three config.json files could not be inspected here; anything they lack beyond the backbone
    is reported as an error naming the groups.

    Tensors go straight from the files to ``device`` in ``dtype`` (``None`` keeps the file's; a few
    modulation/norm tensors stay float32 as in diffusers). ``model.load_report`` (:class:`LoadReport`)
    says which groups came from which file; the same line is logged.

    ``weight_format="fp8_e4m3fn_scaled"`` stores the block projections as scaled float8 e4m3
    (:mod:`.fp8`; scale per output ``channel`` or per ``tensor``): each weight is quantised on
    ``device`` as it streams in, so neither host nor device ever holds the bf16 model. Scaled-fp8
    files (ours, or ComfyUI's layout) are read through their scales in either format.
    ``blocks_on_host``: the last that many main blocks are put on the host instead (after quantisation
    on ``device``), ready for :func:`.offload.swap_last_blocks`.
    """
    if weight_format not in WEIGHT_FORMATS:
        raise InvalidOptionError(f"weight_format must be one of {WEIGHT_FORMATS}, got {weight_format!r}")
    path = Path(path)
    files = checkpoint_files(path, "WorldStereo checkpoint", preferred="model.safetensors")
    with ExitStack() as stack:
        source = SafetensorsSource(files, stack)
        cfg = _resolve_config(files, path, variant, overrides, source.keys)
        with torch.device("meta"):
            model = cfg.build()
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        plan = _file_plan(source.keys, expected)
        targets = {k: bind_recipe(r, source) for k, r in plan.targets.items()}
        missing = set(expected) - set(targets)
        from_base: tuple[str, ...] = ()
        if missing and base_model is not None and all(is_backbone_key(k) for k in missing):
            base_files = wan_base_files(base_model)
            base = SafetensorsSource(base_files, stack)
            base_plan = plan_wan_transformer(base.keys)
            fill = {k: bind_recipe(base_plan.targets[k], base) for k in missing if k in base_plan.targets}
            targets.update(fill)
            still = missing - set(fill)
            if still:
                raise CheckpointMismatchError(
                    f"{files[0]} lacks {len(missing)} backbone keys and the base model {base_model} "
                    f"({base_plan.layout} layout) does not have {len(still)} of them: "
                    f"{describe_keys(still, _group)}; use the Wan2.1-I2V-14B-480P weights (I2V 14B, not T2V "
                    "or 1.3B) as base model"
                )
            from_base = tuple(sorted({_group(k) for k in fill}))
        full = ConversionPlan(plan.layout, targets, plan.ignored)
        recipes = match_keys(
            full,
            expected,
            source.shape,
            f"{files[0]} (WorldStereo {cfg.variant!r})",
            lambda m, u: _guess_cause(m, u, cfg.variant),
            _group,
        )
        report = _report(recipes)
        logger.info("WorldStereo %s weights: %s", cfg.variant, report)
        num_layers = len(model.blocks)
        if not 0 <= blocks_on_host <= num_layers:
            raise InvalidOptionError(
                f"cannot keep {blocks_on_host} blocks on the host (blocks to swap): this model has {num_layers} "
                "main blocks"
            )
        fp8_layers = convert_to_fp8(model, fp8_granularity, dtype or torch.bfloat16) if weight_format != "bf16" else ()
        host_prefixes = tuple(f"blocks.{i}." for i in range(num_layers - blocks_on_host, num_layers))

        def place(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
            out = quantize_entry(key, tensor, fp8_layers, fp8_granularity)
            if host_prefixes and key.startswith(host_prefixes):
                out = {k: v.to("cpu") for k, v in out.items()}  # quantised on the device, kept on the host
            return out

        fp8_weights = {f"{name}.weight" for name in fp8_layers}

        def rule(key: str, file_dtype: torch.dtype) -> torch.dtype:
            # an fp8 layer's weight is quantised from float32: no extra rounding to dtype on the way
            return torch.float32 if key in fp8_weights else _target_dtype(key, file_dtype, dtype)

        transform = place if fp8_layers or host_prefixes else None
        model = stream_weights(model, recipes, source, device, rule, transform)
    model.requires_grad_(False)
    model.ws_config = cfg
    model.load_report = LoadReport(report, from_base)
    return model


def _report(recipes: Mapping[str, Any]) -> dict[str, str]:
    by_file: dict[str, list[str]] = {}
    for key, recipe in recipes.items():
        by_file.setdefault(str(getattr(recipe, "file", None)), []).append(key)
    return {f: describe_keys(keys, _group, limit=12) for f, keys in by_file.items()}


def wan_base_files(path: str | os.PathLike) -> list[Path]:
    """The transformer weight file(s) of a Wan2.1 base model: a diffusers root (its ``transformer/``), a
    ``transformer/`` folder (sharded: ``diffusion_pytorch_model.safetensors.index.json``), or one file."""
    path = Path(path)
    if path.is_dir() and (path / "transformer").is_dir():
        path = path / "transformer"
    return checkpoint_files(path, "Wan2.1 base model", preferred="diffusion_pytorch_model.safetensors")


def save_worldstereo(
    model: WorldStereoTransformer,
    folder: str | os.PathLike,
    dtype: torch.dtype | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``folder/config.json`` + ``folder/model.safetensors`` (the release's layout) and return the folder.

    Used for test weights, conversions and training; the config is also embedded in the file's metadata
    (:mod:`worldstereo_core.checkpoint`'s convention). ``state_dict``: the whole tensors to write instead
    of ``model.state_dict()`` (a model sharded over processes holds only its shards).
    """
    folder = Path(folder)
    cfg: WorldStereoConfig = getattr(model, "ws_config", None) or WorldStereoConfig(
        model.variant, dict(model.config), model.controlnet_config, memory=getattr(model, "memory_config", None)
    )
    state = model.state_dict() if state_dict is None else state_dict
    save_model_folder(state, folder, "worldstereo", cfg.to_json_dict(), dtype=dtype)
    return folder


def _uni3c_config(
    files: list[Path], shapes: Mapping[str, Any], path: Path
) -> tuple[ControlNetConfig, int, tuple[int, int, int]]:
    """The branch config of a Uni3C file: the embedded config if present, else inferred from shapes."""
    raw = embedded_config(files, "uni3c", legacy=(UNI3C_CONFIG_METADATA_KEY,))
    if raw is not None:
        try:
            raw = dict(raw)
            in_channels, patch = int(raw.pop("in_channels")), tuple(int(v) for v in raw.pop("patch_size"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CorruptFileError(f"{path}: the embedded Uni3C config metadata is corrupt") from None
        cfg = ControlNetConfig.from_dict(raw, where=f"{path.name} embedded config")
        return cfg, in_channels, patch
    # the released file records nothing: read the sizes off the tensors (head count: released width 64)
    return uni3c_config_from_shapes(shapes, where=str(path))


def load_uni3c(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
) -> Uni3CControlNet:
    """Load a Uni3C camera ControlNet (``.safetensors`` file, or a folder holding one) on ``device`` in ``dtype``.

    Accepts the released layout (top-level ``controlnet_patch_embedding.*`` … ``proj_out.N.*``, e.g.
    ``Wan21_Uni3C_controlnet_fp16.safetensors``) and the original ``controlnet.pth`` key nesting once
    converted to safetensors. Keys are checked strictly; tensors stream one at a time from the file
    to ``device`` (``dtype=None`` keeps the file's; the AdaLN LayerNorm affines stay float32). Put the
    result on a base transformer with :func:`worldstereo_core.models.uni3c.attach_uni3c`.
    """
    files = checkpoint_files(path, "Uni3C ControlNet")
    weights = files[0]
    with open_tensor_source(files) as (file_keys, source):
        if any(
            k.split("blocks.")[0] in ("", "model.diffusion_model.", "diffusion_model.", "model.")
            for k in file_keys
            if "blocks." in k
        ):
            kind = (
                "a WorldStereo checkpoint"
                if any("controlnet.controlnet_blocks." in k for k in file_keys)
                else "a Wan transformer"
            )
            raise CheckpointMismatchError(
                f"{weights} is {kind} (it has blocks.*), not a Uni3C ControlNet; load it with load_worldstereo "
                "(WorldStereo) or as the base transformer, and pass the Uni3C file (controlnet_patch_embedding.* … "
                "proj_out.N.*) to load_uni3c"
            )
        targets: dict[str, Any] = {}
        for k in file_keys:
            model_key = uni3c_model_key(k)
            if model_key in targets:
                raise CheckpointMismatchError(
                    f"{weights} holds both {targets[model_key].source} and {k} (the same Uni3C tensor); keep one layout"
                )
            targets[model_key] = take(k)
        if "controlnet_patch_embedding.weight" not in targets:
            raise CheckpointMismatchError(
                f"{weights} is not a Uni3C ControlNet: it has no controlnet_patch_embedding.weight "
                f"(found {describe_keys(file_keys, _group) or 'no tensors'}); use the Uni3C controlnet safetensors"
            )
        shapes = {k: source.shape(r.source) for k, r in targets.items()}
        cfg, in_channels, patch = _uni3c_config(files, shapes, weights)
        with torch.device("meta"):
            model = Uni3CControlNet(cfg, in_channels, patch)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        recipes = match_keys(
            ConversionPlan("uni3c", targets),
            expected,
            source.shape,
            f"{weights} (Uni3C ControlNet)",
            "the file is incomplete or not a Uni3C camera ControlNet — download the Uni3C controlnet again",
            _group,
        )

        def dtype_rule(key: str, file_dtype: torch.dtype) -> torch.dtype:
            keep = key.split(".")[-2:-1] == ["norm"] and dtype in (torch.float16, torch.bfloat16)
            return file_dtype if dtype is None else (torch.float32 if keep else dtype)

        return stream_weights(model, recipes, source, device, dtype_rule).requires_grad_(False)


def save_uni3c(model: Uni3CControlNet, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write a Uni3C branch as one safetensors file in the released (top-level) layout; returns the path.

    The config is embedded in the metadata so non-released sizes (small test weights) load back
    exactly; released-size files load without it.
    """
    cfg = {**model.cfg.to_dict(), "in_channels": model.in_channels, "patch_size": list(model.patch_size)}
    return save_checkpoint(model.state_dict(), path, "uni3c", cfg, dtype=dtype)


@torch.no_grad()
def init_random_weights(
    model: nn.Module, device: torch.device | str, dtype: torch.dtype = torch.bfloat16, std: float = 0.02, seed: int = 0
) -> nn.Module:
    """Give a (``meta``-built) model random weights directly on ``device`` in ``dtype`` (benchmarks, tests).

    Norm weights are 1 and biases 0, so activations stay in a sane range; the RoPE tables are rebuilt.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        t = torch.empty(p.shape, dtype=dtype, device=device)
        parts = name.split(".")
        if parts[-1] == "bias":
            t.zero_()
        elif len(parts) > 1 and "norm" in parts[-2]:
            t.fill_(1.0)
        else:
            t.normal_(0.0, std, generator=gen)
        state[name] = t
    model.load_state_dict(state, strict=True, assign=True)
    if hasattr(model, "rebuild_buffers"):
        model.rebuild_buffers(device)
    return model


__all__ = [
    "ALL_VARIANTS",
    "MODEL_TYPES",
    "PICKLE_SUFFIXES",
    "DMDSettings",
    "LoadReport",
    "WorldStereoConfig",
    "build_transformer",
    "config_from_dict",
    "init_random_weights",
    "is_backbone_key",
    "load_uni3c",
    "load_worldstereo",
    "read_safetensors_header",
    "resolve_checkpoint",
    "save_uni3c",
    "save_worldstereo",
    "wan_base_files",
]
