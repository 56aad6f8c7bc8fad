"""Training over several processes (``torchrun -m worldstereo_core train``) is the single-process run of
the same global batch: CPU proof with the gloo backend and 2 real processes, tiny size, a few steps.

* data parallel, replicated weights (camera stage): each rank a half of the global batch, gradients
  averaged by an all-reduce;
* sequence parallel + FSDP2 (memory stage, resumed from a single-process run's checkpoint): every rank
  the whole batch on half of the tokens, the paper's memory branch included;
* data parallel, with FSDP2 (dmd stage: generator, fake and real score each sharded) and without: the
  regression term lives on the rank holding the global batch's first row.

Each compares the logged loss of every step and the final weights with a single-process run. Without
gradient averaging the ranks would step on half-batch gradients and the comparison fails (measured, see
``_assert_same_run``).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from testsupport import run_worldstereo
from tiny_models import write_tiny_models
from worldstereo_core.models import load_worldstereo
from worldstereo_core.training import TrainSettings, train

COMMON = ["--size", "tiny", "--num-samples", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_train_models")
    write_tiny_models(root, variants=(), moge=False, uni3c=False)
    return root


def _single(out, stage, models, **kw):
    return train(
        TrainSettings(stage=stage, out=out, size="tiny", models_dir=models, num_samples=2, progress=False, **kw)
    )


def _torchrun(args, nproc=2):
    run = run_worldstereo(["train", *args, *COMMON], nproc=nproc)
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"({nproc} process(es))" in run.stdout
    return run


def _losses(folder):
    return [json.loads(x)["loss"] for x in (folder / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(one, two, steps, start):
    """Same logged losses and final weights, to 5 % of the largest weight change since ``start`` (the run's
    initial checkpoint): Adam turns float noise in near-zero gradients into changes of up to a few % of lr
    (dmd, measured: worst 1.9e-5 of a 6.0e-4 change, median 4e-8; the same run with the gradient averaging
    switched off: worst 1.2e-3, median 1.1e-3)."""
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # rank 0 alone wrote, once per step
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-4, abs=1e-6)
    a = load_worldstereo(one, dtype=torch.float32).state_dict()
    b = load_worldstereo(two, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    s = load_worldstereo(start, dtype=torch.float32).state_dict()
    moved = max(float((a[k] - s[k]).abs().max()) for k in s)
    assert moved > 0  # the compared steps trained something
    assert worst <= 0.05 * moved, (worst, moved)
    assert json.loads((two / "config.json").read_text()) == json.loads((one / "config.json").read_text())


def test_data_parallel_camera_stage_equals_one_process(tmp_path, models):
    cam = _single(tmp_path / "cam", "camera", models, steps=1, batch=2)  # from a checkpoint: base frozen
    one = _single(tmp_path / "one", "camera", models, steps=4, batch=4, save_every=2, init=cam)
    two = tmp_path / "two"
    _torchrun(
        [
            "--stage",
            "camera",
            "--steps",
            "4",
            "--batch",
            "4",
            "--save-every",
            "2",
            "--out",
            str(two),
            "--models-dir",
            str(models),
            "--init",
            str(cam),
        ]
    )
    _assert_same_run(one, two, 4, start=cam)
    assert json.loads((two / "training.json").read_text())["processes"] == 2
    assert not list(two.glob(".*tmp*"))  # atomic writes left nothing behind


def test_sequence_parallel_memory_stage_resumes_a_single_process_run(tmp_path, models):
    cam = _single(tmp_path / "cam", "camera", models, steps=1, batch=2)
    one = _single(tmp_path / "one", "memory", models, steps=4, batch=2, save_every=2, init=cam)
    half = _single(tmp_path / "half", "memory", models, steps=2, batch=2, save_every=2, init=cam)
    shutil.copytree(half, tmp_path / "two")
    _torchrun(
        [
            "--stage",
            "memory",
            "--steps",
            "4",
            "--batch",
            "2",
            "--save-every",
            "2",
            "--out",
            str(tmp_path / "two"),
            "--models-dir",
            str(models),
            "--init",
            str(cam),
            "--resume",
            "--sequence-parallel",
            "--shard-weights",
        ]
    )
    _assert_same_run(one, tmp_path / "two", 4, start=half)  # steps 3–4 ran under torchrun


def test_data_parallel_dmd_stage_equals_one_process_sharded_or_not(tmp_path, models):
    """With FSDP2 every rank computes the teacher's paired sample (its forwards are collective); with
    replicated weights only the rank holding the global batch's first row does — the same run either way."""
    mem = _single(tmp_path / "mem", "memory", models, steps=1, batch=2)
    one = _single(tmp_path / "one", "dmd", models, steps=2, init=mem)
    for name, extra in (("sharded", ["--shard-weights"]), ("replicated", [])):
        two = tmp_path / name
        args = ["--stage", "dmd", "--steps", "2", "--out", str(two), "--models-dir", str(models), "--init", str(mem)]
        _torchrun([*args, *extra])
        _assert_same_run(one, two, 2, start=mem)


def test_layouts_that_cannot_work_fail_clearly(tmp_path):
    from worldstereo_core.distributed import DistributedContext
    from worldstereo_core.errors import InvalidOptionError
    from worldstereo_core.training.parallel import TrainParallel

    two = TrainParallel(DistributedContext(1, 2, torch.device("cpu")))
    with pytest.raises(InvalidOptionError, match="must divide by the 2 processes"):
        two.check(3)
    assert two.rows(4) == slice(2, 4)  # rank 1 of 2: the second half of the global batch
    assert TrainParallel(two.ctx, sequence_parallel=True).rows(4) == slice(0, 4)
    with pytest.raises(InvalidOptionError, match="torchrun"):
        train(
            TrainSettings(stage="camera", out=tmp_path / "x", size="tiny"), parallel=TrainParallel(shard_weights=True)
        )
    assert not (tmp_path / "x").exists()
