"""Keyframe-mode Wan VAE, I2V condition, ComfyUI edge and VAE file loading (tiny random VAE, CPU)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import save_file

from worldstereo_core.errors import (
    CheckpointMismatchError,
    CorruptFileError,
    InvalidImageError,
    InvalidOptionError,
    MissingFileError,
    ShapeMismatchError,
    UnsafeFileError,
)
from worldstereo_core.models.conversion import plan_wan_vae, wan_vae_key_to_diffusers
from worldstereo_core.models.vae import (
    WanKeyframeVAE,
    check_spatial_size,
    i2v_condition,
    i2v_mask,
    images_to_video,
    load_wan_vae,
    video_to_images,
)
from worldstereo_core.tiny_configs import tiny_vae_config


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny convolutions: thread start-up dominates, and the test machine's cores are shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    model = AutoencoderKLWan(**tiny_vae_config()).eval()
    # random (non-trivial) RMS-norm gains so every weight matters in the comparisons
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def kvae(vae) -> WanKeyframeVAE:
    return WanKeyframeVAE(vae, keyframes_per_batch=3)


def _video(b=1, f=4, h=16, w=32, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1


def _normalize_by_config(vae, z):
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (z - mean) / std


# ------------------------------------------------------------------------------------ keyframes


def test_keyframe_round_trip_shapes_and_range(kvae):
    x = _video(b=2, f=5)
    z = kvae.encode_keyframes(x)
    assert z.shape == (2, 16, 5, 2, 4)  # one latent frame per keyframe, /8 spatially
    y = kvae.decode_keyframes(z)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_keyframes_equal_one_frame_videos_encoded_alone(vae, kvae):
    x = _video(f=4)
    z = kvae.encode_keyframes(x)
    with torch.no_grad():
        ref = torch.cat([vae.encode(x[:, :, i : i + 1]).latent_dist.mode() for i in range(4)], dim=2)
    torch.testing.assert_close(z, _normalize_by_config(vae, ref), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        raw = z * torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1) + torch.tensor(
            vae.config.latents_mean
        ).view(1, -1, 1, 1, 1)
        dec = torch.cat([vae.decode(raw[:, :, i : i + 1]).sample for i in range(4)], dim=2).clamp(-1, 1)
    torch.testing.assert_close(kvae.decode_keyframes(z), dec, rtol=1e-5, atol=1e-5)


def test_each_keyframe_independent(kvae):
    x = _video(f=5)
    z = kvae.encode_keyframes(x)
    x2 = x.clone()
    x2[:, :, 3] = -x2[:, :, 3]
    z2 = kvae.encode_keyframes(x2)
    changed = [(z2[:, :, i] - z[:, :, i]).abs().max().item() > 1e-6 for i in range(5)]
    assert changed == [False, False, False, True, False]
    y = kvae.decode_keyframes(z)
    z3 = z.clone()
    z3[:, :, 3] += 1.0
    y3 = kvae.decode_keyframes(z3)
    changed = [(y3[:, :, i] - y[:, :, i]).abs().max().item() > 1e-6 for i in range(5)]
    assert changed == [False, False, False, True, False]


def test_batching_does_not_change_results(vae):
    x = _video(f=5)
    a = WanKeyframeVAE(vae, keyframes_per_batch=1).encode_keyframes(x)
    b = WanKeyframeVAE(vae, keyframes_per_batch=16).encode_keyframes(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_normalize_denormalize(kvae, vae):
    z = torch.randn(1, 16, 2, 3, 3)
    n = kvae.normalize(z)
    torch.testing.assert_close(n, _normalize_by_config(vae, z))
    torch.testing.assert_close(kvae.denormalize(n), z, rtol=1e-5, atol=1e-5)


def test_multiples_of_16_required(kvae):
    with pytest.raises(ShapeMismatchError, match="multiples of 16"):
        kvae.encode_keyframes(_video(h=24, w=32))
    with pytest.raises(ShapeMismatchError, match="480×768"):
        check_spatial_size(480, 770)
    check_spatial_size(480, 832)


def test_bad_tensors(kvae):
    with pytest.raises(ShapeMismatchError):
        kvae.encode_keyframes(torch.zeros(3, 16, 16))
    with pytest.raises(ShapeMismatchError):
        kvae.decode_keyframes(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(InvalidOptionError):
        WanKeyframeVAE(kvae.vae, keyframes_per_batch=0)
    with pytest.raises(ShapeMismatchError, match="1 \\+ 4k"):
        kvae.encode_video(_video(f=4))


# ------------------------------------------------------------------------------------ condition


def test_i2v_mask_layout():
    m = i2v_mask(2, 5, 3, 4)
    assert m.shape == (2, 4, 5, 3, 4)
    assert (m[:, :, 0] == 1).all() and (m[:, :, 1:] == 0).all()


def test_i2v_condition_layout():
    first = torch.randn(2, 16, 1, 3, 4)
    fill = torch.randn(1, 16, 1, 3, 4)
    c = i2v_condition(first, 6, fill_latent=fill)
    assert c.shape == (2, 20, 6, 3, 4)
    assert (c[:, :4, 0] == 1).all() and (c[:, :4, 1:] == 0).all()  # mask first, 4 channels
    assert torch.equal(c[:, 4:, :1], first)
    assert torch.equal(c[:, 4:, 1:], fill.expand(2, 16, 5, 3, 4))
    zeros = i2v_condition(first, 6)
    assert (zeros[:, 4:, 1:] == 0).all()
    full = torch.randn(2, 16, 6, 3, 4)
    assert torch.equal(i2v_condition(full, 6)[:, 4:], full)
    with pytest.raises(ShapeMismatchError):
        i2v_condition(torch.randn(2, 16, 3, 3, 4), 6)
    with pytest.raises(ShapeMismatchError):
        i2v_condition(first, 6, fill_latent=torch.randn(2, 16, 2, 3, 4))
    with pytest.raises(ShapeMismatchError):
        i2v_condition(torch.randn(16, 1, 3, 4), 6)


def test_encode_condition_modes(kvae, vae):
    img = _video(f=1)[:, :, 0]
    full = kvae.encode_condition(img, num_latent_frames=3, mode="full_vae")
    video = torch.cat([img.unsqueeze(2), torch.zeros(1, 3, 8, 16, 32)], dim=2)  # 1 + 4·2 frames
    with torch.no_grad():
        ref = _normalize_by_config(vae, vae.encode(video).latent_dist.mode())
    assert full.shape == (1, 20, 3, 2, 4)
    torch.testing.assert_close(full[:, 4:], ref, rtol=1e-5, atol=1e-5)
    ffo = kvae.encode_condition(img, num_latent_frames=3, mode="first_frame_only")
    zero_lat = kvae.encode_keyframes(torch.zeros(1, 3, 1, 16, 32))
    torch.testing.assert_close(ffo[:, 4:, :1], kvae.encode_keyframes(img.unsqueeze(2)))
    torch.testing.assert_close(ffo[:, 4:, 1:], zero_lat.expand(1, 16, 2, 2, 4))
    assert (ffo[:, :4, 0] == 1).all() and (ffo[:, :4, 1:] == 0).all()
    with pytest.raises(InvalidOptionError):
        kvae.encode_condition(img, 3, mode="nope")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- ComfyUI


def test_images_video_round_trip():
    imgs = torch.rand(3, 16, 32, 3)
    v = images_to_video(imgs)
    assert v.shape == (1, 3, 3, 16, 32)
    assert torch.allclose(v[0, :, 1].permute(1, 2, 0), imgs[1] * 2 - 1)
    torch.testing.assert_close(video_to_images(v), imgs)
    rgba = torch.cat([imgs, torch.ones(3, 16, 32, 1)], dim=-1)
    assert torch.equal(images_to_video(rgba), v)


def test_images_bad_input():
    with pytest.raises(InvalidImageError, match="\\[0, 1\\]"):
        images_to_video(torch.rand(2, 8, 8, 3) * 255)
    with pytest.raises(InvalidImageError):
        images_to_video(torch.rand(8, 8, 3))
    with pytest.raises(InvalidImageError):
        images_to_video(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ShapeMismatchError):
        video_to_images(torch.zeros(1, 4, 1, 8, 8))


# ------------------------------------------------------------------------------------- loading

_RES = {
    "norm1.gamma": "residual.0.gamma",
    "conv1": "residual.2",
    "norm2.gamma": "residual.3.gamma",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}


def _res_back(tail: str) -> str:
    for new, old in _RES.items():
        if tail == new or tail.startswith(new + "."):
            return old + tail[len(new) :]
    return tail


def _diffusers_to_original(key: str) -> str:
    """The test's own inverse map (diffusers → original Wan names), written from the Wan module layout."""
    for a, b in (("quant_conv.", "conv1."), ("post_quant_conv.", "conv2.")):
        if key.startswith(a):
            return b + key[len(a) :]
    m = re.match(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.(.+)", key)
    if m:
        part = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}[m.group(2)]
        return f"{m.group(1)}.{part}.{m.group(3)}"
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.+)", key)
    if m:
        idx = 1 if m.group(2) == "attentions" else 2 * int(m.group(3))
        tail = m.group(4) if m.group(2) == "attentions" else _res_back(m.group(4))
        return f"{m.group(1)}.middle.{idx}.{tail}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.downsamples.{m.group(1)}.{_res_back(m.group(2))}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.upsamples.{4 * int(m.group(1)) + int(m.group(2))}.{_res_back(m.group(3))}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key)
    if m:
        return f"decoder.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
    raise AssertionError(key)


