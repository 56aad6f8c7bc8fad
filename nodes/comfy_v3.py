"""The one place the pack imports ComfyUI's V3 node API.

ComfyUI's own nodes (``comfy_extras/nodes_*.py``) import ``comfy_api.latest``; it exists in
ComfyUI 0.3.75 and in current upstream. The versioned modules (``comfy_api.v0_0_2`` …) are
marked unstable and only re-export ``latest`` in 0.3.75, so they are the fallback for a build
that might drop or rename ``latest``. Every node module takes ``io``, ``ui`` and
``ComfyExtension`` from here, so the choice is made once.
"""

from __future__ import annotations

import importlib

# Tried in order; the first that imports and offers the three names wins.
API_MODULES = ("comfy_api.latest", "comfy_api.v0_0_2", "comfy_api.v0_0_1")


def _import_v3_api():
    errors = []
    for name in API_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
            continue
        if all(hasattr(module, attr) for attr in ("io", "ComfyExtension")):
            return name, module
        errors.append(f"{name}: lacks io/ComfyExtension")
    raise ImportError(
        "WorldStereo needs ComfyUI's V3 node API (ComfyUI >= 0.3.75); none of "
        + ", ".join(API_MODULES)
        + " could be used ("
        + "; ".join(errors)
        + "). Update ComfyUI."
    )


API_MODULE, _api = _import_v3_api()
io = _api.io
ComfyExtension = _api.ComfyExtension
ui = getattr(_api, "ui", None)
# core VIDEO values (what CreateVideo makes and Save Video takes): frames + frame rate
InputImpl = getattr(_api, "InputImpl", None)
Types = getattr(_api, "Types", None)
# 3D files as values (ComfyUI builds newer than 0.3.75): io.File3DAny / io.File3DGLB sockets carrying a
# Types.File3D (a path or bytes plus its format), what core Preview 3D and the 3D nodes take. None where
# the build lacks them; the save nodes then output only the path string.
File3D = getattr(Types, "File3D", None)
HAS_FILE3D = File3D is not None and all(hasattr(io, name) for name in ("File3DAny", "File3DGLB"))

__all__ = ["API_MODULE", "ComfyExtension", "File3D", "HAS_FILE3D", "InputImpl", "Types", "io", "ui"]
