"""The training entry point: ``python -m worldstereo_core train --stage {camera,memory,dmd} …``.

Stages (arXiv 2603.02049 §3.2–3.4; recipes in :mod:`.recipes` and :mod:`.dmd`):

1. ``camera`` — GGM: the ControlNet branch (``controlnet.*``) of a ``camera`` model learns with the
   point-cloud-masked cache render; the base transformer is frozen. Output: a ``worldstereo-camera``
   checkpoint.
2. ``memory`` — the paper's SSM: a ``paper`` model built from the camera checkpoint by the
   initialisation rule (:func:`~worldstereo_core.models.transformer_worldstereo_paper.init_from_camera`)
   trains its memory branch (``memory_branch.*``) on retrieved target–reference pairs with reference
   dropout; base and GGM frozen. Output: ``worldstereo-paper-memory``.
3. ``dmd`` — distribution matching distillation of the memory model into a 4-step generator
   (:mod:`.dmd`). Output: ``worldstereo-paper-memory-dmd`` (+ ``fake_score/``).

Every run writes ``OUT/config.json`` + ``OUT/model.safetensors`` (the release layout, so
:func:`~worldstereo_core.models.load_worldstereo`, the nodes and the scene loop load it),
``OUT/metrics.jsonl`` (one JSON object per step: ``step``, ``loss``, …) and
``OUT/trainer_state.safetensors`` (optimizer moments, step, RNG state — ``--resume`` continues from
it exactly). Sizes: ``tiny`` (the test config: CPU, seconds) and ``full`` (the released 14 B sizes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..distributed.data_parallel import full_tensor, load_whole_state, placed_like, whole_state_dict, whole_tensors
from ..errors import (
    CheckpointMismatchError,
    InvalidChoiceError,
    InvalidOptionError,
    MissingFileError,
    MissingInputError,
)
from ..models.generate import ggm_inputs
from ..models.loading import WorldStereoConfig, load_worldstereo, save_worldstereo
from ..models.paper_ssm import PointmapFrame, pointmap_images, stitch_pair_latents
from ..models.transformer_worldstereo_paper import (
    PAPER_VARIANTS,
    MemoryBranchConfig,
    PaperInputs,
    init_from_camera,
)
from ..models.vae import WanKeyframeVAE, images_to_video
from ..tiny_configs import TINY_LATENT_COND_MODE, tiny_worldstereo_config
from .data import SyntheticClips, TrainingSample, VideoFolderClips, build_samples
from .parallel import TrainParallel, select_rows
from .recipes import (
    TEXT_DROP,
    flow_matching_loss,
    memory_cache,
    noisy_latents,
    reference_keep,
    render_cache,
    sample_sigmas,
    training_cache,
)

STAGES = ("camera", "memory", "dmd")
SIZES = ("tiny", "full")
STATE_FILE = "trainer_state.safetensors"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainSettings:
    """One run's settings; ``None`` fields take the size's default (:data:`SIZE_DEFAULTS`)."""

    stage: str
    out: Path
    size: str = "tiny"
    steps: int = 200
    resume: bool = False
    init: Path | None = None
    data: Path | None = None
    models_dir: Path | None = None
    wan: Path | None = None
    height: int | None = None
    width: int | None = None
    num_keyframes: int | None = None
    clip_poses: int | None = None
    num_samples: int | None = None
    batch: int | None = None
    lr: float | None = None
    dtype: str = "fp32"
    gradient_checkpointing: bool | None = None
    save_every: int | None = None
    seed: int = 0
    device: str | None = None
    fake_updates: int = 5
    mask_variants: int | None = None
    guidance_scale: float = 5.0
    progress: bool = True
    baseline_loss: bool = False
    """memory stage: also log ``baseline_loss``, the loss of the same batch with the memory branch off (from a
    checkpoint: the frozen camera model): ``loss / baseline_loss`` is the memory branch's own gain, free of the
    noise-level lottery that dominates a single step's loss (one more forward pass per step, without gradient)."""

    def resolved(self) -> TrainSettings:
        if self.stage not in STAGES:
            raise InvalidChoiceError(f"unknown stage {self.stage!r}; use one of {STAGES}")
        if self.size not in SIZES:
            raise InvalidChoiceError(f"unknown size {self.size!r}; use one of {SIZES}")
        if self.dtype not in ("fp32", "bf16"):
            raise InvalidChoiceError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if int(self.steps) < 1:
            raise InvalidOptionError(f"steps must be ≥ 1, got {self.steps}")
        if self.baseline_loss and self.stage != "memory":
            raise InvalidOptionError(
                f"--baseline-loss compares the memory stage with its memory branch switched off; the {self.stage} "
                "stage has no such branch"
            )
        defaults = {**SIZE_DEFAULTS[self.size], **(DMD_DEFAULTS[self.size] if self.stage == "dmd" else {})}
        values = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        out = dataclasses.replace(self, out=Path(self.out), **values)
        if out.height % 16 or out.width % 16:
            raise InvalidOptionError(f"height/width must be multiples of 16, got {out.height}×{out.width}")
        return out


