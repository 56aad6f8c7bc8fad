"""Scaled float8 (e4m3) weights for the WorldStereo transformer.

The transformer's large matrices (the attention and FFN projections of the 40 main blocks and of
the 20 GGM ControlNet blocks, ~95 % of its 17.4 B parameters) can be stored as ``float8_e4m3fn``
with a float32 scale, halving their memory (35 GB → 18 GB) and, on Hopper/Ada GPUs, running the
matmul on the fp8 tensor cores through ``torch._scaled_mm``:

* weights: ``q = round_e4m3(w / s)`` with ``s = amax / 448`` per output channel (``[out]``) or per
  tensor (``[]``; ComfyUI's ``*_fp8_e4m3fn_scaled`` layout). 448 is the largest finite e4m3 value.
* activations are quantised on the fly, one scale per token (row), so an outlier token does not
  flatten the others; the product is computed in fp32 and written in the activation dtype (bf16).

Everything else stays at full precision: patch/condition/time embeddings, norms and AdaLN
modulations, the camera-embedding MLP, the output head and the ControlNet's zero-initialised
``proj_out`` projections (their outputs are added straight onto the main stream, unscaled by any
norm, so their rounding error would not be damped). Where ``torch._scaled_mm`` cannot run (CPU,
GPUs before sm_89, odd sizes) the layer dequantises its weight and calls ``F.linear``: same numbers
up to rounding, no speed-up — this is what the CPU tests exercise.

Checkpoints:

* a bf16 checkpoint is quantised while it streams in (:func:`~.loading.load_worldstereo` with
  ``weight_format="fp8_e4m3fn_scaled"``, through :func:`quantize_entry`): each weight is read, moved
  to the device, quantised and the bf16 copy dropped, so neither the host nor the device ever holds
  the bf16 model;
* scaled-fp8 files (``<layer>.weight`` in float8_e4m3fn beside ``<layer>.scale_weight`` — or the
  newer ``<layer>.weight_scale`` — plus an optional ``scaled_fp8`` marker: ComfyUI's layout, and what
  :func:`~.loading.save_worldstereo` writes for an fp8 model) are read through their scales
  (:func:`~.conversion.scaled_identity_plan`) and re-quantised to the layer's granularity (exact when
  the granularity is the file's).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
"""Largest finite float8_e4m3fn value; scales map each channel's |w| maximum onto it."""

WEIGHT_FORMATS = ("bf16", "fp8_e4m3fn_scaled")
"""``bf16``: the release's weights; ``fp8_e4m3fn_scaled``: block projections in scaled float8 e4m3."""

SCALE_GRANULARITIES = ("channel", "tensor")

# Prefixes of the layers that hold the block matmuls (main blocks, GGM control blocks).
_BLOCK_PREFIXES = ("blocks.", "controlnet.controlnet_blocks.")
# Linear layers inside those blocks that stay at full precision: the AdaLN modulation of the
# control blocks (its output scales every token of the branch).
_KEEP_SUFFIXES = (".norm1.linear", ".norm2.linear")


