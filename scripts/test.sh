#!/usr/bin/env bash
# The test command: builds (or reuses) the pinned environment, then runs the whole suite —
# unit tests, a real ComfyUI server with the pack installed, and the real frontend in
# headless Chromium. Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="$(bash "$root/scripts/setup_env.sh" | tail -n 1)"
cd "$root"
export PYTHONDONTWRITEBYTECODE=1
export WORLDSTEREO_REQUIRE_COMFY=1
# tiny models on 2 cores: one thread avoids OpenMP overhead dominating each small op
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export WORLDSTEREO_FRONTEND_NEW="$env_dir/frontend-1.58.1/comfyui_frontend_package/static"
exec "$env_dir/bin/python" -m pytest "$@"
