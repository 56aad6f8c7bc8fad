"""The opt-in fp8 self-attention (``sdpa_fp8_cudnn``, worldstereo_core/models/fp8_attention.py).

cuDNN's kernel needs a Hopper GPU; here (CPU) we check what can be checked without one: the per-tensor
quantisation, the plain-PyTorch statement of the kernel's arithmetic against exact attention in float64,
that the transformer sends every self-attention through the fp8 route when asked (and back), that the
custom op traces under torch.compile's fake tensors, and that an unusable backend is refused up front
with the reason. bench/issue13_targets.py checks the kernel against the same reference on the GPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from testsupport import randomize_zero_inits, tiny_transformer_inputs
from worldstereo_core.errors import InvalidOptionError
from worldstereo_core.models import fp8_attention as fa
from worldstereo_core.models import transformer_worldstereo as tw
from worldstereo_core.models.fp8 import FP8_MAX
from worldstereo_core.models.generate import load_models
from worldstereo_core.models.transformer_worldstereo import (
    ATTENTION_BACKENDS,
    SDPA_CUDNN,
    SDPA_FP8_CUDNN,
    RefJointAttnProcessor,
)
from worldstereo_core.tiny_configs import build_tiny_transformer


def _exact(q, ks, vs):
    """Softmax attention in float64, ``[B, L, H, D]`` layout, keys/values concatenated along tokens."""
    k, v = torch.cat(ks, 1).double(), torch.cat(vs, 1).double()
    w = torch.einsum("blhd,bmhd->bhlm", q.double(), k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhlm,bmhd->blhd", w.softmax(-1), v)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_quantize_per_tensor_joins_the_parts_with_one_scale_and_rounds_like_e4m3():
    g = torch.Generator().manual_seed(0)
    small = torch.randn(1, 5, 2, 16, generator=g) * 0.01
    large = torch.randn(1, 7, 2, 16, generator=g) * 3.0
    q8, descale = fa.quantize_per_tensor([small, large])
    assert q8.dtype == torch.float8_e4m3fn and q8.shape == (1, 12, 2, 16) and q8.is_contiguous()
    assert descale.shape == (1, 1, 1, 1) and descale.dtype == torch.float32
    amax = max(small.abs().max(), large.abs().max())
    torch.testing.assert_close(descale.flatten()[0], amax / FP8_MAX)  # one scale: the larger part's amax
    joined = torch.cat([small, large], 1)
    back = q8.float() * descale
    assert back.abs().max() <= amax * (1 + 1e-6)  # the largest element maps onto 448, nothing overflows
    # e4m3 keeps 3 mantissa bits: a normal value is within half a unit (2^-4 relative) of its rounding
    normal = joined.abs() / descale.flatten()[0] >= 2**-6
    assert ((back - joined).abs() <= joined.abs() * 2**-4 + 1e-12)[normal].all()
    assert not torch.equal(back, joined)  # it did round


def test_reference_matches_exact_attention_to_fp8_precision():
    """The stated arithmetic (Q, K, V, P, O in e4m3) stays within a few % of exact attention and is not it."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 33, 3, 32, generator=g)
    ks = [torch.randn(2, n, 3, 32, generator=g) for n in (11, 33)]
    vs = [torch.randn(2, n, 3, 32, generator=g) for n in (11, 33)]
    got = fa.fp8_attention_reference(q, ks, vs)
    want = _exact(q, ks, vs)
    assert got.shape == q.shape and got.dtype == q.dtype
    err = _rel(got, want)
    assert 0.005 < err < 0.08, err  # five e4m3 roundings of ~2-3 % each, not exact
    cos = torch.nn.functional.cosine_similarity(got.double().flatten(), want.flatten(), dim=0)
    assert cos > 0.995


