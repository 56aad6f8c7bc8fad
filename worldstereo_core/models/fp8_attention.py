"""FP8 self-attention (opt-in, Hopper): the joint target + reference attention on fp8 tensor cores.

The attention of a WorldStereo step is ~70 % of its GPU time once the projections run in fp8
(bench/issue13_targets.py, H200: 2.5 s of a 3.4 s compiled fp8 step) and PyTorch's SDPA has no fp8
kernel. cuDNN has one (its "fp8 flash attention" forward, sm_90+), reached from Python through NVIDIA's
``cudnn`` frontend package (``pip install --no-deps nvidia-cudnn-frontend==1.32.0``: :data:`CUDNN_FRONTEND_PIN`
is the version we measured; its declared CUDA 13 dependencies, ``nvidia-cutlass-dsl`` and ``apache-tvm-ffi``,
serve other parts of the package). This module is the one owner of that path:

* :func:`quantize_per_tensor` — ``x`` → (``float8_e4m3fn``, float32 descale ``[1, 1, 1, 1]``) with one
  scale for the whole tensor (the kernel takes scalar descales), ``descale = amax / 448``; keys and
  values of the joint attention (references, then targets) are quantised into one buffer with one
  scale (under torch.compile the concatenation and the rounding fuse into one kernel). No host sync:
  the scales stay on the GPU.
* :func:`fp8_attention` — ``[B, Lq, H, D]`` queries over the concatenated keys / values → ``[B, Lq, H, D]``
  in the query dtype. Q, K, V in e4m3; scores and softmax in fp32; the softmax probabilities ``P``
  (``∈ [0, 1]``) enter the second matmul as e4m3 scaled by 448; on Hopper cuDNN writes ``O`` in e4m3
  too (bf16 output is Blackwell-only), so ``O`` is scaled with V's scale — every row of ``O`` is a
  convex combination of rows of ``V``, so ``|O| ≤ amax(V)`` up to P's rounding (≤ 2⁻⁴; beyond it the
  conversion saturates) — and dequantised here.
* :func:`fp8_attention_reference` — the same arithmetic in plain PyTorch (float32, whole rows at once
  instead of cuDNN's running-max tiles), on any device: what the tests and the benchmark check the
  kernel and its accuracy against.

Under sequence parallel each rank quantises the heads it holds, so the scales (and the last bits of the
result) depend on the number of ranks.

The numbers differ from the release's bf16 attention (each of Q, K, V, P, O is rounded to 3 mantissa
bits); the accuracy gate is the one of the fp8 weights: cosine of the predicted velocity against the
bf16 model ≥ 0.995 (bench/issue13_targets.py). It is therefore never the default: the loader's
``attention_backend = sdpa_fp8_cudnn`` asks for it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from .fp8 import FP8_DTYPE, FP8_MAX

CUDNN_FRONTEND_PIN = "nvidia-cudnn-frontend==1.32.0"
"""The cuDNN frontend release this path was measured with (README "Performance"); its ``sdpa_fp8`` graph
node takes Q, K, V and the six scalar (de)scales by position."""

_MIN_CAPABILITY = (9, 0)  # cuDNN's fp8 SDPA forward: Hopper and newer
_MAX_GRAPHS = 16  # built graphs kept (a step uses two or three shapes)


def fp8_attention_unavailable(device: torch.device | str | None = None) -> str | None:
    """Why :func:`fp8_attention` cannot run on ``device`` (default: the current CUDA device), or None.

    The reason says what to change (a GPU, a package), so the loader can refuse the backend up front
    instead of failing in the first sampling step. Beyond the GPU and the import, a small fp8 SDPA graph
    is built and checked once per device (``import cudnn`` succeeds even where no usable cuDNN library
    loads, and an old cuDNN lacks the fp8 engine)."""
    if not torch.cuda.is_available():
        return "it needs an NVIDIA GPU (CUDA); this machine has none"
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    if device.type != "cuda":
        return f"it runs on a CUDA GPU, the model is on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < _MIN_CAPABILITY:
        return (
            f"cuDNN's fp8 attention needs a Hopper-class GPU (compute capability 9.0 or newer); "
            f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}"
        )
    try:
        import cudnn  # noqa: F401
    except Exception as exc:  # ImportError, or a cuDNN library the package cannot load
        return (
            f"the cuDNN frontend is not importable ({exc}); install it with: pip install --no-deps {CUDNN_FRONTEND_PIN}"
        )
    return _SDPA.probe(device)


# ----------------------------------------------------------------------------- quantisation


def _to_e4m3(x: torch.Tensor, descale: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to e4m3 at a given descale (``x ≈ result.float() * descale``), saturating."""
    return (x.float() / descale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_per_tensor(parts: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``parts`` (each ``[B, L_i, H, D]``, same B, H, D) → (their concatenation along tokens in
    ``float8_e4m3fn``, ``[B, ΣL_i, H, D]`` contiguous; float32 descale ``[1, 1, 1, 1]``).

    One scale for all parts: ``descale = amax / 448`` over every element, so
    ``dequantised = q.float() * descale`` and no element overflows."""
    amax = torch.stack([p.detach().abs().amax().float() for p in parts]).amax()
    descale = (amax / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    # the cast to e4m3 comes last, after the concatenation: inductor's fused kernel then selects among the
    # parts in the input dtype (writing e4m3 slices of an empty buffer made it emit an e4m3 NaN constant that
    # the Triton of torch 2.11 cannot build)
    joined = parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)
    out = _to_e4m3(joined.detach(), descale).contiguous()
    return out, descale.reshape(1, 1, 1, 1)


# ----------------------------------------------------------------------------- the cuDNN kernel


@dataclass(frozen=True)
class _GraphKey:
    device: int
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    q_strides: tuple[int, ...]  # of the [B, L, H, D] tensors (O is written with Q's)
    kv_strides: tuple[int, ...]


class _CudnnFp8Sdpa:
    """Built cuDNN graphs of the fp8 SDPA forward, one per shape and device (a step has two or three
    shapes: main blocks, GGM control blocks), and one cuDNN handle per device."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graphs: dict[_GraphKey, tuple] = {}
        self._handles: dict[int, object] = {}
        self._constants: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._probed: dict[int, str | None] = {}

    def _handle(self, index: int):
        import cudnn

        if index not in self._handles:
            with torch.cuda.device(index):
                self._handles[index] = cudnn.create_handle()
        return self._handles[index]

    def _build(self, key: _GraphKey):
        import cudnn

        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        handle = self._handle(key.device)
        graph = cudnn.pygraph(io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=handle)

        def head_major(name: str, length: int, strides: tuple[int, ...]):
            # a [B, L, H, D] tensor seen as [B, H, L, D], whatever its storage order
            return graph.tensor(
                name=name,
                dim=[key.batch, key.heads, length, key.head_dim],
                stride=[strides[0], strides[2], strides[1], strides[3]],
                data_type=e4m3,
            )

        q = head_major("q", key.q_len, key.q_strides)
        k, v = head_major("k", key.kv_len, key.kv_strides), head_major("v", key.kv_len, key.kv_strides)
        scalars = [
            graph.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32)
            for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        ]
        o, _, amax_s, amax_o = graph.sdpa_fp8(
            q,
            k,
            v,
            *scalars,
            generate_stats=False,
            attn_scale=1.0 / math.sqrt(key.head_dim),
            use_causal_mask=False,
            name="worldstereo_fp8_sdpa",
        )
        qs = key.q_strides
        o.set_output(True).set_dim([key.batch, key.heads, key.q_len, key.head_dim])
        o.set_stride([qs[0], qs[2], qs[1], qs[3]]).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        return graph, (q, k, v, *scalars, o, amax_s, amax_o)

    def probe(self, device: torch.device) -> str | None:
        """Build and check a small graph (2 heads of 128, 256 queries × 256 keys) on ``device``, once;
        returns why it failed, or None."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        with self._lock:
            if index not in self._probed:
                reason = None
                try:
                    strides = (256 * 2 * 128, 2 * 128, 128, 1)  # [1, 256, 2, 128] contiguous
                    with torch.cuda.device(index):
                        self._build(_GraphKey(index, 1, 2, 256, 256, 128, strides, strides))
                except Exception as exc:
                    import cudnn

                    version = getattr(cudnn, "backend_version", lambda: "unknown")()
                    reason = (
                        f"cuDNN (backend version {version}) cannot build its fp8 attention here "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
                    )
                self._probed[index] = reason
            return self._probed[index]

    def __call__(
        self,
        q8: torch.Tensor,
        k8: torch.Tensor,
        v8: torch.Tensor,
        descale_q: torch.Tensor,
        descale_k: torch.Tensor,
        descale_v: torch.Tensor,
    ) -> torch.Tensor:
        if q8.device.type != "cuda":
            raise RuntimeError(f"fp8 attention (sdpa_fp8_cudnn) cannot run: {fp8_attention_unavailable(q8.device)}")
        B, Lq, H, D = q8.shape
        index = q8.device.index if q8.device.index is not None else torch.cuda.current_device()
        if k8.stride() != v8.stride() or q8.stride(-1) != 1 or k8.stride(-1) != 1:
            raise ValueError("fp8 SDPA: K and V need the same strides and every head dimension contiguous")
        key = _GraphKey(index, B, H, Lq, k8.shape[1], D, tuple(q8.stride()), tuple(k8.stride()))
        # the device's probe result (fp8_attention_unavailable probes on the first call): one dict lookup
        reason = self._probed[index] if index in self._probed else fp8_attention_unavailable(q8.device)
        if reason is not None:
            raise RuntimeError(f"fp8 attention (sdpa_fp8_cudnn) cannot run: {reason}")
        with self._lock:
            if key not in self._graphs:
                if len(self._graphs) >= _MAX_GRAPHS:  # e.g. many resolutions in one session: drop the oldest
                    self._graphs.pop(next(iter(self._graphs)))
                self._graphs[key] = self._build(key)
            graph, tensors = self._graphs[key]
            if index not in self._constants:
                # P ∈ [0, 1] is scaled onto e4m3's range before the second matmul, and back after it
                self._constants[index] = (
                    torch.full((1, 1, 1, 1), 1.0 / FP8_MAX, device=q8.device),
                    torch.full((1, 1, 1, 1), FP8_MAX, device=q8.device),
                )
            descale_s, scale_s = self._constants[index]
            handle = self._handle(index)
        import cudnn  # importable: checked on this device's first call above

        out = torch.empty_strided(q8.shape, q8.stride(), dtype=q8.dtype, device=q8.device)
        amax = torch.empty(2, 1, 1, 1, dtype=torch.float32, device=q8.device)
        # O is written with V's scale: |O| ≤ amax(V) up to P's e4m3 rounding (≤ 2^-4), and the kernel's
        # conversion saturates at 448 rather than overflowing
        scale_o = torch.reciprocal(descale_v.float())
        workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=q8.device)
        q, k, v, dq, dk, dv, ds, ss, so, o, amax_s, amax_o = tensors
        with torch.cuda.device(q8.device):  # the launch goes to the tensors' device, whatever is current
            cudnn.set_stream(handle, torch.cuda.current_stream(q8.device).cuda_stream)
            graph.execute(
                {
                    q: q8,
                    k: k8,
                    v: v8,
                    dq: descale_q,
                    dk: descale_k,
                    dv: descale_v,
                    ds: descale_s,
                    ss: scale_s,
                    so: scale_o,
                    o: out,
                    amax_s: amax[0:1],
                    amax_o: amax[1:2],
                },
                workspace,
                handle=handle,
            )
        return out


_SDPA = _CudnnFp8Sdpa()


@torch.library.custom_op("worldstereo::cudnn_fp8_sdpa", mutates_args=())
def cudnn_fp8_sdpa(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
) -> torch.Tensor:
    """cuDNN's fp8 SDPA forward: e4m3 ``[B, Lq, H, D]`` / ``[B, Lk, H, D]`` (any storage order with the head
    dimension contiguous; K and V alike) and their float32 descales ``[1, 1, 1, 1]`` → e4m3 ``[B, Lq, H, D]``
    with Q's strides, at V's scale (multiply by ``descale_v``). A torch custom op, so ``torch.compile``
    keeps it as one opaque call and fuses the quantisation around it."""
    return _SDPA(q8, k8, v8, descale_q, descale_k, descale_v)


@cudnn_fp8_sdpa.register_fake
def _(q8, k8, v8, descale_q, descale_k, descale_v):
    return torch.empty_strided(q8.shape, q8.stride(), dtype=q8.dtype, device=q8.device)


def fp8_attention(query: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Softmax attention of ``query`` ``[B, Lq, H, D]`` over the concatenation (along tokens) of ``keys`` /
    ``values`` (each ``[B, L_i, H, D]``) → ``[B, Lq, H, D]`` in ``query.dtype``, on cuDNN's fp8 kernel.

    Same contract as :func:`~.transformer_worldstereo.sdpa_cudnn_first`; the first call on a device raises
    ``RuntimeError`` with the reason (:func:`fp8_attention_unavailable`) where the kernel cannot run."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, *keys, *values)):
        raise RuntimeError(
            "fp8 attention (sdpa_fp8_cudnn) is inference-only (no gradient flows through it); train with 'sdpa_cudnn'"
        )
    q8, descale_q = quantize_per_tensor([query])
    k8, descale_k = quantize_per_tensor(keys)
    v8, descale_v = quantize_per_tensor(values)
    o8 = torch.ops.worldstereo.cudnn_fp8_sdpa(q8, k8, v8, descale_q, descale_k, descale_v)
    return (o8.to(torch.float32) * descale_v).to(query.dtype)


def fp8_attention_reference(
    query: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    descales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """What :func:`fp8_attention` computes, in float32 PyTorch on any device (memory ``O(Lq · Lk)`` per
    head: for checks at small sizes or on a few heads).

    Q, K, V per-tensor e4m3 (:func:`quantize_per_tensor`); ``S = Q Kᵀ / √D`` in fp32;
    ``P = exp(S − rowmax)`` rounded to e4m3 after scaling by 448; ``O = (P V) / rowsum(exp(S − rowmax))``;
    ``O`` rounded to e4m3 at V's scale. cuDNN's kernel takes the row maximum tile by tile, so its P
    roundings differ slightly; the two agree to the e4m3 rounding of P (see the tests and the benchmark).

    ``descales`` (Q's, K's, V's ``[1, 1, 1, 1]``): use these scales instead of the inputs' own amax — to
    check a slice of a larger problem (some heads, some queries) against the kernel run on all of it."""
    if descales is None:
        dq, dk, dv = (quantize_per_tensor(x)[1] for x in ([query], keys, values))
    else:
        dq, dk, dv = (d.float().reshape(1, 1, 1, 1).to(query.device) for d in descales)
    q8, k8, v8 = (_to_e4m3(torch.cat(list(x), dim=1), d) for x, d in (([query], dq), (keys, dk), (values, dv)))
    return (_reference_sdpa_e4m3(q8, k8, v8, dq, dk, dv).float() * dv).to(query.dtype)


def _reference_sdpa_e4m3(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    descale_v: torch.Tensor,
) -> torch.Tensor:
    """:func:`cudnn_fp8_sdpa`'s contract in plain PyTorch (float32, whole rows): e4m3 operands and their
    descales → e4m3 ``O`` at V's scale."""
    q = (q8.float() * descale_q.float()).transpose(1, 2)  # [B, H, Lq, D]
    k = (k8.float() * descale_k.float()).transpose(1, 2)
    v = (v8.float() * descale_v.float()).transpose(1, 2)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    row_sum = p.sum(dim=-1, keepdim=True)
    p8 = (p * FP8_MAX).to(FP8_DTYPE).float() / FP8_MAX
    o = (p8 @ v) / row_sum
    return _to_e4m3(o, descale_v.float()).transpose(1, 2).contiguous()


__all__ = [
    "CUDNN_FRONTEND_PIN",
    "cudnn_fp8_sdpa",
    "fp8_attention",
    "fp8_attention_reference",
    "fp8_attention_unavailable",
    "quantize_per_tensor",
]