SIZE_DEFAULTS: dict[str, dict[str, Any]] = {
    # the test config: a 4-sample synthetic set it can fit in 200 CPU steps
    "tiny": {
        "height": 32,
        "width": 48,
        "num_keyframes": 5,
        "clip_poses": 17,
        "num_samples": 4,
        "batch": 4,
        "lr": 1e-3,
        "gradient_checkpointing": False,
        "save_every": 100,
        "mask_variants": 8,
    },
    # the release's sizes (21 keyframes of 81 poses, a released 480×768 bucket); lr our choice (the paper
    # is silent)
    "full": {
        "height": 480,
        "width": 768,
        "num_keyframes": 21,
        "clip_poses": 81,
        "num_samples": 64,
        "batch": 1,
        "lr": 1e-5,
        "gradient_checkpointing": True,
        "save_every": 500,
        "mask_variants": 0,
    },
}
"""``{size: {setting: default}}`` of :class:`TrainSettings` fields left ``None``; one entry per :data:`SIZES`."""
# Distillation moves a pretrained generator, so a smaller step (tiny: 1e-3 made the first updates diverge
# from the teacher; full: the order DMD2 uses for its generators). Our choices, the paper is silent.
DMD_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"lr": 3e-4, "batch": 2},
    "full": {"lr": 2e-6, "batch": 1},
}
"""The dmd stage's overrides of :data:`SIZE_DEFAULTS`."""


# ------------------------------------------------------------------------------ conditioning


@dataclass
class Conditioner:
    """The frozen encoders of training: the Wan VAE (keyframe mode), and text / image embedding functions."""

    vae: WanKeyframeVAE
    encode_text: Callable[[Sequence[str]], torch.Tensor]  # → [N, 512, text_dim]
    encode_image: Callable[[torch.Tensor], torch.Tensor]  # [1, 3, H, W] in [-1, 1] → [1, 257, image_dim]
    latent_cond_mode: str = "full_vae"


