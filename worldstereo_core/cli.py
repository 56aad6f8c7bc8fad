"""Command line over the library (``python -m worldstereo_core`` or ``worldstereo``).

worldstereo preview --scene room --out OUT      the scene loop on a synthetic scene (oracle)
worldstereo render CLOUD.ply CAMERA.json OUT.mp4 render a cloud along a camera.json
worldstereo generate --worldstereo DIR --wan DIR --image IMG --camera CAMERA.json --cloud CACHE.ply
                     --prompt TEXT --out OUT  one trajectory with the real model
                     (under torchrun --nproc-per-node N: sequence parallel over N processes)
worldstereo train --stage {camera,memory,dmd} --size {tiny,full} --steps N --out DIR [--resume]
                     (under torchrun --nproc-per-node N: data parallel, or --sequence-parallel; --shard-weights)
worldstereo version
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__
from .errors import WorldStereoError


def _progress(label: str):
    start = time.time()

    def report(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        print(
            f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {time.time() - start:5.1f}s",
            end="" if done < total else "\n",
            file=sys.stderr,
            flush=True,
        )

    return report


def cmd_preview(args: argparse.Namespace) -> int:
    from . import export, oracle, pipeline, synthetic

    scene = synthetic.make_scene(args.scene, args.seed)
    corruption = oracle.DepthCorruption() if args.corrupt_depth else None
    result = pipeline.run_oracle_loop(
        scene,
        args.trajectories.split(","),
        height=args.height,
        width=args.width,
        depth_corruption=corruption,
        seed=args.seed,
        progress=_progress("scene loop"),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export.save_pointcloud_ply(out / "merged_cloud.ply", result.cloud)
    export.save_cameras_glb(out / "scene.glb", result.cloud, [(s.name, s.trajectory.cameras) for s in result.steps])
    for s in result.steps:
        export.save_video_mp4(out / f"ggm_render_{s.name}.mp4", s.render.rgb, fps=8)
        export.save_video_mp4(out / f"frames_{s.name}.mp4", s.frames, fps=8)
    report = pipeline.loop_report(result)
    export.write_text_atomic(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    sc = report["scores"]
    print(
        f"F-score {sc['fscore']:.4f} (precision {sc['precision']:.4f}, recall {sc['recall']:.4f}) "
        f"at {sc['threshold']:.4f} = 1% of the scene extent; outputs in {out}"
    )
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from . import export, pointcloud, render, trajectory

    cloud = pointcloud.load_ply(args.cloud)
    traj = trajectory.load_camera_json(args.camera)
    cams = traj.keyframes() if args.keyframes else traj.cameras
    out = render.render_point_cloud(cloud, cams, radius=args.radius)
    export.save_video_mp4(args.out, out.rgb, fps=args.fps)
    if args.mask_out:
        export.save_video_mp4(args.mask_out, out.mask[..., None].expand(-1, -1, -1, 3), fps=args.fps)
    print(f"rendered {len(cams)} frames of {cams.height}×{cams.width} to {args.out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """One trajectory with the real model; several processes under torchrun share the work."""
    import numpy as np
    import torch
    from PIL import Image

    from . import export, pointcloud, render, trajectory
    from .distributed import enable_sequence_parallel, init_from_env, run_ranks, shard_weights, shutdown
    from .errors import InvalidImageError
    from .memory import MemoryBank
    from .models.generate import SamplingSettings, generate_keyframes, load_models
    from .retrieval import retrieve

    ctx = init_from_env(args.device)
    try:
        # inputs first: a bad file fails before minutes of model loading
        traj = trajectory.load_camera_json(args.camera)
        height, width = args.height or traj.cameras.height, args.width or traj.cameras.width
        if height % 16 or width % 16:
            raise InvalidImageError(f"--height/--width must be multiples of 16, got {height}x{width}")
        traj = traj.resized(height, width)
        try:
            pil = Image.open(args.image).convert("RGB").resize((width, height), Image.BICUBIC)
        except (OSError, ValueError) as exc:
            raise InvalidImageError(f"cannot read the image {args.image}: {exc}") from None
        image = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
        cloud = pointcloud.load_ply(args.cloud)
        bank = MemoryBank.load(args.bank) if args.bank else None
        keyframes = traj.keyframes()
        ggm = render.render_point_cloud(cloud, keyframes, first_frame=image)

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        models = load_models(
            args.worldstereo,
            args.wan,
            text_encoder=args.text_encoder,
            image_encoder=args.image_encoder,
            vae=args.vae,
            device=ctx.device,
            dtype=dtype,
        )
        if ctx.parallel:
            enable_sequence_parallel(models.transformer)
            if args.shard_weights:
                shard_weights(models.transformer)
        refs = retrieve(traj, bank) if bank is not None and models.uses_references else None
        progress = _progress(f"generate (rank {ctx.rank}/{ctx.world_size})") if ctx.is_main else None
        frames = run_ranks(
            ctx,
            lambda: generate_keyframes(
                models,
                image,
                args.prompt,
                None,
                keyframes,
                ggm.rgb,
                ggm.mask,
                refs,
                sampling=SamplingSettings(sampler=args.sampler, steps=args.steps, seed=args.seed),
                on_step=progress,
            ),
        )
        if ctx.is_main:
            out = Path(args.out)
            export.save_video_mp4(out / "frames.mp4", frames, fps=args.fps)
            export.save_images_png(out / "frames", frames)
            export.save_video_mp4(out / "ggm_render.mp4", ggm.rgb, fps=args.fps)
            trajectory.save_camera_json(out / "camera.json", traj)
            np.save(out / "frames.npy", frames.numpy())
            print(f"{len(frames)} keyframes of {height}x{width} on {ctx.world_size} process(es) -> {out}")
        return 0
    finally:
        shutdown(ctx)


def cmd_train(args: argparse.Namespace) -> int:
    """One training stage; several processes under torchrun train together (``training/parallel.py``)."""
    from .distributed import init_from_env, run_ranks, shutdown
    from .training import TrainSettings, train
    from .training.parallel import TrainParallel

    optional = {
        k: getattr(args, k) for k in ("height", "width", "num_keyframes", "num_samples", "batch", "lr", "save_every")
    }
    settings = TrainSettings(
        stage=args.stage,
        size=args.size,
        steps=args.steps,
        out=Path(args.out),
        resume=args.resume,
        init=Path(args.init) if args.init else None,
        data=Path(args.data) if args.data else None,
        models_dir=Path(args.models_dir) if args.models_dir else None,
        wan=Path(args.wan) if args.wan else None,
        dtype=args.dtype,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        baseline_loss=args.baseline_loss,
        gradient_checkpointing=True if args.gradient_checkpointing else None,
        **{k: v for k, v in optional.items() if v is not None},
    )
    ctx = init_from_env(args.device)
    try:
        parallel = TrainParallel(ctx, sequence_parallel=args.sequence_parallel, shard_weights=args.shard_weights)
        out = run_ranks(ctx, lambda: train(settings, parallel=parallel))
        if ctx.is_main:
            print(
                f"checkpoint (config.json + model.safetensors) and metrics.jsonl in {out} "
                f"({ctx.world_size} process(es))"
            )
        return 0
    finally:
        shutdown(ctx)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="worldstereo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    pv = sub.add_parser("preview", help="run the scene loop on a synthetic scene with the oracle generator")
    pv.add_argument("--scene", default="room", choices=["room", "outdoor"])
    pv.add_argument("--out", required=True, help="output folder")
    pv.add_argument("--trajectories", default="orbit,up,right,left")
    pv.add_argument("--height", type=int, default=240)
    pv.add_argument("--width", type=int, default=416)
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--corrupt-depth", action="store_true", help="per-frame scale/shift ±20 %% and 1 %% noise")
    pv.set_defaults(func=cmd_preview)

    r = sub.add_parser("render", help="render a PLY cloud along a camera.json (GGM condition)")
    r.add_argument("cloud")
    r.add_argument("camera")
    r.add_argument("out", help="output MP4")
    r.add_argument("--mask-out", help="also write the hole mask (white = hole) as an MP4")
    r.add_argument("--keyframes", action="store_true", help="only the 21 keyframes")
    r.add_argument("--radius", type=float, default=0.008)
    r.add_argument("--fps", type=float, default=16)
    r.set_defaults(func=cmd_render)

    g = sub.add_parser(
        "generate",
        help="generate one trajectory with the real model (torchrun --nproc-per-node N: N processes)",
        description="Generate the 21 keyframes of one trajectory: the 3D cache (PLY) rendered along the "
        "camera.json is the GGM condition; with --bank, references are retrieved from a saved memory bank "
        "(SSM). Started with torchrun --nproc-per-node N, the transformer runs sequence parallel over N "
        "processes (one GPU each; gloo on CPUs).",
    )
    g.add_argument("--worldstereo", required=True, help="a worldstereo-camera/-memory/-memory-dmd folder")
    g.add_argument("--wan", help="a diffusers Wan2.1-I2V-14B-480P folder (encoders, VAE, tokenizer)")
    g.add_argument("--text-encoder", help="umt5_xxl_*.safetensors (instead of --wan)")
    g.add_argument("--image-encoder", help="clip_vision_h.safetensors (instead of --wan)")
    g.add_argument("--vae", help="wan_2.1_vae.safetensors (instead of --wan)")
    g.add_argument("--image", required=True, help="the first frame (the input view)")
    g.add_argument("--camera", required=True, help="the trajectory's camera.json (upstream format)")
    g.add_argument("--cloud", required=True, help="the 3D cache as a PLY point cloud")
    g.add_argument("--bank", help="a saved memory bank folder (SSM references; memory variants)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--out", required=True, help="output folder (frames.mp4, frames/, frames.npy, camera.json)")
    g.add_argument("--height", type=int, help="frame height (default: the camera.json's image)")
    g.add_argument("--width", type=int, help="frame width (default: the camera.json's image)")
    g.add_argument("--sampler", choices=["dmd", "unipc"], help="default: dmd for the DMD variant, else unipc")
    g.add_argument("--steps", type=int)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    g.add_argument("--device", choices=["cuda", "cpu"], help="default: CUDA when available")
    g.add_argument(
        "--shard-weights", action="store_true", help="with several processes: FSDP2, 1/N of the weights each"
    )
    g.add_argument("--fps", type=float, default=16)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train a stage: camera (GGM), memory (the paper's SSM) or dmd (distillation)")
    t.add_argument("--stage", required=True, choices=["camera", "memory", "dmd"])
    t.add_argument(
        "--size",
        default="full",
        choices=["tiny", "full"],
        help="full: the released sizes; tiny: the test config (CPU, synthetic data)",
    )
    t.add_argument("--steps", type=int, required=True, help="total optimizer steps (with --resume: up to this step)")
    t.add_argument(
        "--out", required=True, help="output folder: config.json, model.safetensors, metrics.jsonl, trainer state"
    )
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved step")
    t.add_argument(
        "--init", help="checkpoint to start from (memory: the camera stage's output; dmd: the memory stage's)"
    )
    t.add_argument(
        "--data",
        help="folder of clip folders (frames/ or video.mp4, camera.json, depth.safetensors); "
        "default: the synthetic scenes",
    )
    t.add_argument("--models-dir", help="ComfyUI models folder with the Wan VAE, UMT5 and CLIP files")
    t.add_argument("--wan", help="a diffusers Wan2.1-I2V-14B-480P folder (encoders + VAE)")
    t.add_argument("--height", type=int)
    t.add_argument("--width", type=int)
    t.add_argument("--num-keyframes", type=int)
    t.add_argument("--num-samples", type=int, help="clips drawn from the dataset")
    t.add_argument("--batch", type=int, help="noise levels per step (the same clip)")
    t.add_argument("--lr", type=float)
    t.add_argument("--save-every", type=int)
    t.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: frozen weights and compute in bf16")
    t.add_argument("--gradient-checkpointing", action="store_true", help="(on by default at full size)")
    t.add_argument("--device", help="cuda / cpu (default: cuda if available)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="under torchrun: every process runs the whole batch on a slice of the tokens (Ulysses); "
        "default: data parallel, --batch (the global batch) split over the processes",
    )
    t.add_argument(
        "--shard-weights", action="store_true", help="under torchrun: FSDP2, each process holds 1/N of the weights"
    )
    t.add_argument(
        "--baseline-loss",
        action="store_true",
        help="memory stage: also log baseline_loss, the same batch's loss with the memory branch off (the frozen "
        "camera model); loss / baseline_loss is the branch's own gain",
    )
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("version", help="print the version")
    v.set_defaults(func=lambda a: print(__version__) or 0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WorldStereoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
