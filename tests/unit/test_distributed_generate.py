"""``torchrun -m worldstereo_core generate`` over several processes gives the frames of one
process, and a failure on one rank stops every rank (issue: several GPUs; CPU proof, gloo)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from testsupport import run_worldstereo, write_room_cloud_and_camera
from tiny_models import RELEASE_FOLDERS, write_tiny_models
from worldstereo_core.distributed import DistributedContext, RankFailedError, run_ranks

H, W = 32, 48


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    paths = write_tiny_models(root / "models", variants=("dmd",))
    view, *_ = write_room_cloud_and_camera(root, H, W, preset="right", num_frames=3, ply_name="cache.ply")
    Image.fromarray((view.image[0].numpy() * 255).astype(np.uint8)).save(root / "image.png")
    args = [
        "generate",
        "--worldstereo",
        str(paths[RELEASE_FOLDERS["dmd"]]),
        "--text-encoder",
        str(paths["text_encoder"]),
        "--image-encoder",
        str(paths["image_encoder"]),
        "--vae",
        str(paths["vae"]),
        "--image",
        str(root / "image.png"),
        "--camera",
        str(root / "camera.json"),
        "--cloud",
        str(root / "cache.ply"),
        "--prompt",
        "a room",
        "--height",
        str(H),
        "--width",
        str(W),
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--seed",
        "7",
    ]
    return root, args


def _generate(args: list[str], out, nproc: int) -> np.ndarray:
    run = run_worldstereo(args + ["--out", str(out)], nproc=nproc)
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"on {nproc} process(es)" in run.stdout
    return np.load(out / "frames.npy")


def test_two_processes_generate_the_frames_of_one(inputs):
    root, args = inputs
    one = _generate(args, root / "one", 1)
    two = _generate(args + ["--shard-weights"], root / "two", 2)
    assert one.shape == (3, H, W, 3) and np.isfinite(one).all() and one.std() > 1e-3
    assert np.abs(two - one).max() <= 1e-4
    assert (root / "two" / "frames.mp4").stat().st_size > 0 and len(list((root / "two" / "frames").iterdir())) == 3


def test_bad_input_fails_before_loading_on_every_rank(inputs):
    root, args = inputs
    bad = list(args)
    bad[bad.index("--camera") + 1] = str(root / "missing.json")
    run = run_worldstereo(bad + ["--out", str(root / "bad")], nproc=2, timeout=600)
    assert run.returncode != 0 and "missing.json" in run.stderr
    assert not (root / "bad").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ctx = DistributedContext(rank, 2, torch.device("cpu"))

    def work() -> int:
        if rank == 1:
            raise ValueError("rank 1 broke")
        return 42

    try:
        run_ranks(ctx, work)
        queue.put((rank, "ok"))
    except RankFailedError as exc:
        queue.put((rank, f"RankFailedError: {exc}"))
    except ValueError as exc:
        queue.put((rank, f"ValueError: {exc}"))
    finally:
        dist.destroy_process_group()


def test_an_error_on_one_rank_ends_all_ranks():
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_rank_main, args=(_free_port(), queue), nprocs=2, join=True)
    results = dict(queue.get() for _ in range(2))
    assert results[1] == "ValueError: rank 1 broke"
    assert results[0].startswith("RankFailedError") and "1 other rank" in results[0]
