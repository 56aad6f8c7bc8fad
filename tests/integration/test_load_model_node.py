"""Load WorldStereo Model on the real server: the optional base_model input (Wan2.1 I2V backbone source)."""

from __future__ import annotations


def test_base_model_is_optional_with_a_safe_default(our_nodes):
    spec = our_nodes["WorldStereoLoadModel"]["input"]
    assert "base_model" not in spec["required"]  # saved workflows without it still load
    kind, extra = spec["optional"]["base_model"][0], spec["optional"]["base_model"][1]
    options = extra["options"] if kind == "COMBO" else kind  # V3 combos list their options in the dict
    assert "from wan_folder" in options and any(o.startswith("none") for o in options)
    # the server's models/diffusion_models holds no Wan2.1 I2V file: no arbitrary file is the default
    assert extra["default"] == "from wan_folder"
    assert "diffusion_models" in extra["tooltip"] and "dequantised" in extra["tooltip"]
