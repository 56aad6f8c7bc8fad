"""WorldStereo core library: geometry, memory, models and the scene loop.

Importing this package never imports ComfyUI. The conventions (OpenCV cameras, ``w2c``
extrinsics, ``K`` in pixels, hole mask = 1) are in ``docs/ARCHITECTURE.md`` §3.
"""

__version__ = "0.1.0"
