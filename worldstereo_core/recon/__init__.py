"""Reconstruction: monocular depth (MoGe-2), panorama depth, WorldMirror."""

from .moge import DepthPrediction, MoGeConfig, MoGeModel, load_moge, moge_config, predict_depth, recover_focal_shift
from .panorama_depth import PanoramaDepth, merge_panorama_distance, moge_view_predictor, predict_panorama_depth
