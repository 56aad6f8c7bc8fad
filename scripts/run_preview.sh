#!/usr/bin/env bash
# The main job on the embedded default: runs example_workflows/preview_synthetic.json (the whole
# WorldStereo loop on a procedural scene, with the oracle generator standing in for the video
# model) headless through a real ComfyUI server, and copies its outputs into a folder.
#   bash scripts/run_preview.sh [OUTPUT_DIR]      (default: ./output/preview_synthetic)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/output/preview_synthetic}"
env_dir="$(bash "$root/scripts/setup_env.sh" | tail -n 1)"
exec "$env_dir/bin/python" "$root/scripts/run_workflow.py" "$root/example_workflows/preview_synthetic.json" "$out"