def test_reference_with_given_scales_checks_a_slice_of_a_larger_problem():
    """``descales``: the reference on some heads/queries at the full problem's scales equals the
    reference on the whole problem there (rows and heads are independent) — how the benchmark checks
    the kernel without materialising every score."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 40, 4, 16, generator=g)
    ks = [torch.randn(1, n, 4, 16, generator=g) for n in (8, 40)]
    vs = [torch.randn(1, n, 4, 16, generator=g) for n in (8, 40)]
    whole = fa.fp8_attention_reference(q, ks, vs)
    scales = tuple(fa.quantize_per_tensor(x)[1] for x in ([q], ks, vs))
    rows, heads = slice(3, 17), slice(1, 3)
    part = fa.fp8_attention_reference(
        q[:, rows, heads], [k[:, :, heads] for k in ks], [v[:, :, heads] for v in vs], scales
    )
    torch.testing.assert_close(part, whole[:, rows, heads], rtol=0, atol=1e-6)
    # without the scales the slice gets its own (smaller amax) and the numbers change
    own = fa.fp8_attention_reference(q[:, rows, heads], [k[:, :, heads] for k in ks], [v[:, :, heads] for v in vs])
    assert not torch.allclose(own, whole[:, rows, heads], rtol=0, atol=1e-6)


def test_fp8_attention_runs_its_glue_around_the_kernel_eager_and_compiled(monkeypatch):
    """``fp8_attention`` itself (quantise → the custom op → dequantise at V's scale) with the kernel replaced
    by its plain-PyTorch statement: equal to :func:`fp8_attention_reference`, eager and under
    ``torch.compile(fullgraph=True)``, and the op passes torch's custom-op checks (fake tensor, AOT
    dispatch)."""
    monkeypatch.setattr(fa, "_SDPA", fa._reference_sdpa_e4m3)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 24, 2, 16, generator=g)
    ks = [torch.randn(1, n, 2, 16, generator=g) * 2 for n in (8, 24)]
    vs = [torch.randn(1, n, 2, 16, generator=g) * 0.5 for n in (8, 24)]
    want = fa.fp8_attention_reference(q, ks, vs)
    torch.testing.assert_close(fa.fp8_attention(q, ks, vs), want, rtol=0, atol=0)
    torch._dynamo.reset()
    compiled = torch.compile(fa.fp8_attention, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, ks, vs), want, rtol=0, atol=0)
    (q8, dq), (k8, dk), (v8, dv) = (fa.quantize_per_tensor(x) for x in ([q], ks, vs))
    # test_schema compares e4m3 outputs with arithmetic the CPU has no e4m3 kernel for; the others run
    checks = ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.worldstereo.cudnn_fp8_sdpa.default, (q8, k8, v8, dq, dk, dv), test_utils=checks)


def test_fp8_attention_refuses_to_be_trained_through():
    q = torch.randn(1, 4, 2, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        fa.fp8_attention(q, [q.detach()], [q.detach()])


def test_unavailable_without_a_gpu_says_what_to_change():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    reason = fa.fp8_attention_unavailable()
    assert reason is not None and "GPU" in reason
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(RuntimeError, match="sdpa_fp8_cudnn.*GPU"):
        fa.fp8_attention(q, [q], [q])


@pytest.mark.parametrize("builds", [True, False])
def test_availability_probes_a_small_graph_once_per_device(monkeypatch, builds):
    """Past the GPU and the import, the answer is whether cuDNN builds an fp8 SDPA graph there (an
    importable package can still lack a usable cuDNN): probed once per device, the reason names the
    cuDNN version. The GPU and the package are stood in for; the graph build is what is under test."""
    import contextlib
    import sys
    import types

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setitem(sys.modules, "cudnn", types.SimpleNamespace(backend_version=lambda: 91300))
    sdpa = fa._CudnnFp8Sdpa()
    built = []

    def build(key):
        built.append(key)
        if not builds:
            raise RuntimeError("no fp8 engine for this graph")

    monkeypatch.setattr(sdpa, "_build", build)
    monkeypatch.setattr(fa, "_SDPA", sdpa)
    for _ in range(2):
        reason = fa.fp8_attention_unavailable("cuda:0")
        if builds:
            assert reason is None
        else:
            assert "cannot build its fp8 attention" in reason and "91300" in reason and "no fp8 engine" in reason
    assert len(built) == 1 and built[0].head_dim == 128  # once per device


def test_custom_op_fake_implementation_keeps_query_strides():
    """What torch.compile sees of the kernel (its fake implementation): shape, dtype and Q's strides."""
    with FakeTensorMode():
        q8 = torch.empty(1, 2, 6, 16, dtype=torch.float8_e4m3fn).transpose(1, 2)  # head-major storage
        k8 = torch.empty(1, 9, 2, 16, dtype=torch.float8_e4m3fn)
        s = torch.empty(1, 1, 1, 1)
        out = torch.ops.worldstereo.cudnn_fp8_sdpa(q8, k8, k8, s, s, s)
    assert out.shape == q8.shape and out.dtype == torch.float8_e4m3fn and out.stride() == q8.stride()


