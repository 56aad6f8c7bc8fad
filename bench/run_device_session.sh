#!/usr/bin/env bash
# The GPU figures of issues 13 and 14 in two device calls (each well inside a 10-minute command limit).
#
#   bash bench/run_device_session.sh issue13   # the issue-13 figures except the 24 GB child and the load
#                                              # measurement: ceilings, attention kernels, step ours vs stock
#                                              # (native / sdpa_cudnn / _native_cudnn), per-kernel-group
#                                              # profiles, fp8, fp8 trajectory, torch.compile (bf16 and fp8:
#                                              # step and trajectory)
#   bash bench/run_device_session.sh verify    # sdpa_cudnn eager and compiled (bf16, profiled) + the VAE figures
#   bash bench/run_device_session.sh rest [RESIDENT_FP8_S]
#                                              # the 24 GB child (fp8 + 30 blocks swapped, 22 GiB cap) and the
#                                              # host memory while loading, then issue 14's full-size training
#                                              # step of each stage (bench/train_step.py)
#   bash bench/run_device_session.sh fp8attn  # cuDNN's fp8 attention: kernel, step, cosine, compiled fp8 trajectory
#                                              # (wants the nvidia-cudnn-frontend wheel in .whl/)
#   bash bench/run_device_session.sh vaetraj  # VAE rows (+ cudnn.benchmark) and the eager bf16 trajectory
#   bash bench/run_device_session.sh phases   # the compiled bf16 trajectory phase by phase; VAE variants
#   bash bench/run_device_session.sh vaevariants   # the VAE phases alone, shipped vs variants
#   bash bench/run_device_session.sh fp8backends
#                                              # issue 13's fp8 matmul choice: bf16 vs our torch._scaled_mm
#                                              # (row-wise, per-tensor, fast accumulation) vs torchao vs
#                                              # comfy-kitchen at the model's projection shapes (~2 minutes)
#
# Results go to $OUT (the device tool's folder) or /tmp/ws_device_out. diffusers 0.36.0 (the release's pin)
# is installed from wheels in .whl/ when that folder exists (the device machines have no registry access).
# fp8backends also wants torchao 0.18.0 (cp310-abi3 manylinux wheel) and comfy-kitchen 0.2.40 there. comfy-kitchen's
# py3-none-any wheel (eager + triton kernels): its CUDA wheel (67.8 MB) is over the device tool's 64 MiB carry limit.
# Its fp8 GEMM is torch's scaled_mm in both; only its activation quantisation kernel differs.
set -o pipefail
part=${1:?usage: run_device_session.sh issue13|verify|rest [resident fp8 trajectory seconds]|fp8attn|vaetraj|phases|vaevariants|fp8backends}
out=${OUT:-/tmp/ws_device_out}
mkdir -p "$out"
# torchao and comfy-kitchen only for fp8backends: diffusers imports torchao whenever it is installed, which
# must not change what the other parts measure
pip_wheels() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
mapfile -t base_wheels < <(compgen -G ".whl/*.whl" | grep -v -e '^\.whl/torchao-' -e '^\.whl/comfy_kitchen-')
mapfile -t fp8_wheels < <(compgen -G ".whl/torchao-*.whl"; compgen -G ".whl/comfy_kitchen-*.whl")
if [ "${#base_wheels[@]}" -gt 0 ]; then
    pip_wheels /tmp/site "${base_wheels[@]}" || exit 1
    export PYTHONPATH=/tmp/site
fi
if [ "$part" = fp8backends ] && [ "${#fp8_wheels[@]}" -gt 0 ]; then
    # not on PYTHONPATH: diffusers 0.36.0 fails to import while torchao 0.18 is importable ("name 'logger' is
    # not defined"); the benchmark adds the folder (--site) after its diffusers import
    pip_wheels /tmp/site_fp8 "${fp8_wheels[@]}" || exit 1
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
case $part in
issue13)
    # trajectory_bf16: the eager bf16 trajectory is the compiled one's baseline only via its step (measured here);
    # stock_cudnn / fp8_tensor / vae: measured by the first call of the day (same kernels, README table)
    timeout 580 python3 bench/issue13_targets.py --out "$out/issue13.json" --profile-dir "$out" \
        --skip stock_cudnn,fp8_tensor,vae,trajectory_bf16,small,load --compile --compile-budget 420 2>&1 |
        tee "$out/issue13.log"
    ;;
