"""Building and loading WorldStereo transformers from safetensors, one tensor at a time.

A checkpoint is a folder with ``config.json`` + ``model.safetensors`` (the release's layout), or a
single ``.safetensors`` file (its config is then read from the file's metadata, a ``config.json``
beside it, or the released defaults). The model is built on ``meta`` and every tensor is streamed
from the file straight to its device and dtype, so host memory never holds a second copy of the
weights. Pickle checkpoints are refused: convert them to safetensors first.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .. import atomic
from ..errors import CheckpointError
from .transformer_worldstereo import (
    VARIANTS,
    ControlNetConfig,
    WorldStereoTransformer,
    transformer_configs,
)
from .transformer_worldstereo_paper import (
    FULL_MEMORY_CONFIG,
    PAPER_VARIANTS,
    TINY_MEMORY_CONFIG,
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

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
CONFIG_METADATA_KEY = "worldstereo_config"
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
        """The network this config describes, on the current default device (``meta`` for a lazy build)."""
        if self.variant in PAPER_VARIANTS:
            return WorldStereoPaperTransformer(self.variant, self.controlnet, self.memory, **self.transformer)
        return WorldStereoTransformer(self.variant, self.controlnet, **self.transformer)


def build_transformer(variant: str, tiny: bool = False) -> WorldStereoTransformer:
    """The network of ``variant`` (``camera``, ``memory`` or ``dmd``) with fresh weights.

    Built on the current default device and dtype, so ``with torch.device("meta"):`` builds the
    17 B-parameter model without allocating. ``tiny`` gives the small test config.
    """
    if variant in PAPER_VARIANTS:
        transformer, controlnet = transformer_configs("camera", tiny)
        cfg = WorldStereoConfig(variant, transformer, controlnet, memory=TINY_MEMORY_CONFIG if tiny else FULL_MEMORY_CONFIG)
    else:
        transformer, controlnet = transformer_configs(variant, tiny)
        cfg = WorldStereoConfig(variant, transformer, controlnet)
    model = cfg.build()
    model.ws_config = cfg
    return model.eval()


def config_from_dict(cfg: Mapping[str, Any], variant: str | None = None, where: str = "config.json") -> WorldStereoConfig:
    """Parse a release-style ``config.json`` mapping. ``variant`` overrides its ``model_type``."""
    if not isinstance(cfg, Mapping):
        raise CheckpointError(f"{where} must hold a JSON object")
    if variant is None:
        model_type = cfg.get("model_type", cfg.get("variant"))
        if model_type is None:
            raise CheckpointError(
                f"{where} has no 'model_type'; add one of {sorted(MODEL_TYPES)} or pass variant=... explicitly"
            )
        variant = MODEL_TYPES.get(model_type, model_type)
    if variant not in ALL_VARIANTS:
        raise CheckpointError(f"unknown variant/model_type {variant!r} in {where}; use one of {ALL_VARIANTS} / {sorted(MODEL_TYPES)}")
    if "controlnet_cfg" not in cfg:
        raise CheckpointError(
            f"{where} has no 'controlnet_cfg'; use the config.json that came with the WorldStereo weights"
        )
    controlnet = ControlNetConfig.from_dict(cfg["controlnet_cfg"], where=f"{where}: controlnet_cfg")
    transformer, _ = transformer_configs("camera" if variant in PAPER_VARIANTS else variant)
    extra = cfg.get("transformer", {})
    if not isinstance(extra, Mapping):
        raise CheckpointError(f"{where}: 'transformer' must be a JSON object of WanTransformer3DModel sizes")
    unknown = set(extra) - set(transformer) - {"pos_embed_seq_len"}
    if unknown:
        raise CheckpointError(f"{where}: unknown transformer field(s) {sorted(unknown)}")
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
        raise CheckpointError(f"{where}: DMD settings must be numbers ({exc})") from None
    negative_prompt = cfg.get("negative_prompt", "")
    latent_cond_mode = cfg.get("latent_cond_mode", "full_vae")
    if not isinstance(negative_prompt, str):
        raise CheckpointError(f"{where}: 'negative_prompt' must be a string")
    if latent_cond_mode not in ("full_vae", "first_frame_only"):
        raise CheckpointError(f"{where}: 'latent_cond_mode' must be 'full_vae' or 'first_frame_only', got {latent_cond_mode!r}")
    memory = None
    if variant in PAPER_VARIANTS:
        if "memory_cfg" not in cfg:
            raise CheckpointError(f"{where} describes the paper-SSM variant but has no 'memory_cfg' (the memory branch sizes)")
        memory = MemoryBranchConfig.from_dict(cfg["memory_cfg"], where=f"{where}: memory_cfg")
    return WorldStereoConfig(variant, transformer, controlnet, dmd, negative_prompt, latent_cond_mode, memory)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore the config.json of the checkpoint") from None


def read_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a safetensors file's framing and return its header (``{key: {dtype, shape, data_offsets}}``).

    Catches pickle files, truncated downloads and corrupt headers with actionable messages, before
    any tensor is read.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name} is a pickle checkpoint ({path.suffix}); pickles can run code and are not loaded. "
            "Convert it to safetensors (safetensors.torch.save_file(torch.load(f, weights_only=True), "
            "'model.safetensors')) in a trusted environment"
        )
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
            raise CheckpointError(
                f"{path} is a pickle/torch.save file despite its name; convert it to safetensors first"
            )
        if len(head) < 8:
            raise CheckpointError(f"{path} is {size} bytes — too short to be a safetensors file (truncated download?)")
        n = int.from_bytes(head, "little")
        if n <= 1 or n > min(size - 8, 512 * 1024 * 1024):
            raise CheckpointError(
                f"{path} does not start with a valid safetensors header (header length {n}, file {size} bytes); "
                "the file is corrupt or truncated — download it again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} has a corrupt safetensors header; download it again") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header; download it again")
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError):
        raise CheckpointError(f"{path} has a corrupt safetensors header; download it again") from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path} is truncated: its header describes {8 + n + end} bytes but the file has {size}; "
            "the download or copy did not finish — fetch it again"
        )
    return header


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(weights file, config.json or None)`` for a checkpoint folder or file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.exists():
            candidates = sorted(p.name for p in path.iterdir() if p.suffix == ".safetensors")
            pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
            if len(candidates) == 1:
                weights = path / candidates[0]
            elif pickles and not candidates:
                read_safetensors_header(path / pickles[0])  # raises the pickle advice
            else:
                raise CheckpointError(
                    f"{path} has no model.safetensors (found {candidates or 'no .safetensors files'}); "
                    "point to the checkpoint folder with config.json + model.safetensors"
                )
        config = path / "config.json"
        return weights, config if config.exists() else None
    config = path.parent / "config.json"
    return path, config if config.exists() else None


def _group(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "controlnet" and len(parts) > 2:
        return f"controlnet.{parts[1]}.*"
    return f"{parts[0]}.*"


def _describe(keys: Iterable[str]) -> str:
    counts = Counter(_group(k) for k in keys)
    return ", ".join(f"{g} ({n})" for g, n in sorted(counts.items()))


def _guess_cause(missing: set[str], unexpected: set[str], variant: str) -> str:
    groups_missing = {_group(k).split(".")[0] for k in missing}
    if missing and all(k.startswith("memory_branch.") for k in missing) and not unexpected:
        return (
            "the file has no memory_branch.*: it is a release checkpoint, not the paper-SSM variant — load it with "
            "its own variant, or build the paper variant from it with init_from_camera(...)"
        )
    if unexpected and all(k.startswith("memory_branch.") for k in unexpected) and not missing:
        return "the file has memory_branch.*: it is a paper-SSM checkpoint — load it with variant='paper' (or 'paper-dmd')"
    if any(k.startswith(("controlnet_patch_embedding.", "controlnet_mask_embedding.")) for k in unexpected):
        return (
            "this looks like a Uni3C ControlNet file (top-level controlnet_patch_embedding.*); WorldStereo "
            "checkpoints hold the whole transformer — load the worldstereo-camera/-memory folder instead, or "
            "load this file with load_uni3c(path) and put it on a base transformer with attach_uni3c(...)"
        )
    if missing and all(k.startswith("camera_embedding.") for k in missing) and not unexpected:
        return "the file has no camera_embedding.*: it is a worldstereo-camera checkpoint — load it with variant='camera'"
    if unexpected and all(k.startswith("camera_embedding.") for k in unexpected) and not missing:
        return (
            "the file has camera_embedding.*: it is a worldstereo-memory(-dmd) checkpoint — load it with "
            "variant='memory' (or 'dmd' for the distilled weights)"
        )
    if missing and groups_missing <= {"blocks", "controlnet"} and not unexpected and (
        any(k.startswith("blocks.") for k in missing) and any(k.startswith("controlnet.") for k in missing)
    ):
        return (
            "the file has fewer blocks than the config describes — its config.json does not belong to these "
            "weights (e.g. a tiny test file read with the full-size config)"
        )
    if missing and groups_missing == {"controlnet"}:
        return "the file has no controlnet.*: it is a plain Wan2.1 transformer, not a WorldStereo checkpoint"
    if "blocks" in groups_missing and not any(k.startswith("blocks.") for k in unexpected) and not any(
        k.startswith("controlnet.") for k in missing
    ):
        return "the file has only the control branches, not the base transformer — use the full WorldStereo checkpoint"
    return "the file is not a WorldStereo 2.0 checkpoint of this variant"


def _check_keys(
    header: Mapping[str, Any], expected: Mapping[str, torch.Size], variant: str, path: Path
) -> dict[str, str]:
    """Map model keys to file keys (stripping a known prefix if needed); raise a grouped error on mismatch."""
    file_keys = {k for k in header if k != "__metadata__"}
    mapping = {k: k for k in file_keys}
    if set(expected) - file_keys:
        for prefix in _KNOWN_PREFIXES:
            stripped = {k[len(prefix):]: k for k in file_keys if k.startswith(prefix)}
            if len(stripped) == len(file_keys) and set(stripped) == set(expected):
                mapping = stripped
                break
    missing = set(expected) - set(mapping)
    unexpected = set(mapping) - set(expected)
    if missing or unexpected:
        parts = [f"{path} does not match the WorldStereo {variant!r} transformer:"]
        if missing:
            parts.append(f"missing {len(missing)} keys under {_describe(missing)};")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys under {_describe(unexpected)};")
        parts.append(_guess_cause(missing, unexpected, variant))
        raise CheckpointError(" ".join(parts))
    bad = [
        (k, header[mapping[k]]["shape"], list(shape))
        for k, shape in expected.items()
        if list(header[mapping[k]]["shape"]) != list(shape)
    ]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(
            f"{path}: {len(bad)} tensors have the wrong shape, e.g. {k} is {got} in the file but the model "
            f"expects {want}; the config (sizes) does not match these weights — use the checkpoint's own "
            "config.json (a tiny test file needs the tiny config)"
        )
    return mapping


def _target_dtype(key: str, file_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None or not file_dtype.is_floating_point:
        return file_dtype
    parts = key.split(".")
    if parts[0] in ("controlnet", "memory_branch"):
        keep = len(parts) > 2 and parts[-2] == "norm"  # LayerNorm affine of the AdaLN blocks
    else:
        keep = any(p in _FP32_MODULES for p in parts)
    return torch.float32 if keep and dtype in (torch.float16, torch.bfloat16) else dtype


_ST_DTYPES: Mapping[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def _read_tensor(f, info: Mapping[str, Any], data_start: int, path: Path, key: str) -> torch.Tensor:
    """Read one tensor of a safetensors file into a fresh host buffer (``[*shape]``)."""
    try:
        dtype = _ST_DTYPES[info["dtype"]]
        begin, end = (int(v) for v in info["data_offsets"])
        shape = [int(v) for v in info["shape"]]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: tensor {key} has an unsupported or corrupt entry {info}") from None
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for d in shape:
        numel *= d
    if end - begin != numel * itemsize:
        raise CheckpointError(f"{path}: tensor {key} has {end - begin} bytes for shape {shape}; the file is corrupt")
    buf = bytearray(end - begin)
    f.seek(data_start + begin)
    if f.readinto(buf) != len(buf):
        raise CheckpointError(f"{path} ended inside tensor {key}: the file is truncated — download it again")
    if not buf:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def load_worldstereo(
    path: str | os.PathLike,
    variant: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.bfloat16,
) -> WorldStereoTransformer:
    """Load a WorldStereo checkpoint (folder with ``config.json`` + ``model.safetensors``, or one file).

    ``variant`` overrides the config's ``model_type`` (``camera``/``memory``/``dmd``). Tensors go
    straight from the file to ``device`` in ``dtype`` (``None`` keeps the file's dtype; a few
    modulation/norm tensors stay float32 as in diffusers). Keys are checked strictly: a mismatch
    raises :class:`CheckpointError` naming the key groups and the likely cause.
    """
    weights, config_path = resolve_checkpoint(path)
    header = read_safetensors_header(weights)
    metadata = header.get("__metadata__") or {}
    if CONFIG_METADATA_KEY in metadata:
        try:
            raw_cfg = json.loads(metadata[CONFIG_METADATA_KEY])
        except json.JSONDecodeError:
            raise CheckpointError(f"{weights}: the embedded {CONFIG_METADATA_KEY} metadata is not valid JSON") from None
        cfg = config_from_dict(raw_cfg, variant, where=f"{weights.name} metadata")
    elif config_path is not None:
        cfg = config_from_dict(_read_json(config_path), variant, where=str(config_path))
    else:
        if variant is None:
            # a bare file: the camera_embedding MLP / the memory branch tell the architectures apart
            if any(k.startswith("memory_branch.") for k in header):
                variant = "paper"
            else:
                variant = "memory" if any(k.startswith("camera_embedding.") for k in header) else "camera"
        if variant in PAPER_VARIANTS:
            transformer, controlnet = transformer_configs("camera")
            cfg = WorldStereoConfig(variant, transformer, controlnet, memory=FULL_MEMORY_CONFIG)
        else:
            transformer, controlnet = transformer_configs(variant)
            cfg = WorldStereoConfig(variant, transformer, controlnet)

    device = torch.device(device)
    with torch.device("meta"):
        model = cfg.build()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    mapping = _check_keys(header, expected, cfg.variant, weights)

    state: dict[str, torch.Tensor] = {}
    data_start = 8 + int.from_bytes(weights.open("rb").read(8), "little")
    # Plain reads, not mmap: touched mmap pages would count as host memory until the file is closed.
    with open(weights, "rb") as f:
        for key, file_key in sorted(mapping.items(), key=lambda kv: header[kv[1]]["data_offsets"][0]):
            tensor = _read_tensor(f, header[file_key], data_start, weights, file_key)
            # one tensor at a time: at most one transient host copy alive
            state[key] = tensor.to(device=device, dtype=_target_dtype(key, tensor.dtype, dtype))
            del tensor
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.rebuild_buffers(device)
    model.requires_grad_(False)
    model.ws_config = cfg
    return model.eval()


def save_worldstereo(model: WorldStereoTransformer, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write ``folder/config.json`` + ``folder/model.safetensors`` (the release's layout) and return the folder.

    Used for tiny test weights and conversions; the config is also embedded in the file's metadata.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg: WorldStereoConfig = getattr(model, "ws_config", None) or WorldStereoConfig(
        model.variant, dict(model.config), model.controlnet_config, memory=getattr(model, "memory_config", None)
    )
    cfg_json = cfg.to_json_dict()
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {CONFIG_METADATA_KEY: json.dumps(cfg_json)}
    atomic.write_file(folder / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata=meta))
    atomic.write_text(folder / "config.json", json.dumps(cfg_json, indent=2))
    return folder


def _uni3c_config(header: Mapping[str, Any], mapping: Mapping[str, str], path: Path) -> tuple[ControlNetConfig, int, tuple[int, int, int]]:
    """The branch config of a Uni3C file: our embedded metadata if present, else inferred from shapes."""
    metadata = header.get("__metadata__") or {}
    shapes = {k: header[f]["shape"] for k, f in mapping.items()}
    if UNI3C_CONFIG_METADATA_KEY in metadata:
        try:
            raw = json.loads(metadata[UNI3C_CONFIG_METADATA_KEY])
            in_channels, patch = int(raw.pop("in_channels")), tuple(int(v) for v in raw.pop("patch_size"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{path}: the embedded {UNI3C_CONFIG_METADATA_KEY} metadata is corrupt") from None
        cfg = ControlNetConfig.from_dict(raw, where=f"{path.name} {UNI3C_CONFIG_METADATA_KEY}")
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
    weights, _ = resolve_checkpoint(path)
    header = read_safetensors_header(weights)
    file_keys = [k for k in header if k != "__metadata__"]
    if any(k.split("blocks.")[0] in ("", "model.diffusion_model.", "diffusion_model.", "model.") for k in file_keys if "blocks." in k):
        kind = "a WorldStereo checkpoint" if any("controlnet.controlnet_blocks." in k for k in file_keys) else "a Wan transformer"
        raise CheckpointError(
            f"{weights} is {kind} (it has blocks.*), not a Uni3C ControlNet; load it with load_worldstereo "
            "(WorldStereo) or as the base transformer, and pass the Uni3C file (controlnet_patch_embedding.* … "
            "proj_out.N.*) to load_uni3c"
        )
    mapping: dict[str, str] = {}
    for k in file_keys:
        model_key = uni3c_model_key(k)
        if model_key in mapping:
            raise CheckpointError(f"{weights} holds both {mapping[model_key]} and {k} (the same Uni3C tensor); keep one layout")
        mapping[model_key] = k
    if "controlnet_patch_embedding.weight" not in mapping:
        raise CheckpointError(
            f"{weights} is not a Uni3C ControlNet: it has no controlnet_patch_embedding.weight "
            f"(found {_describe(file_keys) or 'no tensors'}); use the Uni3C controlnet safetensors"
        )
    cfg, in_channels, patch = _uni3c_config(header, mapping, weights)

    device = torch.device(device)
    with torch.device("meta"):
        model = Uni3CControlNet(cfg, in_channels, patch)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected = set(expected) - set(mapping), set(mapping) - set(expected)
    if missing or unexpected:
        parts = [f"{weights} does not match the Uni3C ControlNet layout:"]
        if missing:
            parts.append(f"missing {len(missing)} keys under {_describe(missing)};")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys under {_describe(unexpected)};")
        parts.append("the file is incomplete or not a Uni3C camera ControlNet — download the Uni3C controlnet again")
        raise CheckpointError(" ".join(parts))
    bad = [(k, header[mapping[k]]["shape"], list(s)) for k, s in expected.items() if list(header[mapping[k]]["shape"]) != list(s)]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(
            f"{weights}: {len(bad)} tensors have the wrong shape, e.g. {k} is {got} in the file but {want} is "
            "expected from the file's other tensors / embedded config; the file is corrupt or mixed from two models"
        )

    state: dict[str, torch.Tensor] = {}
    data_start = 8 + int.from_bytes(weights.open("rb").read(8), "little")
    with open(weights, "rb") as f:
        for key, file_key in sorted(mapping.items(), key=lambda kv: header[kv[1]]["data_offsets"][0]):
            tensor = _read_tensor(f, header[file_key], data_start, weights, file_key)
            keep = key.split(".")[-2:-1] == ["norm"] and dtype in (torch.float16, torch.bfloat16)
            target = tensor.dtype if dtype is None or not tensor.dtype.is_floating_point else (torch.float32 if keep else dtype)
            state[key] = tensor.to(device=device, dtype=target)
            del tensor
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.rebuild_buffers(device)
    model.requires_grad_(False)
    return model.eval()


def save_uni3c(model: Uni3CControlNet, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write a Uni3C branch as one safetensors file in the released (top-level) layout; returns the path.

    The config is embedded in the metadata (``uni3c_config``) so non-released sizes (tiny test
    weights) load back exactly; released-size files load without it.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {**model.cfg.to_dict(), "in_channels": model.in_channels, "patch_size": list(model.patch_size)}
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {UNI3C_CONFIG_METADATA_KEY: json.dumps(cfg)}
    return atomic.write_file(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


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
