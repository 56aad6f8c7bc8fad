"""The training gate (issue: CPU, tiny size, synthetic data): 200 steps of each stage, run through the
real command line, cut the mean loss of the last 10 steps to at most half of the first 10; the trained
tiny checkpoint then runs in the Scene Loop.

The memory stage's gate runs from scratch. From the camera stage's output (base and GGM frozen, the
paper's recipe) the branch starts exactly at the camera model (zero-initialised projections), so its
loss can only fall by what the memory branch adds, and one step's loss is dominated by its noise levels
(at seed 0 a step's loss ranges 0.005–0.5). Measured on the gate's camera checkpoint (first-10 mean 1.127
→ last-10 0.127), 200 memory steps: the raw gate measure reads 0.144 → 0.0050 (0.035, a "pass") only
because steps 191–200 drew low noise levels — the frozen camera model's own loss on those very batches
is 0.0077 against 0.170 on steps 1–10. Paired on the same batches (``--baseline-loss``: the memory
branch off), the branch's own gain is loss / camera-model loss = 0.80 over steps 1–20, 0.68 over steps
181–200, 0.69 over the last 50 (lr 3e-3: 0.66; 1e-2: 0.81, unstable): it removes about a third of the
camera model's loss in 200 steps, not half. Why so little: on the 4-clip tiny set the camera model has
memorised the clips and hardly reads the render's content (one batch, σ 0.2–0.95: loss 0.15238 with the
memory stage's cache, 0.15236 with the input view alone, 0.348 without the GGM branch — it uses the
branch for the cameras and mask), so references and pointmaps add little beyond capacity. So the gate
cannot hold honestly from the camera checkpoint;
the paired check below keeps that recipe honest (the memory branch must learn beyond the frozen camera
model), `test_training.py` checks its frozen parameters. The dmd stage distils the memory stage's output.
"""

from __future__ import annotations

import json

import pytest
import torch

from tiny_models import TINY_FILES, write_tiny_models
from worldstereo_core.cli import main
from worldstereo_core.interfaces import LoopConfig
from worldstereo_core.models import SamplingSettings, WorldStereoFrameGenerator, load_models
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

    # the paper's recipe: the memory stage from the camera checkpoint, base and GGM frozen. Paired on the
    # same batches, the memory branch must beat the frozen camera model (measured: 0.80 over steps 1–20,
    # 0.79 over 41–60; a branch that learned nothing reads 1.0, see the module docstring)
    paired = common[:3] + ["60"] + common[4:]
    args = ["--stage", "memory", "--out", str(tmp_path / "paired"), "--init", str(tmp_path / "camera")]
    assert main(["train", *args, *paired, "--baseline-loss"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "paired" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(rows[0]["baseline_loss"], rel=1e-5)  # zero init: the camera model
    late = rows[30:]
    gain = sum(r["loss"] for r in late) / sum(r["baseline_loss"] for r in late)
    assert gain <= 0.9, (
        f"memory branch from the camera checkpoint: loss / camera-model loss {gain:.3f} over steps 31–60"
    )

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
    generator = WorldStereoFrameGenerator(bundle, "a bright indoor room", sampling=SamplingSettings(seed=0))
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
