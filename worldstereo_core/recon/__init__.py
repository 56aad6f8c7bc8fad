"""Reconstruction: monocular depth (MoGe-2), panorama depth, WorldMirror."""

from .moge import DepthPrediction, MoGeConfig, MoGeModel, load_moge, moge_config, predict_depth, recover_focal_shift
from .panorama_depth import PanoramaDepth, merge_panorama_distance, moge_view_predictor, predict_panorama_depth

__all__ = [
    "DepthPrediction",
    "MoGeConfig",
    "MoGeModel",
    "PanoramaDepth",
    "load_moge",
    "merge_panorama_distance",
    "moge_config",
    "moge_view_predictor",
    "predict_depth",
    "predict_panorama_depth",
    "recover_focal_shift",
]
