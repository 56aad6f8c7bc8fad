"""WorldStereo networks on diffusers' Wan, checkpoint loading and samplers.

Public API::

    build_transformer(variant, tiny=False)          # fresh network on the default device
    load_worldstereo(path, variant=None, device=..., dtype=...)   # released folder / file
    save_worldstereo(model, folder)                 # config.json + model.safetensors
    sample_unipc(...), sample_dmd(...)              # samplers (see sampling.py)
    load_models(...), generate_keyframes(...)       # the one call (generate.py; imported lazily)
    write_tiny_models(models_dir)                   # tiny random weights in the real layouts (tiny.py)
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

# generate.py / tiny.py pull in transformers (UMT5, CLIP); import them only when asked for.
_LAZY = {
    "ModelOutOfMemoryError": "generate",
    "WorldStereoFrameGenerator": "generate",
    "WorldStereoModels": "generate",
    "generate_keyframes": "generate",
    "load_models": "generate",
    "SAMPLERS": "generate",
    "OFFLOAD_MODES": "offload",
    "write_tiny_models": "tiny",
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
