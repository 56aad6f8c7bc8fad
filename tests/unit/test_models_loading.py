"""Checkpoint loading: release layout, strict keys with a diagnosis, unsafe/corrupt files, configs."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from worldstereo_core.errors import CheckpointMismatchError, CorruptFileError, MissingFileError, UnsafeFileError
from worldstereo_core.models import (
    init_random_weights,
    load_worldstereo,
    read_safetensors_header,
    save_worldstereo,
)
from worldstereo_core.models.loading import config_from_dict
from worldstereo_core.tiny_configs import build_tiny_transformer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny camera and memory checkpoints in the release layout (config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    out = {}
    for variant in ("camera", "memory", "dmd"):
        out[variant] = save_worldstereo(build_tiny_transformer(variant), root / variant)
    return out


def _write(path, state, metadata=None):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def test_release_layout_and_config(saved):
    cfg = json.loads((saved["dmd"] / "config.json").read_text())
    assert cfg["model_type"] == "worldstereo-memory-dmd"
    assert cfg["controlnet_cfg"]["dim"] == 16
    model = load_worldstereo(saved["dmd"], dtype=torch.float32)
    assert model.variant == "dmd" and model.ws_config.dmd.steps == 4
    assert not any(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())  # RoPE tables rebuilt after the meta build
    want = load_file(str(saved["dmd"] / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_single_file_with_and_without_embedded_config(saved, tmp_path):
    # embedded metadata: the file alone is enough
    single = tmp_path / "memory.safetensors"
    single.write_bytes((saved["memory"] / "model.safetensors").read_bytes())
    assert load_worldstereo(single, dtype=None).variant == "memory"
    # no metadata and no config.json: released full-size defaults, variant from the keys
    bare = _write(tmp_path / "bare.safetensors", load_file(str(single)))
    with pytest.raises(CheckpointMismatchError, match="fewer blocks"):
        load_worldstereo(bare)


def test_known_prefix_is_stripped(saved, tmp_path):
    state = load_file(str(saved["camera"] / "model.safetensors"))
    folder = tmp_path / "prefixed"
    folder.mkdir()
    _write(folder / "model.safetensors", {f"model.diffusion_model.{k}": v for k, v in state.items()})
    (folder / "config.json").write_text((saved["camera"] / "config.json").read_text())
    model = load_worldstereo(folder, dtype=None)
    assert torch.equal(model.proj_out.weight, state["proj_out.weight"])


def test_camera_file_loaded_as_memory_names_the_cause(saved):
    with pytest.raises(CheckpointMismatchError, match=r"camera_embedding\.\* \(6\).*variant='camera'"):
        load_worldstereo(saved["camera"], variant="memory")


def test_memory_file_loaded_as_camera_names_the_cause(saved):
    with pytest.raises(CheckpointMismatchError, match=r"unexpected 6 keys.*variant='memory'"):
        load_worldstereo(saved["memory"], variant="camera")


def test_missing_controlnet_keys_named_by_group(saved, tmp_path):
    folder = tmp_path / "plain_wan"
    folder.mkdir()
    state = load_file(str(saved["camera"] / "model.safetensors"))
    _write(folder / "model.safetensors", {k: v for k, v in state.items() if not k.startswith("controlnet.")})
    (folder / "config.json").write_text((saved["camera"] / "config.json").read_text())
    with pytest.raises(CheckpointMismatchError, match=r"controlnet\.controlnet_blocks\.\*.*plain Wan2\.1"):
        load_worldstereo(folder)


def test_uni3c_layout_is_recognised(saved, tmp_path):
    state = load_file(str(saved["camera"] / "model.safetensors"))
    uni3c = {}
    for k, v in state.items():
        if k.startswith(("controlnet.controlnet_patch_embedding.", "controlnet.controlnet_mask_embedding.")):
            uni3c[k[len("controlnet.") :]] = v  # Uni3C keeps these two at the top level
        elif k.startswith("controlnet."):
            uni3c[k] = v
    path = _write(tmp_path / "uni3c.safetensors", uni3c)
    with pytest.raises(CheckpointMismatchError, match="Uni3C"):
        load_worldstereo(path, variant="camera")


def test_shape_mismatch_is_reported(saved, tmp_path):
    folder = tmp_path / "shape"
    folder.mkdir()
    state = load_file(str(saved["camera"] / "model.safetensors"))
    state["proj_out.weight"] = torch.zeros(8, 32)
    _write(folder / "model.safetensors", state)
    (folder / "config.json").write_text((saved["camera"] / "config.json").read_text())
    with pytest.raises(CheckpointMismatchError, match=r"proj_out\.weight is \[8, 32\]"):
        load_worldstereo(folder)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".ckpt", ".pth"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeFileError, match="convert it to safetensors|Convert it to safetensors"):
        load_worldstereo(path)


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(UnsafeFileError, match="pickle"):
        read_safetensors_header(path)
    zipped = tmp_path / "zip.safetensors"
    zipped.write_bytes(b"PK\x03\x04" + b"\x00" * 64)  # torch.save's zip container
    with pytest.raises(UnsafeFileError, match="pickle"):
        read_safetensors_header(zipped)


def test_folder_with_only_a_pickle_gets_the_pickle_advice(tmp_path):
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({}))
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_worldstereo(tmp_path)


def test_truncated_file_is_reported(saved, tmp_path):
    data = (saved["camera"] / "model.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_worldstereo(path)
    path.write_bytes(data[:5])
    with pytest.raises(CorruptFileError, match="too short"):
        load_worldstereo(path)


def test_corrupt_header_is_reported(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\x00" * 16)
    with pytest.raises(CorruptFileError, match="corrupt"):
        load_worldstereo(path)
    path.write_bytes((10**12).to_bytes(8, "little") + b"\x00" * 16)
    with pytest.raises(CorruptFileError, match="header"):
        load_worldstereo(path)


def test_missing_config_fields(saved, tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    state = load_file(str(saved["camera"] / "model.safetensors"))
    _write(folder / "model.safetensors", state)  # no embedded config: config.json decides
    cfg = json.loads((saved["camera"] / "config.json").read_text())

    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "controlnet_cfg"}))
    with pytest.raises(CheckpointMismatchError, match="controlnet_cfg"):
        load_worldstereo(folder)

    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "model_type"}))
    with pytest.raises(CheckpointMismatchError, match="model_type"):
        load_worldstereo(folder)
    assert load_worldstereo(folder, variant="camera", dtype=None).variant == "camera"  # explicit variant suffices

    broken = dict(cfg, controlnet_cfg={k: v for k, v in cfg["controlnet_cfg"].items() if k != "num_layers"})
    (folder / "config.json").write_text(json.dumps(broken))
    with pytest.raises(CheckpointMismatchError, match="num_layers"):
        load_worldstereo(folder)

    (folder / "config.json").write_text("{oops")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_worldstereo(folder)


def test_release_config_json_defaults():
    """The release's config.json has model_type + controlnet_cfg but no transformer sizes: full Wan sizes."""
    cfg = config_from_dict(
        {
            "model_type": "worldstereo-memory",
            "base_model": "Wan2.1-I2V-14B-480P-Diffusers",
            "controlnet_cfg": {
                "dim": 1024,
                "ffn_dim": 4096,
                "num_heads": 16,
                "num_layers": 20,
                "conv_out_dim": 5120,
                "time_embed_dim": 5120,
                "add_channels": 7,
                "mid_channels": 256,
                "mask_downsample": 1,
                "main_camera_embedding": True,
            },
        }
    )
    assert cfg.variant == "memory" and cfg.transformer["num_layers"] == 40 and cfg.controlnet.add_channels == 7
    with pytest.raises(CheckpointMismatchError, match="unknown variant"):
        config_from_dict({"model_type": "worldstereo-foo", "controlnet_cfg": {}})


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        load_worldstereo(tmp_path / "nope")
    with pytest.raises(MissingFileError, match="no model.safetensors"):
        load_worldstereo(tmp_path)


def test_init_random_weights_materialises_a_meta_model():
    with torch.device("meta"):
        model = build_tiny_transformer("memory")
    init_random_weights(model, "cpu", torch.float32, seed=3)
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert torch.all(model.blocks[0].attn1.norm_q.weight == 1) and torch.all(model.proj_out.bias == 0)
    assert model.blocks[0].attn1.to_q.weight.detach().std().item() == pytest.approx(0.02, rel=0.2)


def test_bf16_file_roundtrip_and_dtype_policy(tmp_path):
    torch.manual_seed(0)
    model = build_tiny_transformer("memory")
    folder = save_worldstereo(model, tmp_path / "bf16", dtype=torch.bfloat16)
    raw = load_file(str(folder / "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in raw.values())
    kept = load_worldstereo(folder, dtype=None)  # the file's dtype
    for k, v in kept.state_dict().items():
        assert torch.equal(v, raw[k]), k
    up = load_worldstereo(folder, dtype=torch.float32)
    assert all(v.dtype == torch.float32 for v in up.state_dict().values())
    torch.testing.assert_close(up.proj_out.weight, raw["proj_out.weight"].float(), rtol=0, atol=0)
