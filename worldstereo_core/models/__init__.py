"""WorldStereo networks on diffusers' Wan, checkpoint loading and samplers.

Public API::

    build_transformer(variant)                      # fresh network, released sizes, default device
    load_worldstereo(path, variant=None, device=..., dtype=...)   # released folder / file
    save_worldstereo(model, folder)                 # config.json + model.safetensors
    sample_unipc(...), sample_dmd(...)              # samplers (see sampling.py)
    load_models(...), generate_keyframes(...)       # the one call (generate.py; imported lazily)
    load_wan_vae / load_text_encoder / load_image_encoder   # Wan VAE (keyframe mode), UMT5, CLIP ViT-H
    load_uni3c(path), attach_uni3c(transformer, uni3c)      # Uni3C camera-control branch
    with_uni3c(models, path)                                 # a bundle whose generate runs in video mode
"""

from .loading import (
    DMDSettings,
    WorldStereoConfig,
    build_transformer,
    init_random_weights,
    load_worldstereo,
    read_safetensors_header,
    save_worldstereo,
)
from .sampling import (
    SamplingInterrupted,
    WorldStereoDenoiser,
    dmd_timesteps,
    initial_noise,
    sample_dmd,
    sample_unipc,
)
from .transformer_worldstereo import (
    MAX_REFERENCES,
    VARIANTS,
    ControlNetConfig,
    WorldStereoInputs,
    WorldStereoTransformer,
    count_parameters,
)

# generate.py pulls in transformers (UMT5, CLIP); import them only when asked for.
_LAZY = {
    "ModelOutOfMemoryError": "generate",
    "PrecomputedConditioning": "generate",
    "SamplingSettings": "generate",
    "WorldStereoFrameGenerator": "generate",
    "WorldStereoModels": "generate",
    "generate_keyframes": "generate",
    "load_models": "generate",
    "with_uni3c": "generate",
    "SAMPLERS": "generate",
    "OFFLOAD_MODES": "offload",
    # keyframe VAE and encoders (vae.py, encoders.py)
    "WanKeyframeVAE": "vae",
    "load_wan_vae": "vae",
    "i2v_condition": "vae",
    "i2v_mask": "vae",
    "images_to_video": "vae",
    "video_to_images": "vae",
    "check_spatial_size": "vae",
    "UMT5TextEncoder": "encoders",
    "CLIPImageEncoder": "encoders",
    "load_text_encoder": "encoders",
    "load_image_encoder": "encoders",
    "load_tokenizer": "encoders",
    # the open-source Uni3C camera-control branch (uni3c.py)
    "Uni3CControlNet": "uni3c",
    "attach_uni3c": "uni3c",
    "load_uni3c": "loading",
    "save_uni3c": "loading",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "MAX_REFERENCES",
    "VARIANTS",
    "ControlNetConfig",
    "DMDSettings",
    "SamplingInterrupted",
    "WorldStereoDenoiser",
    "dmd_timesteps",
    "initial_noise",
    "sample_dmd",
    "sample_unipc",
    "WorldStereoConfig",
    "WorldStereoInputs",
    "WorldStereoTransformer",
    "build_transformer",
    "count_parameters",
    "init_random_weights",
    "load_worldstereo",
    "read_safetensors_header",
    "save_worldstereo",
]
