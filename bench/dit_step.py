"""Time one denoising step of the WorldStereo memory transformer against diffusers' stock Wan.

Full size (the release): 480×832, 21 latent frames + 8 references = 29 × 30 × 52 = 45 240 tokens.
The stock ``WanTransformer3DModel`` runs on the same token count (29 latent frames) in the same
process, so the ratio compares like with like. Random bf16 weights are created directly on the GPU.

    python bench/dit_step.py                       # H100/H200, full size
    python bench/dit_step.py --attention-backend flash   # any diffusers attention backend
    python bench/dit_step.py --tiny --device cpu   # seconds, smoke test

Prints both times, the ratio, achieved TFLOP/s (analytic matmul FLOPs) and peak GPU memory.
"""

from __future__ import annotations

import gc
import time

import torch
from _common import IMAGE_TOKENS, TEXT_TOKENS, bench_parser, step_inputs, sync
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

from worldstereo_core.models import build_transformer, init_random_weights
from worldstereo_core.models.transformer_worldstereo import FULL_TRANSFORMER_CONFIG
from worldstereo_core.tiny_configs import TINY_TRANSFORMER_CONFIG, build_tiny_transformer


def matmul_flops(
    cfg: dict, n_tokens: int, n_ref_tokens: int = 0, control: tuple[int, int, int, int] | None = None
) -> float:
    """Multiply-add FLOPs (×2) of one forward: projections, attention, FFN; control = (layers, dim, ffn, main_dim)."""
    c = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ctx = TEXT_TOKENS + IMAGE_TOKENS
    per_layer = (
        2 * 4 * n_tokens * c * c  # q, k, v, o of self-attention
        + 2 * 2 * n_ref_tokens * c * c  # reference k, v
        + 2 * 2 * n_tokens * (n_tokens + n_ref_tokens) * c  # QKᵀ and AV
        + 2 * 2 * n_tokens * c * c
        + 2 * 2 * ctx * c * c
        + 2 * 2 * IMAGE_TOKENS * c * c  # cross-attn q,o + text/image k,v
        + 2 * 2 * n_tokens * ctx * c  # cross-attention scores and values
        + 2 * 2 * n_tokens * c * cfg["ffn_dim"]  # FFN
    )
    total = cfg["num_layers"] * per_layer
    if control is not None:
        layers, d, f, main = control
        total += layers * (
            2 * 4 * n_tokens * d * d
            + 2 * 2 * n_tokens * n_tokens * d
            + 2 * 2 * n_tokens * d * f
            + 2 * n_tokens * d * main
        )
    return float(total)


def time_call(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--frames", type=int, default=21, help="latent frames (keyframes)")
    p.add_argument("--refs", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--attention-backend", default=None, help="diffusers attention backend, e.g. flash, _native_cudnn")
    p.add_argument("--skip-stock", action="store_true")
    args = p.parse_args()

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.tiny:
        args.height, args.width = min(args.height, 64), min(args.width, 96)
        args.frames, args.refs = min(args.frames, 3), min(args.refs, 2)
    if args.height % 16 or args.width % 16:
        raise SystemExit("height and width must be multiples of 16")
    base_cfg = dict(TINY_TRANSFORMER_CONFIG if args.tiny else FULL_TRANSFORMER_CONFIG)
    h, w, f, r = args.height // 8, args.width // 8, args.frames, args.refs
    tokens_per_frame = (h // 2) * (w // 2)
    n_t, n_r = f * tokens_per_frame, r * tokens_per_frame
    print(
        f"device={device} dtype={dtype} {args.height}x{args.width} frames={f} refs={r} "
        f"tokens: targets {n_t} + refs {n_r} = {n_t + n_r}"
    )

    x, t, inputs = step_inputs(base_cfg, device, dtype, f, h, w, r)
    text, image = inputs["encoder_hidden_states"], inputs["encoder_hidden_states_image"]

    # ---- WorldStereo memory model
    with torch.device("meta"):
        model = (build_tiny_transformer if args.tiny else build_transformer)("memory")
    init_random_weights(model, device, dtype)
    if args.attention_backend:
        model.set_attention_backend(args.attention_backend)
    cn = model.controlnet_config
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        ours = time_call(lambda: model(x, t, **inputs), device, args.warmup, args.iters)  # noqa: F821 (del below, after use)
    ours_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    ours_flops = matmul_flops(base_cfg, n_t, n_r, (cn.num_layers, cn.dim, cn.ffn_dim, model.inner_dim))
    print(
        f"worldstereo-memory: {ours * 1e3:9.1f} ms  {ours_flops / ours / 1e12:7.1f} TFLOP/s  peak {ours_peak:6.1f} GiB"
    )
    del model, inputs, x
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.skip_stock:
        return

    # ---- stock diffusers Wan at the same token count (targets + references as frames)
    with torch.device("meta"):
        stock = WanTransformer3DModel(**base_cfg).eval()
    init_random_weights(stock, device, dtype)
    with torch.device(device):  # RoPE tables were built on meta
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        stock.rope = WanRotaryPosEmbed(
            base_cfg["attention_head_dim"], base_cfg["patch_size"], base_cfg["rope_max_seq_len"]
        )
    if args.attention_backend:
        stock.set_attention_backend(args.attention_backend)
    xs = torch.randn(1, 36, f + r, h, w, device=device, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        base = time_call(lambda: stock(xs, t, text, image, return_dict=False), device, args.warmup, args.iters)
    base_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    base_flops = matmul_flops(base_cfg, n_t + n_r)
    print(
        f"stock diffusers Wan: {base * 1e3:9.1f} ms  {base_flops / base / 1e12:7.1f} TFLOP/s  peak {base_peak:6.1f} GiB"
    )
    print(f"ratio worldstereo / stock = {ours / base:.3f} (< 1 is faster)")


if __name__ == "__main__":
    main()
