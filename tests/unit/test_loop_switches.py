"""The paper's ablation switches of the scene loop (LoopConfig.ggm / ssm / clip_alignment / bank_update)."""

from __future__ import annotations

import pytest
import torch

from worldstereo_core import synthetic
from worldstereo_core.interfaces import default_config
from worldstereo_core.oracle import OracleDepth, OracleGenerator
from worldstereo_core.pipeline import run_scene_loop

H, W = 64, 96


class Recorder(OracleGenerator):
    """The oracle generator, keeping what each call was given."""

    def __init__(self, scene):
        super().__init__(scene)
        self.calls = []

    def __call__(self, image, cameras, render, mask, references, **kw):
        self.calls.append((render.clone(), mask.clone(), references))
        return super().__call__(image, cameras, render, mask, references)


def _run(**changes):
    scene = synthetic.make_scene("room")
    view = scene.default_view(H, W)
    gen = Recorder(scene)
    result = run_scene_loop(
        view.image,
        view.cameras,
        view.depth,
        gen,
        OracleDepth(scene),
        ["orbit", "up"],
        default_config(H, W, **changes),
        valid=view.valid,
    )
    return view, gen, result


def test_defaults_give_the_generator_the_cache_render_and_the_references():
    _, gen, result = _run()
    (render, mask, refs), (render2, mask2, refs2) = gen.calls
    assert refs is not None and len(refs) >= 1 and refs2 is not None and len(refs2) >= 1
    assert float(mask[1:].mean()) < 0.9 and float(render[1:].abs().sum()) > 0  # the cache is seen
    assert len(result.bank) == 1 + 2 * 8


def test_ggm_off_gives_an_empty_render_but_the_start_image():
    view, gen, result = _run(ggm=False)
    for render, mask, _ in gen.calls:
        assert torch.equal(mask[1:], torch.ones_like(mask[1:]))
        assert float(render[1:].abs().max()) == 0.0
        torch.testing.assert_close(render[0], view.image[0])  # the start image still opens the clip
    assert len(result.steps) == 2 and len(result.cloud) > 0  # the loop still merges the clips


def test_ssm_off_gives_no_references_but_records_the_retrieval():
    _, gen, result = _run(ssm=False)
    assert all(refs is None for _, _, refs in gen.calls)
    assert all(s.references is not None and len(s.references) >= 1 for s in result.steps)


@pytest.mark.parametrize("alignment", ["depth", "umeyama"])
def test_alignment_and_bank_size(alignment):
    _, _, result = _run(clip_alignment=alignment, bank_update=3)
    assert len(result.bank) == 1 + 2 * 3
    # exact oracle depth: both alignments find scale 1 (umeyama reports one similarity per clip)
    for s in result.steps:
        aligned = [i for i, st in enumerate(s.alignment.status) if st == "aligned"]
        assert aligned
        assert torch.allclose(s.alignment.scale[aligned].float(), torch.ones(len(aligned)), atol=0.02)
