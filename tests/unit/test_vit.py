"""The one DINOv2 ViT (recon/vit.py) behind MoGe-2 and WorldMirror: key layouts and position-table resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worldstereo_core.recon.moge import MoGeModel
from worldstereo_core.recon.vit import DinoViT
from worldstereo_core.recon.worldmirror import WorldMirror
from worldstereo_core.tiny_configs import TINY_MOGE_CONFIG, tiny_worldmirror_config


def test_both_networks_use_the_shared_backbone():
    moge = MoGeModel(TINY_MOGE_CONFIG)
    wm = WorldMirror(tiny_worldmirror_config())
    assert type(moge.encoder.backbone) is DinoViT and moge.encoder.backbone.pos_resize == "dinov2"
    assert type(wm.visual_geometry_transformer.patch_embed) is DinoViT
    assert wm.visual_geometry_transformer.patch_embed.pos_resize == "antialiased"


def test_key_layout_is_dinov2s():
    keys = set(DinoViT(28, 14, 8, 2, 2, registers=4).state_dict())
    assert {
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "register_tokens",
        "mask_token",
        "norm.weight",
        "blocks.1.attn.qkv.weight",
        "blocks.1.attn.proj.bias",
        "blocks.1.ls1.gamma",
        "blocks.1.mlp.fc2.weight",
        "blocks.1.norm2.bias",
        "blocks.1.ls2.gamma",
    } <= keys
    assert "register_tokens" not in DinoViT(28, 14, 8, 2, 2).state_dict()
    assert not any("rope" in k or "q_norm" in k for k in keys)


def test_position_table_resizing_rules():
    torch.manual_seed(0)
    vit = DinoViT(56, 14, 8, 1, 2)  # a 4×4 table
    with torch.no_grad():
        vit.pos_embed.normal_()
    table = vit.pos_embed[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    dinov2 = F.interpolate(table, scale_factor=(3.1 / 4, 5.1 / 4), mode="bicubic", antialias=False)
    exact = F.interpolate(table, size=(3, 5), mode="bicubic", antialias=True)
    for mode, want in (("dinov2", dinov2), ("antialiased", exact)):
        vit.pos_resize = mode
        got = vit._pos_embed(3, 5)
        torch.testing.assert_close(got[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 15, 8))
        torch.testing.assert_close(got[:, :1], vit.pos_embed[:, :1])
    assert not torch.allclose(dinov2, exact)
