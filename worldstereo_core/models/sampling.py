"""Samplers for the WorldStereo flow-matching models: DMD 4-step Euler and UniPC with CFG.

Both take a *velocity function* ``model_fn(x, t, positive) -> v``: ``x`` ``[B, 16, F, h, w]`` float32
noisy latents, ``t`` ``[B]`` float32 timesteps in 0..1000 on ``x``'s device, ``positive`` whether to
use the prompt (True) or the negative prompt (False, CFG only). :class:`WorldStereoDenoiser` builds
one from a :class:`~.transformer_worldstereo.WorldStereoTransformer` and its conditioning.

Flow matching convention (Wan): ``x_σ = (1 − σ)·x₀ + σ·noise`` with ``σ = t / 1000``; the model
predicts ``v = noise − x₀``.

All step coefficients are computed on the host *before* the loop, and the loop only does tensor
arithmetic with Python floats: no ``.item()``, no host↔device copies, no branching on tensor
values — so a CUDA run never synchronises inside the loop (diffusers' UniPC scheduler copies its
sigmas to the device and solves a small linear system on it every step, which does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..errors import InvalidOptionError
from .loading import DMDSettings
from .transformer_worldstereo import WorldStereoInputs, WorldStereoTransformer

# Wan2.1-I2V-14B-480P's scheduler, which the release loads from ``<base_model>/scheduler``
# (FuchengSu/WorldStereo models/worldstereo_wrapper.py, ``UniPCMultistepScheduler.from_pretrained``
# for the camera and memory variants): diffusers ``UniPCMultistepScheduler(prediction_type=
# "flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)`` with its
# defaults solver_order 2, bh2, predict_x0, lower_order_final, final sigma 0. flow_shift 3.0 is what
# diffusers v0.36.0 scripts/convert_wan_to_diffusers.py (lines 1185-1193) writes for every Wan2.1 model
# that is not FLF2V/TI2V/Animate, i.e. Wan-I2V-14B-480p (the script that produced the -Diffusers folders).
DEFAULT_FLOW_SHIFT = 3.0
# 40 steps: the release pipeline's default (models/pipelines/pipeline_pcd_keyframe.py line 454);
# CFG 5.0: what its runners pass (run_camera_control.py line 117, run_multi_traj.py line 166).
DEFAULT_UNIPC_STEPS = 40
DEFAULT_GUIDANCE_SCALE = 5.0
NUM_TRAIN_TIMESTEPS = 1000


class SamplingInterrupted(Exception):
    """Raised when the ``interrupt`` callback asks the loop to stop (not an input error)."""


class VelocityFn(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, positive: bool) -> torch.Tensor: ...


def shift_sigmas(sigmas: np.ndarray | torch.Tensor, shift: float):
    """Timestep shift of flow models: ``s·σ / (1 + (s − 1)·σ)``."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def dmd_timesteps(settings: DMDSettings = DMDSettings()) -> torch.Tensor:
    """The DMD generator's timesteps ``[steps]`` (float32, descending, in 0..end).

    ``linspace(start, end, steps)`` reversed, divided by ``end``, shifted, times ``end`` — the
    release's ``FlowGeneratorScheduler``. Defaults give ``[1000, 937.5, 833.3, 625]`` for shift 5.
    """
    if settings.steps < 1 or settings.shift <= 0 or not 0 <= settings.start < settings.end:
        raise InvalidOptionError(f"DMD settings need steps >= 1, shift > 0 and 0 <= start < end, got {settings}")
    t = np.linspace(settings.start, settings.end, settings.steps, dtype=np.float32)[::-1].copy()
    t = torch.from_numpy(t) / settings.end
    return shift_sigmas(t, settings.shift) * settings.end


# torch.Generator.manual_seed takes 0 … 2^64 − 1; ComfyUI's seed widgets go up to the same maximum.
SEED_RANGE = 2**64


