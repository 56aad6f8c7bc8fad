"""Errors users can act on.

Every problem with user input raises a subclass of :class:`WorldStereoError` whose message
says what was wrong and what to do about it. They derive from ``ValueError`` so generic
callers that catch bad-argument errors keep working.
"""

from __future__ import annotations


class WorldStereoError(ValueError):
    """Base class of every error raised for bad input or unusable files."""


class InvalidCameraError(WorldStereoError):
    """Intrinsics or extrinsics that cannot describe a camera (zero focal, non-rigid pose, …)."""


class InvalidDepthError(WorldStereoError):
    """Depth maps with NaN/inf/negative values or a size that does not match the image."""


class InvalidImageError(WorldStereoError):
    """Images of the wrong shape, range or aspect (e.g. a panorama that is not 2:1)."""


class InvalidPointCloudError(WorldStereoError):
    """Empty clouds, mismatched point/colour counts, non-finite coordinates."""


class InvalidTrajectoryError(WorldStereoError):
    """Trajectories of zero frames, unknown presets, bad keyframes."""


class CameraJsonError(WorldStereoError):
    """A camera.json that does not follow the upstream format."""


class MemoryBankError(WorldStereoError):
    """A memory bank or 3D cache that cannot be built, updated, saved or loaded."""


class CheckpointError(WorldStereoError):
    """A weights file or config that does not match what the model expects."""


class AlignmentError(WorldStereoError):
    """Point sets or depth maps that cannot be aligned (too few points, degenerate geometry)."""


class ExportError(WorldStereoError):
    """An export (PLY, GLB, COLMAP, transforms.json, MP4) asked with inputs it cannot write."""


class SyntheticSceneError(WorldStereoError):
    """Unknown synthetic scene names or bad parameters for synthetic rendering / corruption."""


class ModelInputError(WorldStereoError):
    """Tensors handed to the video model with the wrong shape, count or range (frames vs cameras, >8 references, …)."""


class RenderError(WorldStereoError):
    """Renderer settings that cannot work (non-positive splat radius, unknown mode, …)."""


class ReconstructionError(WorldStereoError):
    """Reconstruction settings or model outputs that cannot give a cloud (bad quantile, missing heads, …)."""


class EvaluationError(WorldStereoError):
    """Benchmark inputs that cannot be evaluated (unknown trajectory, missing ground truth, bad threshold, …)."""


class UnsafePathError(WorldStereoError):
    """A file or folder input that names something outside the folders the pack may read or write
    (ComfyUI's input, output and model folders), checked after resolving symlinks."""


class MalformedJsonError(WorldStereoError):
    """JSON text that is not parsed: bad syntax, nesting deeper than the format needs, numbers
    with too many digits, or NaN / Infinity / out-of-range values."""


class InvalidChoiceError(WorldStereoError):
    """A value that is not one of an option's choices (a dtype, sampler or mode name)."""
