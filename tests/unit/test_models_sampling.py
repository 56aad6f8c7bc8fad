"""Samplers: DMD timesteps/steps, UniPC parity with diffusers, determinism, callbacks, tiny end-to-end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from worldstereo_core.models import build_transformer, load_worldstereo, save_worldstereo
from worldstereo_core.models.loading import DMDSettings
from worldstereo_core.models.sampling import (
    SamplerSettingsError,
    SamplingInterrupted,
    WorldStereoDenoiser,
    dmd_timesteps,
    initial_noise,
    sample_dmd,
    sample_unipc,
    unipc_plan,
)
from worldstereo_core.models.transformer_worldstereo import TINY_TRANSFORMER_CONFIG, WorldStereoInputs


def _toy_velocity(x, t, positive=True):
    """A nonlinear, time-dependent velocity field (stands in for the network)."""
    s = (t / 1000.0).view(-1, *[1] * (x.ndim - 1))
    return torch.tanh(x) * (1.0 + s) - 0.3 * x * s + (0.1 if positive else -0.2)


@pytest.mark.parametrize("start,shift", [(250.0, 5.0), (0.0, 1.0), (100.0, 3.0)])
def test_dmd_timesteps_follow_the_formula(start, shift):
    got = dmd_timesteps(DMDSettings(start=start, shift=shift)).numpy()
    t = np.array([1000.0, (2 * 1000 + start) / 3, (1000 + 2 * start) / 3, start]) / 1000  # linspace reversed
    want = shift * t / (1 + (shift - 1) * t) * 1000
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == pytest.approx(1000.0)


def test_dmd_is_euler_to_sigma_zero():
    settings = DMDSettings()
    noise = initial_noise((1, 2, 3, 4, 5), seed=0)
    seen = []

    def fn(x, t, positive):
        seen.append(t.clone())
        return _toy_velocity(x, t)

    out = sample_dmd(fn, noise, settings)
    # independent re-derivation of the 4 Euler steps
    sig = list(dmd_timesteps(settings).numpy() / 1000.0) + [0.0]
    x = noise.clone()
    for i in range(4):
        x = x + (sig[i + 1] - sig[i]) * _toy_velocity(x, torch.tensor([sig[i] * 1000.0]))
    torch.testing.assert_close(out, x)
    assert [float(t[0]) for t in seen] == pytest.approx(list(dmd_timesteps(settings).numpy()))


def test_unipc_matches_diffusers_scheduler():
    """Every model input along the trajectory (not just the end point) equals diffusers' UniPC's."""
    for steps, shift in [(40, 3.0), (7, 5.0), (2, 3.0), (1, 3.0)]:
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                        num_train_timesteps=1000, solver_order=2)
        sched.set_timesteps(steps)
        noise = initial_noise((2, 3, 2, 4, 4), seed=1)
        x, want_inputs = noise.clone(), []
        for t in sched.timesteps:
            want_inputs.append(x.clone())
            v_pos, v_neg = _toy_velocity(x, t.float().expand(2), True), _toy_velocity(x, t.float().expand(2), False)
            x = sched.step(v_neg + 5.0 * (v_pos - v_neg), t, x, return_dict=False)[0]
        got_inputs = []

        def recording(x_in, t, positive):
            if positive:
                got_inputs.append(x_in.clone())
            return _toy_velocity(x_in, t, positive)

        got = sample_unipc(recording, noise, steps=steps, guidance_scale=5.0, flow_shift=shift)
        torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)
        assert len(got_inputs) == len(want_inputs)
        for a, b in zip(got_inputs, want_inputs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(unipc_plan(steps, shift).timesteps, sched.timesteps)


def test_no_cfg_calls_the_model_once_per_step():
    calls = []
    sample_unipc(lambda x, t, p: calls.append(p) or _toy_velocity(x, t, p), initial_noise((1, 1, 1, 2, 2), 0),
                 steps=5, guidance_scale=1.0)
    assert calls == [True] * 5
    calls.clear()
    sample_unipc(lambda x, t, p: calls.append(p) or _toy_velocity(x, t, p), initial_noise((1, 1, 1, 2, 2), 0),
                 steps=3, guidance_scale=5.0)
    assert calls == [True, False] * 3


def test_seed_determinism_and_inputs_untouched():
    a, b, c = initial_noise((1, 4, 2, 3, 3), 7), initial_noise((1, 4, 2, 3, 3), 7), initial_noise((1, 4, 2, 3, 3), 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    before = a.clone()
    out1, out2 = sample_dmd(_toy_velocity, a), sample_dmd(_toy_velocity, b)
    assert torch.equal(out1, out2) and torch.equal(a, before)


def test_callbacks_and_interrupt():
    progress = []
    sample_dmd(_toy_velocity, initial_noise((1, 1, 1, 2, 2), 0), on_step=lambda i, n: progress.append((i, n)))
    assert progress == [(0, 4), (1, 4), (2, 4), (3, 4)]
    progress.clear()
    with pytest.raises(SamplingInterrupted):
        sample_unipc(_toy_velocity, initial_noise((1, 1, 1, 2, 2), 0), steps=10,
                     on_step=lambda i, n: progress.append(i), interrupt=lambda: len(progress) >= 3)
    assert progress == [0, 1, 2]


def test_bad_sampler_settings():
    with pytest.raises(SamplerSettingsError):
        dmd_timesteps(DMDSettings(steps=0))
    with pytest.raises(SamplerSettingsError):
        dmd_timesteps(DMDSettings(start=1000.0))
    with pytest.raises(SamplerSettingsError):
        unipc_plan(0)
    with pytest.raises(SamplerSettingsError):
        sample_dmd(_toy_velocity, initial_noise((1, 1, 1, 2, 2), 0), on_step="nope")


@pytest.mark.parametrize("variant", ["camera", "dmd"])
def test_tiny_model_sampling_end_to_end(tmp_path, variant):
    torch.manual_seed(0)
    model = load_worldstereo(save_worldstereo(build_transformer(variant, tiny=True), tmp_path / variant), dtype=torch.float32)
    B, F, H, W = 1, 3, 4, 4
    g = torch.Generator().manual_seed(0)
    text = torch.randn(B, 512, TINY_TRANSFORMER_CONFIG["text_dim"], generator=g)
    common = dict(
        encoder_hidden_states_image=torch.randn(B, 257, TINY_TRANSFORMER_CONFIG["image_dim"], generator=g),
        render_latent=torch.randn(B, 16, F, H, W, generator=g),
        render_mask=torch.zeros(B, 1, F, 8 * H, 8 * W),
        plucker=torch.randn(B, 6, F, 8 * H, 8 * W, generator=g),
    )
    if variant != "camera":
        common.update(reference_latent=torch.randn(B, 36, 1, H, W, generator=g), ref_index=torch.tensor([0]),
                      camera_qt=torch.randn(B, F, 7, generator=g), camera_qt_ref=torch.randn(B, 1, 7, generator=g))
    pos = WorldStereoInputs(encoder_hidden_states=text, **common)
    neg = WorldStereoInputs(encoder_hidden_states=torch.zeros_like(text), **common)
    denoiser = WorldStereoDenoiser(model, torch.randn(B, 20, F, H, W, generator=g), pos, neg)
    noise = initial_noise((B, 16, F, H, W), seed=3)
    if variant == "dmd":
        out = sample_dmd(denoiser, noise, model.ws_config.dmd)
        again = sample_dmd(denoiser, initial_noise((B, 16, F, H, W), seed=3), model.ws_config.dmd)
    else:
        out = sample_unipc(denoiser, noise, steps=3, guidance_scale=5.0)
        again = sample_unipc(denoiser, initial_noise((B, 16, F, H, W), seed=3), steps=3, guidance_scale=5.0)
    assert out.shape == noise.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, again)
    assert not torch.allclose(out, noise)