def _scaled_mm_available(device: torch.device) -> bool:
    """fp8 tensor cores: CUDA sm_89 (Ada) / sm_90 (Hopper) or newer, with ``torch._scaled_mm``."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_weight(weight: torch.Tensor, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` ``[out, in]`` → (``float8_e4m3fn`` ``[out, in]``, float32 scale ``[out]`` or ``[]``).

    ``weight ≈ q.float() * scale[:, None]``; the rounding is done in float32 on ``weight``'s device.
    """
    if granularity not in SCALE_GRANULARITIES:
        raise ValueError(f"granularity must be one of {SCALE_GRANULARITIES}, got {granularity!r}")
    w = weight.float()
    amax = w.abs().amax(dim=1) if granularity == "channel" else w.abs().amax()
    scale = (amax / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    q = (w / (scale[:, None] if scale.ndim else scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`quantize_weight` (up to rounding), in ``dtype``."""
    s = scale.float()
    w = q.float() * (s[:, None] if s.ndim == 1 else s)
    return w.to(dtype)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[M, K]`` → (``float8_e4m3fn`` ``[M, K]``, float32 per-row scale ``[M, 1]``)."""
    amax = x.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12)
    scale = amax / FP8_MAX
    q = (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


_FUSED_QUANTIZE: list = []  # [callable] once built; [None] when torch.compile is unusable here


def _quantize_rows_cuda(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows` fused into two kernels by ``torch.compile`` (eager: ~6 passes over ``x``,
    with a float32 copy); falls back to eager if compilation is not available."""
    if not _FUSED_QUANTIZE:
        try:
            _FUSED_QUANTIZE.append(torch.compile(quantize_rows, dynamic=True))
        except Exception:
            _FUSED_QUANTIZE.append(None)
    fused = _FUSED_QUANTIZE[0]
    if fused is not None:
        try:
            return fused(x)
        except Exception:
            _FUSED_QUANTIZE[0] = None
    return quantize_rows(x)


class Float8Linear(nn.Module):
    """``nn.Linear`` with a scaled float8 e4m3 weight (keys ``weight``, ``scale_weight``, ``bias``).

    ``weight`` ``[out, in]`` float8_e4m3fn, ``scale_weight`` float32 ``[out]`` (per channel) or ``[]``
    (per tensor), ``bias`` ``[out]`` in ``compute_dtype``. Input ``[..., in]`` → output ``[..., out]``
    in the input's dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        granularity: str = "channel",
        compute_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device), requires_grad=False
        )
        shape = (out_features,) if granularity == "channel" else ()
        self.scale_weight = nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device), requires_grad=False)
        self.bias = (
            nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device), requires_grad=False)
            if bias
            else None
        )

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, granularity: str = "channel", compute_dtype: torch.dtype | None = None
    ) -> Float8Linear:
        """Quantise an ``nn.Linear`` (on its device; ``meta`` gives an empty layer of the right shapes)."""
        w = linear.weight
        dtype = compute_dtype or (w.dtype if w.dtype.is_floating_point and w.dtype.itemsize > 1 else torch.bfloat16)
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, granularity, dtype, device="meta")
        if w.is_meta:
            return out
        q, s = quantize_weight(w.detach(), granularity)
        out.weight = nn.Parameter(q, requires_grad=False)
        out.scale_weight = nn.Parameter(s, requires_grad=False)
        if linear.bias is not None:
            out.bias = nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        return out

    @property
    def granularity(self) -> str:
        return "channel" if self.scale_weight.ndim == 1 else "tensor"

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize_weight(self.weight, self.scale_weight, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if (
            x2.dtype in (torch.bfloat16, torch.float16)
            and self.in_features % 16 == 0  # the fp8 GEMMs need 16-aligned sizes
            and self.out_features % 16 == 0
            and _scaled_mm_available(x2.device)
        ):
            rows = x2.shape[0]
            if rows % 16:  # e.g. the 257 CLIP tokens: pad with zero rows rather than dequantise the weight
                x2 = F.pad(x2, (0, 0, 0, 16 - rows % 16))
            xq, x_scale = _quantize_rows_cuda(x2)
            s = self.scale_weight
            w_scale = (s if s.ndim == 1 else s.expand(self.out_features)).reshape(1, -1).contiguous()
            out = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x2.dtype)[:rows]
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        else:
            bias = None if self.bias is None else self.bias.to(x2.dtype)
            out = F.linear(x2, self.dequantized_weight(x2.dtype), bias)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"fp8_e4m3fn scale per {self.granularity}"
        )


def fp8_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers that the fp8 format stores in float8 (block projections)."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith(_BLOCK_PREFIXES) and not name.endswith(_KEEP_SUFFIXES)
    ]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def convert_to_fp8(
    model: nn.Module, granularity: str = "channel", compute_dtype: torch.dtype | None = None
) -> list[str]:
    """Replace the block projections of ``model`` by :class:`Float8Linear` in place; returns their names.

    On a ``meta`` model this only changes the structure (for loading a checkpoint into it); on a real
    one each layer is quantised and its full-precision weight released before the next (peak: one
    layer's fp32 copy).
    """
    names = fp8_layer_names(model)
    for name in names:
        _set_submodule(model, name, Float8Linear.from_linear(model.get_submodule(name), granularity, compute_dtype))
    return names


def quantize_entry(
    key: str, tensor: torch.Tensor, fp8_layers: Iterable[str], granularity: str = "channel"
) -> dict[str, torch.Tensor]:
    """State entries for one loaded tensor: ``{key: tensor}``, or for the weight of an fp8 layer
    ``{key: float8 weight, <layer>.scale_weight: scale}`` (quantised where ``tensor`` is)."""
    layer, _, leaf = key.rpartition(".")
    if leaf == "weight" and layer in fp8_layers:
        q, s = quantize_weight(tensor, granularity)
        return {key: q, f"{layer}.scale_weight": s}
    return {key: tensor}


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` (fp8 weights count one byte each)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "SCALE_GRANULARITIES",
    "WEIGHT_FORMATS",
    "Float8Linear",
    "convert_to_fp8",
    "dequantize_weight",
    "fp8_layer_names",
    "model_weight_bytes",
    "quantize_entry",
    "quantize_rows",
    "quantize_weight",
]
