"""generate_keyframes end to end with tiny random models written as real files (ComfyUI layouts)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tiny_models import RELEASE_FOLDERS, write_tiny_models
from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.checkpoint import embedded_config
from worldstereo_core.errors import (
    InvalidInputError,
    InvalidOptionError,
    MissingInputError,
    ModelOutOfMemoryError,
    ShapeMismatchError,
    UnsafeFileError,
    WorldStereoError,
)
from worldstereo_core.interfaces import FrameGenerator, References
from worldstereo_core.models.generate import (
    PrecomputedConditioning,
    SamplingSettings,
    WorldStereoFrameGenerator,
    generate_keyframes,
    load_models,
)
from worldstereo_core.models.offload import BlockSwap, enable_sequential_offload, execution_order
from worldstereo_core.models.sampling import SamplingInterrupted

H, W, F = 16, 16, 3  # the smallest legal frames and 3 keyframes keep the VAE cheap on CPU


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy") / "models"
    paths = write_tiny_models(root)
    return root, paths


def _load(paths, variant):
    return load_models(
        paths[RELEASE_FOLDERS[variant]],
        text_encoder=paths["text_encoder"],
        image_encoder=paths["image_encoder"],
        vae=paths["vae"],
        device="cpu",
        dtype=torch.float32,
    )


@pytest.fixture(scope="module")
def models(tiny_dir):
    _, paths = tiny_dir
    return {v: _load(paths, v) for v in ("camera", "memory", "dmd")}


def _scene(n=F, h=H, w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    w2c = torch.eye(4).repeat(n, 1, 1)
    w2c[:, 0, 3] = torch.linspace(0.0, 0.4, n)
    K = intrinsics_from_fov(60.0, h, w).float().expand(n, 3, 3).clone()
    cams = Cameras(w2c, K, h, w)
    image = torch.rand(h, w, 3, generator=g)
    render = torch.rand(n, h, w, 3, generator=g)
    mask = (torch.rand(n, h, w, generator=g) > 0.5).float()
    return image, cams, render, mask


def _refs(n_refs=2, size=(24, 20), n_frames=F, seed=3):
    g = torch.Generator().manual_seed(seed)
    w2c = torch.eye(4).repeat(n_refs, 1, 1)
    w2c[:, 1, 3] = torch.linspace(0.0, 0.2, n_refs)
    K = intrinsics_from_fov(60.0, *size).float().expand(n_refs, 3, 3).clone()
    return References(
        images=tuple(torch.rand(*size, 3, generator=g) for _ in range(n_refs)),
        w2c=w2c,
        K=K,
        ref_index=torch.arange(n_refs) % (n_frames - 1),
        bank_indices=torch.arange(n_refs),
        sources=tuple(f"ref{i}" for i in range(n_refs)),
    )


def test_tiny_files_use_the_real_layouts(tiny_dir):
    root, paths = tiny_dir
    for folder in RELEASE_FOLDERS.values():
        assert (root / "worldstereo" / folder / "config.json").exists()
        assert (root / "worldstereo" / folder / "model.safetensors").exists()
    cfg = json.loads((root / "worldstereo" / "worldstereo-memory-dmd" / "config.json").read_text())
    assert cfg["model_type"] == "worldstereo-memory-dmd"
    from safetensors import safe_open

    with safe_open(str(paths["text_encoder"]), "pt") as f:
        keys = set(f.keys())
    assert "spiece_model" in keys and "encoder.block.0.layer.0.SelfAttention.q.weight" in keys
    with safe_open(str(paths["image_encoder"]), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())
    assert embedded_config([paths["vae"]], "wan_vae")["base_dim"] == 8


@pytest.mark.parametrize("variant,sampler,steps", [("camera", "unipc", 2), ("memory", "unipc", 2), ("dmd", None, None)])
def test_generate_runs_for_every_variant(models, variant, sampler, steps):
    m = models[variant]
    image, cams, render, mask = _scene()
    seen = []
    out = generate_keyframes(
        m,
        image,
        "a kitchen with wooden chairs",
        "blurry",
        cams,
        render,
        mask,
        sampling=SamplingSettings(sampler=sampler, steps=steps, seed=1),
        on_step=lambda i, n: seen.append((i, n)),
    )
    assert out.shape == (F, H, W, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    total = steps if steps is not None else m.transformer.ws_config.dmd.steps
    assert seen == [(i, total) for i in range(total)]
    assert m.default_sampler == ("dmd" if variant == "dmd" else "unipc")


def test_generate_is_deterministic_for_a_seed(models):
    m = models["dmd"]
    image, cams, render, mask = _scene()
    refs = _refs()
    a = generate_keyframes(m, image, "a bridge", None, cams, render, mask, refs, sampling=SamplingSettings(seed=7))
    b = generate_keyframes(m, image, "a bridge", None, cams, render, mask, refs, sampling=SamplingSettings(seed=7))
    c = generate_keyframes(m, image, "a bridge", None, cams, render, mask, refs, sampling=SamplingSettings(seed=8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_references_and_prompt_reach_the_model(models):
    m = models["memory"]
    image, cams, render, mask = _scene()
    kw = SamplingSettings(sampler="unipc", steps=1, guidance_scale=1.0, seed=2)
    base = generate_keyframes(m, image, "a river", None, cams, render, mask, _refs(seed=3), sampling=kw)
    other_refs = generate_keyframes(m, image, "a river", None, cams, render, mask, _refs(seed=4), sampling=kw)
    other_prompt = generate_keyframes(m, image, "a dog", None, cams, render, mask, _refs(seed=3), sampling=kw)
    single_view = generate_keyframes(m, image, "a river", None, cams, render, mask, None, sampling=kw)
    assert not torch.allclose(base, other_refs)
    assert not torch.allclose(base, other_prompt)
    assert not torch.allclose(base, single_view)


def test_frame_generator_adapter(models):
    m = models["memory"]
    gen = WorldStereoFrameGenerator(
        m, "a room", sampling=SamplingSettings(sampler="unipc", steps=1, guidance_scale=1.0, seed=5)
    )
    assert isinstance(gen, FrameGenerator)
    image, cams, render, mask = _scene()
    first = gen(image[None], cams, render, mask, _refs())
    second = gen(image[None], cams, render, mask, _refs())
    assert first.shape == (F, H, W, 3)
    assert not torch.allclose(first, second)  # call i uses seed + i
    # the camera variant has no memory branch: the loop's references are dropped, not an error
    cam_gen = WorldStereoFrameGenerator(
        models["camera"], "a room", sampling=SamplingSettings(steps=1, guidance_scale=1.0)
    )
    assert cam_gen(image[None], cams, render, mask, _refs()).shape == (F, H, W, 3)


def test_bad_inputs_raise_actionable_errors(models):
    m = models["memory"]
    image, cams, render, mask = _scene()
    with pytest.raises(ShapeMismatchError, match="one camera per keyframe"):
        generate_keyframes(m, image, "x", None, cams, render[:2], mask[:2])
    with pytest.raises(ShapeMismatchError, match="one camera per keyframe"):
        generate_keyframes(m, image, "x", None, cams[0:2], render, mask)
    img2, cams2, render2, mask2 = _scene(h=24, w=24)
    with pytest.raises(ShapeMismatchError, match="multiples of 16"):
        generate_keyframes(m, img2, "x", None, cams2, render2, mask2)
    with pytest.raises(InvalidOptionError, match="at most 8"):
        generate_keyframes(m, image, "x", None, cams, render, mask, _refs(n_refs=9))
    bad = _refs()
    bad = References(bad.images, bad.w2c, bad.K, torch.tensor([0, F - 1]), bad.bank_indices, bad.sources)
    with pytest.raises(InvalidOptionError, match="ref_index"):
        generate_keyframes(m, image, "x", None, cams, render, mask, bad)
    with pytest.raises(InvalidInputError, match="no memory branch"):
        generate_keyframes(models["camera"], image, "x", None, cams, render, mask, _refs())
    with pytest.raises(InvalidOptionError, match="sampler"):
        generate_keyframes(m, image, "x", None, cams, render, mask, sampling=SamplingSettings(sampler="euler"))
    for bad_steps in (0, -1, True):  # settings are checked when made, before any model work
        with pytest.raises(InvalidOptionError, match="steps"):
            SamplingSettings(steps=bad_steps)
    with pytest.raises(InvalidOptionError, match="seed"):
        SamplingSettings(seed=-1)
    with pytest.raises(InvalidOptionError, match="SamplingSettings"):
        generate_keyframes(m, image, "x", None, cams, render, mask, sampling={"seed": 1})
    with pytest.raises(MissingInputError, match="required"):
        generate_keyframes(m, image, "x")


def test_interrupt_stops_sampling(models):
    image, cams, render, mask = _scene()
    with pytest.raises(SamplingInterrupted):
        generate_keyframes(models["dmd"], image, "x", None, cams, render, mask, interrupt=lambda: True)


def test_out_of_memory_becomes_advice(models, monkeypatch):
    m = models["dmd"]
    image, cams, render, mask = _scene()

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(m.transformer, "forward", boom)
    with pytest.raises(ModelOutOfMemoryError, match="offload='sequential'") as info:
        generate_keyframes(m, image, "x", None, cams, render, mask)
    assert isinstance(info.value, WorldStereoError)
    # out of memory is no bad argument: callers catching MemoryError see it, ValueError handlers do not
    assert isinstance(info.value, MemoryError) and not isinstance(info.value, ValueError)
    assert "16×16" in str(info.value)


def test_load_models_errors(tiny_dir, tmp_path):
    _, paths = tiny_dir
    with pytest.raises(MissingInputError, match="no source for"):
        load_models(paths["worldstereo-memory"], device="cpu")
    with pytest.raises(InvalidOptionError, match="offload"):
        load_models(
            paths["worldstereo-memory"],
            text_encoder=paths["text_encoder"],
            image_encoder=paths["image_encoder"],
            vae=paths["vae"],
            device="cpu",
            offload="disk",
        )
    pickle = tmp_path / "umt5.pt"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(UnsafeFileError, match="safetensors"):
        load_models(
            paths["worldstereo-memory"],
            text_encoder=pickle,
            image_encoder=paths["image_encoder"],
            vae=paths["vae"],
            device="cpu",
            dtype=torch.float32,
        )


def test_block_swap_keeps_outputs_and_host_weights(models):
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    x = torch.randn(3, 4)
    want = block(x)
    seen = []
    swap = BlockSwap(block, [block[0], block[2]], torch.device("cpu"))
    block[2].register_forward_pre_hook(lambda m, a: seen.append(m.weight.data_ptr()))
    host = [slot[2] for slots in swap.slots for slot in slots]
    assert torch.equal(block(x), want)
    # inside its forward the block computed on a fresh (device) copy; outside it holds the host copy again
    assert seen and seen[0] != swap.slots[1][0][2].data_ptr()
    assert all(p.data_ptr() == h.data_ptr() for p, h in zip(block.parameters(), host))
    assert swap.host_bytes == sum(p.numel() * 4 for p in block.parameters())
    swap.remove()
    # on a CPU run sequential offload is a no-op
    assert (
        enable_sequential_offload(models["camera"].transformer, "cpu", execution_order(models["camera"].transformer))
        is None
    )
    order = execution_order(models["memory"].transformer)
    t = models["memory"].transformer
    assert order == [
        t.blocks[0],
        t.controlnet.controlnet_blocks[0],
        t.blocks[1],
        t.controlnet.controlnet_blocks[1],
        t.blocks[2],
    ]


def test_blocks_to_swap_gives_the_resident_frames(tiny_dir, models):
    """The block-swap path (last 2 of 3 main blocks on the host, swapped in per forward) = the resident path."""
    _, paths = tiny_dir
    swapped = load_models(
        paths[RELEASE_FOLDERS["dmd"]],
        text_encoder=paths["text_encoder"],
        image_encoder=paths["image_encoder"],
        vae=paths["vae"],
        device="cpu",
        dtype=torch.float32,
        blocks_to_swap=2,
    )
    swap = swapped.transformer.block_swap
    assert swap.blocks == list(swapped.transformer.blocks[1:]) and swapped.blocks_to_swap == 2
    image, cams, render, mask = _scene()
    want = generate_keyframes(
        models["dmd"], image, "a red house", None, cams, render, mask, sampling=SamplingSettings(seed=3)
    )
    got = generate_keyframes(swapped, image, "a red house", None, cams, render, mask, sampling=SamplingSettings(seed=3))
    assert torch.equal(got, want)
    # the memory manager reserves only the resident weights; moving the bundle keeps swapped blocks on the host
    full = models["dmd"].device_weight_bytes()
    assert swapped.device_weight_bytes() == full - swap.host_bytes
    host_ptrs = {h.data_ptr() for slots in swap.slots for _, _, h, _ in slots}
    swapped.offload_to_host()
    swapped.load_to_device()
    assert {t.data_ptr() for b in swap.blocks for t in [*b.parameters(), *b.buffers()]} == host_ptrs
    with pytest.raises(InvalidOptionError, match="blocks_to_swap"):
        load_models(
            paths[RELEASE_FOLDERS["dmd"]],
            vae=paths["vae"],
            device="cpu",
            blocks_to_swap=-1,
            with_text_encoder=False,
            with_image_encoder=False,
        )
    with pytest.raises(InvalidOptionError, match="3 main blocks"):
        load_models(
            paths[RELEASE_FOLDERS["dmd"]],
            vae=paths["vae"],
            device="cpu",
            blocks_to_swap=4,
            with_text_encoder=False,
            with_image_encoder=False,
        )


def test_error_inside_a_swapped_block_leaves_only_host_weights(tiny_dir, monkeypatch):
    _, paths = tiny_dir
    m = load_models(
        paths[RELEASE_FOLDERS["dmd"]],
        text_encoder=paths["text_encoder"],
        image_encoder=paths["image_encoder"],
        vae=paths["vae"],
        device="cpu",
        dtype=torch.float32,
        blocks_to_swap=1,
    )
    swap = m.transformer.block_swap
    block = swap.blocks[0]

    def boom(*a, **k):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(block.ffn, "forward", boom)
    image, cams, render, mask = _scene()
    with pytest.raises(RuntimeError, match="kernel failed"):
        generate_keyframes(m, image, "x", None, cams, render, mask)
    host = {h.data_ptr() for _, _, h, _ in swap.slots[0]}
    assert {t.data_ptr() for t in [*block.parameters(), *block.buffers()]} == host


@pytest.fixture(scope="module")
def bare(tiny_dir):
    """The memory-dmd bundle without text and image encoders (embeddings come from ComfyUI's nodes)."""
    _, paths = tiny_dir
    return load_models(
        paths["worldstereo-memory-dmd"],
        vae=paths["vae"],
        device="cpu",
        dtype=torch.float32,
        with_text_encoder=False,
        with_image_encoder=False,
    )


def test_precomputed_embeddings_replace_the_encoders(bare, models):
    """ComfyUI's CONDITIONING / CLIP_VISION_OUTPUT path: same frames as encoding here, even with no encoders."""
    full = models["dmd"]
    assert bare.text_encoder is None and bare.image_encoder is None
    image, cams, render, mask = _scene()
    text = full.text_encoder.encode(["a red house"])
    n = int((text[0].abs().sum(-1) > 0).sum())  # tokens of the prompt; the rest is Wan's zero padding
    clip = full.image_encoder.encode(image.permute(2, 0, 1)[None] * 2 - 1)
    want = generate_keyframes(full, image, "a red house", None, cams, render, mask, sampling=SamplingSettings(seed=3))
    embeds = PrecomputedConditioning(prompt_embeds=text[:, :n], image_embeds=clip)
    got = generate_keyframes(
        bare, image, "", None, cams, render, mask, sampling=SamplingSettings(seed=3), conditioning=embeds
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(MissingInputError, match="no text encoder"):
        generate_keyframes(
            bare, image, "x", None, cams, render, mask, conditioning=PrecomputedConditioning(image_embeds=clip)
        )
    with pytest.raises(ShapeMismatchError, match="prompt_embeds must be"):
        generate_keyframes(
            bare, image, "x", None, cams, render, mask, conditioning=PrecomputedConditioning(text[..., :5], None, clip)
        )


def test_loop_generator_uses_the_image_embedding_only_for_its_image(bare, models):
    """The Scene Loop's CONDITIONING / CLIP_VISION_OUTPUT path: the text embedding serves every clip; the
    CLIP embedding of the input view serves clips that open with it, while a clip opening with another
    image (continue, a bank view) is encoded by the bundle's own CLIP encoder — and fails clearly without one."""
    full = models["dmd"]
    image, cams, render, mask = _scene()
    other = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(9))
    text = full.text_encoder.encode(["a red house"])
    n = int((text[0].abs().sum(-1) > 0).sum())
    clip = full.image_encoder.encode(image.permute(2, 0, 1)[None] * 2 - 1)
    embeds = dict(
        conditioning=PrecomputedConditioning(prompt_embeds=text[:, :n], image_embeds=clip), image_embeds_of=image[None]
    )
    seed3 = SamplingSettings(seed=3)

    # clip 0 opens with the encoded image: the bundle without encoders gives the built-in result
    got = WorldStereoFrameGenerator(bare, "", sampling=seed3, **embeds)(image[None], cams, render, mask, None)
    want = generate_keyframes(full, image, "a red house", None, cams, render, mask, sampling=seed3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    # clip 1 opens with another image: CLIP-encoded by the bundle, text still from the embedding
    gen = WorldStereoFrameGenerator(full, "ignored", sampling=seed3, **embeds)
    gen(image[None], cams, render, mask, None)
    got = gen(other[None], cams, render, mask, None)
    want = generate_keyframes(
        full, other, "a red house", None, cams, render, mask, sampling=SamplingSettings(seed=3 + 1)
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(MissingInputError, match="no image encoder"):
        WorldStereoFrameGenerator(bare, "", **embeds)(other[None], cams, render, mask, None)

    # one source of text per run, and an embedding always names its image
    with pytest.raises(InvalidInputError, match="per-clip prompt"):
        WorldStereoFrameGenerator(full, "", **embeds)(image[None], cams, render, mask, None, prompt="a barn")
    with pytest.raises(InvalidInputError, match="image_embeds_of"):
        WorldStereoFrameGenerator(full, "", conditioning=PrecomputedConditioning(image_embeds=clip))


# ------------------------------------------------------------------------- Uni3C (video mode)


def _video_scene(n=9, h=H, w=W, seed=0):
    """``n`` poses turning and moving (so the two camera normalisations differ)."""
    from scipy.spatial.transform import Rotation

    g = torch.Generator().manual_seed(seed)
    w2c = torch.eye(4).repeat(n, 1, 1)
    w2c[:, :3, :3] = torch.as_tensor(
        Rotation.from_euler("y", torch.linspace(0, 30, n).numpy()[:, None], degrees=True).as_matrix()
    ).float()
    w2c[:, 0, 3] = torch.linspace(0.0, 0.4, n)
    w2c[:, 2, 3] = 1.0
    K = intrinsics_from_fov(60.0, h, w).float().expand(n, 3, 3).clone()
    return (
        torch.rand(h, w, 3, generator=g),
        Cameras(w2c, K, h, w),
        torch.rand(n, h, w, 3, generator=g),
        (torch.rand(n, h, w, generator=g) > 0.5).float(),
    )


@pytest.fixture(scope="module")
def uni3c_models(tiny_dir, models):
    from worldstereo_core.models.generate import with_uni3c

    _, paths = tiny_dir
    return with_uni3c(models["camera"], paths["uni3c"])


def test_uni3c_video_mode_feeds_whole_videos(uni3c_models, models):
    """With Uni3C the condition, render and decode are causal videos (1 + 4k frames), Plücker/mask stay at
    every frame with Uni3C's camera normalisation — what ewrfcas/Uni3C's pipeline_pcd feeds its branch."""
    from worldstereo_core.cameras import plucker_embedding
    from worldstereo_core.models.vae import images_to_video

    m = uni3c_models
    assert m.video_mode and not models["camera"].video_mode  # the bundle it came from is untouched
    assert models["camera"].transformer.controlnet is not m.transformer.controlnet
    image, cams, render, mask = _video_scene()
    seen = {}
    hook = m.transformer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.setdefault("call", (args, kwargs)), with_kwargs=True
    )
    try:
        out = generate_keyframes(
            m, image, "a kitchen", None, cams, render, mask, sampling=SamplingSettings("unipc", 1, guidance_scale=1.0)
        )
    finally:
        hook.remove()
    assert out.shape == (9, H, W, 3) and torch.isfinite(out).all()  # 3 latent frames decode to 9 frames
    args, kw = seen["call"]
    x = args[0]
    assert x.shape == (1, 36, 3, H // 8, W // 8)
    vae = m.vae
    first = images_to_video(image[None])[:, :, 0]
    want_cond = vae.encode_condition(first, 3, mode="full_vae")  # [image, 0 × 8] in one causal pass
    torch.testing.assert_close(x[:, 16:], want_cond)
    want_render = vae.encode_video(images_to_video(torch.cat([image[None], render[1:]])))
    torch.testing.assert_close(kw["render_latent"], want_render)
    assert not torch.allclose(kw["render_latent"], vae.encode_keyframes(images_to_video(render[::4])), atol=1e-3)
    assert kw["render_mask"].shape == (1, 1, 9, H, W)
    torch.testing.assert_close(kw["render_mask"][0, 0], (mask >= 0.5).float())
    want_rays = plucker_embedding(cams.w2c, cams.K, H, W, convention="uni3c").permute(1, 0, 2, 3)[None]
    torch.testing.assert_close(kw["plucker"], want_rays)
    other = plucker_embedding(cams.w2c, cams.K, H, W).permute(1, 0, 2, 3)[None]
    assert not torch.allclose(kw["plucker"], other, atol=1e-3)


def test_uni3c_video_mode_memory_model_and_errors(tiny_dir, models):
    from worldstereo_core.models.generate import video_latent_frames, with_uni3c
    from worldstereo_core.models.loading import load_uni3c

    _, paths = tiny_dir
    assert [video_latent_frames(n) for n in (5, 9, 81)] == [2, 3, 21]
    # a memory model keeps its SSM path: references point at latent frames, camera_qt at poses 0, 4, 8
    mem = with_uni3c(models["memory"], load_uni3c(paths["uni3c"], dtype=torch.float32))
    image, cams, render, mask = _video_scene()
    out = generate_keyframes(
        mem,
        image,
        "a room",
        None,
        cams,
        render,
        mask,
        _refs(n_frames=3),
        sampling=SamplingSettings("unipc", 1, guidance_scale=1.0),
    )
    assert out.shape == (9, H, W, 3)
    for n in (4, 8, 3):
        im, c, r, mk = _video_scene(n)
        with pytest.raises(ShapeMismatchError, match=r"1 \+ 4k"):
            generate_keyframes(mem, im, "x", None, c, r, mk, sampling=SamplingSettings(steps=1))
    with pytest.raises(ShapeMismatchError, match="render frames"):
        generate_keyframes(mem, image, "x", None, cams, render[:5], mask, sampling=SamplingSettings(steps=1))


def test_frame_generator_takes_the_clips_own_prompt_and_refuses_uni3c(models, uni3c_models):
    """The loop's per-trajectory prompt replaces the scene prompt for that clip only."""
    m = models["memory"]
    image, cams, render, mask = _scene()
    kw = SamplingSettings(sampler="unipc", steps=1, guidance_scale=1.0, seed=5)
    gen = WorldStereoFrameGenerator(m, "a room", sampling=kw)
    own = gen(image[None], cams, render, mask, _refs(), prompt="a stone bridge over a calm river")
    scene = gen(image[None], cams, render, mask, _refs())
    want_own = generate_keyframes(
        m, image[None], "a stone bridge over a calm river", None, cams, render, mask, _refs(), sampling=kw
    )
    want_scene = generate_keyframes(
        m, image[None], "a room", None, cams, render, mask, _refs(), sampling=dataclasses.replace(kw, seed=6)
    )
    assert torch.equal(own, want_own) and torch.equal(scene, want_scene)
    assert not torch.allclose(
        own, generate_keyframes(m, image[None], "a room", None, cams, render, mask, _refs(), sampling=kw)
    )
    with pytest.raises(InvalidInputError, match="Uni3C"):
        WorldStereoFrameGenerator(uni3c_models, "a room")


def test_sampling_steps_is_the_one_default_of_both_samplers():
    """The step count the nodes show progress for is what generate_keyframes runs: given steps, else the
    checkpoint's DMD steps (release 4) or UniPC's 40 (the release pipeline's default)."""
    from types import SimpleNamespace

    from worldstereo_core.models.generate import sampling_steps
    from worldstereo_core.models.loading import DMDSettings
    from worldstereo_core.models.sampling import DEFAULT_UNIPC_STEPS

    dmd = SimpleNamespace(
        default_sampler="dmd", transformer=SimpleNamespace(ws_config=SimpleNamespace(dmd=DMDSettings(steps=4)))
    )
    unipc = SimpleNamespace(default_sampler="unipc", transformer=SimpleNamespace())
    assert DEFAULT_UNIPC_STEPS == 40
    assert sampling_steps(dmd) == 4 and sampling_steps(dmd, "unipc") == 40 and sampling_steps(dmd, None, 7) == 7
    assert sampling_steps(unipc) == 40 and sampling_steps(unipc, "dmd") == DMDSettings().steps
    assert sampling_steps(unipc, None, 0) == 40  # 0 = the default, as the nodes' steps widget says