@pytest.mark.parametrize("variant", ["camera", "dmd"])
def test_transformer_routes_every_self_attention_through_fp8_and_back(monkeypatch, variant):
    """With ``sdpa_fp8_cudnn`` every self-attention (joint with references, plain, ControlNet) calls the fp8
    route — here its plain-PyTorch statement, as the CPU has no kernel — the output moves by fp8 rounding
    only, and ``sdpa_cudnn`` restores the exact numbers."""
    calls = []

    def reference(query, keys, values):
        calls.append(len(keys))
        return fa.fp8_attention_reference(query, keys, values)

    monkeypatch.setattr(tw, "fp8_attention", reference)
    torch.manual_seed(0)
    model = randomize_zero_inits(build_tiny_transformer(variant), 1)
    procs = [p for p in model.attn_processors.values() if isinstance(p, RefJointAttnProcessor)]

    x, t, kw = tiny_transformer_inputs(variant)
    with torch.no_grad():
        exact = model(x, t, **kw)
        model.set_attention_backend(SDPA_FP8_CUDNN)
        assert all(p.fp8_attention and not p.sdpa_cudnn and p._attention_backend is None for p in procs)
        fp8 = model(x, t, **kw)
        assert len(calls) == len(procs)  # every main and ControlNet self-attention, once
        if variant == "dmd":
            assert 2 in calls  # joint attention: reference keys, then target keys
        model.set_attention_backend(SDPA_CUDNN)
        assert not any(p.fp8_attention for p in procs)
        again = model(x, t, **kw)
    torch.testing.assert_close(again, exact, rtol=0, atol=0)
    assert not torch.allclose(fp8, exact, rtol=1e-4, atol=1e-4)
    assert _rel(fp8, exact) < 0.1


def test_without_the_kernel_the_forward_fails_with_the_reason():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")

    model = build_tiny_transformer("camera")
    model.set_attention_backend(SDPA_FP8_CUDNN)
    x, t, kw = tiny_transformer_inputs("camera")
    with torch.no_grad(), pytest.raises(RuntimeError, match="fp8 attention .*cannot run"):
        model(x, t, **kw)


def test_load_models_refuses_fp8_attention_before_loading(tmp_path):
    """Asked where the kernel cannot run, the loader says why before it reads a single file (the paths
    here do not even exist)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert SDPA_FP8_CUDNN in ATTENTION_BACKENDS
    with pytest.raises(InvalidOptionError, match="sdpa_fp8_cudnn.*GPU.*default"):
        load_models(
            tmp_path / "nope",
            text_encoder=tmp_path / "t",
            image_encoder=tmp_path / "i",
            vae=tmp_path / "v",
            device="cpu",
            attention_backend=SDPA_FP8_CUDNN,
        )