def _original_state_dict(vae) -> dict[str, torch.Tensor]:
    return {_diffusers_to_original(k): v.contiguous() for k, v in vae.state_dict().items()}


def test_original_layout_matches_diffusers_converter(vae):
    """Our key map agrees with diffusers' own Wan converter on the original-layout keys."""
    orig = _original_state_dict(vae)
    theirs = convert_wan_vae_to_diffusers(dict(orig))
    assert set(theirs) == set(vae.state_dict())
    ours = {wan_vae_key_to_diffusers(k): k for k in orig}
    assert set(ours) == set(theirs)
    for new, old in ours.items():
        assert theirs[new] is orig[old]
    assert plan_wan_vae(list(orig)).layout == "wan"


def test_single_file_original_layout_loads_identically(vae, kvae, tmp_path):
    path = tmp_path / "wan_2.1_vae.safetensors"
    save_file({"vae." + k: v for k, v in _original_state_dict(vae).items()}, str(path))  # with a prefix
    loaded = load_wan_vae(path, dtype=torch.float32, config=tiny_vae_config())
    x = _video(f=3)
    assert torch.equal(loaded.encode_keyframes(x), kvae.encode_keyframes(x))
    z = kvae.encode_keyframes(x)
    assert torch.equal(loaded.decode_keyframes(z), kvae.decode_keyframes(z))


