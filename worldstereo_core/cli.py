"""Command line over the library (``python -m worldstereo_core`` or ``worldstereo``).

    worldstereo preview --scene room --out OUT      the scene loop on a synthetic scene (oracle)
    worldstereo render CLOUD.ply CAMERA.json OUT.mp4 render a cloud along a camera.json
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
        print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {time.time() - start:5.1f}s",
              end="" if done < total else "\n", file=sys.stderr, flush=True)

    return report


def cmd_preview(args: argparse.Namespace) -> int:
    from . import export, oracle, pipeline, synthetic

    scene = synthetic.make_scene(args.scene, args.seed)
    corruption = oracle.DepthCorruption() if args.corrupt_depth else None
    result = pipeline.run_oracle_loop(
        scene, args.trajectories.split(","), height=args.height, width=args.width,
        depth_corruption=corruption, seed=args.seed, progress=_progress("scene loop"),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export.save_pointcloud_ply(out / "merged_cloud.ply", result.cloud)
    export.save_cameras_glb(out / "scene.glb", result.cloud,
                            [(s.name, s.trajectory.cameras) for s in result.steps])
    for s in result.steps:
        export.save_video_mp4(out / f"ggm_render_{s.name}.mp4", s.render.rgb, fps=8)
        export.save_video_mp4(out / f"frames_{s.name}.mp4", s.frames, fps=8)
    report = pipeline.loop_report(result)
    export.write_text_atomic(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    sc = report["scores"]
    print(f"F-score {sc['fscore']:.4f} (precision {sc['precision']:.4f}, recall {sc['recall']:.4f}) "
          f"at {sc['threshold']:.4f} = 1% of the scene extent; outputs in {out}")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="worldstereo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
