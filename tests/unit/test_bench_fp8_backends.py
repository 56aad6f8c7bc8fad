"""bench/fp8_matmul_backends.py (issue 13: choose the fp8 matmul by measuring): the GEMM shapes come
from the model and the workload, backends that cannot run say why, and the CPU path really quantises.

No timing is asserted: the figures are the GPU run's, in bench/results/.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from testsupport import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import fp8_matmul_backends as fb

from worldstereo_core.models import build_transformer
from worldstereo_core.models.fp8 import fp8_layer_names
from worldstereo_core.models.transformer_worldstereo import FULL_TRANSFORMER_CONFIG


def test_release_shapes_are_the_model_projections_at_issue_13_tokens():
    shapes, tokens = fb.model_shapes(False, 480, 832, 21, 8)
    # 480×832 → 60×104 latents → 30×52 patches per frame; 21 keyframes + 8 references = issue 13's 45 240
    assert (tokens.target, tokens.reference) == (21 * 30 * 52, 8 * 30 * 52)
    assert tokens.target + tokens.reference == 45_240
    width = FULL_TRANSFORMER_CONFIG["num_attention_heads"] * FULL_TRANSFORMER_CONFIG["attention_head_dim"]
    layers = FULL_TRANSFORMER_CONFIG["num_layers"]
    by_mkn = {(s.m, s.k, s.n): s.count for s in shapes}
    assert by_mkn[(tokens.target, width, FULL_TRANSFORMER_CONFIG["ffn_dim"])] == layers  # FFN up
    assert by_mkn[(tokens.target, FULL_TRANSFORMER_CONFIG["ffn_dim"], width)] == layers  # FFN down
    assert by_mkn[(tokens.reference, width, width)] == 2 * layers  # reference keys and values
    assert by_mkn[(512, width, width)] == 2 * layers and by_mkn[(257, width, width)] == 2 * layers
    with torch.device("meta"):
        model = build_transformer("dmd")
    # every fp8 layer is counted once per call: once each, plus the reference k/v calls
    assert sum(s.count for s in shapes) == len(fp8_layer_names(model)) + 2 * layers
    flops = [s.flops * s.count for s in shapes]
    assert flops == sorted(flops, reverse=True)


def test_a_layer_without_a_token_rule_is_an_error():
    with pytest.raises(ValueError, match="no token rule"):
        fb.projection_rows("blocks.0.attn1.to_gate", fb.Workload(10, 4))


def test_a_missing_library_is_reported_not_raised():
    with pytest.raises(fb.BackendUnavailable, match="not importable"):
        fb._import("worldstereo_no_such_fp8_library")


def test_cpu_run_measures_the_cpu_path_and_says_what_is_not_available(tmp_path, capsys):
    out = tmp_path / "fp8.json"
    assert fb.main(["--tiny", "--device", "cpu", "--warmup", "0", "--iters", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # no fp8 GEMM on the CPU: the libraries and the fast-accumulation GEMM say so instead of failing
    for name in ("ours_rowwise_fast_accum", "torchao_rowwise", "torchao_tensor", "comfy_kitchen_tensor"):
        assert f"{name}: not available: " in printed
    assert "dequantising fallback" in printed  # ours runs, and says it is not an fp8 speed here
    report = json.loads(out.read_text())
    assert set(report["not_available"]) == {
        "ours_rowwise_fast_accum",
        "torchao_rowwise",
        "torchao_tensor",
        "comfy_kitchen_tensor",
    }
    shapes = {(s["m"], s["k"], s["n"]) for s in report["shapes"]}
    for backend in ("bf16", "ours_rowwise", "ours_tensor"):
        rows = [r for r in report["results"] if r["backend"] == backend]
        assert {(r["m"], r["k"], r["n"]) for r in rows} == shapes
        for r in rows:
            if backend == "bf16":
                assert r["rel_err"] == 0.0
            else:  # e4m3 rounding (3 mantissa bits): a real, small error
                assert 1e-3 < r["rel_err"] < 0.08
    assert report["step"]["bf16"]["vs_bf16"] == 1.0
    assert set(report["step"]) == {"bf16", "ours_rowwise", "ours_tensor"}


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        fb.main(["--tiny", "--device", "cpu", "--backends", "bf16,cublaslt"])
    assert exc.value.code == 2