def load_conditioner(settings: TrainSettings, device: torch.device) -> Conditioner:
    """Wan VAE + UMT5 + CLIP from ``--models-dir`` (a ComfyUI ``models`` folder: ``text_encoders/umt5*``,
    ``clip_vision/clip_vision_h*``, ``vae/wan_2.1_vae*``) or ``--wan`` (a diffusers Wan2.1-I2V folder).

    The tiny size reads the tiny test files of the same names (``scripts/make_tiny_weights.py`` writes
    them); files whose name says ``tiny`` are preferred at that size and avoided at full size.
    """
    from ..models.encoders import load_image_encoder, load_text_encoder
    from ..models.vae import load_wan_vae

    dtype = torch.float32 if settings.size == "tiny" else torch.bfloat16
    if settings.wan is not None:
        te = ie = vae = Path(settings.wan)
    elif settings.models_dir is None:
        raise MissingInputError(
            "training needs the Wan encoders: pass --models-dir (a ComfyUI models folder with text_encoders/, "
            "clip_vision/, vae/) or --wan (a diffusers Wan2.1-I2V-14B-480P folder); for --size tiny, "
            "scripts/make_tiny_weights.py writes tiny ones"
        )
    else:
        root = Path(settings.models_dir)

        def pick(folder: str, prefix: str) -> Path:
            files = sorted((root / folder).glob(f"{prefix}*.safetensors")) if (root / folder).is_dir() else []
            want_tiny = settings.size == "tiny"
            preferred = [f for f in files if ("tiny" in f.name) == want_tiny]
            if not (preferred or files):
                raise MissingFileError(f"no {prefix}*.safetensors in {root / folder}; put the Wan encoder files there")
            return (preferred or files)[0]

        te, ie, vae = pick("text_encoders", "umt5"), pick("clip_vision", "clip_vision_h"), pick("vae", "wan_2.1_vae")
    text = load_text_encoder(te, device=device, dtype=dtype)
    image = load_image_encoder(ie, device=device, dtype=dtype)
    v = load_wan_vae(vae, device=device, dtype=dtype)
    return Conditioner(v, lambda prompts: text.encode(list(prompts)), image.encode)


@dataclass
class PreparedSample:
    """A :class:`TrainingSample` with everything that does not change between steps already encoded."""

    sample: TrainingSample
    x0: torch.Tensor  # [1, 16, F, h, w] target keyframe latents
    condition: torch.Tensor  # [1, 20, F, h, w] I2V mask + first-frame latent
    text: torch.Tensor  # [1, 512, text_dim]
    image_embeds: torch.Tensor  # [1, 257, image_dim]
    z_ref: torch.Tensor  # [1, 16, F, h, w] paired references
    z_ref_pointmap: torch.Tensor  # [1, 16, F, h, w] their pointmaps
    pointmap_frame: PointmapFrame
    geometry: dict = dataclasses.field(default_factory=dict)  # encoded GGM renders (+ target pointmaps) by variant


@torch.no_grad()
def prepare_samples(
    samples: Sequence[TrainingSample], cond: Conditioner, device: torch.device
) -> tuple[list[PreparedSample], torch.Tensor]:
    """Encode every sample once; returns the prepared samples and the empty prompt's embedding ``[1, 512, D]``."""
    prompts = sorted({s.prompt for s in samples})
    embeds = cond.encode_text([*prompts, ""]).to(device)
    by_prompt = {p: embeds[i : i + 1] for i, p in enumerate(prompts)}
    out = []
    for s in samples:
        vae = cond.vae
        first = images_to_video(s.image[None])[:, :, 0]
        frame = PointmapFrame.from_depth(s.cameras[:1], s.depth[0])
        ref_pm = pointmap_images(s.reference_depth, s.reference_cameras, frame)
        out.append(
            PreparedSample(
                sample=s,
                x0=vae.encode_keyframes(images_to_video(s.frames)).to(device).float(),
                condition=vae.encode_condition(first, len(s.cameras), mode=cond.latent_cond_mode).to(device).float(),
                text=by_prompt[s.prompt],
                image_embeds=cond.encode_image(first.to(device)).to(device),
                z_ref=vae.encode_keyframes(images_to_video(s.references)).to(device).float(),
                z_ref_pointmap=vae.encode_keyframes(images_to_video(ref_pm)).to(device).float(),
                pointmap_frame=frame,
            )
        )
    return out, embeds[-1:]


@dataclass
class StepInputs:
    """The model inputs of one training step (batch of ``B`` noise levels of one sample)."""

    x0: torch.Tensor  # [B, 16, F, h, w]
    condition: torch.Tensor  # [B, 20, F, h, w]
    inputs: PaperInputs  # conditioning (paper fields None for the camera stage)
    uncond: PaperInputs  # the same with the empty prompt (CFG)


