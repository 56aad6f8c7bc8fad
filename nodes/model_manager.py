"""WorldStereo model bundles under ComfyUI's memory manager (``comfy.model_management``).

A loaded :class:`~worldstereo_core.models.generate.WorldStereoModels` bundle is registered as a
``ModelPatcher`` (:class:`WorldStereoPatcher`) in ComfyUI's list of loaded models, so that:

* another workflow's model load reclaims the GPU (``free_memory`` unloads us like any model);
* the frontend's "Unload models" / "Free model and node cache" (``POST /free``) offload us;
* every node that runs the bundle asks ``load_models_gpu`` first, which brings it back if it was
  offloaded, and frees room for it by unloading other models.

ComfyUI's partial ("lowvram") loading swaps single layers through cast hooks that our diffusers-based
modules do not have, so the bundle loads and unloads whole (``force_full_load``); the partial
residency that a small card needs is our own block swap (``blocks_to_swap``), whose host-side blocks
are left out of the size ComfyUI reserves. Offloading moves weights to the host; nothing is copied
twice (see :meth:`WorldStereoModels.offload_to_host`).
"""

from __future__ import annotations

import logging
import weakref

import comfy.model_management as mm
import comfy.model_patcher
import torch

log = logging.getLogger(__name__)


class WorldStereoBundle(torch.nn.Module):
    """What ComfyUI's manager sees as the model: a weak handle on the bundle (no weights of its own)."""

    def __init__(self, models) -> None:
        super().__init__()
        self._models = weakref.ref(models)
        self.dtype = next(models.transformer.parameters()).dtype

    @property
    def models(self):
        return self._models()

    def get_dtype(self) -> torch.dtype:
        return self.dtype


class WorldStereoPatcher(comfy.model_patcher.ModelPatcher):
    """All-or-nothing ModelPatcher for one WorldStereo bundle (transformer, VAE, resident encoders).

    ``size`` is :meth:`WorldStereoModels.device_weight_bytes`: the bytes that loading puts on the GPU
    (swapped blocks and offloaded encoders live on the host and are not counted).
    """

    def __init__(self, models) -> None:
        super().__init__(
            WorldStereoBundle(models),
            load_device=models.device,
            offload_device=torch.device("cpu"),
            size=max(1, models.device_weight_bytes()),
        )
        # the weights are where load_models put them: resident on the execution device
        self.model.device = models.device
        self.model.model_loaded_weight_memory = self.size if models.device.type != "cpu" else 0

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False) -> int:
        """Load everything (ComfyUI asks for a part; the bundle has no partial mode of ComfyUI's kind)."""
        models = self.model.models
        if models is None or self.model.model_loaded_weight_memory:
            return 0
        models.load_to_device()
        self.model.device = models.device
        self.model.model_loaded_weight_memory = self.size
        return self.size

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False) -> int:
        return 0  # nothing partial: ComfyUI then unloads the whole bundle (detach)

    def detach(self, unpatch_all=True):
        """Offload the bundle to the host (``unpatch_all=False``, a clone's detach, leaves it in place)."""
        models = self.model.models
        if unpatch_all and models is not None and self.model.model_loaded_weight_memory:
            models.offload_to_host()
            log.info("WorldStereo: offloaded %s (%.2f GiB) to the host", models.variant, self.size / 2**30)
        if unpatch_all:
            self.model.model_loaded_weight_memory = 0
            self.model.device = self.offload_device
        return self.model

    def model_dtype(self) -> torch.dtype:
        return self.model.get_dtype()


_PATCHERS: dict[int, WorldStereoPatcher] = {}


def _forget(key: int, patcher: WorldStereoPatcher) -> None:
    if _PATCHERS.get(key) is patcher:
        del _PATCHERS[key]


def patcher_for(models) -> WorldStereoPatcher:
    """The (one) patcher of a bundle; created on first use and dropped when the bundle is collected."""
    key = id(models)
    patcher = _PATCHERS.get(key)
    if patcher is None or patcher.model.models is not models:
        patcher = WorldStereoPatcher(models)
        _PATCHERS[key] = patcher
        weakref.finalize(models, _forget, key, patcher)
    return patcher


def ensure_loaded(models) -> None:
    """Register the bundle with ComfyUI's manager and make it resident (other models are unloaded to fit)."""
    mm.load_models_gpu([patcher_for(models)], force_full_load=True)


def is_registered(models) -> bool:
    """True when ComfyUI's manager lists the bundle among its loaded models."""
    patcher = _PATCHERS.get(id(models))
    return patcher is not None and any(lm.model is patcher for lm in mm.current_loaded_models)


__all__ = ["WorldStereoPatcher", "ensure_loaded", "is_registered", "patcher_for"]