def test_diffusers_folder_loads_identically(vae, kvae, tmp_path):
    root = tmp_path / "Wan2.1-I2V-14B-480P-Diffusers"
    vae.save_pretrained(root / "vae", safe_serialization=True)
    loaded = load_wan_vae(root, dtype=torch.float32)  # config.json of the folder, not the Wan2.1 default
    assert loaded.vae.config.base_dim == 8
    x = _video(f=2)
    assert torch.equal(loaded.encode_keyframes(x), kvae.encode_keyframes(x))


def test_vae_file_errors(vae, tmp_path):
    pickle = tmp_path / "vae.pt"
    pickle.write_bytes(b"\x80\x04junk")
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_wan_vae(pickle)
    other = tmp_path / "other.safetensors"
    save_file({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointMismatchError, match="not a Wan VAE"):
        load_wan_vae(other)
    sd = _original_state_dict(vae)
    sd["decoder.conv1.weight"] = torch.zeros(32, 48, 3, 3, 3)
    wan22 = tmp_path / "wan2.2_vae.safetensors"
    save_file(sd, str(wan22))
    with pytest.raises(CheckpointMismatchError, match="Wan2.1 VAE"):
        load_wan_vae(wan22, config=tiny_vae_config())
    sd = _original_state_dict(vae)
    del sd["decoder.head.2.weight"]
    partial = tmp_path / "partial.safetensors"
    save_file(sd, str(partial))
    with pytest.raises(CheckpointMismatchError, match=r"missing 1 keys under decoder\.conv_out\.\* \(1\)"):
        load_wan_vae(partial, config=tiny_vae_config())
    truncated = tmp_path / "truncated.safetensors"
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(good))
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_wan_vae(truncated, config=tiny_vae_config())
    with pytest.raises(MissingFileError, match="does not exist"):
        load_wan_vae(tmp_path / "missing.safetensors")
    bad_cfg = tmp_path / "badcfg"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(bad_cfg / "m.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="AutoencoderKLWan"):
        load_wan_vae(bad_cfg)


# ------------------------------------------------------------------------------------ speed paths


@pytest.fixture()
def vae64() -> AutoencoderKLWan:  # a fresh one per test: WanKeyframeVAE re-lays its weights out
    torch.manual_seed(3)
    model = AutoencoderKLWan(**tiny_vae_config()).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # every weight non-zero, biases included
    return model


def test_speed_paths_compute_diffusers_sums_in_float64(vae64, monkeypatch):
    """First-frame 2-D convolutions and channels-last weights: every entry point equals diffusers' own
    3-D path on the same VAE to float64 rounding, and the 2-D path really ran."""
    import worldstereo_core.models.vae as vae_module

    with torch.no_grad():
        x = _video(f=3).double()
        clip = _video(f=9, seed=2).double()
        z = torch.randn(1, 16, 3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        first = x[:, :, 0]
        # diffusers as it is (contiguous weights, 3-D convolutions everywhere), before ours touches the VAE
        want_enc = torch.cat([vae64.encode(x[:, :, i : i + 1]).latent_dist.mode() for i in range(3)], dim=2)
        want_dec = torch.cat([vae64.decode(z[:, :, i : i + 1]).sample for i in range(3)], dim=2).clamp(-1, 1)
        want_video = vae64.encode(clip).latent_dist.mode()
        want_cond = vae64.encode(torch.cat([first[:, :, None], torch.zeros_like(clip[:, :, :8])], 2)).latent_dist.mode()
        want_vdec = vae64.decode(z).sample.clamp(-1, 1)

        calls = []
        real = vae_module._first_frame_conv
        monkeypatch.setattr(vae_module, "_first_frame_conv", lambda conv, x: calls.append(1) or real(conv, x))
        ours = WanKeyframeVAE(vae64, keyframes_per_batch=2)
        got = {
            "keyframe encode": (ours.denormalize(ours.encode_keyframes(x)), want_enc),
            "keyframe decode": (ours.decode_keyframes(ours.normalize(z)), want_dec),
            "causal video encode": (ours.denormalize(ours.encode_video(clip)), want_video),
            "I2V condition": (ours.denormalize(ours.encode_condition(first, 3, mode="full_vae")[:, 4:]), want_cond),
            "causal video decode": (ours.decode_video(ours.normalize(z)), want_vdec),
        }
    assert calls, "the first-frame 2-D convolutions never ran"
    for name, (a, b) in got.items():
        assert a.shape == b.shape, name
        assert float((a - b).abs().max()) < 1e-12, name


def test_speed_paths_patch_only_this_vae_and_only_during_a_call(vae64, monkeypatch):
    """Another VAE (e.g. a ComfyUI node's diffusers Wan VAE) and diffusers' class never change; ours is
    back to diffusers' forward after a call, also after one that raised; the weights keep their values."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    class_forward = WanCausalConv3d.forward
    other = AutoencoderKLWan(**tiny_vae_config()).double().eval()
    before = {k: v.clone() for k, v in vae64.state_dict().items()}
    ours = WanKeyframeVAE(vae64)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in vae64.parameters() if p.ndim == 5)
    for k, v in vae64.state_dict().items():
        assert torch.equal(v, before[k]), k  # layout only
    seen = []

    def spy(video):  # runs inside our call: our convs are patched, the other VAE's and the class are not
        seen.append(
            (
                all(
                    "forward" in m.__dict__
                    for m in vae64.modules()
                    if isinstance(m, WanCausalConv3d) and m._padding[4] == m.kernel_size[0] - 1
                ),
                any("forward" in m.__dict__ for m in other.modules()),
                WanCausalConv3d.forward is class_forward,
            )
        )
        raise RuntimeError("boom")

    monkeypatch.setattr(vae64, "encode", spy)
    with pytest.raises(RuntimeError, match="boom"):
        ours.encode_keyframes(_video(f=1).double())
    assert seen == [(True, False, True)]
    assert not any("forward" in m.__dict__ for m in vae64.modules())  # restored although the call raised


def test_speed_paths_keep_a_forward_someone_set_on_a_convolution(vae64):
    """A forward already set on a convolution instance (a hook, a compiled forward) still serves the calls
    the 2-D path does not take, and is back in place afterwards."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    conv = vae64.encoder.conv_in
    calls = []

    def own(x, cache_x=None):
        calls.append(x.shape[2])
        return WanCausalConv3d.forward(conv, x, cache_x)

    conv.forward = own
    ours = WanKeyframeVAE(vae64)
    with torch.no_grad():
        ours.encode_video(_video(f=5).double())  # chunk 0: one frame (2-D path); chunk 1: four frames (own)
    assert calls == [4]
    assert conv.__dict__["forward"] is own
