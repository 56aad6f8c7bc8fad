"""WorldStereo for ComfyUI — the pack's entry point.

Registers the nodes through ComfyUI's V3 API (``nodes/comfy_v3.py`` picks ``comfy_api.latest``,
or a versioned module where a build lacks it) and serves ``web/``. Nothing else lives here.
"""

import importlib.util
import logging
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))


def _load_core() -> None:
    """Import the pack's own ``worldstereo_core`` by path, so nodes and library always come
    from one version of the code, whether or not the package is also pip-installed. The
    pack folder is not put on ``sys.path``: its ``nodes/`` would shadow ComfyUI's ``nodes``."""
    init = os.path.join(_PACK_DIR, "worldstereo_core", "__init__.py")
    loaded = sys.modules.get("worldstereo_core")
    if loaded is not None:
        if os.path.dirname(getattr(loaded, "__file__", "") or "") != os.path.dirname(init):
            logging.getLogger("worldstereo").warning(
                "worldstereo_core was already imported from %s; the pack uses that copy", loaded.__file__
            )
        return
    spec = importlib.util.spec_from_file_location(
        "worldstereo_core", init, submodule_search_locations=[os.path.dirname(init)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["worldstereo_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["worldstereo_core"]
        raise


_load_core()

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint
else:  # imported outside ComfyUI (e.g. pytest collecting the checkout): library only
    comfy_entrypoint = None

WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