def step_inputs(
    prep: PreparedSample,
    empty_text: torch.Tensor,
    vae: WanKeyframeVAE,
    batch: int,
    with_pairs: bool,
    generator: torch.Generator,
    device: torch.device,
    text_drop: float = TEXT_DROP,
    mask_variants: int = 0,
) -> StepInputs:
    """Draw the random parts of one step: the cache (GGM: point-cloud masked; SSM: input view + reference
    clip) → GGM render, reference dropout, text dropout.

    ``mask_variants`` > 0 draws the GGM masking from that many fixed variants per clip, each rendered and
    encoded once (the tiny size's speed-up: the VAE encode dominates a tiny step); 0 masks afresh every step.
    """
    # data preparation (renderer, VAE) runs in full precision even when the step runs under bf16 autocast
    with torch.autocast("cpu", enabled=False), torch.autocast(device.type, enabled=False):
        return _step_inputs(prep, empty_text, vae, batch, with_pairs, generator, device, text_drop, mask_variants)


def _step_inputs(prep, empty_text, vae, batch, with_pairs, generator, device, text_drop, mask_variants) -> StepInputs:
    s = prep.sample
    if with_pairs:
        key = 0  # the SSM stage's cache is deterministic: render and encode it once
    elif mask_variants > 0:
        key = int(torch.randint(mask_variants, (), generator=generator))
    else:
        key = -1
    geometry = prep.geometry.get(key) if key >= 0 else None
    if geometry is None:
        if with_pairs:
            cache = memory_cache(s)
        else:
            # a pooled variant's masking is seeded by its index: the same draw on every visit and after --resume
            mask_gen = torch.Generator().manual_seed(1_000_003 * key + 17) if key >= 0 else generator
            cache = training_cache(s, mask_gen, masking=True)
        render = render_cache(cache, s)
        geometry = dict(ggm_inputs(vae, s.image, s.cameras, render.rgb, render.mask, device))
        if with_pairs:
            target_pm = pointmap_images(render.depth, s.cameras, prep.pointmap_frame)
            geometry["z_target_pointmap"] = vae.encode_keyframes(images_to_video(target_pm)).to(device).float()
        if key >= 0:
            prep.geometry[key] = geometry
    ggm = {k: v for k, v in geometry.items() if k != "z_target_pointmap"}
    extra: dict[str, torch.Tensor] = {}
    if with_pairs:
        keep = reference_keep(len(s.cameras), generator)
        extra["pair_latent"], extra["pointmap_latent"] = stitch_pair_latents(
            prep.z_ref, geometry["z_target_pointmap"], prep.z_ref_pointmap, keep
        )
    text = empty_text if float(torch.rand((), generator=generator)) < text_drop else prep.text

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.expand(batch, *t.shape[1:]).contiguous()

    shared = {k: rep(v) for k, v in {**ggm, **extra}.items()}
    clip = rep(prep.image_embeds)
    return StepInputs(
        rep(prep.x0),
        rep(prep.condition),
        PaperInputs(rep(text), clip, **shared),
        PaperInputs(rep(empty_text), clip, **shared),
    )


def predict(
    model, x_t: torch.Tensor, sigma: torch.Tensor, step: StepInputs, inputs: PaperInputs | None = None
) -> torch.Tensor:
    """The model's velocity for latents ``x_t`` at noise levels ``sigma`` ``[B]`` (timestep = 1000·σ)."""
    kwargs = {k: v for k, v in (inputs or step.inputs).as_kwargs().items() if v is not None}
    hidden = torch.cat([x_t, step.condition], dim=1)
    return model(hidden, sigma * 1000.0, **kwargs).float()


# ------------------------------------------------------------------------------ state I/O


def trainable_parameters(model: torch.nn.Module, prefixes: Sequence[str]) -> list[torch.nn.Parameter]:
    """Unfreeze the parameters whose names start with one of ``prefixes`` (freeze the rest); return them."""
    params = []
    for name, p in model.named_parameters():
        on = name.startswith(tuple(prefixes)) or name in {q.rstrip(".") for q in prefixes}
        p.requires_grad_(on)
        if on:
            params.append(p)
    if not params:
        raise CheckpointMismatchError(
            f"no parameter starts with {list(prefixes)}; the model is not of the stage's variant"
        )
    return params


