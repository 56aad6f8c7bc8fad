"""The loader's multi-GPU mode: a pool of worker processes generates together (sequence
parallel) and answers like one process; interrupts, errors and a dead worker end every rank
cleanly. CPU proof with gloo and tiny weights written as real files."""

from __future__ import annotations

import pytest
import torch

from tiny_models import RELEASE_FOLDERS, write_tiny_models
from worldstereo_core.cameras import Cameras, intrinsics_from_fov
from worldstereo_core.distributed.workers import GenerationWorkers, WorkerPoolError
from worldstereo_core.errors import WorldStereoError
from worldstereo_core.models.generate import SamplingSettings, generate_keyframes, load_models

H, W, F = 16, 32, 3


@pytest.fixture(scope="module")
def load_kwargs(tmp_path_factory):
    paths = write_tiny_models(tmp_path_factory.mktemp("models"), variants=("dmd",))
    return {
        "worldstereo": str(paths[RELEASE_FOLDERS["dmd"]]),
        "text_encoder": str(paths["text_encoder"]),
        "image_encoder": str(paths["image_encoder"]),
        "vae": str(paths["vae"]),
        "dtype": torch.float32,
    }


@pytest.fixture(scope="module")
def pool(load_kwargs):
    workers = GenerationWorkers(2, load_kwargs, device_type="cpu")
    yield workers
    workers.close()


def _job(seed=0):
    g = torch.Generator().manual_seed(seed)
    w2c = torch.eye(4).repeat(F, 1, 1)
    w2c[:, 0, 3] = torch.linspace(0.0, 0.4, F)
    K = intrinsics_from_fov(60.0, H, W).float().expand(F, 3, 3).clone()
    return {
        "image": torch.rand(H, W, 3, generator=g),
        "prompt": "a room",
        "keyframe_cameras": Cameras(w2c, K, H, W),
        "render": torch.rand(F, H, W, 3, generator=g),
        "render_mask": (torch.rand(F, H, W, generator=g) > 0.5).float(),
        "sampling": SamplingSettings(seed=5),
    }


def test_pool_generates_what_one_process_generates(pool, load_kwargs):
    job = _job()
    steps = []
    frames = pool.generate(on_step=lambda i, n: steps.append((i, n)), **job)
    models = load_models(**load_kwargs, device="cpu")
    reference = generate_keyframes(models, **job)
    assert frames.shape == (F, H, W, 3) and frames.std() > 1e-3
    assert float((frames - reference).abs().max()) <= 1e-4
    assert steps and steps[-1][0] + 1 == steps[-1][1]  # progress arrives from rank 0


class _Stop(Exception):
    pass


def test_interrupt_stops_every_rank_and_the_pool_stays_usable(pool):
    calls = {"n": 0}

    def interrupt():
        calls["n"] += 1
        if calls["n"] > 3:
            raise _Stop("user pressed cancel")
        return False

    with pytest.raises(_Stop):
        pool.generate(interrupt=interrupt, **_job())
    assert pool.alive
    assert pool.generate(**_job(1)).shape == (F, H, W, 3)


def test_an_error_reaches_the_caller_and_the_pool_stays_usable(pool):
    job = _job()
    job["render"] = job["render"][:, :8]  # wrong size on every rank
    with pytest.raises(WorldStereoError, match="render"):
        pool.generate(**job)
    assert pool.alive and pool.generate(**_job()).shape == (F, H, W, 3)


def test_a_dead_worker_closes_the_pool(load_kwargs):
    workers = GenerationWorkers(2, load_kwargs, device_type="cpu")
    procs = list(workers._procs)
    procs[1].kill()
    procs[1].join(10)
    with pytest.raises(WorkerPoolError, match=r"\[1\]"):
        workers.generate(**_job())
    assert not workers.alive and not any(p.is_alive() for p in procs)
    with pytest.raises(WorkerPoolError):
        workers.generate(**_job())
