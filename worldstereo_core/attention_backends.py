"""The attention backends the WorldStereo transformer offers by name.

A module of its own, with no imports, because the loader node lists these names and importing the
model package (``worldstereo_core.models``) imports diffusers; the node layer must stay light to load.
:meth:`~worldstereo_core.models.transformer_worldstereo.WorldStereoTransformer.set_attention_backend` takes
every name here (and any other diffusers ``AttentionBackendName``).
"""

SDPA_CUDNN = "sdpa_cudnn"
"""Attention backend name of :func:`~worldstereo_core.models.transformer_worldstereo.sdpa_cudnn_first`:
PyTorch SDPA called directly on head-major views, cuDNN's fused kernel first. Not a diffusers backend name."""

SDPA_FP8_CUDNN = "sdpa_fp8_cudnn"
"""Attention backend name of :func:`~worldstereo_core.models.fp8_attention.fp8_attention`: the self-attention
on cuDNN's fp8 (e4m3) kernel, Hopper GPUs with the ``nvidia-cudnn-frontend`` package. Changes the numbers
(each of Q, K, V, P, O rounded to e4m3), so it is opt-in. Not a diffusers backend name."""

ATTENTION_BACKENDS = (
    SDPA_CUDNN,
    SDPA_FP8_CUDNN,
    "native",
    "flash",
    "_native_flash",
    "_native_cudnn",
    "_native_efficient",
    "sage",
    "xformers",
)
"""The backends offered by name (the loader node's ``attention_backend`` combo, after its ``default``): ours (exact, then fp8), then
diffusers' ``AttentionBackendName`` values that run on PyTorch alone (``native``, ``_native_*``) or with their
package (``flash``, ``sage``, ``xformers``)."""

DEFAULT_ATTENTION_BACKEND = SDPA_CUDNN
"""What our self-attention uses unless a backend is set. Chosen by measurement (bench/issue13_targets.py,
README "Performance", 2026-12-05): on Hopper cuDNN's fused kernel runs a main block's joint attention at
564 TFLOP/s on an H200, the flash kernel at 362. PyTorch 2.11's own SDPA order already picks cuDNN there, so
``native`` measures the same (one step 4 391 vs 4 400 ms on the H200, 4 519 vs 4 546 ms on an H100: within
1 %); this route keeps cuDNN first whatever the installed torch's order is, and unlike diffusers'
``_native_cudnn`` (4 523 ms) it copies nothing. Verified under torch.compile on an H100 too (3 805 ms)."""
