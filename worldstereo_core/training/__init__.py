"""Training the WorldStereo branches as the paper does: GGM (camera), the paper's SSM (memory), DMD.

Entry point: :func:`train` (``python -m worldstereo_core train``); data: :mod:`.data`; recipes:
:mod:`.recipes` (masking, reference dropout, flow matching) and :mod:`.dmd` (distillation); several
processes (``torchrun``): :mod:`.parallel`.
"""

from .data import (
    Clip,
    SyntheticClips,
    TrainingSample,
    VideoFolderClips,
    build_samples,
    load_clip_folder,
    make_sample,
)
from .run import train
from .trainer import SIZES, STAGES, TrainSettings

__all__ = [
    "SIZES",
    "STAGES",
    "Clip",
    "SyntheticClips",
    "TrainSettings",
    "TrainingSample",
    "VideoFolderClips",
    "build_samples",
    "load_clip_folder",
    "make_sample",
    "train",
]
