"""Samplers: DMD timesteps/steps, the release's UniPC schedule and update rule, determinism, callbacks, tiny end-to-end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from worldstereo_core.errors import InvalidOptionError
from worldstereo_core.models import load_worldstereo, save_worldstereo
from worldstereo_core.models.loading import DMDSettings
from worldstereo_core.models.sampling import (
    SamplingInterrupted,
    WorldStereoDenoiser,
    dmd_timesteps,
    initial_noise,
    sample_dmd,
    sample_unipc,
    unipc_plan,
)
from worldstereo_core.models.transformer_worldstereo import WorldStereoInputs
from worldstereo_core.tiny_configs import TINY_TRANSFORMER_CONFIG, build_tiny_transformer


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


def _release_sigmas(steps: int, shift: float) -> np.ndarray:
    """The release's UniPC flow sigmas, written from diffusers 0.36.0's formula (the release's pin):
    σ_k = shift(0.999·(N − k)/N), k = 0..N−1 (scheduling_unipc_multistep.py v0.36.0, set_timesteps)."""
    u = 0.999 * (steps - np.arange(steps)) / steps
    return shift * u / (1 + (shift - 1) * u)


def test_unipc_schedule_is_the_releases():
    """diffusers 0.36.0's flow schedule, not the ≥ 0.37 one (σ₀ = 1 − 1e-6, 30 of 40 timesteps differ)."""
    plan = unipc_plan(40, 3.0)
    want = _release_sigmas(40, 3.0)
    np.testing.assert_allclose(plan.sigmas[:-1], want.astype(np.float32), rtol=0, atol=0)
    assert plan.sigmas[-1] == 0.0
    assert plan.sigmas[0] == pytest.approx(2.997 / 2.998)  # shift 3 of 0.999
    assert plan.timesteps.tolist() == [int(t) for t in want * 1000]
    # int(1000·σ_k) of the formula above for N = 40, shift 3 (what the release's 40-step runs see)
    assert plan.timesteps.tolist() == [
        999,
        991,
        982,
        973,
        963,
        954,
        944,
        933,
        922,
        911,
        899,
        887,
        874,
        861,
        847,
        832,
        817,
        801,
        785,
        767,
        749,
        730,
        710,
        688,
        666,
        642,
        617,
        590,
        562,
        531,
        499,
        465,
        428,
        388,
        345,
        299,
        249,
        195,
        136,
        71,
    ]
    newer = 3.0 * np.linspace(1, 0.001, 41)[:-1] / (1 + 2.0 * np.linspace(1, 0.001, 41)[:-1])
    newer[0] -= 1e-6  # diffusers >= 0.37 keeps log(1 - σ₀) finite this way
    assert sum(int(a) != int(b) for a, b in zip(want * 1000, newer * 1000)) == 30
    for steps, shift in [(7, 5.0), (1, 3.0)]:
        np.testing.assert_allclose(
            unipc_plan(steps, shift).sigmas[:-1], _release_sigmas(steps, shift).astype(np.float32)
        )


def test_unipc_steps_match_diffusers_update_rule():
    """Every model input along the trajectory equals diffusers' UniPC-bh2 update run on the release's sigmas.

    Only the step rule is taken from the installed diffusers (its multistep_uni_p/c_bh_update are the
    same as v0.36.0's apart from device handling); the schedule is fed in from :func:`_release_sigmas`.
    """
    for steps, shift in [(40, 3.0), (7, 5.0), (2, 3.0), (1, 3.0)]:
        sched = UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=1.0,
            num_train_timesteps=1000,
            solver_order=2,
        )
        sched.set_timesteps(sigmas=_release_sigmas(steps, shift))  # shift 1: sigmas taken as given
        noise = initial_noise((2, 3, 2, 4, 4), seed=1)
        x, want_inputs = noise.clone(), []
        for t in sched.timesteps:
            want_inputs.append(x.clone())
            v_pos, v_neg = _toy_velocity(x, t.float().expand(2), True), _toy_velocity(x, t.float().expand(2), False)
            x = sched.step(v_neg + 5.0 * (v_pos - v_neg), t, x, return_dict=False)[0]
        got_inputs = []

        def recording(x_in, t, positive, got_inputs=got_inputs):
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
    sample_unipc(
        lambda x, t, p: calls.append(p) or _toy_velocity(x, t, p),
        initial_noise((1, 1, 1, 2, 2), 0),
        steps=5,
        guidance_scale=1.0,
    )
    assert calls == [True] * 5
    calls.clear()
    sample_unipc(
        lambda x, t, p: calls.append(p) or _toy_velocity(x, t, p),
        initial_noise((1, 1, 1, 2, 2), 0),
        steps=3,
        guidance_scale=5.0,
    )
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
        sample_unipc(
            _toy_velocity,
            initial_noise((1, 1, 1, 2, 2), 0),
            steps=10,
            on_step=lambda i, n: progress.append(i),
            interrupt=lambda: len(progress) >= 3,
        )
    assert progress == [0, 1, 2]


def test_bad_sampler_settings():
    with pytest.raises(InvalidOptionError):
        dmd_timesteps(DMDSettings(steps=0))
    with pytest.raises(InvalidOptionError):
        dmd_timesteps(DMDSettings(start=1000.0))
    with pytest.raises(InvalidOptionError):
        unipc_plan(0)
    with pytest.raises(InvalidOptionError):
        sample_dmd(_toy_velocity, initial_noise((1, 1, 1, 2, 2), 0), on_step="nope")


@pytest.mark.parametrize("variant", ["camera", "dmd"])
def test_tiny_model_sampling_end_to_end(tmp_path, variant):
    torch.manual_seed(0)
    model = load_worldstereo(save_worldstereo(build_tiny_transformer(variant), tmp_path / variant), dtype=torch.float32)
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
        common.update(
            reference_latent=torch.randn(B, 36, 1, H, W, generator=g),
            ref_index=torch.tensor([0]),
            camera_qt=torch.randn(B, F, 7, generator=g),
            camera_qt_ref=torch.randn(B, 1, 7, generator=g),
        )
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
