"""ComfyUI adapters over worldstereo_core, grouped by stage. No algorithm lives here."""

from __future__ import annotations

from typing_extensions import override

from . import depth, evaluate, examples, export, geometry, inspector, memory, models, recon, scene, uni3c
from .comfy_v3 import ComfyExtension, io


class WorldStereoExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            *scene.NODES,
            *geometry.NODES,
            *depth.NODES,
            *memory.NODES,
            *models.NODES,
            *uni3c.NODES,
            *recon.NODES,
            *evaluate.NODES,
            *export.NODES,
        ]


async def comfy_entrypoint() -> WorldStereoExtension:
    inspector.register_routes()  # the scene inspector's data route (outputs of this server only)
    examples.install_example_inputs()  # the example workflows' Load Image files, if absent
    return WorldStereoExtension()