rest)
    ref=${2:+--resident-fp8-s $2}
    # shellcheck disable=SC2086
    timeout 200 python3 bench/issue13_targets.py --out "$out/issue13_small_load.json" --skip attention,steps \
        --load-layers 10 $ref 2>&1 | tee "$out/issue13_small_load.log"
    for stage in camera memory dmd; do
        left=$((575 - SECONDS))
        [ "$left" -gt 30 ] || { echo "train_step $stage: no time left in this call"; continue; }
        steps=3
        cap=140
        [ "$stage" = dmd ] && steps=2 && cap=$left
        [ "$cap" -lt "$left" ] || cap=$left
        timeout "$cap" python3 bench/train_step.py --stage "$stage" --steps "$steps" 2>&1 | tee -a "$out/train_step.log"
    done
    ;;
verify)
    # the default attention route (sdpa_cudnn) eager and under torch.compile, profiled; the VAE figures
    timeout 400 python3 bench/issue13_targets.py --out "$out/issue13_verify.json" --profile-dir "$out" \
        --skip attention,ours_cudnn,stock,fp8,trajectory,compile_fp8,small,load --compile --attention sdpa_cudnn \
        2>&1 | tee "$out/issue13_verify.log"
    ;;
fp8attn)
    # cuDNN's fp8 attention (sdpa_fp8_cudnn): kernel TFLOP/s and accuracy, then the step (bf16 and fp8 weights),
    # the velocity cosine vs the exact bf16 step, torch.compile and the compiled fp8 trajectory with it
    timeout 580 python3 bench/issue13_targets.py --out "$out/issue13_fp8attn.json" --attention sdpa_fp8_cudnn \
        --skip ours_cudnn,stock_cudnn,fp8_tensor,vae,trajectory_bf16,trajectory_fp8,small,load,compile_bf16 --compile \
        --compile-budget 420 2>&1 | tee "$out/issue13_fp8attn.log"
    ;;
vaetraj)
    # the VAE rows (stock frame by frame, ours batched, with cudnn.benchmark) and the eager bf16 trajectory
    timeout 580 python3 bench/issue13_targets.py --out "$out/issue13_vaetraj.json" \
        --skip attention,ours_cudnn,stock,stock_cudnn,fp8,fp8_tensor,trajectory_fp8,small,load 2>&1 |
        tee "$out/issue13_vaetraj.log"
    ;;
phases)
    # where the compiled bf16 trajectory's time goes, and the VAE phases alone: shipped vs diffusers' path,
    # contiguous weights, cuDNN autotuning
    timeout 580 python3 bench/trajectory_phases.py --compile --vae-variants --out "$out/trajectory_phases.json" 2>&1 |
        tee "$out/trajectory_phases.log"
    ;;
vaevariants)
    # the VAE phases alone (I2V condition, keyframe encode, keyframe decode): shipped vs its variants (~1 minute)
    timeout 300 python3 bench/trajectory_phases.py --vae-variants --vae-only --out "$out/vae_variants.json" 2>&1 |
        tee "$out/vae_variants.log"
    ;;
fp8backends)
    # a backend whose wheel is missing or that cannot run here prints "not available: <why>"; the others still run
    timeout 400 python3 bench/fp8_matmul_backends.py --site /tmp/site_fp8 --out "$out/fp8_backends.json" 2>&1 | tee "$out/fp8_backends.log"
    ;;
*)
    echo "unknown part $part" >&2
    exit 2
    ;;
esac
