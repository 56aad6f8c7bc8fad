"""WorldStereo networks on diffusers' Wan, checkpoint loading and samplers.

Public API::

    build_transformer(variant, tiny=False)          # fresh network on the default device
    load_worldstereo(path, variant=None, device=..., dtype=...)   # released folder / file
    save_worldstereo(model, folder)                 # config.json + model.safetensors
    sample_unipc(...), sample_dmd(...)              # samplers (see sampling.py)
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

__all__ = [
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