def check_seed(seed: int, what: str = "seed") -> int:
    """``seed`` as an int in ``[0, 2^64)``, or :class:`~worldstereo_core.errors.InvalidOptionError` saying the range."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < SEED_RANGE:
        raise InvalidOptionError(f"{what} must be an integer from 0 to 2^64 − 1, got {seed!r}")
    return int(seed)


def clip_seed(seed: int, index: int) -> int:
    """Noise seed of clip ``index`` (0-based) of a loop seeded with ``seed``: ``seed + index``,
    wrapped into ``[0, 2^64)`` so that every seed the widget allows works for every clip."""
    return (check_seed(seed) + int(index)) % SEED_RANGE


def initial_noise(
    shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Gaussian latents from a generator seeded on ``device`` (same seed + device → same noise)."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(check_seed(seed))
    return torch.randn(shape, generator=gen, device=device, dtype=dtype)


def _check_callbacks(on_step, interrupt):
    for name, cb in (("on_step", on_step), ("interrupt", interrupt)):
        if cb is not None and not callable(cb):
            raise InvalidOptionError(f"{name} must be callable or None")


@torch.no_grad()
def sample_dmd(
    model_fn: VelocityFn,
    noise: torch.Tensor,
    settings: DMDSettings = DMDSettings(),
    on_step: Callable[[int, int], None] | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """DMD sampling: Euler steps on the DMD timesteps, the last one to σ = 0; no CFG.

    ``noise`` ``[B, 16, F, h, w]`` → clean latents of the same shape (float32). ``on_step(i, total)``
    runs after each step; ``interrupt()`` returning True raises :class:`SamplingInterrupted`.
    """
    _check_callbacks(on_step, interrupt)
    timesteps = dmd_timesteps(settings)
    sigmas = (timesteps / settings.end).tolist() + [0.0]
    t_dev = timesteps.to(noise.device)[:, None].expand(-1, noise.shape[0]).contiguous()  # before the loop
    x = noise.float()
    total = len(timesteps)
    for i in range(total):
        if interrupt is not None and interrupt():
            raise SamplingInterrupted(f"DMD sampling interrupted before step {i + 1}/{total}")
        v = model_fn(x, t_dev[i], True).float()
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        if on_step is not None:
            on_step(i, total)
    return x


@dataclass(frozen=True)
class UniPCPlan:
    """Precomputed UniPC-bh2 (order 2, predict-x0) coefficients for a flow-matching schedule.

    ``timesteps`` ``[N]`` int64 (what the model sees), ``sigmas`` ``[N + 1]`` (last 0). For step i,
    the corrector refines the current sample as ``cx·x_prev + cm·m_prev + cm2·m_prev2 + ct·m_i`` and
    the predictor gives ``px·x_i + pm·m_i + pm1·m_{i−1}``, where ``m`` are the x₀ predictions.
    """

    timesteps: torch.Tensor
    sigmas: tuple[float, ...]
    predictor: tuple[tuple[float, float, float], ...]
    corrector: tuple[tuple[float, float, float, float] | None, ...]


def _lam(sigma: float) -> float:
    return math.log(1.0 - sigma) - math.log(sigma)


def _uni_coeffs(sig_t: float, sig_s0: float, sig_prev: float | None, order: int):
    """The shared UniPC-bh2 terms: ratio, α_t·hφ₁, α_t·B(h), r₁ and (order 2) the solved ρ's."""
    alpha_t = 1.0 - sig_t
    if sig_t == 0.0:  # final step to σ = 0: λ = ∞, hφ₁ = B(h) = −1
        return 0.0, -alpha_t, -alpha_t, None, None
    h = _lam(sig_t) - _lam(sig_s0)
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    rk = None if order == 1 else (_lam(sig_prev) - _lam(sig_s0)) / h
    # b_k of the B(h) variant (for the corrector's 2x2 solve)
    h_phi_k = h_phi_1 / hh - 1
    b = []
    fact = 1
    for k in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return sig_t / sig_s0, alpha_t * h_phi_1, alpha_t * b_h, rk, b


def unipc_sigmas(steps: int = DEFAULT_UNIPC_STEPS, flow_shift: float = DEFAULT_FLOW_SHIFT) -> np.ndarray:
    """The ``[steps]`` float64 flow sigmas (descending, the final 0 not included) of the release's UniPC.

    The release pins diffusers 0.36.0 (FuchengSu/WorldStereo requirements.txt). Its
    ``UniPCMultistepScheduler.set_timesteps`` with ``use_flow_sigmas`` (scheduling_unipc_multistep.py
    v0.36.0, lines 391-394) takes ``σ = 1 − linspace(1, 1/1000, N + 1)``, shifts it, flips it and
    drops the last entry, so ``σ_k = shift(0.999·(N − k)/N)`` and σ₀ = shift(0.999) < 1. diffusers ≥ 0.37
    builds ``shift(linspace(1, 1/1000, N + 1)[:-1])`` instead (σ₀ = 1 − 1e-6): a different schedule
    (30 of the 40 default timesteps differ), not the one the released weights were run with.
    """
    if steps < 1 or flow_shift <= 0:
        raise InvalidOptionError(f"UniPC needs steps >= 1 and flow_shift > 0, got steps={steps}, shift={flow_shift}")
    unshifted = 1.0 - np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, steps + 1)
    return np.flip(shift_sigmas(unshifted, flow_shift))[:-1].copy()


