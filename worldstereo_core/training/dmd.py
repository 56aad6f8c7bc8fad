"""Stage 3: distribution matching distillation (DMD) of the memory model into a 4-step generator.

As the paper describes it (§3.4, appendix):

* the **real score** is the teacher (the memory-stage model), frozen, queried with classifier-free
  guidance 5.0 (empty prompt as the unconditional branch);
* the **fake score** starts as a copy of the teacher and is trained with flow matching on the
  generator's samples, **5 updates per generator update**;
* the **generator** starts as a copy of the teacher and samples in the DMD variant's 4 Euler steps
  (timesteps of :func:`~worldstereo_core.models.sampling.dmd_timesteps`); **stochastic gradient
  truncation**: each update runs the chain to a random step ``k`` ∈ {1…4}, steps before ``k`` without
  gradient, and backpropagates only through step ``k``'s prediction of ``x₀``;
* the **control branches** (GGM ``controlnet.*`` and the SSM ``memory_branch.*``) of generator and
  fake score are frozen: only the backbone is distilled, so the branches trained in stages 1–2 plug
  into the distilled backbone unchanged.

Generator loss (DMD, Yin et al. 2024): with ``x̂₀`` the generator's sample, noised to a random ``σ``,
``g = (x₀_fake − x₀_real) / mean|x̂₀ − x₀_real|`` and ``L_dm = ½‖x̂₀ − sg(x̂₀ − g)‖²`` (its gradient is
``g``), plus DMD's **regression** term ``L_reg``: mean squared error of ``x̂₀`` (from a fixed noise per
clip) against the teacher's own 40-step UniPC + CFG sample from that noise, precomputed once. The
generator descends ``L_dm + 0.25 · L_reg``. ``L_dm``'s value means nothing (only its gradient does:
it is normalised per sample), so the logged ``loss`` — the value the training gate reads — is
``L_reg``; ``dm_loss``, ``dm_gap`` = ``½‖x₀_fake − x₀_real‖²`` (the score mismatch DMD drives to zero)
and the fake score's ``fake_loss`` are logged beside it. Our choices where the paper is silent:
regression weight 0.25, σ of the DM term uniform in [0.02, 0.98] then shifted by 3.0, AdamW for both
networks at the stage's lr; the 5 fake-score updates draw their generator samples together in one
batched no-grad chain (one random truncation step for the five).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from ..distributed.data_parallel import full_tensor, load_whole_state
from ..distributed.sequence_parallel import enable_sequence_parallel, shard_weights
from ..errors import CheckpointMismatchError, MissingInputError
from ..models.loading import DMDSettings, load_worldstereo
from ..models.sampling import DEFAULT_FLOW_SHIFT, dmd_timesteps, sample_unipc
from ..models.vae import WanKeyframeVAE
from .parallel import TrainParallel, select_rows
from .recipes import flow_matching_loss, noisy_latents, sample_sigmas
from .trainer import (
    PreparedSample,
    StepInputs,
    TrainSettings,
    load_state,
    predict,
    save_checkpoint,
    save_state,
    step_inputs,
    trainable_parameters,
)

FROZEN_BRANCHES = ("controlnet.", "memory_branch.")
"""The control branches stay frozen during distillation (paper §3.4)."""
REGRESSION_WEIGHT = 0.25
"""Weight of the regression term in the generator loss (our choice; DMD uses a regression term of this order)."""
TEACHER_STEPS = 40
"""UniPC steps of the teacher's paired samples (the release's sampler, models/sampling.py)."""


def backbone_prefixes(model: torch.nn.Module) -> list[str]:
    """Top-level parameter groups of the backbone: everything but the frozen control branches."""
    return sorted({n.split(".")[0] + "." for n, _ in model.named_parameters() if not n.startswith(FROZEN_BRANCHES)})


class DMDTrainer:
    """Generator, fake score and frozen real score built from one teacher checkpoint (``--init``)."""

    def __init__(
        self,
        settings: TrainSettings,
        device: torch.device,
        teacher: torch.nn.Module | None = None,
        trainable_blocks: int | None = None,
        parallel: TrainParallel | None = None,
    ) -> None:
        """``teacher``: the memory model (default: loaded from ``settings.init``). ``trainable_blocks``: distil
        only the last that many main blocks (None: the whole backbone) — lets one step fit a single GPU at
        full size for benchmarking; full-backbone DMD at 14 B needs the parameters sharded over GPUs."""
        if settings.init is None and teacher is None:
            raise MissingInputError(
                "the dmd stage distils a trained memory model: pass --init <the memory stage's output>"
            )
        self.parallel = parallel = parallel or TrainParallel()
        self.settings = settings
        self.device = device
        frozen_dtype = torch.bfloat16 if settings.dtype == "bf16" else torch.float32
        if teacher is None:
            teacher = load_worldstereo(settings.init, device=device, dtype=torch.float32)
        if teacher.variant not in ("paper",):
            raise CheckpointMismatchError(
                f"--init is a {teacher.variant!r} checkpoint; the dmd stage distils the paper-SSM memory model "
                "(the output of --stage memory, model_type worldstereo-paper-memory)"
            )
        prefixes = backbone_prefixes(teacher)
        if trainable_blocks is not None:
            n = len(teacher.blocks)
            prefixes = [f"blocks.{i}." for i in range(max(0, n - int(trainable_blocks)), n)]
        teacher.requires_grad_(False)
        if parallel.shard_weights:
            # sharded (FSDP2): three whole networks, each sharded on its own over the ranks (FSDP2 shards a
            # module for one model only, so the frozen modules are not shared), 1/N of each per rank
            self.generator = _whole_copy(teacher, prefixes, frozen_dtype).train()
            self.fake = _whole_copy(teacher, prefixes, frozen_dtype).train()
        else:
            # generator and fake score: copies of the teacher's trained part, sharing every frozen module with
            # the real score (one resident copy of the frozen weights instead of three)
            self.generator = _student(teacher, prefixes).train()
            self.fake = _student(teacher, prefixes).train()
        for p in teacher.parameters():  # after the copies: those start from the fp32 teacher
            if p.is_floating_point():
                p.data = p.data.to(frozen_dtype)
        self.real = teacher.eval()
        self.generator.variant = "paper-dmd"
        self.generator.ws_config = dataclasses.replace(teacher.ws_config, variant="paper-dmd")
        if settings.gradient_checkpointing:
            self.generator.enable_gradient_checkpointing()
            self.fake.enable_gradient_checkpointing()
        if parallel.sequence_parallel:
            # one SequenceParallel for the three networks: they share their frozen blocks (and processors)
            sp = enable_sequence_parallel(self.real)
            enable_sequence_parallel(self.generator, sp=sp)
            enable_sequence_parallel(self.fake, sp=sp)
        self.gen_params = trainable_parameters(self.generator, prefixes)
        self.fake_params = trainable_parameters(self.fake, prefixes)
        if parallel.shard_weights:
            for model in (self.generator, self.fake, self.real):
                shard_weights(model)
            self.gen_params = [p for p in self.generator.parameters() if p.requires_grad]
            self.fake_params = [p for p in self.fake.parameters() if p.requires_grad]
        self.gen_opt = torch.optim.AdamW(self.gen_params, lr=settings.lr, weight_decay=0.0)
        self.fake_opt = torch.optim.AdamW(self.fake_params, lr=settings.lr, weight_decay=0.0)
        self.dmd = self.generator.ws_config.dmd if self.generator.ws_config is not None else DMDSettings()
        self.sigmas = (dmd_timesteps(self.dmd) / self.dmd.end).tolist() + [0.0]
        self.latent_cond_mode = teacher.ws_config.latent_cond_mode
        self._teacher_samples: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    # -- the pieces, public for the tests
    def real_x0(self, x_t: torch.Tensor, sigma: torch.Tensor, inputs: StepInputs) -> torch.Tensor:
        """The real score's ``x₀`` with CFG: ``v = v_u + w·(v_c − v_u)``, ``x₀ = x_t − σ·v``."""
        with torch.no_grad():
            v_c = predict(self.real, x_t, sigma, inputs)
            v_u = predict(self.real, x_t, sigma, inputs, inputs.uncond)
        v = v_u + self.settings.guidance_scale * (v_c - v_u)
        return x_t - sigma.view(-1, 1, 1, 1, 1) * v

    def generate(self, noise: torch.Tensor, inputs: StepInputs, stop: int, grad: bool) -> torch.Tensor:
        """Run the 4-step Euler chain from ``noise`` to step ``stop`` (0-based) and return that step's ``x₀``.

        Steps before ``stop`` run without gradient (stochastic gradient truncation); step ``stop`` keeps
        the graph when ``grad``.
        """
        x = noise
        batch = noise.shape[0]
        for i in range(stop + 1):
            sigma = torch.full((batch,), self.sigmas[i], device=noise.device)
            last = i == stop
            with torch.set_grad_enabled(grad and last):
                v = predict(self.generator, x, sigma, inputs)
            if last:
                return x - self.sigmas[i] * v
            x = (x + (self.sigmas[i + 1] - self.sigmas[i]) * v).detach()
        raise AssertionError("unreachable")

    def teacher_sample(
        self, prep: PreparedSample, inputs: StepInputs, generator: torch.Generator, needed: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(noise, the teacher's 40-step UniPC + CFG sample from it) for ``prep`` — computed once, then reused.

        ``needed=False`` (a data-parallel rank that does not hold the global batch's first row, with
        replicated weights): the noise is drawn as everywhere (the ranks' generators stay in step) but the
        80 teacher forwards are skipped and the sample is None. Sharded or sequence-parallel forwards are
        collective, so there every rank computes it."""
        key = id(prep)
        if key not in self._teacher_samples:
            noise = torch.randn(inputs.x0[:1].shape, generator=generator).to(self.device)
            if not needed:
                self._teacher_samples[key] = (noise, None)
                return self._teacher_samples[key]
            one = StepInputs(inputs.x0[:1], inputs.condition[:1], _first(inputs.inputs), _first(inputs.uncond))

            def velocity(x, t, positive):
                return predict(self.real, x, t / 1000.0, one, one.inputs if positive else one.uncond)

            x0 = sample_unipc(
                velocity,
                noise,
                steps=TEACHER_STEPS,
                guidance_scale=self.settings.guidance_scale,
                flow_shift=DEFAULT_FLOW_SHIFT,
            )
            self._teacher_samples[key] = (noise, x0.float())
        return self._teacher_samples[key]

    def step(
        self, prep: PreparedSample, empty_text: torch.Tensor, vae: WanKeyframeVAE, generator: torch.Generator
    ) -> dict:
        s, par = self.settings, self.parallel
        # every rank draws the whole global batch (same generator state everywhere) and keeps its rows
        rows = par.rows(s.batch)
        full = step_inputs(
            prep, empty_text, vae, s.batch, True, generator, self.device, text_drop=0.0, mask_variants=s.mask_variants
        )
        inputs = select_rows(full, rows)
        shape = full.x0.shape[1:]
        n_steps = len(self.sigmas) - 1

        # 1. fake score: fake_updates flow-matching updates, each on its own fresh generator samples (drawn
        #    together in one batched no-grad chain: the same samples as one chain per update, fewer calls)
        fake_losses = []
        if s.fake_updates > 0:
            noise = torch.randn((s.fake_updates, s.batch, *shape), generator=generator)[:, rows].flatten(0, 1)
            stop = int(torch.randint(n_steps, (), generator=generator))
            with torch.no_grad():
                samples = self.generate(noise.to(self.device), _repeat(inputs, s.fake_updates), stop, grad=False)
            samples = samples.split(inputs.x0.shape[0])
        for u in range(s.fake_updates):
            x0_gen = samples[u]
            sigma = sample_sigmas(s.batch, generator)[rows].to(self.device)
            eps = torch.randn((s.batch, *shape), generator=generator)[rows].to(self.device)
            loss_f = flow_matching_loss(
                predict(self.fake, noisy_latents(x0_gen, eps, sigma), sigma, inputs), x0_gen, eps
            )
            self.fake_opt.zero_grad(set_to_none=True)
            loss_f.backward()
            par.sync_gradients(self.fake_params)
            torch.nn.utils.clip_grad_norm_(self.fake_params, 1.0)
            self.fake_opt.step()
            fake_losses.append(par.mean(float(loss_f.detach())))

        # 2. generator: one update, gradient through a random step only. Global row 0 starts from the clip's
        #    paired noise and carries the regression term: only the rank holding that row computes it.
        holds_row0 = rows.start == 0
        paired_noise, teacher_x0 = self.teacher_sample(prep, full, generator, needed=holds_row0 or par.shard_weights)
        noise = torch.cat([paired_noise.cpu(), torch.randn((s.batch - 1, *shape), generator=generator)])[rows]
        stop = int(torch.randint(n_steps, (), generator=generator))
        x0_gen = self.generate(noise.to(self.device), inputs, stop, grad=True)
        sigma = sample_sigmas(s.batch, generator).clamp(0.02, 0.98)[rows].to(self.device)
        eps = torch.randn((s.batch, *shape), generator=generator)[rows].to(self.device)
        x_t = noisy_latents(x0_gen.detach(), eps, sigma)
        with torch.no_grad():
            x0_real = self.real_x0(x_t, sigma, inputs)
            x0_fake = x_t - sigma.view(-1, 1, 1, 1, 1) * predict(self.fake, x_t, sigma, inputs)
            norm = (x0_gen.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
            grad = (x0_fake - x0_real) / norm
            gap = 0.5 * (x0_fake - x0_real).square().mean()
        dm_loss = 0.5 * (x0_gen - (x0_gen - grad).detach()).square().mean()
        # data parallel averages the ranks' gradients: the one holder scales its term by N to keep its weight
        reg_scale = par.world_size if par.data_parallel else 1
        reg_loss = (x0_gen[:1] - teacher_x0).square().mean() if holds_row0 else x0_gen.new_zeros(())
        objective = dm_loss + REGRESSION_WEIGHT * reg_scale * reg_loss
        self.gen_opt.zero_grad(set_to_none=True)
        objective.backward()
        par.sync_gradients(self.gen_params)
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.gen_params, 1.0))
        self.gen_opt.step()
        reg_value = par.mean(float(reg_loss.detach())) * reg_scale
        return {
            "loss": reg_value,
            "dm_loss": par.mean(float(dm_loss.detach())),
            "dm_gap": par.mean(float(gap)),
            "reg_loss": reg_value,
            "fake_loss": sum(fake_losses) / max(len(fake_losses), 1),
            "fake_updates": len(fake_losses),
            "truncation_step": stop + 1,
            "grad_norm": float(grad_norm),
        }

    def save(self, out: Path, step: int, generator: torch.Generator) -> None:
        write = self.parallel.writes
        save_checkpoint(self.generator, out, write)
        save_checkpoint(self.fake, out / "fake_score", write)
        save_state(out, step, "dmd", {"gen": self.gen_opt, "fake": self.fake_opt}, generator, write)

    def load(self, out: Path, generator: torch.Generator) -> int:
        for model, folder in ((self.generator, out), (self.fake, out / "fake_score")):
            loaded = load_worldstereo(
                folder, variant="paper" if folder != out else "paper-dmd", device=self.device, dtype=None
            )
            load_whole_state(model, loaded.state_dict())
        return load_state(out, "dmd", {"gen": self.gen_opt, "fake": self.fake_opt}, generator)


def _whole_copy(teacher: torch.nn.Module, prefixes: list[str], frozen_dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy of the (fp32) teacher: parameters under ``prefixes`` stay fp32, the rest in ``frozen_dtype``."""
    model = copy.deepcopy(teacher)
    for name, p in model.named_parameters():
        if p.is_floating_point() and not name.startswith(tuple(prefixes)):
            p.data = p.data.to(frozen_dtype)
    return model


def _student(teacher: torch.nn.Module, prefixes: list[str]) -> torch.nn.Module:
    """A model that shares the teacher's modules except those under ``prefixes``, which are fp32 deep copies."""
    student = copy.copy(teacher)
    student._parameters = dict(teacher._parameters)
    student._buffers = dict(teacher._buffers)
    student._modules = dict(teacher._modules)
    for name in list(teacher._parameters):
        if any(p.rstrip(".") == name for p in prefixes):
            student._parameters[name] = torch.nn.Parameter(teacher._parameters[name].detach().float().clone())
    for name, module in teacher._modules.items():
        if any(p.startswith(name + ".") and p.count(".") == 1 for p in prefixes):
            student._modules[name] = copy.deepcopy(module).float()
        elif isinstance(module, torch.nn.ModuleList) and any(p.startswith(name + ".") for p in prefixes):
            student._modules[name] = torch.nn.ModuleList(
                copy.deepcopy(m).float() if f"{name}.{i}." in prefixes else m for i, m in enumerate(module)
            )
    return student


def _repeat(step: StepInputs, times: int) -> StepInputs:
    """``step`` with every batched tensor repeated ``times`` along the batch."""
    import dataclasses

    def rep(x):
        return None if x is None else x.repeat(times, *([1] * (x.ndim - 1)))

    def rep_inputs(inputs):
        return dataclasses.replace(inputs, **{f.name: rep(getattr(inputs, f.name)) for f in dataclasses.fields(inputs)})

    return StepInputs(rep(step.x0), rep(step.condition), rep_inputs(step.inputs), rep_inputs(step.uncond))


def _first(inputs):
    import dataclasses

    return dataclasses.replace(
        inputs,
        **{
            f.name: (getattr(inputs, f.name)[:1] if getattr(inputs, f.name) is not None else None)
            for f in dataclasses.fields(inputs)
        },
    )


__all__ = ["FROZEN_BRANCHES", "REGRESSION_WEIGHT", "TEACHER_STEPS", "DMDTrainer", "backbone_prefixes"]
