"""Depth maps from other packs (IMAGE / MASK values) → z-depth, both conventions."""

from __future__ import annotations

import pytest
import torch

from worldstereo_core.errors import InvalidDepthError
from worldstereo_core.pointcloud import depth_from_map


def test_depth_and_disparity_conventions():
    v = torch.tensor([[[0.0, 0.25, 0.5, 1.0]]])
    torch.testing.assert_close(depth_from_map(v, "depth", 4.0), torch.tensor([[[0.0, 1.0, 2.0, 4.0]]]))
    # disparity: larger = nearer, z = scale / v; 0 stays unknown (not infinite)
    torch.testing.assert_close(depth_from_map(v, "disparity", 2.0), torch.tensor([[[0.0, 8.0, 4.0, 2.0]]]))


def test_bad_maps_and_settings_are_refused():
    with pytest.raises(InvalidDepthError, match="no positive value"):
        depth_from_map(torch.zeros(1, 2, 2), "depth")
    with pytest.raises(InvalidDepthError, match="convention"):
        depth_from_map(torch.ones(1, 2, 2), "inverse")
    with pytest.raises(InvalidDepthError, match="scale"):
        depth_from_map(torch.ones(1, 2, 2), "depth", 0.0)
    out = depth_from_map(torch.tensor([[[float("nan"), 1.0]]]), "depth")
    assert out.tolist() == [[[0.0, 1.0]]]