def unipc_plan(steps: int = DEFAULT_UNIPC_STEPS, flow_shift: float = DEFAULT_FLOW_SHIFT) -> UniPCPlan:
    """The schedule (:func:`unipc_sigmas`) and step coefficients of the release's UniPC (diffusers 0.36.0)."""
    sig = unipc_sigmas(steps, flow_shift)
    timesteps = torch.from_numpy((sig * NUM_TRAIN_TIMESTEPS).copy()).to(torch.int64)  # truncation, as diffusers
    sigmas = [float(s) for s in np.concatenate([sig, [0.0]]).astype(np.float32)]

    orders = [min(2, steps - i, min(i, 2) + 1) for i in range(steps)]  # warm-up and lower_order_final
    predictor, corrector = [], []
    for i in range(steps):
        # corrector for the sample entering step i (uses step i-1's order)
        if i == 0:
            corrector.append(None)
        else:
            o = orders[i - 1]
            ratio, a_h1, a_bh, rk, b = _uni_coeffs(sigmas[i], sigmas[i - 1], sigmas[i - 2] if o == 2 else None, o)
            if o == 1:
                rho_d, rho_t = 0.0, 0.5
            else:
                # solve [[1, 1], [rk, 1]] ρ = b (R's rows are rks**0, rks**1 with rks = [rk, 1])
                det = 1.0 - rk
                rho_d, rho_t = (b[0] - b[1]) / det, (b[1] - rk * b[0]) / det
            d = rho_d / rk if o == 2 else 0.0
            # x_t = ratio·x − a_h1·m0 − a_bh·(ρ_d·(m_prev2 − m0)/rk + ρ_t·(m_t − m0))
            corrector.append((ratio, -a_h1 + a_bh * (d + rho_t), -a_bh * d, -a_bh * rho_t))
        o = orders[i]
        ratio, a_h1, a_bh, rk, _ = _uni_coeffs(sigmas[i + 1], sigmas[i], sigmas[i - 1] if o == 2 else None, o)
        d = 0.5 / rk if o == 2 else 0.0
        # x_next = ratio·x − a_h1·m_i − a_bh·0.5·(m_{i-1} − m_i)/rk
        predictor.append((ratio, -a_h1 + a_bh * d, -a_bh * d))
    return UniPCPlan(timesteps, tuple(sigmas), tuple(predictor), tuple(corrector))


@torch.no_grad()
def sample_unipc(
    model_fn: VelocityFn,
    noise: torch.Tensor,
    steps: int = DEFAULT_UNIPC_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    flow_shift: float = DEFAULT_FLOW_SHIFT,
    on_step: Callable[[int, int], None] | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """UniPC flow-matching sampling with classifier-free guidance (``guidance_scale`` ≤ 1: no CFG).

    Matches diffusers 0.36.0's ``UniPCMultistepScheduler(prediction_type="flow_prediction",
    use_flow_sigmas=True, flow_shift=...)`` as the release uses it (schedule: :func:`unipc_sigmas`). ``noise`` ``[B, 16, F, h, w]``.
    """
    _check_callbacks(on_step, interrupt)
    plan = unipc_plan(steps, flow_shift)
    t_dev = plan.timesteps.to(device=noise.device, dtype=torch.float32)[:, None].expand(-1, noise.shape[0]).contiguous()
    cfg = guidance_scale > 1.0
    x = noise.float()
    x_prev = m_prev = m_prev2 = None
    for i in range(steps):
        if interrupt is not None and interrupt():
            raise SamplingInterrupted(f"UniPC sampling interrupted before step {i + 1}/{steps}")
        v = model_fn(x, t_dev[i], True).float()
        if cfg:
            v_neg = model_fn(x, t_dev[i], False).float()
            v = v_neg + guidance_scale * (v - v_neg)
        m = x - plan.sigmas[i] * v  # x0 prediction
        if plan.corrector[i] is not None:
            cx, cm, cm2, ct = plan.corrector[i]
            x = cx * x_prev + cm * m_prev + ct * m + (cm2 * m_prev2 if cm2 else 0.0)
        px, pm, pm1 = plan.predictor[i]
        x_prev, m_prev2, m_prev = x, m_prev, m
        x = px * x + pm * m + (pm1 * m_prev2 if pm1 else 0.0)
        if on_step is not None:
            on_step(i, steps)
    return x


class WorldStereoDenoiser:
    """Velocity function over a :class:`WorldStereoTransformer` for the samplers.

    ``condition`` ``[B, 20, F, h, w]`` is the I2V mask (4) + first-frame latent (16) concatenated after
    the noisy latent; ``positive``/``negative`` hold the rest of the conditioning (the negative one
    differs only in its text embedding in the release). Nothing is mutated.
    """

    def __init__(
        self,
        model: WorldStereoTransformer,
        condition: torch.Tensor,
        positive: WorldStereoInputs,
        negative: WorldStereoInputs | None = None,
    ) -> None:
        self.model = model
        self.condition = condition
        self.positive = positive.as_kwargs()
        self.negative = negative.as_kwargs() if negative is not None else None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, positive: bool = True) -> torch.Tensor:
        if not positive and self.negative is None:
            raise InvalidOptionError("CFG needs negative conditioning; pass negative=WorldStereoInputs(...)")
        kwargs = self.positive if positive else self.negative
        x_in = torch.cat([x, self.condition.to(x.dtype)], dim=1)
        return self.model(x_in, t, **kwargs)