def _optimizer_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's parameters in its state dict's index order."""
    return [p for group in opt.param_groups for p in group["params"]]


def _flatten_optimizer(
    prefix: str, opt: torch.optim.Optimizer, keep: bool = True
) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as whole host tensors (:func:`whole_tensors`: moments of FSDP2-sharded parameters
    are gathered, a collective, so every rank calls it; only ``keep`` ranks copy them to the host)."""
    sd = opt.state_dict()
    named = (
        (f"{prefix}.{idx}.{k}", torch.as_tensor(v))
        for idx, st in sorted(sd["state"].items())
        for k, v in sorted(st.items())
    )
    return whole_tensors(named, keep), {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(prefix: str, tensors: dict[str, torch.Tensor], meta: dict, opt: torch.optim.Optimizer) -> None:
    params = _optimizer_params(opt)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, idx, name = key.split(".", 2)
            p = params[int(idx)]
            # moments have the parameter's shape: cut them like the (possibly sharded) parameter
            state.setdefault(int(idx), {})[name] = placed_like(v, p) if v.shape == p.shape else v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(model, folder: Path, write: bool = True) -> None:
    """``folder/config.json`` + ``folder/model.safetensors`` (release layout; each file written atomically).

    Under several processes every rank calls it (sharded weights are gathered); only ``write`` ranks write."""
    state = whole_state_dict(model, keep=write)
    if write:
        save_worldstereo(model, folder, state_dict=state)


def save_state(
    out: Path,
    step: int,
    stage: str,
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
    write: bool = True,
) -> None:
    """``out/trainer_state.safetensors``: optimizer moments (whole tensors), step, RNG state. Every rank calls
    it under several processes (sharded moments are gathered); only ``write`` ranks write."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {"rng": generator.get_state()}
    meta: dict[str, Any] = {"step": step, "stage": stage, "optimizers": {}}
    for name, opt in optimizers.items():
        t, m = _flatten_optimizer(name, opt, keep=write)
        tensors.update(t)
        meta["optimizers"][name] = m
    if not write:
        return
    atomic.write_file(
        out / STATE_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"trainer": json.dumps(meta)})
    )


def load_state(out: Path, stage: str, optimizers: dict[str, torch.optim.Optimizer], generator: torch.Generator) -> int:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = out / STATE_FILE
    if not path.is_file():
        raise MissingFileError(
            f"--resume: {path} does not exist; start without --resume (or point --out at the run to continue)"
        )
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["trainer"])
    if meta["stage"] != stage:
        raise CheckpointMismatchError(f"--resume: {out} holds a {meta['stage']!r} run, not {stage!r}")
    tensors = load_file(str(path))
    for name, opt in optimizers.items():
        _unflatten_optimizer(name, tensors, meta["optimizers"][name], opt)
    generator.set_state(tensors["rng"])
    return int(meta["step"])


def _trim_metrics(path: Path, last_step: int) -> None:
    """Keep the metrics of steps ≤ ``last_step`` (what the resumed state has seen)."""
    if not path.is_file():
        return
    kept = [
        ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step
    ]
    atomic.write_text(path, "".join(ln + "\n" for ln in kept))


# ------------------------------------------------------------------------------ stages


def _device(settings: TrainSettings) -> torch.device:
    if settings.device:
        return torch.device(settings.device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _start_model(settings: TrainSettings, device: torch.device) -> torch.nn.Module:
    """The model a camera / memory stage starts from when none is given: ``--init`` loaded in fp32, or
    (tiny size only) a fresh :func:`tiny_training_model`."""
    if settings.stage not in ("camera", "memory"):
        raise InvalidChoiceError(f"stage {settings.stage!r} has no single model (see dmd.py)")
    if settings.init is not None:
        # the camera stage trains the camera variant of whatever it is given; memory keeps its variant
        variant = "camera" if settings.stage == "camera" else None
        return load_worldstereo(settings.init, variant=variant, device=device, dtype=torch.float32)
    if settings.size == "tiny":
        torch.manual_seed(settings.seed)
        return tiny_training_model().to(device)
    if settings.stage == "camera":
        raise MissingInputError(
            "full-size camera training starts from a WorldStereo checkpoint: pass --init worldstereo-camera"
        )
    raise MissingInputError(
        "the memory stage starts from the camera stage's output (or a released camera/memory checkpoint): "
        "pass --init DIR"
    )


def _init_model(settings: TrainSettings, device: torch.device, model: torch.nn.Module | None = None):
    """The model a stage starts from (camera: ``--init`` or fresh; memory: paper variant from ``--init``, or
    the ``--init`` paper checkpoint itself),
    or ``model`` as given (benchmarks); set up for training: trainable branch fp32, the rest in ``dtype``."""
    tiny = settings.size == "tiny"
    frozen_dtype = torch.bfloat16 if settings.dtype == "bf16" else torch.float32
    given = model is not None
    if not given:
        model = _start_model(settings, device)
    if settings.stage == "memory" and not given and model.variant not in PAPER_VARIANTS:
        # the paper variant on the camera/memory model: same base and GGM, a fresh memory branch (init rule).
        # A paper checkpoint (an earlier memory run) keeps its trained memory branch and continues from it.
        cfg = paper_config_from(model.ws_config)
        with torch.device("meta"):
            paper = cfg.build()
        model = init_from_camera(paper, model.state_dict())
        model.ws_config = cfg
    model.train()
    if settings.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    # frozen weights may live in bf16; trained ones stay fp32 (the optimizer's master copy)
    prefixes: tuple[str, ...] = ("controlnet.",) if settings.stage == "camera" else ("memory_branch.",)
    if settings.init is None and tiny:
        # a from-scratch tiny model has no pretrained base (or GGM branch) to keep: everything learns with
        # the stage's branch. From a checkpoint (every real run) only the stage's branch trains, as the
        # paper trains its branches on a frozen backbone.
        prefixes = ("",)
    for name, p in model.named_parameters():
        trained = name.startswith(prefixes)
        if p.is_floating_point():
            p.data = p.data.to(torch.float32 if trained else frozen_dtype)
    return model, prefixes


def tiny_training_model() -> torch.nn.Module:
    """The tiny camera model training starts from: the test config (:mod:`worldstereo_core.tiny_configs`) at
    width 64 instead of 32, and I2V condition :data:`~worldstereo_core.tiny_configs.TINY_LATENT_COND_MODE`
    (as every tiny checkpoint).

    Why wider: the GGM branch can only steer the frozen base through its output projection, which maps
    the hidden width to 16 channels × 2 × 2 patch = 64 values per token; at width 32 half of the target
    velocity is out of reach (the loss stalls at ~55 % of its start), at 64 the branch can fit it.
    """
    tiny = tiny_worldstereo_config("camera", latent_cond_mode=TINY_LATENT_COND_MODE)
    transformer = {**tiny.transformer, "num_attention_heads": 4, "added_kv_proj_dim": 64}  # 4 × 16 = 64 wide
    controlnet = dataclasses.replace(tiny.controlnet, conv_out_dim=64, time_embed_dim=64)
    return dataclasses.replace(tiny, transformer=transformer, controlnet=controlnet).build()


def paper_config_from(source: WorldStereoConfig) -> WorldStereoConfig:
    """The paper-SSM config built on a camera/memory checkpoint's config: same base and GGM sizes, and a
    memory branch of the GGM branch's sizes (what the initialisation rule copies from)."""
    memory = MemoryBranchConfig.like(source.controlnet)
    return dataclasses.replace(source, variant="paper", transformer=dict(source.transformer), memory=memory)


def _autocast(settings: TrainSettings, device: torch.device):
    if settings.dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Progress:
    """A progress bar (tqdm) with the running loss and the ETA; silent with ``progress=False``."""

    def __init__(self, total: int, initial: int, stage: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=f"train {stage}", unit="step", file=sys.stderr, dynamic_ncols=True
            )

    def update(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_run_config(settings: TrainSettings, parallel: TrainParallel | None = None) -> None:
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}
    if parallel is not None:
        info["processes"] = parallel.world_size
        info["layout"] = "sequence" if parallel.sequence_parallel else "data"
        info["shard_weights"] = parallel.shard_weights
    atomic.write_text(settings.out / "training.json", json.dumps(info, indent=2) + "\n")


def load_samples(settings: TrainSettings) -> list[TrainingSample]:
    source = (
        VideoFolderClips(settings.data)
        if settings.data is not None
        else SyntheticClips(settings.height, settings.width, settings.clip_poses, seed=settings.seed)
    )
    return build_samples(source, settings.num_samples, settings.num_keyframes, settings.clip_poses, seed=settings.seed)


class FlowMatchingTrainer:
    """Stages ``camera`` and ``memory``: flow matching on the trainable branch (AdamW, grad-norm clip 1.0)."""

    def __init__(
        self,
        settings: TrainSettings,
        device: torch.device,
        model: torch.nn.Module | None = None,
        parallel: TrainParallel | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.parallel = parallel or TrainParallel()
        self.model, prefixes = _init_model(settings, device, model)
        trainable_parameters(self.model, prefixes)
        self.parallel.prepare(self.model)  # sequence parallel / FSDP2 shards (keeps requires_grad)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # AdamW, no weight decay, betas (0.9, 0.999): our choice (the paper gives no optimizer settings)
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=0.0)
        self.with_pairs = settings.stage == "memory"
        self.latent_cond_mode = self.model.ws_config.latent_cond_mode

    def step(
        self, prep: PreparedSample, empty_text: torch.Tensor, vae: WanKeyframeVAE, generator: torch.Generator
    ) -> dict:
        s = self.settings
        # every rank draws the whole global batch (same generator state everywhere) and keeps its rows
        rows = self.parallel.rows(s.batch)
        inputs = step_inputs(
            prep, empty_text, vae, s.batch, self.with_pairs, generator, self.device, mask_variants=s.mask_variants
        )
        sigma = sample_sigmas(s.batch, generator)
        noise = torch.randn(inputs.x0.shape, generator=generator)
        inputs, sigma, noise = select_rows(inputs, rows), sigma[rows].to(self.device), noise[rows].to(self.device)
        x_t = noisy_latents(inputs.x0, noise, sigma)
        loss = flow_matching_loss(predict(self.model, x_t, sigma, inputs), inputs.x0, noise)
        record = {}
        if s.baseline_loss:  # the same batch through the model with its memory branch off, before this update
            with torch.no_grad():
                off = dataclasses.replace(
                    inputs, inputs=dataclasses.replace(inputs.inputs, pair_latent=None, pointmap_latent=None)
                )
                baseline = flow_matching_loss(predict(self.model, x_t, sigma, off), inputs.x0, noise)
            record["baseline_loss"] = self.parallel.mean(float(baseline))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.parallel.sync_gradients(self.params)
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.params, 1.0))
        self.optimizer.step()
        return {
            "loss": self.parallel.mean(float(loss.detach())),
            **record,
            "grad_norm": float(grad_norm),
            "sigma_mean": self.parallel.mean(float(sigma.mean())),
        }

    def save(self, out: Path, step: int, generator: torch.Generator) -> None:
        write = self.parallel.writes
        save_checkpoint(self.model, out, write)
        save_state(out, step, self.settings.stage, {"opt": self.optimizer}, generator, write)

    def load(self, out: Path, generator: torch.Generator) -> int:
        load_whole_state(self.model, load_worldstereo(out, device="cpu", dtype=None).state_dict())
        return load_state(out, self.settings.stage, {"opt": self.optimizer}, generator)


__all__ = [
    "SIZES",
    "SIZE_DEFAULTS",
    "STAGES",
    "Conditioner",
    "FlowMatchingTrainer",
    "PreparedSample",
    "TrainSettings",
    "load_conditioner",
    "prepare_samples",
    "save_checkpoint",
    "step_inputs",
]
