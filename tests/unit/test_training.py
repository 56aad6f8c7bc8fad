"""Training recipes: GGM point-cloud masking (checked through the rendered inputs), SSM pairs and
reference dropout, flow matching, which parameters each stage trains, DMD's rules, resume, data folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_models import write_tiny_models
from worldstereo_core.errors import (
    InvalidChoiceError,
    InvalidOptionError,
    MissingFileError,
    MissingInputError,
    OutputPathError,
)
from worldstereo_core.models import load_worldstereo
from worldstereo_core.training import (
    SyntheticClips,
    TrainSettings,
    build_samples,
    load_clip_folder,
    make_sample,
    train,
)
from worldstereo_core.training.data import SSM_OVERLAP
from worldstereo_core.training.recipes import (
    GGM_PIXEL_DROP,
    GGM_RECT_AREA,
    REF_DROP_ALL,
    REF_DROP_EACH,
    flow_matching_loss,
    mask_extra_view_depth,
    memory_cache,
    noisy_latents,
    reference_keep,
    render_cache,
    training_cache,
)
from worldstereo_core.training.trainer import FlowMatchingTrainer

H, W, KF, POSES = 32, 48, 5, 17


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_models")
    write_tiny_models(root, variants=(), moge=False, uni3c=False)
    return root


@pytest.fixture(scope="module")
def samples():
    return build_samples(SyntheticClips(H, W, POSES), 2, KF, POSES, seed=0)


def _settings(tmp: Path, stage: str, encoders: Path, **kw) -> TrainSettings:
    return TrainSettings(
        stage=stage,
        out=tmp,
        size="tiny",
        steps=kw.pop("steps", 3),
        models_dir=encoders,
        num_samples=2,
        batch=2,
        progress=False,
        **kw,
    )


# ------------------------------------------------------------------------------ GGM masking


def test_masking_drops_pixels_and_one_rectangle():
    depth = torch.ones(60, 80)
    fractions = []
    for seed in range(40):
        masked, drop = mask_extra_view_depth(depth, torch.Generator().manual_seed(seed))
        assert torch.equal(masked == 0, drop)
        fractions.append(float(drop.float().mean()))
        # the rectangle: some row has a run of ≥ 20 % · W dropped pixels in a row (random drops alone
        # give runs of that length with negligible probability at ≤ 70 % density)
        runs = max(max(len(r) for r in "".join("1" if v else "0" for v in row.tolist()).split("0")) for row in drop)
        assert runs >= 0.2 * 80 * 0.5
    lo = GGM_PIXEL_DROP[0]  # at least the random fraction, and no more than all of it + the largest rectangle
    assert min(fractions) >= lo * 0.9 and max(fractions) <= 1.0
    assert np.mean(fractions) > GGM_PIXEL_DROP[0] + 0.5 * GGM_RECT_AREA[0]


def test_masking_shows_in_the_rendered_ggm_inputs(samples):
    s = samples[0]
    holes = {}
    for masking in (False, True):
        fractions = []
        for seed in range(4):
            cloud = training_cache(s, torch.Generator().manual_seed(seed), masking=masking)
            fractions.append(float(render_cache(cloud, s).mask[1:].mean()))
        holes[masking] = np.mean(fractions)
    # the same views, lifted whole vs masked: the masked cache leaves clearly more holes in the GGM render
    assert holes[True] > holes[False] + 0.05
    # keyframe 0 is the input image (never masked): no holes there
    cloud = training_cache(s, torch.Generator().manual_seed(0), masking=True)
    assert float(render_cache(cloud, s).mask[0].sum()) == 0


def test_memory_stage_cache_is_input_view_plus_reference_clip(samples):
    s = samples[0]
    cloud = memory_cache(s)
    n_valid = int((s.depth[0] > 0).sum()) + int((s.reference_depth > 0).sum())
    assert len(cloud.points) == n_valid


# ------------------------------------------------------------------------------ SSM pairs


def test_samples_pair_targets_with_a_misaligned_reference_clip():
    clip = SyntheticClips(H, W, POSES).clip(0)
    for overlap in (0.3, 0.9):
        s = make_sample(clip, KF, POSES, overlap)
        offset = int(round((1 - overlap) * (POSES - 1)))
        ref_kf = torch.linspace(0, POSES - 1, KF).long() + offset
        # every reference is a keyframe of the reference clip, and the exact frame of that pose
        for f in range(KF):
            matches = [int(k) for k in ref_kf if torch.equal(s.references[f], clip.frames[k])]
            assert matches, f
        assert torch.equal(s.frames, clip.frames[torch.linspace(0, POSES - 1, KF).long()])
    with pytest.raises(InvalidOptionError, match="overlap"):
        make_sample(clip, KF, POSES, 0.95)
    assert SSM_OVERLAP == (0.3, 0.9)


def test_reference_dropout_rates():
    g = torch.Generator().manual_seed(0)
    n, trials = 5, 4000
    keeps = torch.stack([reference_keep(n, g) for _ in range(trials)])
    all_dropped = float((~keeps).all(dim=1).float().mean())
    each_dropped = float((~keeps).float().mean())
    want_all = REF_DROP_ALL + (1 - REF_DROP_ALL) * REF_DROP_EACH**n
    want_each = REF_DROP_ALL + (1 - REF_DROP_ALL) * REF_DROP_EACH
    assert abs(all_dropped - want_all) < 0.015
    assert abs(each_dropped - want_each) < 0.02


def test_flow_matching_target_is_noise_minus_x0():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 2, 2, generator=g), torch.randn(2, 4, 3, 2, 2, generator=g)
    sigma = torch.tensor([0.25, 0.75])
    x_t = noisy_latents(x0, noise, sigma)
    torch.testing.assert_close(x_t[1], 0.25 * x0[1] + 0.75 * noise[1])
    assert float(flow_matching_loss(noise - x0, x0, noise)) == 0.0
    assert float(flow_matching_loss(x0 - noise, x0, noise)) > 1.0  # the opposite sign is wrong


# ------------------------------------------------------------------------------ stages


def _params(folder):
    return load_worldstereo(folder, dtype=torch.float32).state_dict()


def _changed(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_stages_train_only_their_branch_from_a_checkpoint(tmp_path, encoders):
    cam = train(_settings(tmp_path / "cam", "camera", encoders, steps=2))
    start = _params(cam)
    cam2 = train(_settings(tmp_path / "cam2", "camera", encoders, steps=3, init=cam))
    after = _params(cam2)
    assert _changed(start, after, "controlnet.")
    assert not _changed(start, after, "blocks.") and not _changed(start, after, "patch_embedding.")

    mem = train(_settings(tmp_path / "mem", "memory", encoders, steps=3, init=cam2))
    m = _params(mem)
    cfg = json.loads((mem / "config.json").read_text())
    assert cfg["model_type"] == "worldstereo-paper-memory"
    assert _changed({k: torch.zeros_like(v) for k, v in m.items()}, m, "memory_branch.proj_out.")  # left zero init
    assert not _changed(after, m, "controlnet.") and not _changed(after, m, "blocks.")
    # a memory run started from a paper checkpoint continues its memory branch (no re-initialisation)
    again = FlowMatchingTrainer(
        _settings(tmp_path / "mem2", "memory", encoders, init=mem).resolved(), torch.device("cpu")
    )
    assert not _changed(m, again.model.state_dict(), "memory_branch.")

    dmd = train(_settings(tmp_path / "dmd", "dmd", encoders, steps=2, init=mem))
    d = _params(dmd)
    cfg = json.loads((dmd / "config.json").read_text())
    assert cfg["model_type"] == "worldstereo-paper-memory-dmd"
    assert not _changed(m, d, "controlnet.") and not _changed(m, d, "memory_branch.")  # control branches frozen
    assert _changed(m, d, "blocks.")  # the backbone is distilled
    rows = [json.loads(x) for x in (dmd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["fake_updates"] == 5 for r in rows) and all(1 <= r["truncation_step"] <= 4 for r in rows)
    assert (dmd / "fake_score" / "model.safetensors").is_file()


def test_dmd_teacher_sample_skipped_where_not_needed_keeps_the_generator_in_step():
    """A data-parallel rank without the global batch's first row draws the paired noise like every rank
    (the ranks' generators stay in step) but runs none of the teacher's 80 forwards."""
    from types import SimpleNamespace

    from worldstereo_core.training import dmd as dmd_mod

    class Untouchable(torch.nn.Module):
        def forward(self, *a, **k):
            raise AssertionError("the teacher ran")

    trainer = SimpleNamespace(_teacher_samples={}, device=torch.device("cpu"), real=Untouchable())
    inputs = SimpleNamespace(x0=torch.zeros(2, 16, 3, 4, 6))
    prep = object()
    g, same = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    noise, x0 = dmd_mod.DMDTrainer.teacher_sample(trainer, prep, inputs, g, needed=False)
    assert x0 is None
    torch.testing.assert_close(noise, torch.randn(1, 16, 3, 4, 6, generator=same), rtol=0, atol=0)
    torch.testing.assert_close(torch.rand(3, generator=g), torch.rand(3, generator=same), rtol=0, atol=0)
    assert dmd_mod.DMDTrainer.teacher_sample(trainer, prep, inputs, g, needed=False)[0] is noise  # cached


def test_dmd_rules(tmp_path, encoders, monkeypatch):
    from worldstereo_core.training import dmd as dmd_mod
    from worldstereo_core.training import trainer as trainer_mod

    mem = train(_settings(tmp_path / "mem", "memory", encoders, steps=1))
    settings = _settings(tmp_path / "dmd", "dmd", encoders, init=mem).resolved()
    t = dmd_mod.DMDTrainer(settings, torch.device("cpu"))
    real_before = {k: v.clone() for k, v in t.real.state_dict().items()}
    cond = trainer_mod.load_conditioner(settings, torch.device("cpu"))
    prepared, empty = trainer_mod.prepare_samples(trainer_mod.load_samples(settings), cond, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)

    # CFG 5 on the real score: x0 = x_t − σ·(v_u + 5·(v_c − v_u))
    inputs = trainer_mod.step_inputs(prepared[0], empty, cond.vae, 2, True, g, torch.device("cpu"), text_drop=0.0)
    x_t, sigma = torch.randn(inputs.x0.shape, generator=g), torch.tensor([0.5, 0.8])
    v_c = trainer_mod.predict(t.real, x_t, sigma, inputs)
    v_u = trainer_mod.predict(t.real, x_t, sigma, inputs, inputs.uncond)
    assert (v_c - v_u).abs().max() > 0  # the prompt matters, so the test can see the guidance
    torch.testing.assert_close(
        t.real_x0(x_t, sigma, inputs), x_t - sigma.view(-1, 1, 1, 1, 1) * (v_u + 5.0 * (v_c - v_u))
    )

    # stochastic gradient truncation: only the last step of the chain is differentiable
    calls = []
    orig = dmd_mod.predict

    def spy(model, *a, **k):
        if model is t.generator:
            calls.append(torch.is_grad_enabled())
        return orig(model, *a, **k)

    monkeypatch.setattr(dmd_mod, "predict", spy)
    x0 = t.generate(torch.randn(inputs.x0.shape, generator=g), inputs, stop=3, grad=True)
    assert calls == [False, False, False, True] and x0.requires_grad

    # 5 fake-score updates per generator update; the real score never changes
    steps = {"fake": 0, "gen": 0}
    monkeypatch.setattr(t.fake_opt, "step", lambda *a, **k: steps.__setitem__("fake", steps["fake"] + 1))
    monkeypatch.setattr(t.gen_opt, "step", lambda *a, **k: steps.__setitem__("gen", steps["gen"] + 1))
    t.step(prepared[0], empty, cond.vae, g)
    assert steps == {"fake": 5, "gen": 1}
    assert all(torch.equal(v, real_before[k]) for k, v in t.real.state_dict().items())

    # the distribution-matching term: its gradient is (fake − real); with the fake score equal to the real
    # one and no guidance it vanishes, with CFG 5 it does not (regression term switched off for this)
    monkeypatch.setattr(dmd_mod, "REGRESSION_WEIGHT", 0.0)
    for guidance, moves in ((1.0, False), (5.0, True)):
        import dataclasses

        t2 = dmd_mod.DMDTrainer(
            dataclasses.replace(settings, fake_updates=0, guidance_scale=guidance), torch.device("cpu")
        )
        t2.step(prepared[0], empty, cond.vae, torch.Generator().manual_seed(1))
        grads = [p.grad for p in t2.gen_params if p.grad is not None]
        assert bool(grads) and any(bool(gr.abs().sum() > 0) for gr in grads) == moves, guidance


def test_resume_continues_exactly(tmp_path, encoders):
    full = train(_settings(tmp_path / "full", "camera", encoders, steps=4, save_every=2))
    part = _settings(tmp_path / "part", "camera", encoders, steps=2, save_every=2)
    train(part)
    with pytest.raises(OutputPathError, match="--resume"):
        train(part)
    resumed = train(_settings(tmp_path / "part", "camera", encoders, steps=4, save_every=2, resume=True))
    a = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    pa, pb = _params(full), _params(resumed)
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)


def test_settings_errors(tmp_path, encoders):
    with pytest.raises(InvalidChoiceError, match="stage"):
        train(TrainSettings(stage="nope", out=tmp_path))
    with pytest.raises(MissingInputError, match="--init"):
        train(_settings(tmp_path / "d", "dmd", encoders))
    with pytest.raises(InvalidOptionError, match="memory branch"):
        train(TrainSettings(stage="camera", out=tmp_path / "b", baseline_loss=True))
    with pytest.raises(MissingInputError, match="--models-dir"):
        train(TrainSettings(stage="camera", out=tmp_path / "f", size="full", init=tmp_path))


def test_size_defaults_by_name(tmp_path):
    """Each size resolves to its own numbers (keyed by name, so reordering SIZES cannot swap them): full is
    the release's 21 keyframes of 81 poses at a 480×768 bucket; dmd overrides lr and batch only."""
    from worldstereo_core.training.trainer import DMD_DEFAULTS, SIZE_DEFAULTS, SIZES

    assert set(SIZE_DEFAULTS) == set(DMD_DEFAULTS) == set(SIZES)
    assert len({frozenset(d) for d in SIZE_DEFAULTS.values()}) == 1  # every size sets the same fields
    full = TrainSettings(stage="camera", out=tmp_path, size="full").resolved()
    assert (full.height, full.width, full.num_keyframes, full.clip_poses) == (480, 768, 21, 81)
    assert (full.lr, full.batch, full.gradient_checkpointing) == (1e-5, 1, True)
    tiny = TrainSettings(stage="camera", out=tmp_path, size="tiny").resolved()
    assert (tiny.height, tiny.width, tiny.num_keyframes, tiny.clip_poses, tiny.batch) == (32, 48, 5, 17, 4)
    dmd = TrainSettings(stage="dmd", out=tmp_path, size="tiny").resolved()
    assert (dmd.lr, dmd.batch, dmd.height) == (3e-4, 2, 32)
    assert TrainSettings(stage="dmd", out=tmp_path, size="full").resolved().lr == 2e-6


def test_start_model_needs_init_at_full_size(tmp_path):
    """Without --init only the tiny size starts a fresh model; full size says which checkpoint to pass,
    and the dmd stage has no single model to start."""
    from worldstereo_core.training.trainer import _init_model

    cpu = torch.device("cpu")
    with pytest.raises(MissingInputError, match="--init worldstereo-camera"):
        _init_model(TrainSettings(stage="camera", out=tmp_path, size="full").resolved(), cpu)
    with pytest.raises(MissingInputError, match="--init DIR"):
        _init_model(TrainSettings(stage="memory", out=tmp_path, size="full").resolved(), cpu)
    with pytest.raises(InvalidChoiceError, match="dmd.py"):
        _init_model(TrainSettings(stage="dmd", out=tmp_path, size="tiny").resolved(), cpu)
    model, prefixes = _init_model(TrainSettings(stage="camera", out=tmp_path, size="tiny").resolved(), cpu)
    assert prefixes == ("",) and model.variant == "camera"


def test_video_folder_clip_round_trip(tmp_path):
    from PIL import Image
    from safetensors.torch import save_file

    from worldstereo_core.trajectory import Trajectory, save_camera_json

    clip = SyntheticClips(H, W, POSES).clip(1)
    folder = tmp_path / "clips" / "a"
    (folder / "frames").mkdir(parents=True)
    for i, f in enumerate(clip.frames):
        Image.fromarray((f.numpy() * 255).round().astype(np.uint8)).save(folder / "frames" / f"{i:04d}.png")
    save_camera_json(folder / "camera.json", Trajectory(clip.cameras))
    with pytest.raises(MissingFileError, match="depth.safetensors"):
        load_clip_folder(folder)
    save_file({"depth": clip.depth.contiguous()}, str(folder / "depth.safetensors"))
    (folder / "prompt.txt").write_text("a room\n")
    got = load_clip_folder(folder)
    assert got.prompt == "a room" and torch.allclose(got.frames, clip.frames, atol=1 / 255)
    torch.testing.assert_close(got.cameras.w2c, clip.cameras.w2c, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.depth, clip.depth)
    s = make_sample(got, KF, POSES, 0.5)
    assert s.frames.shape == (KF, H, W, 3)


def test_bf16_runs_frozen_weights_in_bf16_trained_in_fp32(tmp_path, encoders):
    from safetensors import safe_open

    out = train(
        _settings(
            tmp_path / "bf",
            "camera",
            encoders,
            steps=2,
            dtype="bf16",
            gradient_checkpointing=True,
            init=train(_settings(tmp_path / "c", "camera", encoders, steps=1)),
        )
    )
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_slice("blocks.0.attn1.to_q.weight").get_dtype() == "BF16"
        assert f.get_slice("controlnet.controlnet_blocks.0.ffn.0.weight").get_dtype() == "F32"
